-- The migrations applied to this database (outbox-relay's own bookkeeping table, which
-- `migrate --print-sql` also writes, so schemas applied with Flyway or Liquibase count too).
SELECT version, installed_on, execution_time, success
FROM outbox._sqlx_migrations
ORDER BY version
