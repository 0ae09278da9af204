-- The commit fence reads the last drawn commit_seq with pg_sequence_last_value(), which holds
-- the sequence's buffer lock while it reads, instead of selecting from the sequence relation.
--
-- A plain SELECT from a sequence reads its tuple after releasing the buffer lock (a heap scan
-- keeps only a pin), and nextval() changes that tuple in place: every 32 values it writes, for
-- the length of its WAL insert, the value it logs ahead (the current value + 32) into the page,
-- and only then the real one. A read that lands in that moment returns a commit_seq nobody has
-- drawn yet; no writer holding it is in the lock list read next, so the fence can move past
-- rows whose transactions start and commit after it. Their rows could then be published behind
-- later rows of their key, and the pending floor could pass them while they were not visible,
-- leaving them unclaimed until the relay restarts. That was seen once, in a bench run (28
-- rows behind the floor); the read itself is rare enough that a stress test did not catch it.
-- pg_sequence_last_value() is what the pg_sequences view uses; it needs SELECT or USAGE on
-- the sequence, which the relay has.
-- NULL before the first nextval(), like is_called = false before.

-- plpgsql for the reason given in 0005: a sql function called from plpgsql is planned again
-- at every call.
CREATE FUNCTION outbox.drawn_commit_seq() RETURNS bigint
    LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RETURN coalesce(pg_catalog.pg_sequence_last_value('outbox.commit_seq'::regclass), 0);
END
$$;

CREATE OR REPLACE FUNCTION outbox.commit_fence(OUT fence_seq bigint, OUT writers text[])
    LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    fence_seq := outbox.drawn_commit_seq();
    writers := outbox.fence_lock_holders();
END
$$;

-- As in 0005, but for the read of the last drawn value.
CREATE OR REPLACE FUNCTION outbox.claim_window(
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
    last := outbox.drawn_commit_seq();
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

GRANT EXECUTE ON FUNCTION outbox.drawn_commit_seq() TO outbox_relay;
