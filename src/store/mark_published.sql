-- Marks the rows the broker confirmed as published: the outcome update when every answer in it
-- is a confirm, as it nearly always is. The same as record_outcomes.sql does for a confirm,
-- without its per-row choice between outcomes (about a tenth cheaper per row; see
-- docs/performance.md).
-- $1 ids. Only rows still committed are touched: an operator may have changed a row while it
-- was in flight.
UPDATE outbox.messages
   SET status = 'published',
       attempts = attempts + 1,
       published_at = clock_timestamp(),
       finished_at = clock_timestamp()
 WHERE id = ANY ($1)
   AND status = 'committed'
RETURNING id
