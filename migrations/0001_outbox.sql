-- The outbox: one table, one status enum, one commit sequence, and the SQL API the
-- application calls. See docs/ARCHITECTURE.md for the state machine and the ordering rule.

CREATE SCHEMA IF NOT EXISTS outbox;

CREATE TYPE outbox.message_status AS ENUM ('prepared', 'committed', 'rolled_back', 'published', 'dead');

-- Commit order. CACHE 1 (the default) matters: the relay's commit fence reads the last value
-- drawn, which must be the highest value any session holds.
CREATE SEQUENCE outbox.commit_seq AS bigint CACHE 1;

CREATE TABLE outbox.messages (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id    uuid NOT NULL DEFAULT gen_random_uuid() UNIQUE,
    status        outbox.message_status NOT NULL DEFAULT 'committed',
    destination   text NOT NULL,
    routing_key   text,
    message_key   text,
    payload       bytea NOT NULL,
    content_type  text NOT NULL DEFAULT 'application/json',
    headers       jsonb NOT NULL DEFAULT '{}',
    commit_seq    bigint,
    created_at    timestamptz NOT NULL DEFAULT now(),
    committed_at  timestamptz,
    expires_at    timestamptz,
    available_at  timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz,
    finished_at   timestamptz,
    attempts      integer NOT NULL DEFAULT 0,
    last_error    text
);

COMMENT ON TABLE outbox.messages IS
    'Transactional outbox. Insert committed rows in the business transaction, or use outbox.enqueue / outbox.prepare.';
COMMENT ON COLUMN outbox.messages.message_id IS 'Stable id consumers de-duplicate on (AMQP message_id, Kafka header message_id).';
COMMENT ON COLUMN outbox.messages.commit_seq IS 'Drawn when the row becomes committed; defines publish order per (destination, message_key).';
COMMENT ON COLUMN outbox.messages.finished_at IS 'When the row reached published, rolled_back or dead; retention is measured from here.';

-- The relay claims committed rows in commit_seq order; only pending rows are in this index,
-- so finished rows never slow the claim down.
CREATE INDEX messages_pending_idx ON outbox.messages (commit_seq)
    INCLUDE (available_at)
    WHERE status = 'committed';

-- Per-key head-of-line check: is an earlier row of the same key still pending?
CREATE INDEX messages_pending_key_idx ON outbox.messages (destination, message_key, commit_seq)
    INCLUDE (available_at)
    WHERE status = 'committed' AND message_key IS NOT NULL;

-- Expiry of undecided prepared rows.
CREATE INDEX messages_prepared_expiry_idx ON outbox.messages (expires_at)
    WHERE status = 'prepared';

-- Purge of finished rows past retention, oldest first.
CREATE INDEX messages_finished_idx ON outbox.messages (status, finished_at)
    WHERE status IN ('published', 'rolled_back', 'dead');

-- Every transaction that makes a row committed holds this shared advisory lock from before it
-- draws its commit_seq until it ends. The relay lists the holders to learn which commit_seq
-- values may still become visible (the commit fence). Shared locks never wait on each other,
-- so writers do not serialise.
CREATE FUNCTION outbox.fence_lock_key1() RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT 1869574754 $$; -- 'outb'
CREATE FUNCTION outbox.fence_lock_key2() RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT 1919249529 $$; -- 'rely'

CREATE FUNCTION outbox.on_commit_assign() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'committed' THEN
        -- Lock first, then draw: the fence relies on this order.
        PERFORM pg_advisory_xact_lock_shared(outbox.fence_lock_key1(), outbox.fence_lock_key2());
        NEW.commit_seq := nextval('outbox.commit_seq');
        NEW.committed_at := clock_timestamp();
        IF TG_OP = 'INSERT' AND NEW.available_at < NEW.committed_at AND NEW.available_at = now() THEN
            -- The default is the transaction start; the message cannot be published before commit anyway.
            NEW.available_at := NEW.committed_at;
        END IF;
    ELSIF TG_OP = 'INSERT' THEN
        NEW.commit_seq := NULL;
        NEW.committed_at := NULL;
        IF NEW.status = 'prepared' AND NEW.expires_at IS NULL THEN
            NEW.expires_at := now() + interval '5 minutes';
        END IF;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER messages_commit_on_insert
    BEFORE INSERT ON outbox.messages
    FOR EACH ROW EXECUTE FUNCTION outbox.on_commit_assign();

CREATE TRIGGER messages_commit_on_update
    BEFORE UPDATE OF status ON outbox.messages
    FOR EACH ROW
    WHEN (NEW.status = 'committed' AND OLD.status IS DISTINCT FROM 'committed')
    EXECUTE FUNCTION outbox.on_commit_assign();

-- The relay's commit fence: the highest commit_seq drawn so far, read before the list of
-- transactions that may still hold an invisible commit_seq. Two statements, in this order.
CREATE FUNCTION outbox.commit_fence(OUT fence_seq bigint, OUT writers text[])
    LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    SELECT CASE WHEN s.is_called THEN s.last_value ELSE 0 END INTO fence_seq FROM outbox.commit_seq s;
    SELECT coalesce(array_agg(l.virtualtransaction), '{}') INTO writers
      FROM pg_catalog.pg_locks l
     WHERE l.locktype = 'advisory'
       AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
       AND l.classid = outbox.fence_lock_key1()::oid
       AND l.objid = outbox.fence_lock_key2()::oid
       AND l.objsubid = 2
       AND l.granted;
END
$$;

-- True while any of the given transactions still holds the fence lock.
CREATE FUNCTION outbox.fence_writers_running(writers text[]) RETURNS boolean
    LANGUAGE sql VOLATILE AS $$
    SELECT EXISTS (
        SELECT 1 FROM pg_catalog.pg_locks l
         WHERE l.locktype = 'advisory'
           AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
           AND l.classid = outbox.fence_lock_key1()::oid
           AND l.objid = outbox.fence_lock_key2()::oid
           AND l.objsubid = 2
           AND l.granted
           AND l.virtualtransaction = ANY (writers))
$$;

-- Validation shared by the API functions. Raises with SQLSTATE 22023 (invalid_parameter_value).
CREATE FUNCTION outbox.check_message_args(destination text, headers jsonb) RETURNS void
    LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    bad_key text;
BEGIN
    IF destination IS NULL OR destination = '' THEN
        RAISE EXCEPTION 'outbox: destination must be a non-empty exchange or topic name'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF headers IS NULL OR jsonb_typeof(headers) <> 'object' THEN
        RAISE EXCEPTION 'outbox: headers must be a JSON object of string values, got %', coalesce(jsonb_typeof(headers), 'null')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT h.key INTO bad_key FROM jsonb_each(headers) h WHERE jsonb_typeof(h.value) <> 'string' LIMIT 1;
    IF bad_key IS NOT NULL THEN
        RAISE EXCEPTION 'outbox: header "%" must be a string', bad_key
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;

CREATE FUNCTION outbox.enqueue(
    destination text,
    payload jsonb,
    message_key text DEFAULT NULL,
    routing_key text DEFAULT NULL,
    headers jsonb DEFAULT '{}',
    deliver_at timestamptz DEFAULT NULL
) RETURNS uuid
    LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    new_id uuid;
BEGIN
    PERFORM outbox.check_message_args(enqueue.destination, enqueue.headers);
    IF enqueue.payload IS NULL THEN
        RAISE EXCEPTION 'outbox: payload must not be null' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO outbox.messages AS m (status, destination, payload, message_key, routing_key, headers, available_at)
    VALUES ('committed', enqueue.destination, convert_to(enqueue.payload::text, 'UTF8'), enqueue.message_key,
            enqueue.routing_key, enqueue.headers, coalesce(enqueue.deliver_at, now()))
    RETURNING m.message_id INTO new_id;
    RETURN new_id;
END
$$;

CREATE FUNCTION outbox.prepare(
    destination text,
    payload jsonb,
    message_key text DEFAULT NULL,
    routing_key text DEFAULT NULL,
    headers jsonb DEFAULT '{}',
    ttl interval DEFAULT '5 minutes'
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
    INSERT INTO outbox.messages AS m (status, destination, payload, message_key, routing_key, headers, expires_at)
    VALUES ('prepared', prepare.destination, convert_to(prepare.payload::text, 'UTF8'), prepare.message_key,
            prepare.routing_key, prepare.headers, clock_timestamp() + prepare.ttl)
    RETURNING m.message_id INTO new_id;
    RETURN new_id;
END
$$;

CREATE FUNCTION outbox.commit(message_id uuid) RETURNS boolean
    LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    changed integer;
BEGIN
    UPDATE outbox.messages m
       SET status = 'committed', available_at = clock_timestamp()
     WHERE m.message_id = commit.message_id
       AND m.status = 'prepared'
       AND m.expires_at > clock_timestamp();
    GET DIAGNOSTICS changed = ROW_COUNT;
    RETURN changed > 0;
END
$$;

CREATE FUNCTION outbox.rollback(message_id uuid) RETURNS boolean
    LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    changed integer;
BEGIN
    UPDATE outbox.messages m
       SET status = 'rolled_back', finished_at = clock_timestamp()
     WHERE m.message_id = rollback.message_id
       AND m.status = 'prepared';
    GET DIAGNOSTICS changed = ROW_COUNT;
    RETURN changed > 0;
END
$$;

-- Retention is measured from finished_at; fill it for terminal rows written by hand too.
CREATE FUNCTION outbox.on_finish_stamp() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    NEW.finished_at := clock_timestamp();
    RETURN NEW;
END
$$;

CREATE TRIGGER messages_finish_stamp
    BEFORE UPDATE OF status ON outbox.messages
    FOR EACH ROW
    WHEN (NEW.status IN ('published', 'rolled_back', 'dead') AND NEW.finished_at IS NULL)
    EXECUTE FUNCTION outbox.on_finish_stamp();
