-- The outbox table's size, the dead row versions vacuum has yet to remove, and how long ago
-- it was last vacuumed (NULL before the first). Sizes are read from the files' lengths and
-- the rest from the statistics collector: no scan of the table.
SELECT pg_table_size(c.oid) AS table_bytes,
       pg_indexes_size(c.oid) AS index_bytes,
       coalesce(s.n_dead_tup, 0) AS dead_tuples,
       extract(epoch FROM now() - greatest(s.last_autovacuum, s.last_vacuum))::float8
           AS vacuumed_secs_ago
  FROM pg_catalog.pg_class c
  LEFT JOIN pg_catalog.pg_stat_user_tables s ON s.relid = c.oid
 WHERE c.oid = 'outbox.messages'::regclass
