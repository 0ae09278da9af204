-- Check-back: a prepared message may name the producer the relay asks when the writer neither
-- commits nor rolls it back (docs/check-back.md). The relay keeps its own schedule of checks
-- in the row, so that a restarted or new lease holder picks it up where the last left off.
--
-- Adding nullable columns and columns with a constant default rewrites nothing (Postgres 11+).
ALTER TABLE outbox.messages
    ADD COLUMN producer text,
    ADD COLUMN checks integer NOT NULL DEFAULT 0,
    ADD COLUMN next_check_at timestamptz;

COMMENT ON COLUMN outbox.messages.producer IS
    'Prepared rows: the name of the producer (in the relay''s [check_back.producers]) asked whether the message was committed. NULL: never asked.';
COMMENT ON COLUMN outbox.messages.next_check_at IS
    'Prepared rows with a producer: when the relay asks next after an undecided answer. NULL: check_back.check_after after created_at.';

-- The rows the relay may ask about: prepared rows with a producer, older than check_after. Only
-- prepared rows with a producer are in it, usually few: writers decide in milliseconds.
CREATE INDEX messages_check_back_idx ON outbox.messages (created_at)
    WHERE status = 'prepared' AND producer IS NOT NULL;

-- The old signature goes: a second function with more defaulted arguments would make every
-- call that leaves them out ambiguous. Positional and named calls of the old form still resolve.
-- New: `producer` (check-back) and `deliver_at` (as enqueue has it: the message is published
-- no earlier, even when committed before).
DROP FUNCTION outbox.prepare(text, jsonb, text, text, jsonb, interval);

-- The checks of a prepared message's own arguments, shared with prepare_bytes (0010).
CREATE FUNCTION outbox.check_prepare_args(ttl interval, producer text) RETURNS void
    LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF ttl IS NULL OR ttl <= interval '0' THEN
        RAISE EXCEPTION 'outbox: ttl must be a positive interval, got %', ttl
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF producer IS NOT NULL AND producer !~ '^[A-Za-z0-9_-]{1,64}$' THEN
        RAISE EXCEPTION 'outbox: producer must be 1 to 64 letters, digits, _ or -, got %', producer
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;

CREATE FUNCTION outbox.prepare(
    destination text,
    payload jsonb,
    message_key text DEFAULT NULL,
    routing_key text DEFAULT NULL,
    headers jsonb DEFAULT '{}',
    ttl interval DEFAULT '5 minutes',
    producer text DEFAULT NULL,
    deliver_at timestamptz DEFAULT NULL
) RETURNS uuid
    LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    new_id uuid;
BEGIN
    PERFORM outbox.check_message_args(prepare.destination, prepare.headers);
    IF prepare.payload IS NULL THEN
        RAISE EXCEPTION 'outbox: payload must not be null' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM outbox.check_prepare_args(prepare.ttl, prepare.producer);
    INSERT INTO outbox.messages AS m (status, destination, payload, message_key, routing_key, headers, expires_at,
                                      producer, available_at)
    VALUES ('prepared', prepare.destination, convert_to(prepare.payload::text, 'UTF8'), prepare.message_key,
            prepare.routing_key, prepare.headers, clock_timestamp() + prepare.ttl, prepare.producer,
            coalesce(prepare.deliver_at, now()))
    RETURNING m.message_id INTO new_id;
    RETURN new_id;
END
$$;

-- Committing keeps a deliver_at given to prepare: the row becomes due at the later of the two.
CREATE OR REPLACE FUNCTION outbox.commit(message_id uuid) RETURNS boolean
    LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    changed integer;
BEGIN
    UPDATE outbox.messages m
       SET status = 'committed', available_at = greatest(m.available_at, clock_timestamp()), last_error = NULL
     WHERE m.message_id = commit.message_id
       AND m.status = 'prepared'
       AND m.expires_at > clock_timestamp();
    GET DIAGNOSTICS changed = ROW_COUNT;
    RETURN changed > 0;
END
$$;

-- The relay commits the rows whose producer answered `committed`, as outbox.commit() does: the
-- update draws each row's commit_seq (trigger messages_commit_on_update). SECURITY DEFINER:
-- the relay's role may not draw from the sequence itself (nor write commit_seq), only through
-- this. Returns the ids committed: those still prepared and not expired.
CREATE FUNCTION outbox.commit_checked(ids uuid[]) RETURNS SETOF uuid
    LANGUAGE sql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp AS $$
    UPDATE outbox.messages AS m
       SET status = 'committed', available_at = greatest(m.available_at, clock_timestamp()), last_error = NULL
     WHERE m.message_id = ANY (ids)
       AND m.status = 'prepared'
       AND m.expires_at > clock_timestamp()
    RETURNING m.message_id
$$;
REVOKE EXECUTE ON FUNCTION outbox.commit_checked(uuid[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION outbox.commit_checked(uuid[]) TO outbox_relay;

-- Rolling back, rescheduling checks and parking undecided rows as dead change only these
-- columns besides those granted in 0003.
GRANT UPDATE (checks, next_check_at) ON outbox.messages TO outbox_relay;
