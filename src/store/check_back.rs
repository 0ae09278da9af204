//! The check-back statements: which prepared rows are due to be asked about, and applying the
//! producers' answers. Each answer applies only to a row still prepared.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgPool};
use uuid::Uuid;

use super::StoreError;

/// A prepared row to ask its producer about. No payload: the check never sends it.
#[derive(Debug, Clone, FromRow)]
pub struct CheckCandidate {
    pub message_id: Uuid,
    pub destination: String,
    pub message_key: Option<String>,
    pub producer: String,
    pub created_at: DateTime<Utc>,
    /// Undecided answers so far: the backoff before the next check grows with it.
    pub checks: i32,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Up to `limit` rows due to be asked about, oldest first.
pub async fn due_checks(
    pool: &PgPool,
    check_after: Duration,
    limit: u32,
) -> Result<Vec<CheckCandidate>, StoreError> {
    Ok(sqlx::query_as(include_str!("sql/check_back_due.sql"))
        .bind(millis(check_after))
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await?)
}

/// Commits the rows whose producer answered `committed`; returns the ids that were still
/// prepared and not expired.
pub async fn commit_checked(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<Uuid>, StoreError> {
    Ok(
        sqlx::query_scalar(include_str!("sql/check_back_commit.sql"))
            .bind(ids)
            .fetch_all(pool)
            .await?,
    )
}

/// Rolls back the rows whose producer answered `rolled_back`; returns the ids still prepared.
pub async fn roll_back_checked(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<Uuid>, StoreError> {
    Ok(
        sqlx::query_scalar(include_str!("sql/check_back_rollback.sql"))
            .bind(ids)
            .fetch_all(pool)
            .await?,
    )
}

/// An undecided row: asked again after `delay`, `reason` kept as its last error.
pub struct Later {
    pub message_id: Uuid,
    pub delay: Duration,
    pub reason: String,
}

/// Schedules the next check of each undecided row.
pub async fn check_later(pool: &PgPool, later: &[Later]) -> Result<u64, StoreError> {
    let ids: Vec<Uuid> = later.iter().map(|l| l.message_id).collect();
    let delays: Vec<i64> = later.iter().map(|l| millis(l.delay)).collect();
    let reasons: Vec<&str> = later.iter().map(|l| l.reason.as_str()).collect();
    Ok(sqlx::query(include_str!("sql/check_back_later.sql"))
        .bind(ids)
        .bind(delays)
        .bind(reasons)
        .execute(pool)
        .await?
        .rows_affected())
}
