SELECT outbox.enqueue_bytes($1, $2::bytea, $3, $4, $5, $6::jsonb, $7::timestamptz)::text
