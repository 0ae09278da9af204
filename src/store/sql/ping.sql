-- Whether the database answers at all, before any check that needs the schema.
SELECT 1
