SELECT outbox.enqueue($1, $2::jsonb, $3, $4, $5::jsonb, $6::timestamptz)::text
