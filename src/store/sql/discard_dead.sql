-- Deletes the dead rows among $1 (message ids); the caller selects them in batches.
DELETE FROM outbox.messages
WHERE status = 'dead'
   AND message_id = ANY ($1)
