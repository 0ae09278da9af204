-- No decision yet (`unknown`, an error, a timeout, an unconfigured producer): ask again after
-- the row's delay. $1: message ids, $2: delays in milliseconds, $3: what happened, per row.
-- The rows are found by message_id, through its unique index: the status is compared as text
-- so that messages_prepared_expiry_idx (partial: prepared rows) cannot serve the statement, as
-- in mark_published.sql.
UPDATE outbox.messages AS m
   SET checks = m.checks + 1,
       next_check_at = clock_timestamp() + later.delay_ms * interval '1 millisecond',
       last_error = later.reason
  FROM unnest($1::uuid[], $2::bigint[], $3::text[]) AS later(message_id, delay_ms, reason)
 WHERE m.message_id = later.message_id
   AND m.status::text = 'prepared'
