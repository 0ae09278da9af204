-- One message, whatever its status, for `dead show`. $1 message id; $2 whether to include the
-- payload (left out unless asked: it may hold personal data).
SELECT message_id, status, destination, routing_key, message_key, content_type, headers,
       attempts, last_error, producer, commit_seq, created_at, committed_at, available_at,
       expires_at, published_at, finished_at,
       CASE WHEN $2 THEN payload END AS payload
FROM outbox.messages
WHERE message_id = $1
