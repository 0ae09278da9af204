-- Key partitions for active-active replicas (`relay.partitions`, docs/ARCHITECTURE.md "Key
-- partitions"). A row belongs to partition key_partition(message_key, message_id, N). The
-- function is the definition: it must never change, or rows would change owner between
-- versions. MD5 rather than Postgres' own hashtext(), which is internal and not promised to
-- stay the same across major versions; the first 32 bits of the digest of the key's UTF-8
-- bytes, as an unsigned big-endian integer, modulo N. Keyless rows have no order to keep and
-- are spread by the text form of their message_id.
CREATE FUNCTION outbox.key_partition(message_key text, message_id uuid, partitions integer)
    RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
               WHEN partitions <= 1 THEN 0
               ELSE (('x' || left(md5(coalesce(message_key, message_id::text)), 8))::bit(32)::bigint
                     % partitions)::integer
           END
$$;

COMMENT ON FUNCTION outbox.key_partition(text, uuid, integer) IS
    'The relay partition of a row: first 32 bits of md5(message_key, or message_id as text) mod partitions. Fixed forever.';

GRANT EXECUTE ON FUNCTION outbox.key_partition(text, uuid, integer) TO outbox_relay;

-- Replicas announce themselves in rows named '<lease>/replicas/<replica>' beside the partition
-- leases. The live ones of a group: its unexpired replica rows. Rows expired for over an hour
-- are deleted on the way (a restarted pod announces itself under a new name, and the table
-- would otherwise keep every name ever used). SECURITY DEFINER so that the relay's role needs
-- no DELETE on the leases: it can delete nothing but long-expired replica rows.
CREATE FUNCTION outbox.live_replicas(prefix text) RETURNS SETOF text
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM outbox.relay_leases
     WHERE starts_with(name, prefix)
       AND strpos(name, '/replicas/') > 0
       AND expires_at < now() - interval '1 hour';
    RETURN QUERY
        SELECT l.holder
          FROM outbox.relay_leases l
         WHERE starts_with(l.name, prefix)
           AND strpos(l.name, '/replicas/') > 0
           AND l.expires_at > now()
         ORDER BY l.holder;
END
$$;

REVOKE EXECUTE ON FUNCTION outbox.live_replicas(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION outbox.live_replicas(text) TO outbox_relay;
