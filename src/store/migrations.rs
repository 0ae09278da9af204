//! The schema's migrations as operators see them: which are applied, which are pending and
//! what each locks, their SQL for teams that apply schema changes with their own tool, and
//! index builds in progress while `migrate` runs.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use super::{migrator, StoreError, MIGRATIONS_TABLE};

/// What each migration locks while it runs (UPGRADING.md has the details). A test checks that
/// every migration has an entry, so a new one cannot ship without saying.
pub const LOCKS: &[(i64, &str)] = &[
    (1, "creates the schema; no existing table is touched"),
    (2, "creates outbox.relay_leases and functions; no lock on messages"),
    (3, "creates the role outbox_relay and grants; catalog locks only"),
    (4, "CREATE INDEX on outbox.messages: writes to it wait for one scan of the table"),
    (5, "creates and replaces functions; no lock on messages"),
    (6, "replaces functions; no lock on messages"),
    (7, "changes the default of message_id: a brief ACCESS EXCLUSIVE lock, no rewrite"),
    (8, "CREATE INDEX on outbox.messages: writes to it wait for one scan of the table"),
    (9, "ADD COLUMN (no rewrite) and CREATE INDEX in one transaction: reads and writes of outbox.messages wait for one scan"),
    (10, "creates the role outbox_writer, functions and grants; catalog locks only"),
    (11, "creates functions and grants; no lock on messages"),
];

/// One migration and whether it is applied here.
#[derive(Debug, Clone, Serialize)]
pub struct MigrationState {
    pub version: i64,
    pub description: String,
    pub applied: bool,
    pub installed_on: Option<DateTime<Utc>>,
    /// How long it took to apply, in milliseconds.
    pub execution_ms: Option<f64>,
    pub locks: &'static str,
}

/// Every migration this binary knows, applied or pending, oldest first.
pub async fn states(pool: &PgPool) -> Result<Vec<MigrationState>, StoreError> {
    let applied: Vec<(i64, DateTime<Utc>, i64, bool)> =
        match sqlx::query_as(include_str!("sql/applied_migrations.sql"))
            .fetch_all(pool)
            .await
        {
            Ok(rows) => rows,
            // No bookkeeping table yet: nothing is applied.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => Vec::new(),
            Err(e) => return Err(e.into()),
        };
    Ok(migrator()
        .iter()
        .map(|m| {
            let done = applied.iter().find(|(v, _, _, ok)| *v == m.version && *ok);
            MigrationState {
                version: m.version,
                description: m.description.to_string(),
                applied: done.is_some(),
                installed_on: done.map(|(_, at, _, _)| *at),
                execution_ms: done.map(|(_, _, ns, _)| *ns as f64 / 1e6),
                locks: locks_of(m.version),
            }
        })
        .collect())
}

fn locks_of(version: i64) -> &'static str {
    LOCKS
        .iter()
        .find(|(v, _)| *v == version)
        .map_or("not described", |(_, l)| l)
}

/// The SQL of the migrations (the pending ones, or all), each in its own transaction with the
/// bookkeeping row `migrate` would write, so that a schema applied this way is one the relay
/// accepts and a later `migrate` continues from.
pub fn script(states: &[MigrationState], all: bool) -> String {
    let mut out = format!(
        "-- outbox-relay {}: schema migrations. Apply in order, as the schema owner.\n\
         -- Each is one transaction ending with its row in {MIGRATIONS_TABLE}, which the relay checks.\n\
         CREATE SCHEMA IF NOT EXISTS outbox;\n\
         CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (\n    version BIGINT PRIMARY KEY,\n    \
         description TEXT NOT NULL,\n    installed_on TIMESTAMPTZ NOT NULL DEFAULT now(),\n    \
         success BOOLEAN NOT NULL,\n    checksum BYTEA NOT NULL,\n    execution_time BIGINT NOT NULL\n);\n",
        env!("CARGO_PKG_VERSION")
    );
    let migrator = migrator();
    for m in migrator.iter() {
        let applied = states.iter().any(|s| s.version == m.version && s.applied);
        if applied && !all {
            continue;
        }
        let checksum: String = m.checksum.iter().map(|b| format!("{b:02x}")).collect();
        // A migration marked `-- no-transaction` (CREATE INDEX CONCURRENTLY) cannot run
        // inside one; its bookkeeping row then follows on its own.
        let (begin, commit) = if m.no_tx {
            ("", "")
        } else {
            ("BEGIN;\n", "COMMIT;\n")
        };
        out.push_str(&format!(
            "\n-- {:04} {} (locks: {})\n{begin}{}\nINSERT INTO {MIGRATIONS_TABLE} (version, description, success, checksum, execution_time)\n\
             VALUES ({}, '{}', true, '\\x{checksum}', 0);\n{commit}",
            m.version,
            m.description,
            locks_of(m.version),
            m.sql.as_str().trim_end(),
            m.version,
            m.description.replace('\'', "''"),
        ));
    }
    out
}

/// One index build in progress.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct IndexBuild {
    pub index_name: Option<String>,
    pub phase: String,
    pub blocks_done: i64,
    pub blocks_total: i64,
    pub tuples_done: i64,
    pub tuples_total: i64,
}

pub async fn index_builds(pool: &PgPool) -> Result<Vec<IndexBuild>, StoreError> {
    Ok(sqlx::query_as(include_str!("sql/index_builds.sql"))
        .fetch_all(pool)
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_migration_says_what_it_locks() {
        for m in migrator().iter() {
            assert_ne!(
                locks_of(m.version),
                "not described",
                "migration {}",
                m.version
            );
        }
    }
}
