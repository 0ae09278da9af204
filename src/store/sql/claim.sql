-- Committed rows that may be published now, in commit order.
-- $1: the commit fence (highest commit_seq known to have no invisible predecessor)
-- $2: batch size
-- $6: ids in hand: being published, or published and their outcome still being recorded (never
-- sent twice). Up to a few thousand: NOT IN over a subquery is one hash lookup per row, where
-- `<> ALL ($6)` would walk the array for every row scanned (the relay's sessions use generic
-- plans, and Postgres hashes `<> ALL` only for a constant array).
-- $7: destinations held back after a publish timeout (see `SlowDestinations` in src/relay/slow.rs).
-- $8: the pending floor (outbox.pending_floor, migration 0005): no pending row has a lower commit_seq, so both
-- scans start there.
-- $3, $4, $5: lease name, holder, token. A replica whose lease expired or was taken over
-- claims nothing, even if it has not noticed yet.
-- $9, $10: relay.partitions and the partition claimed (outbox.key_partition, migration 0011);
-- 1 and 0 when the outbox is not partitioned, which skips the hash. A key's rows all lie in
-- one partition, so the per-key check below needs no partition clause.
-- $11, $12: the group lease the partitioned replicas share and its holder (NULL when not
-- partitioned): held by them, so no replica in another mode publishes beside them.
-- A row is due once available_at has passed, and always when available_at is not past its
-- committed_at: it was never delayed (no retry backoff, no deliver_at), so it is due from its
-- commit on, whatever the clock says now. A keyed row is held back while an earlier row of its
-- key is pending and not due (waiting for its retry time or a delayed delivery), so a key never
-- overtakes itself; only delayed rows can be that, and messages_delayed_key_idx holds just
-- those. Earlier pending rows that are due are in the same batch, ahead of it.
SELECT m.id,
       m.message_id,
       m.destination,
       m.routing_key,
       m.message_key,
       m.payload,
       m.content_type,
       m.headers,
       m.commit_seq,
       m.committed_at,
       m.attempts
  FROM outbox.messages m
 WHERE m.status = 'committed'
   AND m.commit_seq >= $8
   AND m.commit_seq <= $1
   AND (m.available_at <= now() OR m.available_at <= m.committed_at)
   AND m.id NOT IN (SELECT unnest($6::bigint[]))
   AND m.destination <> ALL ($7)
   AND (m.message_key IS NULL OR NOT EXISTS (
        SELECT 1
          FROM outbox.messages e
         WHERE e.status = 'committed'
           AND e.message_key IS NOT NULL
           AND e.destination = m.destination
           AND e.message_key = m.message_key
           AND e.commit_seq >= $8
           AND e.commit_seq < m.commit_seq
           AND e.available_at > e.committed_at
           AND e.available_at > now()))
   AND EXISTS (
        SELECT 1
          FROM outbox.relay_leases l
         WHERE l.name = $3
           AND l.holder = $4
           AND l.token = $5
           AND l.expires_at > now())
   AND ($9 = 1 OR outbox.key_partition(m.message_key, m.message_id, $9) = $10)
   AND ($11::text IS NULL OR EXISTS (
        SELECT 1
          FROM outbox.relay_leases g
         WHERE g.name = $11
           AND g.holder = $12
           AND g.expires_at > now()))
 ORDER BY m.commit_seq
 LIMIT $2
