-- Leader lease: exactly one relay replica publishes from an outbox at a time. The holder
-- renews it well before expires_at; the token grows with every change of holder, and the
-- relay's claim only returns rows while its own (holder, token) lease is unexpired.
CREATE TABLE outbox.relay_leases (
    name        text PRIMARY KEY,
    holder      text NOT NULL,
    token       bigint NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT now(),
    renewed_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);

COMMENT ON TABLE outbox.relay_leases IS 'Which relay replica publishes; see docs/ARCHITECTURE.md.';

-- Puts dead messages back to committed, oldest first, so that each takes a new commit_seq
-- (a new place at the end of its key's order) in their original relative order.
-- NULL ids with a destination (or NULL) requeues every dead row of that destination (or all).
CREATE FUNCTION outbox.requeue_dead(ids uuid[], only_destination text DEFAULT NULL) RETURNS integer
    LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    r record;
    n integer := 0;
BEGIN
    FOR r IN
        SELECT m.id FROM outbox.messages m
         WHERE m.status = 'dead'
           AND (ids IS NULL OR m.message_id = ANY (ids))
           AND (only_destination IS NULL OR m.destination = only_destination)
         ORDER BY m.commit_seq NULLS LAST, m.id
           FOR UPDATE
    LOOP
        UPDATE outbox.messages
           SET status = 'committed', attempts = 0, available_at = clock_timestamp(),
               finished_at = NULL, published_at = NULL
         WHERE id = r.id;
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;
