-- The producer answered `rolled_back`: as outbox.rollback() does. $1: message ids.
UPDATE outbox.messages AS m
   SET status = 'rolled_back', finished_at = clock_timestamp()
 WHERE m.message_id = ANY ($1)
   AND m.status = 'prepared'
RETURNING m.message_id
