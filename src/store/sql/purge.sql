-- Deletes one batch of finished rows of one status older than its retention.
-- $1: status, $2: retention in ms, $3: batch size.
-- The status list repeats messages_finished_idx's predicate: under the relay's generic plans
-- `status = $1` alone cannot show that the partial index holds the rows, and each batch scanned
-- the whole table instead (docs/performance.md, "The outcome update's plan").
-- The rows are then deleted by primary key, from the array of their ids: joined to the batch
-- instead, a generic plan expected a tenth of the table in it and hashed the join over a scan
-- of the whole table.
DELETE FROM outbox.messages
 WHERE id = ANY (ARRAY(
        SELECT id
          FROM outbox.messages
         WHERE status = $1
           AND status IN ('published', 'rolled_back', 'dead')
           AND finished_at < now() - $2 * interval '1 millisecond'
         ORDER BY finished_at
         LIMIT $3
           FOR UPDATE SKIP LOCKED))
