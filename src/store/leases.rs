//! The lease statements: one lease per outbox (`ha.lease_name`), or with `relay.partitions > 1`
//! one per partition beside the group lease and the replicas' own rows (src/partitions).

use std::time::Duration;

use sqlx::{FromRow, PgPool};

use super::StoreError;

/// The lease a claim and the marks of its rows run under.
#[derive(Debug, Clone, Copy)]
pub struct LeaseRef<'a> {
    pub name: &'a str,
    pub holder: &'a str,
    pub token: i64,
}

/// A lease this holder has now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromRow)]
pub struct Acquired {
    pub token: i64,
    /// Set when the lease changed hands: how long it had had no valid holder.
    pub unowned_ms: Option<i64>,
}

impl Acquired {
    pub fn unowned(&self) -> Option<Duration> {
        self.unowned_ms
            .map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
    }
}

/// Takes or renews a lease; returns its token if this holder has it now.
pub async fn acquire_lease(
    pool: &PgPool,
    name: &str,
    holder: &str,
    ttl: Duration,
) -> Result<Option<Acquired>, StoreError> {
    Ok(sqlx::query_as(include_str!("sql/acquire_lease.sql"))
        .bind(name)
        .bind(holder)
        .bind(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX))
        .fetch_optional(pool)
        .await?)
}

/// Gives a lease up at once (clean shutdown), so a standby need not wait for it to expire.
pub async fn release_lease(pool: &PgPool, name: &str, holder: &str) -> Result<(), StoreError> {
    sqlx::query(include_str!("sql/release_lease.sql"))
        .bind(name)
        .bind(holder)
        .execute(pool)
        .await?;
    Ok(())
}

/// The live replicas of a partitioned group, sorted: holders of unexpired rows named
/// `prefix` + replica id.
pub async fn live_replicas(pool: &PgPool, prefix: &str) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar(include_str!("sql/live_replicas.sql"))
        .bind(prefix)
        .fetch_all(pool)
        .await?)
}
