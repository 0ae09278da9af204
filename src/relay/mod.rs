//! The relay loop: advance the commit fence, claim a batch, publish it, record the outcomes.
//!
//! Nothing is written to a row before the broker has answered for it, so a crash at any
//! point leaves the row `committed` and it is sent again: a re-send, never a gap.
//! Ordering: rows of one `(destination, message_key)` form a chain that is published one
//! message at a time, in `commit_seq` order; a failure stops the rest of its chain for this
//! batch, and the claim query keeps later rows back until the failed one is due again.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::health::{Health, Heartbeat};
use crate::lease::{Held, Lease};
use crate::publish::{FailureReason, Publisher};
use crate::store::{self, OutboxMessage, Outcome, RowId, StoreError};
use crate::telemetry::instruments;

mod chains;
mod config;
mod exactly_once;
mod keys;
mod pacing;
mod pipeline;
mod slow;
mod state;
mod window;

#[cfg(test)]
mod tests;

use chains::{cut_chains, into_chains, key_of};
pub use config::{RelayConfig, RetryConfig};
pub use exactly_once::ExactlyOnce;
use keys::ChainEnd;
use pacing::{Found, Pacing};
use pipeline::Pipeline;
use slow::SlowDestinations;
use state::*;
use window::FenceTracker;
pub use window::{PassedFloor, PassedFloors};

/// Messages of one key per batch while other keys' rows may be waiting behind them.
const KEY_SHARE: usize = 32;
/// How many pending rows past a batch dominated by few keys are searched for other keys.
const LOOKAHEAD: u32 = 20_000;

/// How long a confirmed outcome may wait to be written with later ones: under a steady load,
/// one outcome update per few milliseconds instead of one per answer costs Postgres far less
/// per row. Half a batch answered is written at once.
const RECORD_DELAY: Duration = Duration::from_millis(10);

pub struct Relay<P> {
    pool: PgPool,
    publisher: Arc<P>,
    config: RelayConfig,
    retry: RetryConfig,
    on_published: store::OnPublished,
    lease: Arc<Lease>,
    partition: Partition,
    health: Arc<Health>,
    slow: SlowDestinations,
    passed: Arc<PassedFloor>,
    /// When shutdown was first noticed: one grace period covers draining and recording.
    stopping_since: OnceLock<tokio::time::Instant>,
    /// Bound of one statement's answer (`DatabaseConfig::call_timeout`).
    db_timeout: Duration,
    /// While an outcome update runs: when its current attempt or retry wait ends, which the
    /// loop announces as its own next turn (it may wait on nothing else).
    record_until: std::sync::Mutex<Option<tokio::time::Instant>>,
}

/// What either relay loop (this one, or [`ExactlyOnce`]) runs with; app.rs wires it.
pub struct Parts {
    pub pool: PgPool,
    pub config: RelayConfig,
    pub retry: RetryConfig,
    pub on_published: store::OnPublished,
    pub lease: Arc<Lease>,
    /// The rows `lease` covers: the whole outbox, or one key partition.
    pub partition: Partition,
    pub health: Arc<Health>,
    /// Bound of one statement's answer (`DatabaseConfig::call_timeout`).
    pub db_timeout: Duration,
}

/// The rows a relay loop publishes: the whole outbox under its one lease, or one of
/// `relay.partitions` under that partition's lease while the group lease is held.
#[derive(Debug, Clone)]
pub struct Partition {
    pub count: u32,
    pub index: u32,
    /// The group lease's name and the holder the partitioned replicas share.
    pub group: Option<(String, String)>,
}

impl Partition {
    pub fn whole() -> Self {
        Self {
            count: 1,
            index: 0,
            group: None,
        }
    }

    pub fn as_ref(&self) -> store::PartitionRef<'_> {
        store::PartitionRef {
            count: self.count,
            index: self.index,
            group: self.group.as_ref().map(|(n, h)| (n.as_str(), h.as_str())),
        }
    }
}

impl<P: Publisher> Relay<P> {
    pub fn new(parts: Parts, publisher: Arc<P>) -> Self {
        let Parts {
            pool,
            config,
            retry,
            on_published,
            lease,
            partition,
            health,
            db_timeout,
        } = parts;
        Self {
            pool,
            publisher,
            config,
            retry,
            on_published,
            lease,
            partition,
            health,
            slow: SlowDestinations::default(),
            passed: Arc::default(),
            stopping_since: OnceLock::new(),
            db_timeout,
            record_until: std::sync::Mutex::new(None),
        }
    }

    fn record_until(&self, until: Option<tokio::time::Instant>) {
        *self.record_until.lock().unwrap_or_else(|p| p.into_inner()) = until;
    }

    /// For the backlog check, which finds committed rows the claims passed (see [`PassedFloor`]).
    pub fn passed_floor(&self) -> Arc<PassedFloor> {
        self.passed.clone()
    }

    /// Resolves once `relay.shutdown_grace` has passed since shutdown began.
    async fn grace_over(&self, shutdown: &CancellationToken) {
        shutdown.cancelled().await;
        let since = *self.stopping_since.get_or_init(tokio::time::Instant::now);
        tokio::time::sleep_until(since + self.config.shutdown_grace).await;
    }

    fn backoff(&self) -> Backoff {
        Backoff {
            initial: self.retry.initial_backoff,
            max: self.retry.max_backoff,
        }
    }

    /// Runs until `shutdown` is cancelled, then lets the chains in flight finish (within
    /// `relay.shutdown_grace`), records their outcomes and returns.
    ///
    /// A continuous pipeline: claims, publishes and outcome updates run at the same time. A
    /// claim starts whenever less than half a batch of claimed rows is still unpublished (at
    /// once while the outbox has a backlog, after the [`Pacing`] wait otherwise) and leaves out
    /// every row in hand. Each claimed chain may start as soon as nothing of its key is in flight
    /// ([`KeyGate`](keys::KeyGate)), so no chain waits for the slowest chain of an earlier
    /// claim; it starts, in claim order, once fewer than `relay.max_in_flight` chains run. One
    /// outcome update runs at a time and takes everything answered since the last one, once half
    /// a batch is answered or the oldest answer has waited [`RECORD_DELAY`].
    ///
    /// This loop holds what runs (the claim, the outcome update, the chains) and the timers;
    /// the rows in hand and the chains waiting for a slot are the [`Pipeline`]'s, which it tells
    /// of every event.
    pub async fn run(self, shutdown: CancellationToken, beat: &Heartbeat) {
        let this = &self;
        let shutdown = &shutdown;
        let batch_size = self.config.batch_size.get() as usize;
        let max_in_flight = self.config.max_in_flight.get() as usize;
        let mut pipeline = Pipeline::new(batch_size);
        let mut fence = Some(FenceTracker::new(self.passed.clone()));
        let mut pacing = Pacing::default();
        let mut trouble = 0u32;
        let mut recording: Option<Recording<'_>> = None;
        let mut claiming: Option<Claiming<'_>> = None;
        let mut chains = FuturesUnordered::new();
        let mut claim_at = tokio::time::Instant::now();
        // When the oldest outcome not yet handed to an update has waited long enough.
        let mut record_at: Option<tokio::time::Instant> = None;
        loop {
            let stopping = shutdown.is_cancelled();
            let now = tokio::time::Instant::now();
            let room = pipeline.room();
            if claiming.is_none() && !stopping && room && now >= claim_at {
                let exclude = pipeline.claim_started();
                let mut tracker = fence.take().expect("one claim at a time");
                claiming = Some(Box::pin(async move {
                    let claimed = this.claim(&mut tracker, &exclude).await;
                    (tracker, claimed)
                }));
            }
            if pipeline.unrecorded() > 0 {
                record_at.get_or_insert(now + RECORD_DELAY);
            }
            if recording.is_none()
                && record_due(pipeline.unrecorded(), batch_size, record_at, now, stopping)
            {
                record_at = None;
                let outcomes = pipeline.take_outcomes();
                recording = Some(Box::pin(this.record(outcomes, shutdown, beat)));
            }
            // Each chain publishes one message at a time, so running chains are publishes in
            // flight. Draining, the rest start too: they stop before their first publish.
            while chains.len() < max_in_flight || stopping {
                let Some(queued) = pipeline.next_chain() else {
                    break;
                };
                chains.push(this.publish_chain(queued, shutdown));
            }
            if stopping && chains.is_empty() && claiming.is_none() && recording.is_none() {
                break;
            }
            let waiting_to_claim = claiming.is_none() && !stopping && room;
            // Liveness: this turn happened, and the next comes with an event (a claim, a
            // chain or an update, each bounded by a timeout) or at the earliest timer armed.
            let record_until = *self.record_until.lock().unwrap_or_else(|p| p.into_inner());
            let next_timer = [
                waiting_to_claim.then_some(claim_at),
                record_at.filter(|_| recording.is_none()),
                record_until.filter(|_| recording.is_some()),
            ]
            .into_iter()
            .flatten()
            .min();
            beat.beat_within(
                next_timer.map_or(Duration::ZERO, |t| t.saturating_duration_since(now)),
            );
            let event = tokio::select! {
                Some(ended) = chains.next(), if !chains.is_empty() => Event::Chain(ended),
                (tracker, claimed) = in_progress(claiming.as_mut()) => {
                    Event::Claimed(tracker, claimed)
                }
                () = in_progress(recording.as_mut()) => Event::Recorded,
                () = tokio::time::sleep_until(claim_at), if waiting_to_claim => Event::Wake,
                () = sleep_until_some(record_at), if recording.is_none() => Event::Wake,
                () = shutdown.cancelled(), if !stopping => Event::Wake,
                () = this.grace_over(shutdown), if stopping && !chains.is_empty() => {
                    Event::GraceOver
                }
            };
            match event {
                Event::Chain(ended) => {
                    pipeline.chain_ended(ended);
                    // Every chain answered by now in one turn: a turn per answer re-arms the
                    // timers and rebuilds the select at tens of thousands of answers a second.
                    while let Some(Some(ended)) = chains.next().now_or_never() {
                        pipeline.chain_ended(ended);
                    }
                }
                Event::Claimed(tracker, claimed) => {
                    claiming = None;
                    fence = Some(tracker);
                    let admit = match claimed {
                        // Draining: nothing more is published; the claimed rows stay committed.
                        Ok(_) if stopping => Vec::new(),
                        Ok(claimed) => {
                            trouble = 0;
                            let count: usize = claimed.iter().map(Vec::len).sum();
                            let found = Found::of(&claimed, count, batch_size);
                            let fence_pending = fence.as_ref().is_some_and(|f| f.is_pending());
                            let wait = pacing.next_wait(
                                count,
                                found,
                                self.config.poll_interval,
                                fence_pending,
                            );
                            claim_at = tokio::time::Instant::now() + wait.unwrap_or_default();
                            if count > 0 {
                                metrics::histogram!(instruments::BATCH_MESSAGES)
                                    .record(count as f64);
                            }
                            claimed
                        }
                        Err(e) => {
                            if let Some(f) = fence.as_mut() {
                                f.forget_floor();
                            }
                            trouble = trouble.saturating_add(1);
                            let delay = self.backoff().delay(trouble);
                            tracing::warn!(error = %e, retry_in = ?delay, "relay cycle failed");
                            claim_at = tokio::time::Instant::now() + delay;
                            Vec::new()
                        }
                    };
                    // A destination may have timed out since the claim began.
                    pipeline.claimed(admit, &self.slow.held_back());
                }
                Event::Recorded => {
                    recording = None;
                    pipeline.recorded();
                }
                Event::GraceOver => {
                    tracing::warn!(
                        grace = ?self.config.shutdown_grace,
                        "shutdown grace elapsed before every confirm arrived; unconfirmed messages stay committed and will be sent again"
                    );
                    chains.clear();
                    pipeline.grace_over();
                }
                Event::Wake => {}
            }
        }
        // The publisher is closed by its owner (app.rs): with key partitions one publisher
        // serves every partition's loop, and a loop stops at each hand-off.
        tracing::info!("relay stopped");
    }

    /// Claims the next batch as chains, leaving out the rows in `exclude` (being published or
    /// recorded). Empty while another replica holds the lease.
    async fn claim(
        &self,
        fence: &mut FenceTracker,
        exclude: &[i64],
    ) -> Result<Vec<Vec<OutboxMessage>>, CycleError> {
        // Standby: nothing to do until the lease is ours.
        let Some(held) = self.lease.current() else {
            return Ok(Vec::new());
        };
        let ready = self.publisher.ready().await;
        self.health.set_broker_up(ready.is_ok());
        ready.map_err(|e| CycleError::Broker(e.chain()))?;
        // Up to three statements: the window, the claim and the other keys' share.
        let claimed =
            store::within(3 * self.db_timeout, self.claim_chains(fence, held, exclude)).await;
        self.health.set_database_up(claimed.is_ok());
        Ok(claimed?)
    }

    async fn claim_chains(
        &self,
        fence: &mut FenceTracker,
        held: Held,
        exclude: &[i64],
    ) -> Result<Vec<Vec<OutboxMessage>>, StoreError> {
        let (safe, floor) = fence.advance(&self.pool).await?;
        let held_back = self.slow.held_back();
        let args = store::ClaimArgs {
            fence_seq: safe,
            limit: self.config.batch_size.get(),
            lease: self.lease.lease_ref(held),
            exclude,
            held_back: &held_back,
            floor,
            partition: self.partition.as_ref(),
        };
        let batch = store::claim(&self.pool, &args).await?;
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        self.share_with_other_keys(into_chains(batch), &args).await
    }

    /// A batch lasts as long as its longest chain, one broker round trip per message. Chains
    /// longer than [`KEY_SHARE`] are cut to it and rows of other keys committed after the batch
    /// are claimed too, so a huge backlog of one key delays other keys by about `KEY_SHARE`
    /// round trips instead of the whole backlog. The cut rows stay committed and lead their
    /// key's next batch, so each key's order is unchanged.
    async fn share_with_other_keys(
        &self,
        mut chains: Vec<Vec<OutboxMessage>>,
        args: &store::ClaimArgs<'_>,
    ) -> Result<Vec<Vec<OutboxMessage>>, StoreError> {
        if chains.iter().all(|c| c.len() <= KEY_SHARE) {
            return Ok(chains);
        }
        let after_seq = chains
            .iter()
            .flatten()
            .map(|m| m.commit_seq)
            .max()
            .unwrap_or(0);
        // Cut even when nobody else is waiting yet: rows committed while this batch runs are
        // then not held back by more than KEY_SHARE round trips either.
        cut_chains(&mut chains, KEY_SHARE);
        let kept: usize = chains.iter().map(Vec::len).sum();
        // The batch as a whole stays within relay.batch_size.
        let room = (args.limit as usize).saturating_sub(kept) as u32;
        if room == 0 {
            return Ok(chains);
        }
        let claimed: Vec<(&str, &str)> = chains
            .iter()
            .filter_map(|c| {
                let head = &c[0];
                Some((head.destination.as_str(), head.message_key.as_deref()?))
            })
            .collect();
        let others = store::claim_other_keys(
            &self.pool,
            &store::ClaimArgs {
                limit: room,
                ..*args
            },
            store::OtherKeys {
                after_seq,
                claimed: &claimed,
                lookahead: LOOKAHEAD,
            },
        )
        .await?;
        chains.extend(into_chains(others));
        Ok(chains)
    }

    /// Publishes a chain one message at a time, each after the previous one was confirmed, and
    /// stops at the first failure: later messages of the key must wait for it.
    async fn publish_chain(&self, queued: Queued, shutdown: &CancellationToken) -> Ended {
        let Queued { batch, chain } = queued;
        let key = key_of(&chain[0]);
        let mut outcomes = Vec::with_capacity(chain.len());
        let mut unattempted = Vec::new();
        let mut rest = chain.into_iter();
        let end = loop {
            let Some(message) = rest.next() else {
                break ChainEnd::Finished;
            };
            // Draining: start nothing new. Or the lease ran out (paused, cut off): another
            // replica may own the outbox now.
            if shutdown.is_cancelled() || self.lease.current().is_none() {
                unattempted.push(message.id);
                break ChainEnd::Stopped;
            }
            let outcome = self.publish_one(&message).await;
            let failed = matches!(outcome, Outcome::Failed { .. });
            outcomes.push((message.id, outcome, Logged::of(&message)));
            if failed {
                break ChainEnd::Failed;
            }
        };
        unattempted.extend(rest.map(|m| m.id));
        Ended {
            batch,
            key,
            end,
            outcomes,
            unattempted,
        }
    }

    async fn publish_one(&self, message: &OutboxMessage) -> Outcome {
        let started = std::time::Instant::now();
        match self.publisher.publish(message).await {
            Ok(()) => {
                // Beside commit-to-publish: tells a slow broker from rows waiting in the relay.
                metrics::histogram!(instruments::BROKER_ACK)
                    .record(started.elapsed().as_secs_f64());
                self.slow.confirmed(&message.destination);
                Outcome::Published
            }
            Err(e) => {
                if e.reason() == FailureReason::Timeout {
                    self.slow.timed_out(&message.destination, &self.backoff());
                }
                metrics::counter!(
                    instruments::PUBLISH_FAILURES,
                    "destination" => message.destination.clone(),
                    "reason" => e.reason().as_str()
                )
                .increment(1);
                let failures = u32::try_from(message.attempts).unwrap_or(0) + 1;
                tracing::warn!(
                    message_id = %message.message_id,
                    destination = %message.destination,
                    attempt = failures,
                    error = %e.chain(),
                    "publish failed"
                );
                Outcome::Failed {
                    error: e.chain(),
                    permanent: e.is_permanent(),
                    backoff: self.backoff().delay(failures),
                }
            }
        }
    }

    /// Writes outcomes, retrying while the database is unreachable. If it stays unreachable
    /// past shutdown, the rows stay committed and are sent again later.
    async fn record(
        &self,
        outcomes: Vec<Recordable>,
        shutdown: &CancellationToken,
        beat: &Heartbeat,
    ) {
        let logged: HashMap<RowId, Logged> =
            outcomes.iter().map(|(id, _, l)| (*id, l.clone())).collect();
        let rows: Vec<(RowId, Outcome)> = outcomes.into_iter().map(|(id, o, _)| (id, o)).collect();
        let deadline = self.grace_over(shutdown);
        tokio::pin!(deadline);
        let mut failures = 0u32;
        loop {
            let attempt = store::record_outcomes(
                &self.pool,
                self.lease.last_ref(),
                &rows,
                self.retry.max_attempts.get(),
                self.on_published,
            );
            self.record_until(Some(tokio::time::Instant::now() + self.db_timeout));
            match store::within(self.db_timeout, attempt).await {
                Ok(recorded) => {
                    self.record_until(None);
                    for r in &recorded {
                        if let Some(l) = logged.get(&r.id) {
                            l.observe(r.status);
                        }
                    }
                    return;
                }
                Err(e) => {
                    failures += 1;
                    let delay = self.backoff().delay(failures);
                    tracing::warn!(error = %e, retry_in = ?delay, rows = rows.len(), "cannot record publish outcomes");
                    // Retrying through an outage is a turn too, however long the backoff.
                    self.record_until(Some(tokio::time::Instant::now() + delay));
                    beat.beat_within(delay);
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = &mut deadline => {
                            tracing::warn!(rows = rows.len(), "giving up recording outcomes at shutdown; those rows will be sent again");
                            self.record_until(None);
                            return;
                        }
                    }
                }
            }
        }
    }
}
