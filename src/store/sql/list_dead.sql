-- Dead rows, oldest first, narrowed by the filters (each NULL when not given): $1 destination,
-- $2 message key, $3 died within this many ms, $4 message ids. $5: at most this many.
SELECT message_id, destination, message_key, attempts, last_error, committed_at, finished_at
FROM outbox.messages
WHERE status = 'dead'
  AND ($1::text IS NULL OR destination = $1)
  AND ($2::text IS NULL OR message_key = $2)
  AND ($3::bigint IS NULL OR finished_at >= now() - $3 * interval '1 millisecond')
  AND ($4::uuid[] IS NULL OR message_id = ANY ($4))
ORDER BY commit_seq NULLS LAST, id
LIMIT $5
