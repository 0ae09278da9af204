-- Ends one batch of prepared rows whose time to be decided has passed. A row without a producer
-- is rolled back. A row with one is parked as dead: its writer may have committed, and only
-- the producer's answer could have told (docs/check-back.md, the safety rule); an operator
-- requeues it (which commits it) or discards it.
-- $1: batch size. SKIP LOCKED: a row being committed right now is left to that transaction,
-- and outbox.commit() itself refuses expired rows.
-- The batch's rows are locked in the subquery and updated by primary key from the array of
-- their ids, as in purge.sql: joined to the batch instead, a generic plan could walk
-- messages_prepared_expiry_idx for every row of it (docs/performance.md, "The outcome update's
-- plan").
UPDATE outbox.messages AS m
   SET status = CASE WHEN m.producer IS NULL THEN 'rolled_back' ELSE 'dead' END::outbox.message_status,
       finished_at = clock_timestamp(),
       last_error = CASE
           WHEN m.producer IS NULL THEN m.last_error
           ELSE 'never decided: producer ' || m.producer || ' did not answer committed or rolled_back before expires_at'
                || coalesce(' (last check: ' || m.last_error || ')', '')
       END
 WHERE m.id = ANY (ARRAY(
        SELECT id
          FROM outbox.messages
         WHERE status = 'prepared'
           AND expires_at <= now()
         ORDER BY expires_at
         LIMIT $1
           FOR UPDATE SKIP LOCKED))
   AND m.status::text = 'prepared'
RETURNING m.status
