-- The replicas of a partitioned group that are alive (unexpired rows named '<prefix><replica>',
-- each renewed by its replica); outbox.live_replicas (migration 0011) also deletes such rows
-- long expired. $1: the prefix, '<lease>/replicas/'.
SELECT replica FROM outbox.live_replicas($1) AS replica
