WITH gone AS (
    DELETE FROM outbox_barrier WHERE created_at < now() - $1::bigint * interval '1 millisecond'
    RETURNING 1
)
SELECT count(*)::bigint FROM gone
