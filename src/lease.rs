//! Leadership: one replica publishes, the others stand by, coordinated through a lease row in
//! Postgres (no other coordination service).
//!
//! The holder renews every third of `ha.lease_ttl`. It trusts its lease only until
//! `sent + ttl * 4/5`, measured on its own monotonic clock from the moment it *sent* the
//! renewal, while the database keeps it until `executed + ttl` on its own clock. So a holder
//! that is paused (SIGSTOP, GC, VM freeze) or cut off stops publishing before the lease can
//! expire in the database and a standby can take it. The claim query also checks the lease
//! inside the database, so a replica that has not yet noticed the loss claims nothing.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use serde::{Deserialize, Serialize};

use crate::config::{Checks, DAY};
use crate::health::{Health, Heartbeat};
use crate::store::{self, LeaseRef};
use crate::telemetry::instruments;

/// What one renewal found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Ours, until the new local validity.
    Held,
    /// Another holder has it (or had it and it is not expired).
    NotHeld,
    /// The database did not answer: what was held stays held until its local validity ends.
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub token: i64,
    /// Publishing must stop at this instant unless the lease was renewed.
    pub valid_until: Instant,
}

pub struct Lease {
    pool: PgPool,
    name: String,
    ttl: Duration,
    holder: String,
    state: Mutex<Option<Held>>,
    /// The token of the last acquisition, kept after the lease is lost: the outcomes of rows
    /// claimed under it are written under it, and are refused once another replica took over.
    last_token: AtomicI64,
    /// Set for the outbox's single lease, whose holder is "the leader"; not for partitions.
    health: Option<Arc<Health>>,
    /// Bound of one statement's answer (`DatabaseConfig::call_timeout`).
    db_timeout: Duration,
}

impl Lease {
    /// The outbox's one lease (`relay.partitions = 1`); its holder is the leader.
    pub fn new(pool: PgPool, config: HaConfig, health: Arc<Health>, db_timeout: Duration) -> Self {
        let holder = config.effective_replica_id();
        let mut lease = Self::named(
            pool,
            config.lease_name,
            holder,
            config.lease_ttl,
            db_timeout,
        );
        lease.health = Some(health);
        lease
    }

    /// A lease of its own name (a partition's), held as `holder`.
    pub fn named(
        pool: PgPool,
        name: String,
        holder: String,
        ttl: Duration,
        db_timeout: Duration,
    ) -> Self {
        Self {
            pool,
            name,
            ttl,
            holder,
            state: Mutex::new(None),
            last_token: AtomicI64::new(0),
            health: None,
            db_timeout,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn set_leader(&self, v: bool) {
        if let Some(h) = &self.health {
            h.set_leader(v);
        }
    }

    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// The lease, if held and still within its local validity.
    pub fn current(&self) -> Option<Held> {
        let held = (*self.state.lock().unwrap_or_else(|p| p.into_inner()))?;
        (Instant::now() < held.valid_until).then_some(held)
    }

    pub fn lease_ref(&self, held: Held) -> LeaseRef<'_> {
        LeaseRef {
            name: &self.name,
            holder: &self.holder,
            token: held.token,
        }
    }

    /// The lease as last acquired, valid or not: outcomes are written under it, and the
    /// database refuses them once another replica holds it.
    pub fn last_ref(&self) -> LeaseRef<'_> {
        LeaseRef {
            name: &self.name,
            holder: &self.holder,
            token: self.last_token.load(Ordering::Acquire),
        }
    }

    /// Gives up the lease locally (publishing stops at once) after learning that another
    /// replica publishes: the next renewal finds out from the database who holds it.
    pub fn forfeit(&self) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.set_leader(false);
    }

    /// Acquires or renews once; updates the local state and the leader gauge. Returns whether
    /// the lease is held now.
    pub async fn tick(&self) -> bool {
        // A lease another holder has was cleared by the renewal; a failed one runs out by itself.
        self.renew().await;
        self.current().is_some()
    }

    /// As [`Lease::tick`], telling a lease another holder has from a renewal that failed.
    pub async fn renew(&self) -> Renewal {
        let ttl = self.ttl;
        let sent = Instant::now();
        let result = store::within(
            self.db_timeout,
            store::acquire_lease(&self.pool, &self.name, &self.holder, ttl),
        )
        .await;
        let was_leader = self.current().is_some();
        let renewal = match result {
            Ok(Some(acquired)) => {
                let token = acquired.token;
                let valid_until = sent + ttl - ttl / 5;
                *self.state.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(Held { token, valid_until });
                self.last_token.store(token, Ordering::Release);
                if let Some(gap) = acquired.unowned() {
                    metrics::histogram!(instruments::LEASE_UNOWNED).record(gap.as_secs_f64());
                }
                if !was_leader {
                    tracing::info!(holder = %self.holder, lease = %self.name, token, "acquired the lease: publishing");
                }
                Renewal::Held
            }
            Ok(None) => {
                *self.state.lock().unwrap_or_else(|p| p.into_inner()) = None;
                if was_leader {
                    tracing::warn!(holder = %self.holder, lease = %self.name, "lost the lease to another replica: standing by");
                }
                Renewal::NotHeld
            }
            Err(e) => {
                // Keep what we had: it runs out by itself at valid_until.
                tracing::warn!(lease = %self.name, error = %e, "cannot renew the lease");
                Renewal::Failed
            }
        };
        self.set_leader(self.current().is_some());
        renewal
    }

    /// Renews or tries to acquire every third of the lease ttl until shutdown.
    pub async fn run(&self, shutdown: CancellationToken, beat: &Heartbeat) {
        let period = self.ttl / 3;
        loop {
            self.tick().await;
            beat.beat_within(period);
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Gives the lease up after the relay has drained, so a standby takes over at once.
    pub async fn release(&self) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.set_leader(false);
        if let Err(e) = store::within(
            self.db_timeout,
            store::release_lease(&self.pool, &self.name, &self.holder),
        )
        .await
        {
            tracing::warn!(lease = %self.name, error = %e, "cannot release the lease; it expires by itself");
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}

/// The `[ha]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HaConfig {
    /// Replicas sharing this name compete for one lease; one publishes.
    pub lease_name: String,
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// This replica's name in the lease; empty means `$HOSTNAME` plus a random suffix.
    pub replica_id: String,
}

impl Default for HaConfig {
    fn default() -> Self {
        Self {
            lease_name: "default".to_string(),
            lease_ttl: Duration::from_secs(10),
            replica_id: String::new(),
        }
    }
}

impl HaConfig {
    /// The replica id to use: the configured one, or one derived for this process.
    pub fn effective_replica_id(&self) -> String {
        if !self.replica_id.is_empty() {
            return self.replica_id.clone();
        }
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "relay".into());
        format!("{host}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
    }

    pub(crate) fn check(&self, c: &mut Checks) {
        c.at_most("ha.lease_ttl", self.lease_ttl, DAY);
        if self.lease_ttl < Duration::from_millis(300) {
            c.issue("ha.lease_ttl", "must be at least 300ms");
        }
        if self.lease_name.is_empty() {
            c.issue("ha.lease_name", "must not be empty");
        }
    }
}
