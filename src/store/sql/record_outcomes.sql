-- Records a batch of failed publishes in one statement (confirms go to mark_published.sql or
-- delete_published.sql, in the same transaction when an update holds both): a retry with
-- backoff, or `dead` once permanent or out of attempts.
-- $1 ids, $2 errors, $3 permanent failure, $4 backoff in ms, $5 retry.max_attempts. Only rows
-- still committed are touched: an operator may have changed a row while it was in flight.
-- $6, $7, $8: the lease the rows were claimed under (name, holder, token). A replica that lost it
-- writes nothing: its rows belong to the new holder, which publishes them itself. Expiry alone
-- does not stop the write: until another replica takes the lease, nobody else touches the rows.
-- The rows are found by primary key (a table of a few dozen pages is read whole instead, the
-- cheaper path at that size). Their status is compared as text so that no partial index on
-- status = 'committed' can serve this statement: when the statistics were taken with few
-- rows pending (a relay started on an empty outbox, or caught up), the planner chose
-- messages_pending_idx and walked every pending row for each update, which under a backlog
-- made each update cost as much as the backlog (docs/performance.md, "The outcome update's
-- plan").
UPDATE outbox.messages AS m
   SET status = CASE
                  WHEN o.permanent OR m.attempts + 1 >= $5 THEN 'dead'::outbox.message_status
                  ELSE m.status
                END,
       attempts = m.attempts + 1,
       finished_at = CASE
                       WHEN o.permanent OR m.attempts + 1 >= $5 THEN clock_timestamp()
                       ELSE m.finished_at
                     END,
       last_error = o.error,
       -- Past committed_at even when the clock stepped back since the commit: a row whose
       -- available_at is not past its committed_at counts as never delayed (claim.sql), and
       -- its backoff would be skipped.
       available_at = greatest(clock_timestamp(), m.committed_at)
                      + o.backoff_ms * interval '1 millisecond'
  FROM unnest($1::bigint[], $2::text[], $3::boolean[], $4::bigint[]) AS o(id, error, permanent, backoff_ms)
 WHERE m.id = o.id
   AND m.status::text = 'committed'
   AND EXISTS (
        SELECT 1
          FROM outbox.relay_leases l
         WHERE l.name = $6
           AND l.holder = $7
           AND l.token = $8)
RETURNING m.id, m.status
