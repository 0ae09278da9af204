SELECT outbox.prepare($1, $2::jsonb, $3, $4, $5::jsonb, $6::bigint * interval '1 millisecond', $7, $8::timestamptz)::text
