//! The database gauges, refreshed every `metrics.backlog_interval` on every replica: the
//! backlog (and the check that the claims passed no committed row), dead rows by destination,
//! the table's size and vacuum state, and what holds vacuum back.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::health::{Health, Heartbeat};
use crate::relay::PassedFloors;
use crate::store::{self, stats};
use crate::telemetry::instruments;

/// A horizon older than this, in time or in transactions, is logged with its holder (once per
/// holder), so that the operator reading the vacuum alert finds who to ask without a label
/// per session. A replication slot has no start time, hence the second bound.
const LONG_HORIZON: Duration = Duration::from_secs(300);
const LONG_HORIZON_XIDS: i64 = 10_000_000;

pub struct Gauges {
    pool: PgPool,
    health: Arc<Health>,
    passed: Arc<PassedFloors>,
    every: Duration,
    /// Bound of one statement's answer (`DatabaseConfig::call_timeout`).
    db_timeout: Duration,
    /// Destinations whose dead gauge shows dead rows: one that has none any more is set to 0
    /// (gauges never expire, so it would otherwise keep its last count).
    dead_shown: HashSet<String>,
    /// The holder last logged for a long horizon.
    logged_holder: Option<String>,
}

impl Gauges {
    pub fn new(
        pool: PgPool,
        health: Arc<Health>,
        passed: Arc<PassedFloors>,
        every: Duration,
        db_timeout: Duration,
    ) -> Self {
        Self {
            pool,
            health,
            passed,
            every,
            db_timeout,
            dead_shown: HashSet::new(),
            logged_holder: None,
        }
    }

    pub async fn run(mut self, beat: Arc<Heartbeat>, shutdown: CancellationToken) {
        loop {
            self.refresh(&beat).await;
            instruments::keep_alive();
            beat.beat_within(self.every);
            tokio::select! {
                _ = tokio::time::sleep(self.every) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// One statement after the other, each bounded and each a turn of `beat`.
    async fn refresh(&mut self, beat: &Heartbeat) {
        let floors = self.passed.current();
        match store::within(self.db_timeout, store::backlog(&self.pool)).await {
            Ok(backlog) => {
                self.health.set_database_up(true);
                metrics::gauge!(instruments::PENDING).set(backlog.pending as f64);
                metrics::gauge!(instruments::OLDEST_PENDING_AGE).set(backlog.oldest_age_secs);
                PassedFloors::check(&floors, backlog.lowest_seq);
            }
            Err(e) => {
                self.health.set_database_up(false);
                tracing::warn!(error = %e, "cannot read the backlog");
                return;
            }
        }
        // The rest only informs; a failure is logged and the next round tries again.
        beat.beat();
        match store::within(self.db_timeout, stats::dead_by_destination(&self.pool)).await {
            Ok(rows) => self.show_dead(rows),
            Err(e) => tracing::warn!(error = %e, "cannot count dead rows"),
        }
        beat.beat();
        match store::within(self.db_timeout, stats::table_stats(&self.pool)).await {
            Ok(t) => {
                metrics::gauge!(instruments::TABLE_SIZE).set(t.table_bytes as f64);
                metrics::gauge!(instruments::INDEX_SIZE).set(t.index_bytes as f64);
                metrics::gauge!(instruments::DEAD_TUPLES).set(t.dead_tuples as f64);
                if let Some(ago) = t.vacuumed_secs_ago {
                    metrics::gauge!(instruments::LAST_AUTOVACUUM_AGE).set(ago);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the outbox table's statistics"),
        }
        beat.beat();
        match store::within(self.db_timeout, stats::vacuum_horizon(&self.pool)).await {
            Ok(h) => self.show_horizon(h),
            Err(e) => tracing::warn!(error = %e, "cannot read what holds vacuum back"),
        }
    }

    fn show_dead(&mut self, rows: Vec<(String, i64)>) {
        let now: HashSet<String> = rows.iter().map(|(d, _)| d.clone()).collect();
        for gone in self.dead_shown.difference(&now) {
            metrics::gauge!(instruments::DEAD_NOW, "destination" => gone.clone()).set(0.0);
        }
        for (destination, count) in rows {
            metrics::gauge!(instruments::DEAD_NOW, "destination" => destination).set(count as f64);
        }
        self.dead_shown = now;
    }

    fn show_horizon(&mut self, h: stats::VacuumHorizon) {
        metrics::gauge!(instruments::VACUUM_HORIZON_AGE).set(h.age_seconds);
        metrics::gauge!(instruments::VACUUM_HORIZON_XIDS).set(h.xid_age as f64);
        if h.age_seconds < LONG_HORIZON.as_secs_f64() && h.xid_age < LONG_HORIZON_XIDS {
            self.logged_holder = None;
            return;
        }
        if h.holder != self.logged_holder {
            tracing::warn!(
                holder = h.holder.as_deref().unwrap_or("unknown"),
                age_seconds = h.age_seconds.round(),
                xid_age = h.xid_age,
                "a long transaction holds back vacuum of the outbox; finished rows cannot be removed until it ends"
            );
            self.logged_holder = h.holder;
        }
    }
}
