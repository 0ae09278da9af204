SELECT outbox.commit($1::uuid)
