-- Deletes one batch of finished rows of one status older than its retention.
-- $1: status, $2: retention in ms, $3: batch size.
WITH doomed AS (
    SELECT id
      FROM outbox.messages
     WHERE status = $1
       AND finished_at < now() - $2 * interval '1 millisecond'
     ORDER BY finished_at
     LIMIT $3
       FOR UPDATE SKIP LOCKED
)
DELETE FROM outbox.messages AS m
 USING doomed
 WHERE m.id = doomed.id
