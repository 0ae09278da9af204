-- Prepared rows with a producer that are due to be asked: older than check_after ($1, in ms), not
-- expired, and past the backoff of an earlier undecided answer. Oldest first, $2 at most.
-- No lock: an answer is applied only to a row still prepared (check_back_*.sql), so a row the
-- writer decided meanwhile is left as the writer decided it.
SELECT message_id, destination, message_key, producer, created_at, checks
  FROM outbox.messages
 WHERE status = 'prepared'
   AND producer IS NOT NULL
   AND created_at <= now() - $1 * interval '1 millisecond'
   AND expires_at > now()
   AND (next_check_at IS NULL OR next_check_at <= now())
 ORDER BY created_at
 LIMIT $2
