SELECT count(*) AS pending,
  coalesce(extract(epoch FROM now() - min(committed_at)), 0)::float8 AS oldest_age_secs,
  min(commit_seq) AS lowest_seq
FROM outbox.messages WHERE status = 'committed'
