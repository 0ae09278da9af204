-- Rows of keys other than the ones already claimed, for a batch that one or a few keys would
-- otherwise fill: without this, a backlog of thousands of rows of one key (published one at a
-- time) would hold back every row committed after it.
-- $1 to $12 as in claim.sql: the commit fence, batch size, lease name, holder and token, ids
-- in hand (a hash lookup, see claim.sql), destinations held back after a publish timeout, the
-- pending floor, the partition and the group lease.
-- $13: the highest commit_seq of the batch already claimed
-- $14, $15: destinations and keys already claimed (skipped here; their rows come in order later)
-- $16: how many pending rows past $13 to look at, so a huge backlog of one key costs a bounded
--      scan per cycle.
-- The due rule and the per-key hold-back rule are claim.sql's, plus one clause: any pending row
-- at or below $13 that is not in the batch holds its key back, due or not. It was not claimable
-- when claim.sql ran (not yet due, or behind a row that was not), and may have become due
-- since; its later rows must not go ahead of it. Rows in $6 were confirmed already. Rows after
-- $13 that are due and free come out of this statement too, ahead of their key's later rows.
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
  FROM (SELECT *
          FROM outbox.messages c
         WHERE c.status = 'committed'
           AND c.commit_seq > $13
           AND c.commit_seq <= $1
         ORDER BY c.commit_seq
         LIMIT $16) m
 WHERE (m.available_at <= now() OR m.available_at <= m.committed_at)
   AND m.id NOT IN (SELECT unnest($6::bigint[]))
   AND m.destination <> ALL ($7)
   AND (m.message_key IS NULL OR (m.destination, m.message_key) NOT IN (
        SELECT d, k FROM unnest($14::text[], $15::text[]) AS claimed(d, k)))
   AND (m.message_key IS NULL OR NOT EXISTS (
        SELECT 1
          FROM outbox.messages e
         WHERE e.status = 'committed'
           AND e.message_key IS NOT NULL
           AND e.destination = m.destination
           AND e.message_key = m.message_key
           AND e.commit_seq >= $8
           AND e.commit_seq < m.commit_seq
           AND ((e.available_at > now() AND e.available_at > e.committed_at)
                OR (e.commit_seq <= $13 AND e.id NOT IN (SELECT unnest($6::bigint[]))))))
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
