-- Delete on publish (`sweeper.published_retention = "0s"`): removes the rows the broker
-- confirmed instead of marking them published. A delete writes no index entries, where marking
-- a row writes three (the status change is never a HOT update); see docs/performance.md.
-- $1 ids. Only rows still committed are touched: an operator may have changed a row while it
-- was in flight.
DELETE FROM outbox.messages
 WHERE id = ANY ($1)
   AND status = 'committed'
RETURNING id
