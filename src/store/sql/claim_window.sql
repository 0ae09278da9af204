SELECT safe_seq, waiting_seq, waiting_writers, floor_seq
FROM outbox.claim_window($1, $2, $3, $4)
