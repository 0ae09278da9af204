//! What `doctor` reads: the login's rights, the transactions holding the commit fence, the
//! keys held back by a row waiting for its retry.

use sqlx::{FromRow, PgPool};

use super::StoreError;

pub async fn grants(pool: &PgPool) -> Result<Vec<(String, bool)>, StoreError> {
    Ok(sqlx::query_as(include_str!("sql/doctor_grants.sql"))
        .fetch_all(pool)
        .await?)
}

#[derive(Debug, Clone, FromRow)]
pub struct FenceHolder {
    pub pid: i32,
    pub username: Option<String>,
    pub application_name: Option<String>,
    pub age_secs: Option<f64>,
}

pub async fn fence_holders(pool: &PgPool) -> Result<Vec<FenceHolder>, StoreError> {
    Ok(sqlx::query_as(include_str!("sql/doctor_fence_holders.sql"))
        .fetch_all(pool)
        .await?)
}

#[derive(Debug, Clone, FromRow)]
pub struct StuckKey {
    pub destination: String,
    pub message_key: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub retry_in_secs: f64,
    pub behind: i64,
}

pub async fn stuck_keys(pool: &PgPool, limit: i64) -> Result<Vec<StuckKey>, StoreError> {
    Ok(sqlx::query_as(include_str!("sql/doctor_stuck_keys.sql"))
        .bind(limit)
        .fetch_all(pool)
        .await?)
}

pub async fn ping(pool: &PgPool) -> Result<(), StoreError> {
    sqlx::query(include_str!("sql/ping.sql"))
        .execute(pool)
        .await?;
    Ok(())
}

/// The destinations of the newest `rows` rows, at most `limit` of them.
pub async fn recent_destinations(
    pool: &PgPool,
    rows: i64,
    limit: i64,
) -> Result<Vec<String>, StoreError> {
    Ok(
        sqlx::query_scalar(include_str!("sql/doctor_recent_destinations.sql"))
            .bind(rows)
            .bind(limit)
            .fetch_all(pool)
            .await?,
    )
}
