-- The pending floor: the lowest commit_seq of any pending row at or below the commit fence ($2),
-- or $2 + 1 if there is none, looked for from an earlier floor ($1) up.
-- It never goes down: every row at or below the fence is visible (its writer has ended),
-- commit_seq only grows, and a row that leaves `committed` never comes back with the same
-- commit_seq (a requeue draws a new one). The claims start their scans here, so they do not
-- walk the index entries of rows published since the last vacuum: while any transaction holds
-- an old snapshot, Postgres cannot drop those entries, and each costs a heap visit.
SELECT coalesce(min(m.commit_seq), $2 + 1)
  FROM outbox.messages m
 WHERE m.status = 'committed'
   AND m.commit_seq >= $1
   AND m.commit_seq <= $2
