//! All access to the outbox tables. Every statement lives in `src/store/*.sql` or in a named
//! function here; nothing else in the crate writes SQL.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::FromRow;
use uuid::Uuid;

use crate::config::DatabaseConfig;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("invalid database.url: {0}")]
    Url(sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the outbox schema is missing or out of date (run `outbox-relay migrate`): {0}")]
    SchemaMissing(String),
    #[error("unexpected status `{0}` in outbox.messages")]
    UnknownStatus(String),
}

/// Lifecycle of a row; mirrors the Postgres enum `outbox.message_status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageStatus {
    Prepared,
    Committed,
    RolledBack,
    Published,
    Dead,
}

impl MessageStatus {
    pub const ALL: [MessageStatus; 5] = [
        Self::Prepared,
        Self::Committed,
        Self::RolledBack,
        Self::Published,
        Self::Dead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Prepared => "prepared",
            Self::Committed => "committed",
            Self::RolledBack => "rolled_back",
            Self::Published => "published",
            Self::Dead => "dead",
        }
    }
}

impl fmt::Display for MessageStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MessageStatus {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| StoreError::UnknownStatus(s.to_string()))
    }
}

/// Row id in `outbox.messages` (internal; consumers see [`OutboxMessage::message_id`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, sqlx::Type)]
#[sqlx(transparent)]
pub struct RowId(pub i64);

/// A committed row, as the relay hands it to a publisher.
#[derive(Debug, Clone, FromRow)]
pub struct OutboxMessage {
    pub id: RowId,
    pub message_id: Uuid,
    pub destination: String,
    pub routing_key: Option<String>,
    pub message_key: Option<String>,
    pub payload: Vec<u8>,
    pub content_type: String,
    pub headers: serde_json::Value,
    pub commit_seq: i64,
    pub committed_at: DateTime<Utc>,
    pub attempts: i32,
}

/// What happened to one publish.
#[derive(Debug, Clone)]
pub enum Outcome {
    Published,
    Failed {
        error: String,
        permanent: bool,
        backoff: Duration,
    },
}

/// The row after its outcome was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    pub id: RowId,
    pub status: MessageStatus,
}

/// The commit fence: every committed row with `commit_seq <= fence_seq` is visible once none
/// of `writers` (virtual transaction ids) is still running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub fence_seq: i64,
    pub writers: Vec<String>,
}

const MIGRATIONS_TABLE: &str = "outbox._sqlx_migrations";

pub fn migrator() -> sqlx::migrate::Migrator {
    let mut m = sqlx::migrate!("./migrations");
    m.dangerous_set_table_name(MIGRATIONS_TABLE);
    m.create_schema("outbox");
    m
}

/// A pool that connects lazily: creating it never fails on an unreachable database.
pub fn pool(cfg: &DatabaseConfig) -> Result<PgPool, StoreError> {
    let options: PgConnectOptions = cfg.url.expose().parse().map_err(StoreError::Url)?;
    let options = options.application_name("outbox-relay");
    Ok(PgPoolOptions::new()
        .max_connections(cfg.max_connections.get())
        .acquire_timeout(cfg.connect_timeout)
        .connect_lazy_with(options))
}

/// Applies pending migrations; safe to run concurrently and repeatedly.
pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    migrator().run(pool).await?;
    Ok(())
}

/// Fails unless the latest migration this binary knows has been applied.
pub async fn check_schema(pool: &PgPool) -> Result<(), StoreError> {
    let latest = migrator().iter().map(|m| m.version).max().unwrap_or(0);
    let applied: Option<i64> =
        sqlx::query_scalar("SELECT max(version) FROM outbox._sqlx_migrations WHERE success")
            .fetch_one(pool)
            .await
            .map_err(|e| StoreError::SchemaMissing(e.to_string()))?;
    match applied {
        Some(v) if v >= latest => Ok(()),
        other => Err(StoreError::SchemaMissing(format!(
            "latest applied migration {other:?}, this relay needs {latest}"
        ))),
    }
}

pub async fn commit_fence(pool: &PgPool) -> Result<Fence, StoreError> {
    let (fence_seq, writers): (i64, Vec<String>) =
        sqlx::query_as("SELECT fence_seq, writers FROM outbox.commit_fence()")
            .fetch_one(pool)
            .await?;
    Ok(Fence { fence_seq, writers })
}

pub async fn fence_writers_running(pool: &PgPool, writers: &[String]) -> Result<bool, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT outbox.fence_writers_running($1)")
            .bind(writers)
            .fetch_one(pool)
            .await?,
    )
}

pub async fn claim(
    pool: &PgPool,
    fence_seq: i64,
    limit: u32,
) -> Result<Vec<OutboxMessage>, StoreError> {
    Ok(sqlx::query_as(include_str!("store/claim.sql"))
        .bind(fence_seq)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await?)
}

pub async fn record_outcomes(
    pool: &PgPool,
    outcomes: &[(RowId, Outcome)],
    max_attempts: u32,
) -> Result<Vec<Recorded>, StoreError> {
    let mut ids = Vec::with_capacity(outcomes.len());
    let mut errors = Vec::with_capacity(outcomes.len());
    let mut permanent = Vec::with_capacity(outcomes.len());
    let mut backoff_ms = Vec::with_capacity(outcomes.len());
    for (id, outcome) in outcomes {
        ids.push(id.0);
        match outcome {
            Outcome::Published => {
                errors.push(None);
                permanent.push(false);
                backoff_ms.push(0i64);
            }
            Outcome::Failed {
                error,
                permanent: p,
                backoff,
            } => {
                errors.push(Some(error.as_str()));
                permanent.push(*p);
                backoff_ms.push(i64::try_from(backoff.as_millis()).unwrap_or(i64::MAX));
            }
        }
    }
    let rows: Vec<(i64, String)> = sqlx::query_as(include_str!("store/record_outcomes.sql"))
        .bind(&ids)
        .bind(&errors)
        .bind(&permanent)
        .bind(&backoff_ms)
        .bind(i64::from(max_attempts))
        .fetch_all(pool)
        .await?;
    rows.into_iter()
        .map(|(id, status)| {
            Ok(Recorded {
                id: RowId(id),
                status: status.parse()?,
            })
        })
        .collect()
}

/// Rolls back one batch of expired prepared rows; returns how many.
pub async fn expire_prepared(pool: &PgPool, limit: u32) -> Result<u64, StoreError> {
    Ok(sqlx::query(include_str!("store/expire_prepared.sql"))
        .bind(i64::from(limit))
        .execute(pool)
        .await?
        .rows_affected())
}

/// Deletes one batch of `status` rows finished more than `retention` ago; returns how many.
pub async fn purge(
    pool: &PgPool,
    status: MessageStatus,
    retention: Duration,
    limit: u32,
) -> Result<u64, StoreError> {
    Ok(sqlx::query(include_str!("store/purge.sql"))
        .bind(status.as_str())
        .bind(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .execute(pool)
        .await?
        .rows_affected())
}
