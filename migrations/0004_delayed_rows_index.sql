-- The claim's per-key check looks for an earlier row of the same key that is not due yet. Only
-- a row whose available_at lies past its committed_at can be one: a retry backoff or a
-- deliver_at. Every other committed row is due from its commit on (claim.sql). This index holds
-- just those rows, usually none, so the check costs one descent into a near-empty index
-- instead of a walk over every pending row of the key: with a backlog, that walk made the claim
-- tens of times slower (docs/performance.md).
CREATE INDEX messages_delayed_key_idx ON outbox.messages (destination, message_key, commit_seq)
    INCLUDE (available_at)
    WHERE status = 'committed' AND message_key IS NOT NULL AND available_at > committed_at;
