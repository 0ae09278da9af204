DELETE FROM outbox.messages
WHERE status = 'dead'
   AND ($1::uuid[] IS NULL OR message_id = ANY ($1))
   AND ($2::text IS NULL OR destination = $2)
