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

/// Which dead rows an admin command looks at; `None` and empty mean "any".
#[derive(Debug, Clone, Default)]
pub struct DeadFilter {
    pub destination: Option<String>,
    pub key: Option<String>,
    /// Died at most this long ago.
    pub since: Option<std::time::Duration>,
    pub ids: Option<Vec<Uuid>>,
}

impl DeadFilter {
    fn bind<'q, O>(
        &'q self,
        query: sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
        query
            .bind(self.destination.as_deref())
            .bind(self.key.as_deref())
            .bind(
                self.since
                    .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            )
            .bind(self.ids.as_deref())
    }
}

/// Dead rows the filter selects, oldest first, at most `limit`.
pub async fn list_dead(
    pool: &PgPool,
    filter: &DeadFilter,
    limit: i64,
) -> Result<Vec<DeadMessage>, StoreError> {
    Ok(filter
        .bind(sqlx::query_as(include_str!("sql/list_dead.sql")))
        .bind(limit)
        .fetch_all(pool)
        .await?)
}

/// How many dead rows the filter selects.
pub async fn count_dead(pool: &PgPool, filter: &DeadFilter) -> Result<i64, StoreError> {
    let (n,): (i64,) = filter
        .bind(sqlx::query_as(include_str!("sql/count_dead.sql")))
        .fetch_one(pool)
        .await?;
    Ok(n)
}

/// One message, any status, as `dead show` prints it.
#[derive(Debug, Clone, serde::Serialize, FromRow)]
pub struct MessageDetail {
    pub message_id: Uuid,
    pub status: MessageStatus,
    pub destination: String,
    pub routing_key: Option<String>,
    pub message_key: Option<String>,
    pub content_type: String,
    pub headers: serde_json::Value,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub producer: Option<String>,
    pub commit_seq: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub committed_at: Option<DateTime<Utc>>,
    pub available_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub published_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(skip)]
    pub payload: Option<Vec<u8>>,
}

pub async fn show_message(
    pool: &PgPool,
    id: Uuid,
    with_payload: bool,
) -> Result<Option<MessageDetail>, StoreError> {
    Ok(sqlx::query_as(include_str!("sql/show_message.sql"))
        .bind(id)
        .bind(with_payload)
        .fetch_optional(pool)
        .await?)
}

/// Dead rows among `ids` back to committed (attempts reset), oldest first; returns how many.
pub async fn requeue_dead(pool: &PgPool, ids: &[Uuid]) -> Result<i64, StoreError> {
    let n: i32 = sqlx::query_scalar(include_str!("sql/requeue_dead.sql"))
        .bind(ids)
        .fetch_one(pool)
        .await?;
    Ok(i64::from(n))
}

/// Deletes the dead rows among `ids`; returns how many.
pub async fn discard_dead(pool: &PgPool, ids: &[Uuid]) -> Result<i64, StoreError> {
    let n = sqlx::query(include_str!("sql/discard_dead.sql"))
        .bind(ids)
        .execute(pool)
        .await?
        .rows_affected();
    Ok(i64::try_from(n).unwrap_or(i64::MAX))
}

/// Committed rows waiting for a retry after a failed publish, of one destination.
#[derive(Debug, Clone, serde::Serialize, FromRow)]
pub struct Retrying {
    pub destination: String,
    pub rows: i64,
    pub max_attempts: i32,
}

/// The destinations with rows waiting for a retry, the most first, at most `limit`.
pub async fn retrying_by_destination(
    pool: &PgPool,
    limit: i64,
) -> Result<Vec<Retrying>, StoreError> {
    Ok(
        sqlx::query_as(include_str!("sql/retrying_by_destination.sql"))
            .bind(limit)
            .fetch_all(pool)
            .await?,
    )
}
