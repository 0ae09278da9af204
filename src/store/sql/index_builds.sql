-- Index builds in progress in this database, for `migrate`'s progress lines.
SELECT c.relname AS index_name, p.phase, p.blocks_done, p.blocks_total, p.tuples_done, p.tuples_total
FROM pg_stat_progress_create_index p
LEFT JOIN pg_class c ON c.oid = p.index_relid
WHERE p.datid = (SELECT oid FROM pg_database WHERE datname = current_database())
