-- Whether the current login has what `run` needs (migrations 0003 and 0011 grant it to
-- outbox_relay): one row per right, named as an operator would grant it.
SELECT r.name, r.granted
FROM (VALUES
    ('SELECT, UPDATE, DELETE ON outbox.messages',
     has_table_privilege('outbox.messages', 'SELECT')
     AND has_column_privilege('outbox.messages', 'status', 'UPDATE')
     AND has_table_privilege('outbox.messages', 'DELETE')),
    ('SELECT, INSERT, UPDATE ON outbox.relay_leases',
     has_table_privilege('outbox.relay_leases', 'SELECT, INSERT, UPDATE')),
    ('SELECT ON SEQUENCE outbox.commit_seq',
     has_sequence_privilege('outbox.commit_seq', 'SELECT')),
    ('EXECUTE ON FUNCTION outbox.claim_window',
     has_function_privilege('outbox.claim_window(bigint, bigint, text[], bigint)', 'EXECUTE')),
    ('EXECUTE ON FUNCTION outbox.live_replicas',
     has_function_privilege('outbox.live_replicas(text)', 'EXECUTE'))
) AS r(name, granted)
