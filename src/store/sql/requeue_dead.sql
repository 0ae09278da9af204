SELECT outbox.requeue_dead($1, $2)
