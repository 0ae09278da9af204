-- Dead rows per destination, for the gauge; messages_finished_idx (status, finished_at)
-- finds them without reading the rest of the table.
SELECT destination, count(*) AS count
  FROM outbox.messages
 WHERE status = 'dead'
 GROUP BY destination
