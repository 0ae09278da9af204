SELECT max(version) FROM outbox._sqlx_migrations WHERE success
