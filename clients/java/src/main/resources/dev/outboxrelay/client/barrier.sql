-- The check-back barrier, in the writer's own database (not the outbox's). One row per
-- two-phase message: the writer's local transaction inserts (message_id, 'committed'); the
-- check-back handler inserts (message_id, 'rolled_back') only if no row is there, then reads
-- the row. The primary key makes the two inserts exclusive:
--   - local transaction still open: the handler's insert waits on its row lock, then reads what
--     the transaction's end left: 'committed' if it committed, its own 'rolled_back' if not;
--   - handler first: the local transaction's insert fails with a unique violation, and the
--     local transaction must roll back, as the answer given was 'rolled_back'.
CREATE TABLE IF NOT EXISTS outbox_barrier (
    message_id uuid PRIMARY KEY,
    outcome    text NOT NULL CHECK (outcome IN ('committed', 'rolled_back')),
    created_at timestamptz NOT NULL DEFAULT now()
);
