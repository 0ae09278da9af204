-- What holds back vacuum in this database, for the relay's gauges and log: the oldest snapshot
-- or transaction id still needed by a session, a prepared transaction or a replication slot;
-- its age in transaction ids and (where Postgres records a start) in seconds, and who holds it.
-- While such a holder lives, no row version the outbox's updates and deletes leave behind can
-- be removed, so the table and its indexes grow and every claim slows down.
--
-- SECURITY DEFINER: the relay's role needs no right to see other sessions (and never sees their
-- queries); it gets these three values only. The function sees what the schema owner sees: a
-- superuser or a member of pg_read_all_stats (or pg_monitor) sees every session, any other
-- owner only its own roles' sessions, prepared transactions and slots (README, "Database
-- roles"). Vacuum in one database is not held back by snapshots in another since Postgres 14,
-- so sessions elsewhere are left out, except walsenders, whose feedback counts cluster-wide.
CREATE FUNCTION outbox.vacuum_horizon(OUT xid_age bigint, OUT age_seconds float8, OUT holder text)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp AS $$
    WITH holders(xid_age, started, holder) AS (
        -- xact_start: the snapshot of a transaction that holds one for its whole length
        -- (REPEATABLE READ, or an open transaction id) dates from then; a READ COMMITTED
        -- session's is younger, so its age in seconds is an upper bound, its xid age exact.
        SELECT greatest(age(backend_xmin), age(backend_xid)), xact_start,
               coalesce(nullif(application_name, ''), usename::text, backend_type)
               || ' (pid ' || pid || ')'
          FROM pg_stat_activity
         WHERE (backend_xmin IS NOT NULL OR backend_xid IS NOT NULL)
           AND pid <> pg_backend_pid()
           AND backend_type IN ('client backend', 'walsender')
           AND (datname = current_database() OR backend_type = 'walsender')
        UNION ALL
        SELECT age(transaction), prepared, 'prepared transaction ' || gid
          FROM pg_prepared_xacts
         WHERE database = current_database()
        UNION ALL
        -- Only a slot's xmin holds back user tables; its catalog_xmin holds back the system
        -- catalogs alone, which a lagging logical slot (a CDC reader) does for long.
        SELECT age(xmin), NULL, 'replication slot ' || slot_name
          FROM pg_replication_slots
         WHERE xmin IS NOT NULL
    )
    SELECT coalesce(max(xid_age), 0)::bigint,
           -- The oldest holder's age, so that the seconds and the name belong together.
           coalesce((array_agg(extract(epoch FROM now() - started) ORDER BY xid_age DESC))[1],
                    0)::float8,
           (array_agg(holder ORDER BY xid_age DESC))[1]
      FROM holders
     WHERE xid_age IS NOT NULL
$$;

-- Functions are executable by PUBLIC unless revoked; this one reports on other sessions, so
-- only the relay's role (and the owner) may call it.
REVOKE EXECUTE ON FUNCTION outbox.vacuum_horizon() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION outbox.vacuum_horizon() TO outbox_relay;

-- The dead-rows gauge counts dead rows by destination on every replica every
-- metrics.backlog_interval. Through messages_finished_idx that meant a heap visit per dead row
-- (up to sweeper.dead_retention of them); this index answers it from the index alone once
-- vacuum has marked the pages all-visible. Rows enter it only when they go dead, which is rare.
CREATE INDEX messages_dead_destination_idx ON outbox.messages (destination)
    WHERE status = 'dead';
