//! Check-back: the lease holder asks a prepared row's producer whether the writer committed
//! it, and applies the answer (docs/check-back.md). `committed` commits the row as
//! `outbox.commit` would; `rolled_back` rolls it back; anything else asks again later. No
//! answer ever rolls a row back: at `expires_at` the sweeper parks an undecided row as dead.

mod client;
mod config;

pub use client::{Answer, ProducerClient, SetupError, Undecided};
pub use config::{valid_producer_name, CheckBackConfig, ProducerConfig};

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::backoff::Backoff;
use crate::health::Heartbeat;
use crate::lease::Lease;
use crate::store::check_back::{self as sql, CheckCandidate, Later};
use crate::store::{within, StoreError};
use crate::telemetry::instruments;

/// Unconfigured producer names logged, at most: the names come from rows, and a writer that
/// invents one per row must not grow the relay's memory.
const LOGGED_NAMES: usize = 100;

pub struct CheckBack {
    pool: PgPool,
    config: CheckBackConfig,
    producers: BTreeMap<String, ProducerClient>,
    /// Checks run only on the replica that holds the lease.
    lease: Arc<Lease>,
    db_timeout: Duration,
    unconfigured_logged: Mutex<HashSet<String>>,
}

impl CheckBack {
    /// Builds a client per configured producer; fails on TLS material that cannot be used.
    pub fn new(
        pool: PgPool,
        config: CheckBackConfig,
        lease: Arc<Lease>,
        db_timeout: Duration,
    ) -> Result<Self, SetupError> {
        let producers = config
            .producers
            .iter()
            .map(|(name, p)| Ok((name.clone(), ProducerClient::new(name, p)?)))
            .collect::<Result<_, SetupError>>()?;
        for name in config.producers.keys() {
            for outcome in OUTCOMES {
                metrics::counter!(instruments::CHECKS, "producer" => name.clone(), "outcome" => outcome)
                    .increment(0);
            }
        }
        metrics::counter!(instruments::CHECKS_UNCONFIGURED).increment(0);
        Ok(Self {
            pool,
            config,
            producers,
            lease,
            db_timeout,
            unconfigured_logged: Mutex::new(HashSet::new()),
        })
    }

    /// Every `check_back.interval` while holding the lease: asks about the rows due, a batch at
    /// a time until a batch comes back short.
    pub async fn run(&self, shutdown: CancellationToken, beat: &Heartbeat) {
        let mut ticker = tokio::time::interval(self.config.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            beat.beat_within(self.config.interval);
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            while self.lease.current().is_some() && !shutdown.is_cancelled() {
                match self.round(&shutdown, beat).await {
                    Ok(asked) if asked == self.config.batch_size.get() as usize => {}
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "check-back failed; will retry next interval");
                        break;
                    }
                }
            }
        }
    }

    /// One batch: asks about each due row, at most `concurrency` at once, then applies the
    /// answers. Returns how many rows were due.
    pub async fn round(
        &self,
        shutdown: &CancellationToken,
        beat: &Heartbeat,
    ) -> Result<usize, StoreError> {
        let due = within(
            self.db_timeout,
            sql::due_checks(
                &self.pool,
                self.config.check_after,
                self.config.batch_size.get(),
            ),
        )
        .await?;
        // Each bounded step beats: a statement (database.call_timeout) or a check (the
        // producer's timeout, which the configuration keeps below the stall bound).
        beat.beat();
        let asked = due.len();
        let answers = futures::stream::iter(due)
            .map(|row| async move {
                let answer = self.ask(&row).await;
                beat.beat();
                (row, answer)
            })
            .buffer_unordered(self.config.concurrency.get() as usize)
            .collect::<Vec<_>>();
        // On shutdown the answers in flight are dropped: those rows are asked again by the
        // next holder of the lease, which is always safe.
        let answers = tokio::select! {
            a = answers => a,
            _ = shutdown.cancelled() => return Ok(0),
        };
        self.apply(answers, beat).await?;
        Ok(asked)
    }

    async fn ask(&self, row: &CheckCandidate) -> Option<Answer> {
        let Some(client) = self.producers.get(&row.producer) else {
            metrics::counter!(instruments::CHECKS_UNCONFIGURED).increment(1);
            let mut logged = self
                .unconfigured_logged
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if logged.len() < LOGGED_NAMES && logged.insert(row.producer.clone()) {
                tracing::warn!(
                    producer = %row.producer,
                    message_id = %row.message_id,
                    "a prepared message names a producer not in check_back.producers; it is never called, and the message is parked as dead at expires_at unless its writer decides it"
                );
            }
            return None;
        };
        let answer = client.ask(row).await;
        let outcome = match &answer {
            Answer::Committed => "committed",
            Answer::RolledBack => "rolled_back",
            Answer::Undecided(u) => u.outcome(),
        };
        metrics::counter!(instruments::CHECKS, "producer" => row.producer.clone(), "outcome" => outcome)
            .increment(1);
        if let Answer::Undecided(u) = &answer {
            if !matches!(u, Undecided::Unknown) {
                tracing::debug!(producer = %row.producer, message_id = %row.message_id, error = %u, "check-back got no answer");
            }
        }
        Some(answer)
    }

    async fn apply(
        &self,
        answers: Vec<(CheckCandidate, Option<Answer>)>,
        beat: &Heartbeat,
    ) -> Result<(), StoreError> {
        let backoff = Backoff {
            initial: self.config.initial_backoff,
            max: self.config.max_backoff,
        };
        let (mut commit, mut roll_back, mut later) = (Vec::new(), Vec::new(), Vec::new());
        for (row, answer) in answers {
            let reason = match answer {
                Some(Answer::Committed) => {
                    commit.push(row.message_id);
                    continue;
                }
                Some(Answer::RolledBack) => {
                    roll_back.push(row.message_id);
                    continue;
                }
                Some(Answer::Undecided(u)) => {
                    format!("check-back to producer {}: {u}", row.producer)
                }
                None => format!(
                    "check-back: producer {} is not in check_back.producers",
                    row.producer
                ),
            };
            later.push(Later {
                message_id: row.message_id,
                delay: backoff.delay(u32::try_from(row.checks).unwrap_or(0).saturating_add(1)),
                reason,
            });
        }
        if !commit.is_empty() {
            let done = within(self.db_timeout, sql::commit_checked(&self.pool, &commit)).await?;
            log_decided(&done, "committed");
            beat.beat();
        }
        if !roll_back.is_empty() {
            let done = within(
                self.db_timeout,
                sql::roll_back_checked(&self.pool, &roll_back),
            )
            .await?;
            log_decided(&done, "rolled_back");
            beat.beat();
        }
        if !later.is_empty() {
            within(self.db_timeout, sql::check_later(&self.pool, &later)).await?;
        }
        Ok(())
    }
}

/// Every outcome label of `outbox_relay_check_back_total`.
const OUTCOMES: [&str; 6] = [
    "committed",
    "rolled_back",
    "unknown",
    "timeout",
    "unreachable",
    "bad_answer",
];

fn log_decided(ids: &[Uuid], status: &str) {
    for id in ids {
        tracing::info!(message_id = %id, status, "prepared message decided by check-back");
    }
}
