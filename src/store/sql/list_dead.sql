SELECT message_id, destination, message_key, attempts, last_error, committed_at, finished_at
FROM outbox.messages
WHERE status = 'dead' AND ($1::text IS NULL OR destination = $1)
ORDER BY commit_seq NULLS LAST, id
LIMIT $2
