-- Rolls back one batch of prepared rows whose time to be decided has passed.
-- $1: batch size. SKIP LOCKED: a row being committed right now is left to that transaction,
-- and outbox.commit() itself refuses expired rows.
WITH due AS (
    SELECT id
      FROM outbox.messages
     WHERE status = 'prepared'
       AND expires_at <= now()
     ORDER BY expires_at
     LIMIT $1
       FOR UPDATE SKIP LOCKED
)
UPDATE outbox.messages AS m
   SET status = 'rolled_back', finished_at = clock_timestamp()
  FROM due
 WHERE m.id = due.id
   AND m.status = 'prepared'
