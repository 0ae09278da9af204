-- The producer answered `committed`: outbox.commit_checked (migration 0009) commits each row
-- still prepared and not expired, drawing its commit_seq now. $1: message ids.
SELECT outbox.commit_checked($1)
