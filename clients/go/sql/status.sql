SELECT status::text, attempts, last_error, published_at FROM outbox.status($1::uuid)
