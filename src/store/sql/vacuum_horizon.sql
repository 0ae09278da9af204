SELECT xid_age, age_seconds, holder FROM outbox.vacuum_horizon()
