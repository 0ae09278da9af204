-- The relay's own database role, `outbox_relay` (NOLOGIN): exactly what `outbox-relay run` needs,
-- nothing in the application's tables, and no INSERT into the outbox. Give it to a login role
-- (`GRANT outbox_relay TO relay_login`) and run the relay as that; run `outbox-relay migrate`
-- (and the `dead requeue` admin command) as the owner of the outbox schema.
--
-- Roles are cluster-wide, so other databases of the cluster may be creating the same role at
-- this moment; a concurrent CREATE ROLE fails with duplicate_object or unique_violation, which
-- both mean it exists now. A migrating role without CREATEROLE cannot create it: then an
-- administrator creates it once beforehand and this migration only grants.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'outbox_relay') THEN
        BEGIN
            CREATE ROLE outbox_relay NOLOGIN;
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN NULL;
            WHEN insufficient_privilege THEN
                RAISE EXCEPTION 'outbox: cannot create role outbox_relay: %', SQLERRM
                    USING HINT = 'Have a role with CREATEROLE run "CREATE ROLE outbox_relay NOLOGIN", then migrate again.';
        END;
    END IF;
END
$$;

GRANT USAGE ON SCHEMA outbox TO outbox_relay;

-- Start-up check that the schema is migrated (store::check_schema).
GRANT SELECT ON outbox._sqlx_migrations TO outbox_relay;

-- Claim, backlog gauges and status: read. Outcomes (record_outcomes.sql) and expiry of
-- prepared rows (expire_prepared.sql) change only these columns; FOR UPDATE in both sweeper
-- statements needs UPDATE on some column too. Purge (purge.sql) deletes finished rows.
GRANT SELECT ON outbox.messages TO outbox_relay;
GRANT UPDATE (status, attempts, published_at, finished_at, last_error, available_at)
    ON outbox.messages TO outbox_relay;
GRANT DELETE ON outbox.messages TO outbox_relay;

-- The commit fence reads the sequence's last value; the relay never draws from it.
GRANT SELECT ON SEQUENCE outbox.commit_seq TO outbox_relay;

-- The lease: upsert (acquire_lease.sql), release, and read.
GRANT SELECT, INSERT, UPDATE ON outbox.relay_leases TO outbox_relay;

-- Functions are executable by PUBLIC unless revoked; grant what the relay calls explicitly so
-- that the role keeps working where an administrator revoked PUBLIC's EXECUTE.
GRANT EXECUTE ON FUNCTION outbox.commit_fence(), outbox.fence_writers_running(text[]),
    outbox.fence_lock_key1(), outbox.fence_lock_key2() TO outbox_relay;

-- Requeueing dead messages is an operator's repair, not something any role that can reach the
-- schema should do.
REVOKE EXECUTE ON FUNCTION outbox.requeue_dead(uuid[], text) FROM PUBLIC;
