//! Read-only statistics for the gauges: dead rows by destination, the table's size and vacuum
//! state, and what holds vacuum back. Only the dead-row count reads rows (the dead ones,
//! through an index).

use sqlx::{FromRow, PgPool};

use super::StoreError;

#[derive(Debug, Clone, FromRow)]
pub struct TableStats {
    pub table_bytes: i64,
    pub index_bytes: i64,
    pub dead_tuples: i64,
    /// `None` until the table was vacuumed once (the statistics were reset, or it is new).
    pub vacuumed_secs_ago: Option<f64>,
}

pub async fn table_stats(pool: &PgPool) -> Result<TableStats, StoreError> {
    Ok(sqlx::query_as(include_str!("sql/table_stats.sql"))
        .fetch_one(pool)
        .await?)
}

/// The oldest transaction or snapshot in the database that vacuum must wait for.
#[derive(Debug, Clone, FromRow)]
pub struct VacuumHorizon {
    /// 0 when nothing holds vacuum back.
    pub xid_age: i64,
    /// 0 when nothing with a start time (a session, a prepared transaction) holds it back.
    pub age_seconds: f64,
    /// Its `application_name` (or user) and pid, prepared transaction or slot; never a query.
    pub holder: Option<String>,
}

pub async fn vacuum_horizon(pool: &PgPool) -> Result<VacuumHorizon, StoreError> {
    Ok(sqlx::query_as(include_str!("sql/vacuum_horizon.sql"))
        .fetch_one(pool)
        .await?)
}

pub async fn dead_by_destination(pool: &PgPool) -> Result<Vec<(String, i64)>, StoreError> {
    Ok(
        sqlx::query_as(include_str!("sql/dead_by_destination_count.sql"))
            .fetch_all(pool)
            .await?,
    )
}
