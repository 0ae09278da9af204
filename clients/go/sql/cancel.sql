SELECT outbox.rollback($1::uuid)
