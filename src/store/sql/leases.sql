SELECT name, holder, token, acquired_at, expires_at, expires_at > now() AS held
FROM outbox.relay_leases ORDER BY name
