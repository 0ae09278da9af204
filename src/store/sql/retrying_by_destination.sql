-- Committed rows whose last publish failed and that wait for their retry, per destination,
-- the most first. $1: at most this many destinations.
SELECT destination, count(*) AS rows, max(attempts) AS max_attempts
FROM outbox.messages
WHERE status = 'committed'
  AND attempts > 0
GROUP BY destination
ORDER BY rows DESC, destination
LIMIT $1
