SELECT status::text, count(*) FROM outbox.messages GROUP BY 1
