//! What the admin commands (`status`, `dead`) read and change.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgPool};
use uuid::Uuid;

use super::{MessageStatus, StoreError};

#[derive(Debug, Clone, serde::Serialize, FromRow)]
pub struct LeaseInfo {
    pub name: String,
    pub holder: String,
    pub token: i64,
    pub acquired_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub held: bool,
}

pub async fn leases(pool: &PgPool) -> Result<Vec<LeaseInfo>, StoreError> {
    Ok(sqlx::query_as(include_str!("sql/leases.sql"))
        .fetch_all(pool)
        .await?)
}

pub async fn count_by_status(pool: &PgPool) -> Result<Vec<(MessageStatus, i64)>, StoreError> {
    let rows: Vec<(MessageStatus, i64)> = sqlx::query_as(include_str!("sql/count_by_status.sql"))
        .fetch_all(pool)
        .await?;
    let mut out: Vec<(MessageStatus, i64)> = MessageStatus::ALL.iter().map(|s| (*s, 0)).collect();
    for (status, n) in rows {
        if let Some(slot) = out.iter_mut().find(|(s, _)| *s == status) {
            slot.1 = n;
        }
    }
    Ok(out)
}

#[derive(Debug, Clone, serde::Serialize, FromRow)]
pub struct DeadSummary {
    pub destination: String,
    pub count: i64,
    pub last_error: Option<String>,
}

/// Dead rows per destination, with the most recent error of each.
pub async fn dead_by_destination(pool: &PgPool) -> Result<Vec<DeadSummary>, StoreError> {
    Ok(sqlx::query_as(include_str!("sql/dead_by_destination.sql"))
        .fetch_all(pool)
        .await?)
}

#[derive(Debug, Clone, serde::Serialize, FromRow)]
pub struct DeadMessage {
    pub message_id: Uuid,
    pub destination: String,
    pub message_key: Option<String>,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub committed_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

pub async fn list_dead(
    pool: &PgPool,
    destination: Option<&str>,
    limit: i64,
) -> Result<Vec<DeadMessage>, StoreError> {
    Ok(sqlx::query_as(include_str!("sql/list_dead.sql"))
        .bind(destination)
        .bind(limit)
        .fetch_all(pool)
        .await?)
}

/// Which dead rows an admin command acts on.
#[derive(Debug, Clone)]
pub enum DeadSelection {
    Ids(Vec<Uuid>),
    All { destination: Option<String> },
}

/// Dead rows back to committed (attempts reset), oldest first; returns how many.
pub async fn requeue_dead(pool: &PgPool, which: &DeadSelection) -> Result<i64, StoreError> {
    let (ids, destination) = match which {
        DeadSelection::Ids(ids) => (Some(ids.clone()), None),
        DeadSelection::All { destination } => (None, destination.clone()),
    };
    let n: i32 = sqlx::query_scalar(include_str!("sql/requeue_dead.sql"))
        .bind(ids)
        .bind(destination)
        .fetch_one(pool)
        .await?;
    Ok(i64::from(n))
}

/// Deletes dead rows; returns how many.
pub async fn discard_dead(pool: &PgPool, which: &DeadSelection) -> Result<i64, StoreError> {
    let (ids, destination) = match which {
        DeadSelection::Ids(ids) => (Some(ids.clone()), None),
        DeadSelection::All { destination } => (None, destination.clone()),
    };
    let n = sqlx::query(include_str!("sql/discard_dead.sql"))
        .bind(ids)
        .bind(destination)
        .execute(pool)
        .await?
        .rows_affected();
    Ok(i64::try_from(n).unwrap_or(i64::MAX))
}
