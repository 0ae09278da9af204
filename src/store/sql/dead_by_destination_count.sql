-- Dead rows per destination, for the gauge: an index-only scan of
-- messages_dead_destination_idx (migration 0008) once vacuum has visited the pages.
SELECT destination, count(*) AS count
  FROM outbox.messages
 WHERE status = 'dead'
 GROUP BY destination
