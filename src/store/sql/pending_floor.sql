SELECT outbox.pending_floor($1, $2)
