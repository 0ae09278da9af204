-- The replicas of a partitioned group that are alive: unexpired rows named '<prefix><replica>'
-- (each replica renews its own with the partition leases). $1: the prefix, '<lease>/replicas/'.
-- Rows expired for over an hour are deleted on the way: a restarted pod announces itself under
-- a new name, and the table would otherwise keep every name ever used.
WITH gone AS (
    DELETE FROM outbox.relay_leases
     WHERE starts_with(name, $1)
       AND expires_at < now() - interval '1 hour'
)
SELECT holder
  FROM outbox.relay_leases
 WHERE starts_with(name, $1)
   AND expires_at > now()
 ORDER BY holder
