-- Open transactions that wrote to the outbox (they hold the commit fence's shared advisory
-- lock until they end, docs/ARCHITECTURE.md "Commit order"), oldest first, with their age
-- where this login may see it (pg_read_all_stats).
SELECT DISTINCT ON (l.pid) l.pid, a.usename::text AS username, a.application_name,
       extract(epoch FROM now() - a.xact_start)::float8 AS age_secs
FROM pg_catalog.pg_locks l
LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
WHERE l.virtualtransaction = ANY (outbox.fence_lock_holders())
  AND l.pid IS NOT NULL
ORDER BY l.pid
