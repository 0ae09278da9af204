-- How many dead rows the filters select ($1 to $4 as in list_dead.sql).
SELECT count(*)
FROM outbox.messages
WHERE status = 'dead'
  AND ($1::text IS NULL OR destination = $1)
  AND ($2::text IS NULL OR message_key = $2)
  AND ($3::bigint IS NULL OR finished_at >= now() - $3 * interval '1 millisecond')
  AND ($4::uuid[] IS NULL OR message_id = ANY ($4))
