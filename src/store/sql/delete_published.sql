-- Delete on publish (`sweeper.published_retention = "0s"`): removes the rows the broker
-- confirmed instead of marking them published. A delete writes no index entries, where marking
-- a row writes three (the status change is never a HOT update); see docs/performance.md.
-- $1 ids. Only rows still committed are touched: an operator may have changed a row while it
-- was in flight.
-- $2, $3, $4: the lease the rows were claimed under (name, holder, token). A replica that lost it
-- writes nothing: its rows belong to the new holder, which publishes them itself. Expiry alone
-- does not stop the write: until another replica takes the lease, nobody else touches the rows.
-- The rows are found by primary key (a table of a few dozen pages is read whole instead, the
-- cheaper path at that size). Their status is compared as text so that no partial index on
-- status = 'committed' can serve this statement: when the statistics were taken with few
-- rows pending (a relay started on an empty outbox, or caught up), the planner chose
-- messages_pending_idx and walked every pending row for each update, which under a backlog
-- made each update cost as much as the backlog (docs/performance.md, "The outcome update's
-- plan").
DELETE FROM outbox.messages
 WHERE id = ANY ($1)
   AND status::text = 'committed'
   AND EXISTS (
        SELECT 1
          FROM outbox.relay_leases l
         WHERE l.name = $2
           AND l.holder = $3
           AND l.token = $4)
RETURNING id
