//! All access to the outbox tables. Every statement lives in `src/store/*.sql` or in a named
//! function here; nothing else in the crate writes SQL.

pub mod stats;

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
    Database(sqlx::Error),
    #[error("TLS with the database failed (check sslmode, sslrootcert and the server's certificate): {0}")]
    Tls(sqlx::Error),
    #[error("invalid database.url: {0}")]
    Url(sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the outbox schema is missing or out of date (run `outbox-relay migrate`): {0}")]
    SchemaMissing(String),
    #[error("unexpected status `{0}` in outbox.messages")]
    UnknownStatus(String),
    #[error("no answer from the database within {0:?}")]
    Timeout(Duration),
}

/// `call` bounded by `limit` on the client side (see `DatabaseConfig::call_timeout`).
pub async fn within<T>(
    limit: Duration,
    call: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(limit, call)
        .await
        .unwrap_or(Err(StoreError::Timeout(limit)))
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        // A refused certificate surfaces as an I/O error carrying the rustls error.
        let tls = match &e {
            sqlx::Error::Tls(_) => true,
            sqlx::Error::Io(io) => io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>()),
            _ => false,
        };
        if tls {
            Self::Tls(e)
        } else {
            Self::Database(e)
        }
    }
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
    Ok(options
        .application_name("outbox-relay")
        .options([("jit", "off"), ("plan_cache_mode", "force_generic_plan")]))
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
    let applied: Option<i64> =
        sqlx::query_scalar("SELECT max(version) FROM outbox._sqlx_migrations WHERE success")
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
        sqlx::query_as("SELECT fence_seq, writers FROM outbox.commit_fence()")
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
        sqlx::query_as(
            "SELECT safe_seq, waiting_seq, waiting_writers, floor_seq
               FROM outbox.claim_window($1, $2, $3, $4)",
        )
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

/// The lease a claim runs under.
#[derive(Debug, Clone, Copy)]
pub struct LeaseRef<'a> {
    pub name: &'a str,
    pub holder: &'a str,
    pub token: i64,
}

/// What a claim leaves out and is bounded by; shared by [`claim`] and [`claim_other_keys`],
/// whose first seven parameters are the same.
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
    }
}

/// The lowest `commit_seq` of any pending row at or below `fence_seq` (`fence_seq + 1` if
/// none), searched from `from`, an earlier floor or 0. It never decreases, so the claims can
/// start their index scans there instead of walking entries of rows published since the last
/// vacuum, which an open snapshot anywhere in the cluster keeps alive. The relay raises its
/// floor through [`claim_window`]; this asks for it alone, for inspection and tests.
pub async fn pending_floor(pool: &PgPool, from: i64, fence_seq: i64) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar("SELECT outbox.pending_floor($1, $2)")
        .bind(from)
        .bind(fence_seq)
        .fetch_one(pool)
        .await?)
}

pub async fn claim(pool: &PgPool, args: &ClaimArgs<'_>) -> Result<Vec<OutboxMessage>, StoreError> {
    Ok(args
        .query(include_str!("store/claim.sql"))
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
        .query(include_str!("store/claim_other_keys.sql"))
        .bind(other.after_seq)
        .bind(destinations)
        .bind(keys)
        .bind(i64::from(other.lookahead))
        .fetch_all(pool)
        .await?)
}

/// Takes or renews a lease; returns its token if this holder has it now.
pub async fn acquire_lease(
    pool: &PgPool,
    name: &str,
    holder: &str,
    ttl: Duration,
) -> Result<Option<i64>, StoreError> {
    Ok(sqlx::query_scalar(include_str!("store/acquire_lease.sql"))
        .bind(name)
        .bind(holder)
        .bind(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX))
        .fetch_optional(pool)
        .await?)
}

/// Gives a lease up at once (clean shutdown), so a standby need not wait for it to expire.
pub async fn release_lease(pool: &PgPool, name: &str, holder: &str) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE outbox.relay_leases SET expires_at = now() WHERE name = $1 AND holder = $2 AND expires_at > now()",
    )
    .bind(name)
    .bind(holder)
    .execute(pool)
    .await?;
    Ok(())
}

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
    Ok(sqlx::query_as(
        "SELECT name, holder, token, acquired_at, expires_at, expires_at > now() AS held
           FROM outbox.relay_leases ORDER BY name",
    )
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
    Ok(sqlx::query_as(
        "SELECT count(*) AS pending,
                coalesce(extract(epoch FROM now() - min(committed_at)), 0)::float8 AS oldest_age_secs,
                min(commit_seq) AS lowest_seq
           FROM outbox.messages WHERE status = 'committed'",
    )
    .fetch_one(pool)
    .await?)
}

pub async fn count_by_status(pool: &PgPool) -> Result<Vec<(MessageStatus, i64)>, StoreError> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT status::text, count(*) FROM outbox.messages GROUP BY 1")
            .fetch_all(pool)
            .await?;
    let mut out: Vec<(MessageStatus, i64)> = MessageStatus::ALL.iter().map(|s| (*s, 0)).collect();
    for (status, n) in rows {
        let status: MessageStatus = status.parse()?;
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
    Ok(sqlx::query_as(
        "SELECT destination, count(*) AS count,
                (array_agg(last_error ORDER BY finished_at DESC NULLS LAST))[1] AS last_error
           FROM outbox.messages WHERE status = 'dead' GROUP BY destination ORDER BY destination",
    )
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
    Ok(sqlx::query_as(
        "SELECT message_id, destination, message_key, attempts, last_error, committed_at, finished_at
           FROM outbox.messages
          WHERE status = 'dead' AND ($1::text IS NULL OR destination = $1)
          ORDER BY commit_seq NULLS LAST, id
          LIMIT $2",
    )
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
    let n: i32 = sqlx::query_scalar("SELECT outbox.requeue_dead($1, $2)")
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
    let n = sqlx::query(
        "DELETE FROM outbox.messages
          WHERE status = 'dead'
            AND ($1::uuid[] IS NULL OR message_id = ANY ($1))
            AND ($2::text IS NULL OR destination = $2)",
    )
    .bind(ids)
    .bind(destination)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(i64::try_from(n).unwrap_or(i64::MAX))
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
/// retries or `dead`. Returns each row's new status; rows no longer committed are left out.
pub async fn record_outcomes(
    pool: &PgPool,
    outcomes: &[(RowId, Outcome)],
    max_attempts: u32,
    on_published: OnPublished,
) -> Result<Vec<Recorded>, StoreError> {
    let (confirmed, failed): (Vec<_>, Vec<_>) = outcomes
        .iter()
        .cloned()
        .partition(|(_, o)| matches!(o, Outcome::Published));
    let confirmed: Vec<i64> = confirmed.iter().map(|(id, _)| id.0).collect();
    if failed.is_empty() {
        return finish_published(pool, &confirmed, on_published).await;
    }
    if confirmed.is_empty() {
        return update_outcomes(pool, &failed, max_attempts).await;
    }
    // Both kinds, rarely: one transaction, so that a retry after an error repeats neither half.
    let mut tx = pool.begin().await?;
    let mut recorded = finish_published(&mut *tx, &confirmed, on_published).await?;
    recorded.extend(update_outcomes(&mut *tx, &failed, max_attempts).await?);
    tx.commit().await?;
    Ok(recorded)
}

/// Marks or deletes the rows the broker confirmed.
async fn finish_published<'e>(
    db: impl sqlx::PgExecutor<'e>,
    ids: &[i64],
    on_published: OnPublished,
) -> Result<Vec<Recorded>, StoreError> {
    let statement = match on_published {
        OnPublished::Mark => include_str!("store/mark_published.sql"),
        OnPublished::Delete => include_str!("store/delete_published.sql"),
    };
    let rows: Vec<i64> = sqlx::query_scalar(statement)
        .bind(ids)
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

async fn update_outcomes<'e>(
    db: impl sqlx::PgExecutor<'e>,
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
        .fetch_all(db)
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
