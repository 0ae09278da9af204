-- Back to committed (attempts reset, a new commit_seq each, oldest first): the dead rows among
-- $1 (message ids); the caller selects them in batches.
SELECT outbox.requeue_dead($1)
