-- Takes or renews the lease `$1` for holder `$2` for `$3` ms. Succeeds (returns the token) when
-- the lease is free, expired, or already ours; the token changes whenever the holder changes
-- or an expired lease is taken again. Also returns, when the lease changed hands, how long it
-- had been without a valid holder (ms; NULL on a renewal or the first take): the fail-over gap.
WITH before AS (
    SELECT holder, expires_at FROM outbox.relay_leases WHERE name = $1
)
INSERT INTO outbox.relay_leases AS l (name, holder, token, expires_at)
VALUES ($1, $2, 1, now() + $3 * interval '1 millisecond')
ON CONFLICT (name) DO UPDATE
   SET token = CASE
                 WHEN l.holder = EXCLUDED.holder AND l.expires_at > now() THEN l.token
                 ELSE l.token + 1
               END,
       acquired_at = CASE
                       WHEN l.holder = EXCLUDED.holder AND l.expires_at > now() THEN l.acquired_at
                       ELSE now()
                     END,
       holder = EXCLUDED.holder,
       renewed_at = now(),
       expires_at = EXCLUDED.expires_at
 WHERE l.holder = EXCLUDED.holder OR l.expires_at <= now()
RETURNING l.token,
          (SELECT (greatest(0, extract(epoch FROM now() - b.expires_at)) * 1000)::bigint
             FROM before b
            WHERE b.expires_at <= now()) AS unowned_ms
