SELECT status, count(*) FROM outbox.messages GROUP BY 1
