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

-- The old signature goes: a second function with one more defaulted argument would make every
-- call that leaves it out ambiguous. Positional and named calls of the old form still resolve.
DROP FUNCTION outbox.prepare(text, jsonb, text, text, jsonb, interval);

CREATE FUNCTION outbox.prepare(
    destination text,
    payload jsonb,
    message_key text DEFAULT NULL,
    routing_key text DEFAULT NULL,
    headers jsonb DEFAULT '{}',
    ttl interval DEFAULT '5 minutes',
    producer text DEFAULT NULL
) RETURNS uuid
    LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    new_id uuid;
BEGIN
    PERFORM outbox.check_message_args(prepare.destination, prepare.headers);
    IF prepare.payload IS NULL THEN
        RAISE EXCEPTION 'outbox: payload must not be null' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF prepare.ttl IS NULL OR prepare.ttl <= interval '0' THEN
        RAISE EXCEPTION 'outbox: ttl must be a positive interval, got %', prepare.ttl
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF prepare.producer IS NOT NULL AND prepare.producer !~ '^[A-Za-z0-9_-]{1,64}$' THEN
        RAISE EXCEPTION 'outbox: producer must be 1 to 64 letters, digits, _ or -, got %', prepare.producer
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO outbox.messages AS m (status, destination, payload, message_key, routing_key, headers, expires_at, producer)
    VALUES ('prepared', prepare.destination, convert_to(prepare.payload::text, 'UTF8'), prepare.message_key,
            prepare.routing_key, prepare.headers, clock_timestamp() + prepare.ttl, prepare.producer)
    RETURNING m.message_id INTO new_id;
    RETURN new_id;
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
       SET status = 'committed', available_at = clock_timestamp(), last_error = NULL
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
