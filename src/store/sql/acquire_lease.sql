-- Takes or renews the lease `$1` for holder `$2` for `$3` ms. Succeeds (returns the token) when
-- the lease is free, expired, or already ours; the token changes whenever the holder changes
-- or an expired lease is taken again.
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
RETURNING l.token
