-- The writers' side of the SQL API: binary payloads, a message's status, more time for a
-- prepared message, and a NOLOGIN role `outbox_writer` with exactly what a writer needs. Give it
-- to the application's login role: CREATE ROLE app LOGIN IN ROLE outbox_writer.
--
-- Roles are cluster-wide; see 0003 for why a concurrent CREATE ROLE is tolerated.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'outbox_writer') THEN
        BEGIN
            CREATE ROLE outbox_writer NOLOGIN;
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN NULL;
            WHEN insufficient_privilege THEN
                RAISE EXCEPTION 'outbox: cannot create role outbox_writer: %', SQLERRM
                    USING HINT = 'Have a role with CREATEROLE run "CREATE ROLE outbox_writer NOLOGIN", then migrate again.';
        END;
    END IF;
END
$$;

-- Binary payloads (Avro, Protobuf, any bytes) with their content type. Named apart from enqueue
-- and prepare rather than overloading them: with an overload taking (text, bytea, text, ...),
-- every positional call of three or more arguments whose payload is an untyped literal or
-- parameter (psql literals, node-postgres and psycopg parameters) would stop resolving
-- ("function outbox.enqueue(unknown, unknown, unknown) is not unique").
CREATE FUNCTION outbox.check_content_type(content_type text) RETURNS void
    LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF content_type IS NULL OR content_type = '' OR length(content_type) > 255 THEN
        RAISE EXCEPTION 'outbox: content_type must be 1 to 255 characters, got %', coalesce(quote_literal(content_type), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;

CREATE FUNCTION outbox.enqueue_bytes(
    destination text,
    payload bytea,
    content_type text,
    message_key text DEFAULT NULL,
    routing_key text DEFAULT NULL,
    headers jsonb DEFAULT '{}',
    deliver_at timestamptz DEFAULT NULL
) RETURNS uuid
    LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    new_id uuid;
BEGIN
    PERFORM outbox.check_message_args(enqueue_bytes.destination, enqueue_bytes.headers);
    PERFORM outbox.check_content_type(enqueue_bytes.content_type);
    IF enqueue_bytes.payload IS NULL THEN
        RAISE EXCEPTION 'outbox: payload must not be null' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO outbox.messages AS m (status, destination, payload, content_type, message_key, routing_key, headers,
                                      available_at)
    VALUES ('committed', enqueue_bytes.destination, enqueue_bytes.payload, enqueue_bytes.content_type,
            enqueue_bytes.message_key, enqueue_bytes.routing_key, enqueue_bytes.headers,
            coalesce(enqueue_bytes.deliver_at, now()))
    RETURNING m.message_id INTO new_id;
    RETURN new_id;
END
$$;

CREATE FUNCTION outbox.prepare_bytes(
    destination text,
    payload bytea,
    content_type text,
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
    PERFORM outbox.check_content_type(prepare_bytes.content_type);
    IF prepare_bytes.payload IS NULL THEN
        RAISE EXCEPTION 'outbox: payload must not be null' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM outbox.check_message_args(prepare_bytes.destination, prepare_bytes.headers);
    PERFORM outbox.check_prepare_args(prepare_bytes.ttl, prepare_bytes.producer);
    INSERT INTO outbox.messages AS m (status, destination, payload, content_type, message_key, routing_key, headers,
                                      expires_at, producer, available_at)
    VALUES ('prepared', prepare_bytes.destination, prepare_bytes.payload, prepare_bytes.content_type,
            prepare_bytes.message_key, prepare_bytes.routing_key, prepare_bytes.headers,
            clock_timestamp() + prepare_bytes.ttl, prepare_bytes.producer, coalesce(prepare_bytes.deliver_at, now()))
    RETURNING m.message_id INTO new_id;
    RETURN new_id;
END
$$;

-- What became of a message: for writers, who have no SELECT on the table.
CREATE FUNCTION outbox.status(message_id uuid)
    RETURNS TABLE (status outbox.message_status, attempts integer, last_error text, published_at timestamptz)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp AS $$
    SELECT m.status, m.attempts, m.last_error, m.published_at
      FROM outbox.messages m
     WHERE m.message_id = status.message_id
$$;

-- More time for a prepared message whose local work runs longer than planned: it now expires
-- `ttl` from now. Only a prepared message that has not expired yet.
CREATE FUNCTION outbox.extend(message_id uuid, ttl interval) RETURNS boolean
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    changed integer;
BEGIN
    IF extend.ttl IS NULL OR extend.ttl <= interval '0' THEN
        RAISE EXCEPTION 'outbox: ttl must be a positive interval, got %', extend.ttl
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    UPDATE outbox.messages m
       SET expires_at = clock_timestamp() + extend.ttl
     WHERE m.message_id = extend.message_id
       AND m.status = 'prepared'
       AND m.expires_at > clock_timestamp();
    GET DIAGNOSTICS changed = ROW_COUNT;
    RETURN changed > 0;
END
$$;

-- commit and rollback decide one message by id: writers may run them without any right on the
-- table (no SELECT of others' payloads, no UPDATE of other columns or rows in other states).
-- Running with the owner's rights, they (and extend and status) are not for every role that can
-- see the schema: only for outbox_writer (and the owner). A role that called commit or rollback
-- with its own table rights before this migration needs `GRANT outbox_writer TO that_role`.
ALTER FUNCTION outbox.commit(uuid) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION outbox.rollback(uuid) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
REVOKE EXECUTE ON FUNCTION outbox.commit(uuid), outbox.rollback(uuid), outbox.extend(uuid, interval),
    outbox.status(uuid) FROM PUBLIC;

-- What writers need: the functions, the plain INSERT of the classic outbox, and the sequence,
-- which the commit trigger draws from with the inserting role's rights (a value drawn outside
-- a commit is a gap in commit_seq, nothing more: order is by the values rows hold).
GRANT USAGE ON SCHEMA outbox TO outbox_writer;
GRANT USAGE ON SEQUENCE outbox.commit_seq TO outbox_writer;
GRANT INSERT ON outbox.messages TO outbox_writer;
-- INSERT ... RETURNING message_id (enqueue, prepare) reads the id back: that column only.
GRANT SELECT (message_id) ON outbox.messages TO outbox_writer;
GRANT EXECUTE ON FUNCTION
    outbox.enqueue(text, jsonb, text, text, jsonb, timestamptz),
    outbox.enqueue_bytes(text, bytea, text, text, text, jsonb, timestamptz),
    outbox.prepare(text, jsonb, text, text, jsonb, interval, text, timestamptz),
    outbox.prepare_bytes(text, bytea, text, text, text, jsonb, interval, text, timestamptz),
    outbox.commit(uuid),
    outbox.rollback(uuid),
    outbox.extend(uuid, interval),
    outbox.status(uuid),
    outbox.check_message_args(text, jsonb),
    outbox.check_content_type(text),
    outbox.check_prepare_args(interval, text),
    outbox.uuid_v7()
TO outbox_writer;
