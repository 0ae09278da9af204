SELECT destination, count(*) AS count,
  (array_agg(last_error ORDER BY finished_at DESC NULLS LAST))[1] AS last_error
FROM outbox.messages WHERE status = 'dead' GROUP BY destination ORDER BY destination
