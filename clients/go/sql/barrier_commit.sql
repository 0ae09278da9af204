-- Inside the local transaction. ON CONFLICT DO NOTHING: a row already there is check-back's
-- 'rolled_back' (it was first), reported as no row inserted rather than as an error that
-- would abort the caller's transaction.
WITH inserted AS (
    INSERT INTO outbox_barrier (message_id, outcome) VALUES ($1::uuid, 'committed')
    ON CONFLICT (message_id) DO NOTHING
    RETURNING 1
)
SELECT count(*)::int FROM inserted
