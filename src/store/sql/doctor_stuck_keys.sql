-- Keys held back by a row waiting for its retry (the rows behind it wait in order), with how
-- many rows wait behind it, worst first. $1: at most this many keys.
SELECT b.destination, b.message_key, b.attempts, b.last_error,
       extract(epoch FROM b.available_at - now())::float8 AS retry_in_secs,
       (SELECT count(*)
          FROM outbox.messages m
         WHERE m.status = 'committed'
           AND m.destination = b.destination
           AND m.message_key = b.message_key
           AND m.commit_seq > b.commit_seq) AS behind
FROM outbox.messages b
WHERE b.status = 'committed'
  AND b.message_key IS NOT NULL
  AND b.attempts > 0
  AND b.available_at > b.committed_at
  AND b.available_at > now()
ORDER BY behind DESC, b.commit_seq
LIMIT $1
