-- One statement before each claim instead of two or three: it advances the commit fence and
-- raises the pending floor. Each statement costs a round trip and its own executor start, and
-- the relay claims up to every millisecond or two under a steady load; those statements cost
-- Postgres more CPU than the writers' own inserts at 1,000 msg/s (docs/performance.md).

-- The transactions (virtual ids) holding the fence lock now, in this database. Reading pg_locks
-- copies every lock of the cluster: the costly part of the fence.
-- The helpers here are plpgsql, not sql, functions: plpgsql keeps a query's plan for the
-- session, while a sql function called from another function is planned again at every call
-- (about 150 µs each, measured with pg_stat_statements' track_planning).
CREATE FUNCTION outbox.fence_lock_holders() RETURNS text[]
    LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RETURN (SELECT coalesce(array_agg(l.virtualtransaction), '{}')
              FROM pg_catalog.pg_locks l
             WHERE l.locktype = 'advisory'
               AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
               AND l.classid = outbox.fence_lock_key1()::oid
               AND l.objid = outbox.fence_lock_key2()::oid
               AND l.objsubid = 2
               AND l.granted);
END
$$;

-- The functions of 0001, on the shared list of holders.
CREATE OR REPLACE FUNCTION outbox.commit_fence(OUT fence_seq bigint, OUT writers text[])
    LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    SELECT CASE WHEN s.is_called THEN s.last_value ELSE 0 END INTO fence_seq FROM outbox.commit_seq s;
    writers := outbox.fence_lock_holders();
END
$$;

CREATE OR REPLACE FUNCTION outbox.fence_writers_running(writers text[]) RETURNS boolean
    LANGUAGE sql VOLATILE AS $$
    SELECT writers && outbox.fence_lock_holders()
$$;

-- The pending floor: the lowest commit_seq of any pending row at or below the commit fence
-- (fence_seq), or fence_seq + 1 if there is none, looked for from an earlier floor (from_seq)
-- up. It never goes down: every row at or below the fence is visible (its writer has ended),
-- commit_seq only grows, and a row that leaves `committed` never comes back with the same
-- commit_seq (a requeue draws a new one). The claims start their scans here, so they do not
-- walk the index entries of rows published since the last vacuum: while any transaction holds
-- an old snapshot, Postgres cannot drop those entries, and each costs a heap visit.
CREATE FUNCTION outbox.pending_floor(from_seq bigint, fence_seq bigint) RETURNS bigint
    LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT coalesce(min(m.commit_seq), fence_seq + 1)
              FROM outbox.messages m
             WHERE m.status = 'committed'
               AND m.commit_seq >= from_seq
               AND m.commit_seq <= fence_seq);
END
$$;

-- The claim window: the relay passes what it knew after its last claim and gets back what holds
-- now.
--   safe: the commit fence; every committed row at or below it is visible or never will be.
--   pending_seq, pending_writers: a fence read earlier that waits for these transactions (the
--     holders of the fence lock when it was read) to end; NULL when there is none.
--   floor: the pending floor (outbox.pending_floor), 0 when unknown.
-- The fence rule is commit_fence()'s: read the sequence's last value, then the holders of the
-- fence lock. One read of the holders serves both the check of the waiting fence and the new
-- one, and is skipped when nothing was drawn since the fence and no fence waits.
-- VOLATILE on purpose: each statement inside takes a fresh snapshot, so the floor's query sees
-- the rows of every writer found gone just before. A claim statement sent after this one does
-- too, for the same reason.
CREATE FUNCTION outbox.claim_window(
    safe bigint, pending_seq bigint, pending_writers text[], floor bigint,
    OUT safe_seq bigint, OUT waiting_seq bigint, OUT waiting_writers text[], OUT floor_seq bigint)
    LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    last bigint;
    holders text[];
BEGIN
    safe_seq := safe;
    waiting_seq := pending_seq;
    waiting_writers := pending_writers;
    SELECT CASE WHEN s.is_called THEN s.last_value ELSE 0 END INTO last FROM outbox.commit_seq s;
    IF pending_seq IS NOT NULL OR last > safe THEN
        holders := outbox.fence_lock_holders();
        IF pending_seq IS NOT NULL AND NOT (pending_writers && holders) THEN
            safe_seq := greatest(safe_seq, pending_seq);
            waiting_seq := NULL;
            waiting_writers := NULL;
        END IF;
        IF waiting_seq IS NULL THEN
            IF cardinality(holders) = 0 THEN
                safe_seq := greatest(safe_seq, last);
            ELSIF last > safe_seq THEN
                waiting_seq := last;
                waiting_writers := holders;
            END IF;
        END IF;
    END IF;
    -- Once every row up to the fence is finished (floor above the fence), the floor cannot
    -- move until the fence does.
    floor_seq := floor;
    IF floor <= safe_seq THEN
        floor_seq := greatest(floor, outbox.pending_floor(floor, safe_seq));
    END IF;
END
$$;

-- commit_fence() and fence_writers_running() stay: relays of earlier versions call them, and
-- keep working on this schema until they are replaced (migrate first, then roll out).
GRANT EXECUTE ON FUNCTION outbox.claim_window(bigint, bigint, text[], bigint),
    outbox.pending_floor(bigint, bigint), outbox.fence_lock_holders() TO outbox_relay;
