SELECT outbox.prepare_bytes($1, $2::bytea, $3, $4, $5, $6::jsonb, $7::bigint * interval '1 millisecond', $8, $9::timestamptz)::text
