-- Records a batch of publish outcomes in one statement. The relay sends it only the failures:
-- confirms go to mark_published.sql or delete_published.sql (in the same transaction when an
-- update holds both). A confirm given here is still recorded as mark_published.sql would.
-- $1 ids, $2 error (NULL = confirmed by the broker), $3 permanent failure, $4 backoff in ms,
-- $5 retry.max_attempts. Only rows still committed are touched: an operator may have changed
-- a row while it was in flight.
UPDATE outbox.messages AS m
   SET status = CASE
                  WHEN o.error IS NULL THEN 'published'::outbox.message_status
                  WHEN o.permanent OR m.attempts + 1 >= $5 THEN 'dead'::outbox.message_status
                  ELSE m.status
                END,
       attempts = m.attempts + 1,
       published_at = CASE WHEN o.error IS NULL THEN clock_timestamp() ELSE m.published_at END,
       finished_at = CASE
                       WHEN o.error IS NULL OR o.permanent OR m.attempts + 1 >= $5 THEN clock_timestamp()
                       ELSE m.finished_at
                     END,
       last_error = coalesce(o.error, m.last_error),
       -- Past committed_at even when the clock stepped back since the commit: a row whose
       -- available_at is not past its committed_at counts as never delayed (claim.sql), and
       -- its backoff would be skipped.
       available_at = CASE
                        WHEN o.error IS NULL THEN m.available_at
                        ELSE greatest(clock_timestamp(), m.committed_at)
                             + o.backoff_ms * interval '1 millisecond'
                      END
  FROM unnest($1::bigint[], $2::text[], $3::boolean[], $4::bigint[]) AS o(id, error, permanent, backoff_ms)
 WHERE m.id = o.id
   AND m.status = 'committed'
RETURNING m.id, m.status::text AS status
