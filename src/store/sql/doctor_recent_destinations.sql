-- The destinations of the newest rows, most used first. Bounded by the primary key's index,
-- so that the cost does not grow with the table. $1: rows to look at, $2: destinations.
SELECT destination
FROM (SELECT destination FROM outbox.messages ORDER BY id DESC LIMIT $1) recent
GROUP BY destination
ORDER BY count(*) DESC, destination
LIMIT $2
