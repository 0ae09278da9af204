//! Scheduled maintenance: expire undecided prepared rows, purge finished rows past retention.
//! Each runs on its own interval and works in bounded batches until a short batch.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::{Checks, DAY};
use crate::health::Heartbeat;
use crate::lease::Lease;
use crate::store::{self, MessageStatus, StoreError};
use crate::telemetry::instruments;

pub struct Sweeper {
    pool: PgPool,
    config: SweeperConfig,
    /// The schedules run only on the replica that holds the lease; `None` runs them always.
    lease: Option<Arc<Lease>>,
    /// Bound of one statement's answer (`DatabaseConfig::call_timeout`).
    db_timeout: Duration,
}

impl Sweeper {
    pub fn new(
        pool: PgPool,
        config: SweeperConfig,
        lease: Option<Arc<Lease>>,
        db_timeout: Duration,
    ) -> Self {
        Self {
            pool,
            config,
            lease,
            db_timeout,
        }
    }

    /// Every `sweeper.interval`: prepared rows past `expires_at` become `rolled_back`, or
    /// `dead` when they name a producer (check-back's safety rule).
    pub async fn run_expiry(&self, shutdown: CancellationToken, beat: &Heartbeat) {
        self.every(
            self.config.interval,
            &shutdown,
            beat,
            || self.expire_once(&shutdown, Some(beat)),
            "expire",
        )
        .await
    }

    /// Every `sweeper.purge_interval`: finished rows past their retention are deleted.
    pub async fn run_purge(&self, shutdown: CancellationToken, beat: &Heartbeat) {
        self.every(
            self.config.purge_interval,
            &shutdown,
            beat,
            || self.purge_once(&shutdown, Some(beat)),
            "purge",
        )
        .await
    }

    async fn every<F, Fut>(
        &self,
        period: Duration,
        shutdown: &CancellationToken,
        beat: &Heartbeat,
        mut job: F,
        name: &str,
    ) where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<u64, StoreError>>,
    {
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // A job is a few bounded statements per batch; the next turn is due a period on.
            beat.beat_within(period);
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            if self.lease.as_ref().is_some_and(|l| l.current().is_none()) {
                continue;
            }
            match job().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(job = name, rows = n, "sweeper"),
                Err(e) => {
                    tracing::warn!(job = name, error = %e, "sweeper run failed; will retry next interval")
                }
            }
        }
    }

    /// Ends every expired prepared row, in batches; returns how many. Each batch is a
    /// turn of `beat`: a long run is progress, however long it takes.
    pub async fn expire_once(
        &self,
        shutdown: &CancellationToken,
        beat: Option<&Heartbeat>,
    ) -> Result<u64, StoreError> {
        let limit = self.config.batch_size.get();
        let mut total = 0;
        loop {
            beat.inspect(|b| b.beat());
            let ended =
                store::within(self.db_timeout, store::expire_prepared(&self.pool, limit)).await?;
            let parked = ended.iter().filter(|s| **s == MessageStatus::Dead).count() as u64;
            let n = ended.len() as u64;
            metrics::counter!(instruments::EXPIRED, "outcome" => "rolled_back")
                .increment(n - parked);
            metrics::counter!(instruments::EXPIRED, "outcome" => "dead").increment(parked);
            if parked > 0 {
                tracing::warn!(
                    rows = parked,
                    "prepared messages expired undecided by their producer; parked as dead (`dead list`, then `dead requeue` or `dead discard`)"
                );
            }
            total += n;
            if n < u64::from(limit) || shutdown.is_cancelled() {
                return Ok(total);
            }
        }
    }

    /// Deletes every finished row past its retention, in batches; returns how many.
    pub async fn purge_once(
        &self,
        shutdown: &CancellationToken,
        beat: Option<&Heartbeat>,
    ) -> Result<u64, StoreError> {
        let limit = self.config.batch_size.get();
        let mut total = 0;
        for (status, retention) in [
            (MessageStatus::Published, self.config.published_retention),
            (MessageStatus::RolledBack, self.config.rolled_back_retention),
            (MessageStatus::Dead, self.config.dead_retention),
        ] {
            loop {
                beat.inspect(|b| b.beat());
                let n = store::within(
                    self.db_timeout,
                    store::purge(&self.pool, status, retention, limit),
                )
                .await?;
                metrics::counter!(instruments::PURGED, "status" => status.as_str()).increment(n);
                total += n;
                if n < u64::from(limit) || shutdown.is_cancelled() {
                    break;
                }
            }
        }
        Ok(total)
    }
}

/// The `[sweeper]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SweeperConfig {
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    #[serde(with = "humantime_serde")]
    pub purge_interval: Duration,
    pub batch_size: std::num::NonZeroU32,
    #[serde(with = "humantime_serde")]
    pub published_retention: Duration,
    #[serde(with = "humantime_serde")]
    pub rolled_back_retention: Duration,
    #[serde(with = "humantime_serde")]
    pub dead_retention: Duration,
}

impl Default for SweeperConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            purge_interval: Duration::from_secs(60),
            batch_size: std::num::NonZeroU32::new(1000).expect("non-zero"),
            published_retention: Duration::from_secs(24 * 3600),
            rolled_back_retention: Duration::from_secs(24 * 3600),
            dead_retention: Duration::from_secs(14 * 24 * 3600),
        }
    }
}

impl SweeperConfig {
    /// A retention of zero keeps no published history: the relay deletes each row as soon as
    /// the broker confirmed it, which costs the database far less than marking it.
    pub fn on_published(&self) -> store::OnPublished {
        if self.published_retention.is_zero() {
            store::OnPublished::Delete
        } else {
            store::OnPublished::Mark
        }
    }

    pub(crate) fn check(&self, c: &mut Checks) {
        c.duration("sweeper.interval", self.interval, DAY);
        c.duration("sweeper.purge_interval", self.purge_interval, DAY);
        // Zero retentions are allowed: purge (or, for published rows, delete) at once.
        for (key, value) in [
            ("sweeper.published_retention", self.published_retention),
            ("sweeper.rolled_back_retention", self.rolled_back_retention),
            ("sweeper.dead_retention", self.dead_retention),
        ] {
            c.at_most(key, value, 3650 * DAY);
        }
    }
}
