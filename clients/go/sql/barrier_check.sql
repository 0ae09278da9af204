-- Check-back's claim: 'rolled_back' unless a row is there. A row of a local transaction still
-- open makes this wait for its end (the primary key's row lock).
WITH inserted AS (
    INSERT INTO outbox_barrier (message_id, outcome) VALUES ($1::uuid, 'rolled_back')
    ON CONFLICT (message_id) DO NOTHING
    RETURNING 1
)
SELECT count(*)::int FROM inserted
