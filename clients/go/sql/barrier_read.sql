-- A statement of its own after barrier_check.sql: its snapshot, taken after the wait, sees
-- the row the local transaction committed.
SELECT outcome FROM outbox_barrier WHERE message_id = $1::uuid
