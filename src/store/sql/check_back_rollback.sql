-- The producer answered `rolled_back`: as outbox.rollback() does. $1: message ids.
-- The rows are found by message_id, through its unique index: the status is compared as text
-- so that messages_prepared_expiry_idx (partial: prepared rows) cannot serve the statement, as
-- in mark_published.sql.
UPDATE outbox.messages AS m
   SET status = 'rolled_back', finished_at = clock_timestamp()
 WHERE m.message_id = ANY ($1)
   AND m.status::text = 'prepared'
RETURNING m.message_id
