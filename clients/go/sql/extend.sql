SELECT outbox.extend($1::uuid, $2::bigint * interval '1 millisecond')
