//! All access to the outbox tables: the pool and migrations, the commit fence and the claims,
//! the lease, the outcome updates and the sweeper's statements here; the admin commands' in
//! `admin`, the gauges' in `stats`, the row types in `model`, the error in `error`. Every
//! statement is a file in `src/store/sql/`; nothing else in the crate writes SQL.

mod admin;
pub mod check_back;
mod config;
pub mod doctor;
mod error;
mod leases;
pub mod migrations;
mod model;
pub mod stats;

pub use admin::*;
pub use config::{DatabaseConfig, SCHEMES};
pub use error::{within, StoreError};
pub use leases::*;
pub use model::*;

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::FromRow;

const MIGRATIONS_TABLE: &str = "outbox._sqlx_migrations";

pub fn migrator() -> sqlx::migrate::Migrator {
    let mut m = sqlx::migrate!("./migrations");
    m.dangerous_set_table_name(MIGRATIONS_TABLE);
    m.create_schema("outbox");
    m
}

/// The relay's session settings on top of what `url` says.
pub fn connect_options(url: &str) -> Result<PgConnectOptions, StoreError> {
    let options: PgConnectOptions = url.parse().map_err(StoreError::Url)?;
    // JIT off: the claim's cost estimate grows with the table (a backlog of some 10^5 rows
    // crosses jit_above_cost), and compiling it took 10-90 ms on every execution, several
    // times the query itself (docs/performance.md). Nothing the relay runs gains from JIT.
    // Generic plans: the relay runs a handful of prepared statements thousands of times a
    // minute, and Postgres otherwise re-planned the outcome update for each set of arguments
    // in about half of its runs (some 200 µs apiece); the relay's statements are index lookups
    // whose best plan does not depend on the arguments.
    // No bitmap scans: a claim wants the first batch of the pending index in commit order, and
    // with statistics that underrate the backlog (taken part-way through a drain) the generic
    // plan read every pending row through a bitmap and sorted them, 40 to 80 ms a claim over
    // 200,000 rows (docs/performance.md, "The claim's plan"). The relay's other statements
    // find their rows by primary key or walk a partial index, and lose nothing by it.
    Ok(options.application_name("outbox-relay").options([
        ("jit", "off"),
        ("plan_cache_mode", "force_generic_plan"),
        ("enable_bitmapscan", "off"),
    ]))
}

/// A pool that connects lazily: creating it never fails on an unreachable database. Every
/// statement is bounded by `database.statement_timeout`, so a statement stuck behind a lock
/// fails and is retried instead of holding its loop forever.
pub fn pool(cfg: &DatabaseConfig) -> Result<PgPool, StoreError> {
    let bound = cfg.statement_timeout.as_millis();
    let options =
        connect_options(cfg.url.expose())?.options([("statement_timeout", format!("{bound}ms"))]);
    lazy_pool(cfg, options)
}

/// For `migrate`, unbounded: building an index over a large outbox may take longer than any
/// bound that suits the relay's own statements.
pub fn migration_pool(cfg: &DatabaseConfig) -> Result<PgPool, StoreError> {
    lazy_pool(cfg, connect_options(cfg.url.expose())?)
}

fn lazy_pool(cfg: &DatabaseConfig, options: PgConnectOptions) -> Result<PgPool, StoreError> {
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
    let applied: Option<i64> = sqlx::query_scalar(include_str!("sql/schema_version.sql"))
        .fetch_one(pool)
        .await
        .map_err(|e| match e {
            // Reached the database, but the migrations table is missing.
            sqlx::Error::Database(_) => StoreError::SchemaMissing(e.to_string()),
            other => StoreError::from(other),
        })?;
    match applied {
        Some(v) if v >= latest => Ok(()),
        other => Err(StoreError::SchemaMissing(format!(
            "latest applied migration {other:?}, this relay needs {latest}"
        ))),
    }
}

/// A fresh fence on its own. The relay advances its fence through [`claim_window`]; this reads
/// the same rule alone, for inspection and tests.
pub async fn commit_fence(pool: &PgPool) -> Result<Fence, StoreError> {
    let (fence_seq, writers): (i64, Vec<String>) =
        sqlx::query_as(include_str!("sql/commit_fence.sql"))
            .fetch_one(pool)
            .await?;
    Ok(Fence { fence_seq, writers })
}

/// What the relay knows between claims about where it may claim: the commit fence, a newer
/// fence still waiting for its writers, and the pending floor. `Default` (all 0, nothing
/// waiting) is always right, only slower.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimWindow {
    /// Every committed row at or below it is visible or never will be.
    pub safe: i64,
    /// A fence read earlier, safe once none of its writers is running.
    pub waiting: Option<Fence>,
    /// No pending row at or below `safe` has a lower `commit_seq` (see [`pending_floor`]).
    pub floor: i64,
}

/// Advances the window in one statement (`outbox.claim_window`): the waiting fence's writers
/// checked, a new fence read, the floor raised. A claim sent after it sees every row up to
/// the returned `safe`.
pub async fn claim_window(pool: &PgPool, before: &ClaimWindow) -> Result<ClaimWindow, StoreError> {
    let (safe, waiting_seq, waiting_writers, floor): (i64, Option<i64>, Option<Vec<String>>, i64) =
        sqlx::query_as(include_str!("sql/claim_window.sql"))
            .bind(before.safe)
            .bind(before.waiting.as_ref().map(|f| f.fence_seq))
            .bind(before.waiting.as_ref().map(|f| f.writers.as_slice()))
            .bind(before.floor)
            .fetch_one(pool)
            .await?;
    let waiting = waiting_seq.map(|fence_seq| Fence {
        fence_seq,
        writers: waiting_writers.unwrap_or_default(),
    });
    Ok(ClaimWindow {
        safe,
        waiting,
        floor,
    })
}

/// What a claim leaves out and is bounded by; shared by [`claim`] and [`claim_other_keys`],
/// whose first twelve parameters are the same.
#[derive(Debug, Clone, Copy)]
pub struct ClaimArgs<'a> {
    /// The commit fence: nothing above it may be claimed yet.
    pub fence_seq: i64,
    pub limit: u32,
    pub lease: LeaseRef<'a>,
    /// Rows whose outcome is still being recorded.
    pub exclude: &'a [i64],
    /// Destinations held back after a publish timeout.
    pub held_back: &'a [String],
    /// No pending row has a lower `commit_seq` (see [`pending_floor`]); 0 is always safe.
    pub floor: i64,
    /// Which rows of the outbox this claim may take.
    pub partition: PartitionRef<'a>,
}

/// One partition of `relay.partitions` (rows with `outbox.key_partition(key, id, count) =
/// index`), claimed while the group lease is held by the partitioned replicas.
#[derive(Debug, Clone, Copy)]
pub struct PartitionRef<'a> {
    pub count: u32,
    pub index: u32,
    /// The group lease's name and holder; `None` when the outbox is not partitioned.
    pub group: Option<(&'a str, &'a str)>,
}

impl PartitionRef<'_> {
    /// The whole outbox, under one lease.
    pub const WHOLE: PartitionRef<'static> = PartitionRef {
        count: 1,
        index: 0,
        group: None,
    };
}

impl<'a> ClaimArgs<'a> {
    fn query(
        &self,
        sql: &'static str,
    ) -> sqlx::query::QueryAs<'a, sqlx::Postgres, OutboxMessage, sqlx::postgres::PgArguments> {
        sqlx::query_as(sql)
            .bind(self.fence_seq)
            .bind(i64::from(self.limit))
            .bind(self.lease.name)
            .bind(self.lease.holder)
            .bind(self.lease.token)
            .bind(self.exclude)
            .bind(self.held_back)
            .bind(self.floor)
            .bind(i32::try_from(self.partition.count).unwrap_or(i32::MAX))
            .bind(i32::try_from(self.partition.index).unwrap_or(i32::MAX))
            .bind(self.partition.group.map(|(name, _)| name))
            .bind(self.partition.group.map(|(_, holder)| holder))
    }
}

/// The lowest `commit_seq` of any pending row at or below `fence_seq` (`fence_seq + 1` if
/// none), searched from `from`, an earlier floor or 0. It never decreases, so the claims can
/// start their index scans there instead of walking entries of rows published since the last
/// vacuum, which an open snapshot anywhere in the cluster keeps alive. The relay raises its
/// floor through [`claim_window`]; this asks for it alone, for inspection and tests.
pub async fn pending_floor(pool: &PgPool, from: i64, fence_seq: i64) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(include_str!("sql/pending_floor.sql"))
        .bind(from)
        .bind(fence_seq)
        .fetch_one(pool)
        .await?)
}

pub async fn claim(pool: &PgPool, args: &ClaimArgs<'_>) -> Result<Vec<OutboxMessage>, StoreError> {
    Ok(args
        .query(include_str!("sql/claim.sql"))
        .fetch_all(pool)
        .await?)
}

/// What [`claim_other_keys`] leaves out besides what [`claim`] does.
#[derive(Debug, Clone, Copy)]
pub struct OtherKeys<'a> {
    /// The highest `commit_seq` of the batch already claimed.
    pub after_seq: i64,
    /// `(destination, message_key)` pairs already claimed.
    pub claimed: &'a [(&'a str, &'a str)],
    /// How many pending rows past `after_seq` to look at.
    pub lookahead: u32,
}

/// Up to `args.limit` claimable rows committed after `other.after_seq`, skipping the keys
/// already claimed; otherwise as [`claim`].
pub async fn claim_other_keys(
    pool: &PgPool,
    args: &ClaimArgs<'_>,
    other: OtherKeys<'_>,
) -> Result<Vec<OutboxMessage>, StoreError> {
    let (destinations, keys): (Vec<&str>, Vec<&str>) = other.claimed.iter().copied().unzip();
    Ok(args
        .query(include_str!("sql/claim_other_keys.sql"))
        .bind(other.after_seq)
        .bind(destinations)
        .bind(keys)
        .bind(i64::from(other.lookahead))
        .fetch_all(pool)
        .await?)
}

/// The committed rows not yet published.
#[derive(Debug, FromRow)]
pub struct Backlog {
    pub pending: i64,
    /// Age of the oldest (0 when none).
    pub oldest_age_secs: f64,
    /// The lowest `commit_seq` among them, for the check that the claims passed none.
    pub lowest_seq: Option<i64>,
}

/// One query for the gauges, `outbox-relay status` and the passed-row check.
pub async fn backlog(pool: &PgPool) -> Result<Backlog, StoreError> {
    Ok(sqlx::query_as(include_str!("sql/backlog.sql"))
        .fetch_one(pool)
        .await?)
}

/// What becomes of a row once the broker confirmed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnPublished {
    /// Marked `published`; the sweeper deletes it after `sweeper.published_retention`.
    Mark,
    /// Deleted at once (`sweeper.published_retention = "0s"`).
    Delete,
}

/// Writes a batch of publish outcomes: confirmed rows as `on_published` says, failures as
/// retries or `dead`. Returns each row's new status; rows no longer committed are left out,
/// and so is every row if `lease` changed hands since the claim (its new holder owns them).
pub async fn record_outcomes(
    pool: &PgPool,
    lease: LeaseRef<'_>,
    outcomes: &[(RowId, Outcome)],
    max_attempts: u32,
    on_published: OnPublished,
) -> Result<Vec<Recorded>, StoreError> {
    let mut confirmed = Vec::new();
    let mut failed = Failures::default();
    for (id, outcome) in outcomes {
        match outcome {
            Outcome::Published => confirmed.push(id.0),
            Outcome::Failed {
                error,
                permanent,
                backoff,
            } => {
                failed.ids.push(id.0);
                failed.errors.push(error.as_str());
                failed.permanent.push(*permanent);
                failed
                    .backoff_ms
                    .push(i64::try_from(backoff.as_millis()).unwrap_or(i64::MAX));
            }
        }
    }
    if failed.ids.is_empty() {
        return finish_published(pool, lease, &confirmed, on_published).await;
    }
    if confirmed.is_empty() {
        return failed.record(pool, lease, max_attempts).await;
    }
    // Both kinds, rarely: one transaction, so that a retry after an error repeats neither half.
    let mut tx = pool.begin().await?;
    let mut recorded = finish_published(&mut *tx, lease, &confirmed, on_published).await?;
    recorded.extend(failed.record(&mut *tx, lease, max_attempts).await?);
    tx.commit().await?;
    Ok(recorded)
}

/// Marks or deletes the rows the broker confirmed.
async fn finish_published<'e>(
    db: impl sqlx::PgExecutor<'e>,
    lease: LeaseRef<'_>,
    ids: &[i64],
    on_published: OnPublished,
) -> Result<Vec<Recorded>, StoreError> {
    let statement = match on_published {
        OnPublished::Mark => include_str!("sql/mark_published.sql"),
        OnPublished::Delete => include_str!("sql/delete_published.sql"),
    };
    let rows: Vec<i64> = sqlx::query_scalar(statement)
        .bind(ids)
        .bind(lease.name)
        .bind(lease.holder)
        .bind(lease.token)
        .fetch_all(db)
        .await?;
    Ok(rows
        .into_iter()
        .map(|id| Recorded {
            id: RowId(id),
            status: MessageStatus::Published,
        })
        .collect())
}

/// Failed publishes as the columns `record_outcomes.sql` unnests.
#[derive(Default)]
struct Failures<'a> {
    ids: Vec<i64>,
    errors: Vec<&'a str>,
    permanent: Vec<bool>,
    backoff_ms: Vec<i64>,
}

impl Failures<'_> {
    async fn record<'e>(
        &self,
        db: impl sqlx::PgExecutor<'e>,
        lease: LeaseRef<'_>,
        max_attempts: u32,
    ) -> Result<Vec<Recorded>, StoreError> {
        let rows: Vec<(i64, MessageStatus)> =
            sqlx::query_as(include_str!("sql/record_outcomes.sql"))
                .bind(&self.ids)
                .bind(&self.errors)
                .bind(&self.permanent)
                .bind(&self.backoff_ms)
                .bind(i64::from(max_attempts))
                .bind(lease.name)
                .bind(lease.holder)
                .bind(lease.token)
                .fetch_all(db)
                .await?;
        Ok(rows
            .into_iter()
            .map(|(id, status)| Recorded {
                id: RowId(id),
                status,
            })
            .collect())
    }
}

/// Ends one batch of expired prepared rows: rolled back, or parked as dead when they name a
/// producer. Returns the new status of each.
pub async fn expire_prepared(pool: &PgPool, limit: u32) -> Result<Vec<MessageStatus>, StoreError> {
    Ok(sqlx::query_scalar(include_str!("sql/expire_prepared.sql"))
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await?)
}

/// Deletes one batch of `status` rows finished more than `retention` ago; returns how many.
pub async fn purge(
    pool: &PgPool,
    status: MessageStatus,
    retention: Duration,
    limit: u32,
) -> Result<u64, StoreError> {
    Ok(sqlx::query(include_str!("sql/purge.sql"))
        .bind(status)
        .bind(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .execute(pool)
        .await?
        .rows_affected())
}
