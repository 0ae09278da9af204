//! The relay loop of exactly-once delivery into Kafka: on each new lease, initialise the
//! transactional producer (fencing earlier holders) and mark what the last committed
//! transaction named; then claim, send the rows and a progress record in one transaction,
//! commit, and mark (docs/ARCHITECTURE.md, "Exactly-once into Kafka").
//!
//! One transaction at a time: Kafka allows one open transaction per producer, and a key's
//! rows become visible in the order their transactions commit. The mark of a committed
//! transaction's rows runs while the next one gathers and sends: its rows stay out of claims
//! and are named by the next progress record until the mark is written.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::pacing::{Found, Pacing};
use super::state::Logged;
use super::window::{FenceTracker, PassedFloor};
use super::Parts;
use crate::backoff::Backoff;
use crate::health::Heartbeat;
use crate::lease::Held;
use crate::publish::kafka::{Delivered, TransactionError, Transactions};
use crate::publish::FailureReason;
use crate::store::{self, OutboxMessage, Outcome, RowId, StoreError};
use crate::telemetry::instruments;

/// The most rows one transaction gathers from several claims.
const MAX_ROWS: usize = 10_000;

pub struct ExactlyOnce {
    parts: Parts,
    transactions: Transactions,
    passed: Arc<PassedFloor>,
    /// `broker.kafka.transaction_interval`: how long one transaction gathers claimed rows.
    interval: Duration,
}

/// Where the loop stands with the lease it publishes under.
struct Holding {
    /// The lease token the producer was initialised for; a new token needs a new
    /// initialisation (it fences the earlier holder) and a read of the progress topic.
    token: Option<i64>,
    /// Rows committed in Kafka whose mark is not written yet (a mark failed, or a new holder
    /// read them from the progress topic): left out of claims, named again by the next
    /// progress record, and marked before the next claim.
    unmarked: Vec<RowId>,
    /// The mark under way, of the last committed transaction's rows.
    marking: Option<Marking>,
}

impl Holding {
    /// Every row committed in Kafka and not known to be marked.
    fn committed_unmarked(&self) -> Vec<RowId> {
        let marking = self.marking.iter().flat_map(|m| m.ids.iter());
        self.unmarked.iter().chain(marking).copied().collect()
    }

    /// Waits for the mark under way. Its rows join `unmarked` if it failed.
    async fn finish_mark(&mut self) -> Result<(), CycleError> {
        let Some(Marking { ids, task }) = self.marking.take() else {
            return Ok(());
        };
        let result = match task.await {
            Ok(marked) => marked.map_err(CycleError::from),
            Err(e) => Err(CycleError::Mark(e.to_string())),
        };
        if result.is_err() {
            self.unmarked.extend(ids);
        }
        result
    }
}

/// What writing outcomes needs, owned so that a mark's task can take it.
struct Recorder {
    pool: sqlx::PgPool,
    lease: Arc<crate::lease::Lease>,
    limit: Duration,
    max_attempts: u32,
    on_published: store::OnPublished,
}

impl Recorder {
    /// Writes outcomes within the database's call timeout; logs and counts them.
    async fn record(
        &self,
        outcomes: &[(RowId, Outcome)],
        logged: &HashMap<RowId, Logged>,
    ) -> Result<(), StoreError> {
        let recorded = store::record_outcomes(
            &self.pool,
            self.lease.last_ref(),
            outcomes,
            self.max_attempts,
            self.on_published,
        );
        for r in store::within(self.limit, recorded).await? {
            if let Some(l) = logged.get(&r.id) {
                l.observe(r.status);
            }
        }
        Ok(())
    }
}

/// A mark of committed rows running beside the next transaction.
struct Marking {
    ids: Vec<RowId>,
    task: tokio::task::JoinHandle<Result<(), StoreError>>,
}

impl ExactlyOnce {
    /// `interval`: `broker.kafka.transaction_interval`.
    pub fn new(parts: Parts, transactions: Transactions, interval: Duration) -> Self {
        Self {
            parts,
            transactions,
            passed: Arc::default(),
            interval,
        }
    }

    /// For the backlog check, as [`super::Relay::passed_floor`].
    pub fn passed_floor(&self) -> Arc<PassedFloor> {
        self.passed.clone()
    }

    fn backoff(&self) -> Backoff {
        Backoff {
            initial: self.parts.retry.initial_backoff,
            max: self.parts.retry.max_backoff,
        }
    }

    /// The longest one turn may take: gathering claims, then sending, committing or
    /// aborting (each bounded by `relay.publish_timeout`), then the mark.
    fn turn_bound(&self) -> Duration {
        self.interval + 3 * self.parts.config.publish_timeout + 6 * self.parts.db_timeout
    }

    /// Runs until `shutdown`; the transaction under way when it comes is finished first.
    pub async fn run(mut self, shutdown: CancellationToken, beat: &Heartbeat) {
        let mut fence = FenceTracker::new(self.passed.clone());
        let mut pacing = Pacing::default();
        let mut holding = Holding {
            token: None,
            unmarked: Vec::new(),
            marking: None,
        };
        let mut trouble = 0u32;
        while !shutdown.is_cancelled() {
            beat.beat_within(self.turn_bound().max(self.parts.config.poll_interval));
            let wait = match self.turn(&mut holding, &mut fence, &mut pacing).await {
                Ok(wait) => {
                    trouble = 0;
                    wait
                }
                Err(e) => {
                    fence.forget_floor();
                    trouble = trouble.saturating_add(1);
                    let delay = self.backoff().delay(trouble);
                    tracing::warn!(error = %e, retry_in = ?delay, "exactly-once cycle failed");
                    delay
                }
            };
            if !wait.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = shutdown.cancelled() => {}
                }
            }
        }
        if let Err(e) = holding.finish_mark().await {
            tracing::warn!(error = %e, "the last mark failed; the next holder completes it from the progress topic");
        }
        self.transactions.stop().await;
        tracing::info!("relay stopped");
    }

    /// One transaction, or the wait before the next look. Returns how long to wait.
    async fn turn(
        &mut self,
        holding: &mut Holding,
        fence: &mut FenceTracker,
        pacing: &mut Pacing,
    ) -> Result<Duration, CycleError> {
        let Some(held) = self.parts.lease.current() else {
            // Committed rows: a mark written after the lease is gone is still true.
            let _ = holding.finish_mark().await;
            if holding.token.take().is_some() {
                // Standing by: the next holder's initialisation fences this producer anyway.
                self.transactions.stop().await;
            }
            return Ok(self.parts.config.poll_interval);
        };
        if holding.token != Some(held.token) {
            // The progress topic names every committed row, marked or not.
            let _ = holding.finish_mark().await;
            let named = self.transactions.take_over().await.map_err(|e| {
                self.parts.health.set_broker_up(false);
                self.after_failure(holding, &e);
                CycleError::TakeOver(e)
            })?;
            self.parts.health.set_broker_up(true);
            tracing::info!(
                transactional_id = self.transactions.id(),
                rows = named.len(),
                "initialised the transactional producer; marking what the last committed transaction carried"
            );
            holding.token = Some(held.token);
            holding.unmarked = named;
        }
        if !holding.unmarked.is_empty() {
            let rows: Vec<(RowId, Outcome)> = holding
                .unmarked
                .iter()
                .map(|id| (*id, Outcome::Published))
                .collect();
            self.record(&rows, &HashMap::new()).await?;
            holding.unmarked.clear();
        }
        let gather_started = std::time::Instant::now();
        let committed_unmarked = holding.committed_unmarked();
        let rows = self.gather(fence, held, &committed_unmarked).await?;
        let gathered = gather_started.elapsed();
        let found = if rows.len() >= self.parts.config.batch_size.get() as usize {
            Found::Backlog
        } else {
            Found::CaughtUp
        };
        let wait = pacing.next_wait(
            rows.len(),
            found,
            self.parts.config.poll_interval,
            fence.is_pending(),
        );
        if rows.is_empty() {
            return Ok(wait.unwrap_or_default());
        }
        metrics::histogram!(instruments::BATCH_MESSAGES).record(rows.len() as f64);
        let started = std::time::Instant::now();
        let delivered = self
            .transactions
            .deliver(&rows, &committed_unmarked)
            .await
            .map_err(|e| {
                // /readyz: not ready while transactions fail (a broker outage included).
                self.parts.health.set_broker_up(false);
                self.after_failure(holding, &e);
                CycleError::Kafka(e)
            })?;
        self.parts.health.set_broker_up(true);
        let logged: HashMap<RowId, Logged> = rows.iter().map(|m| (m.id, Logged::of(m))).collect();
        match delivered {
            Delivered::Committed => {
                crate::crash::point("after_commit");
                let committed_in = started.elapsed();
                metrics::histogram!(instruments::BROKER_ACK).record(committed_in.as_secs_f64());
                // One mark at a time: the previous one ends before this one starts.
                let previous = holding.finish_mark().await;
                let waited_for_mark = started.elapsed() - committed_in;
                let ids: Vec<RowId> = rows.iter().map(|m| m.id).collect();
                holding.marking = Some(self.start_mark(ids, logged));
                previous?;
                tracing::debug!(
                    rows = rows.len(),
                    ?gathered,
                    ?committed_in,
                    ?waited_for_mark,
                    "transaction committed"
                );
            }
            Delivered::Aborted(failed) => {
                if failed
                    .iter()
                    .any(|(_, e)| e.reason() == FailureReason::Timeout)
                {
                    // A new producer for the next transaction: librdkafka may keep the
                    // metadata of a deleted topic and send to its old leaders for ever (see
                    // `Replace::StaleMetadata` in the default publisher); a new one asks afresh.
                    holding.token = None;
                }
                // Only the failed rows are recorded; the rest of the transaction stays
                // committed and goes out in the next one, spending no attempt.
                let outcomes: Vec<(RowId, Outcome)> = failed
                    .into_iter()
                    .map(|(id, e)| {
                        metrics::counter!(
                            instruments::PUBLISH_FAILURES,
                            "destination" => logged.get(&id).map(|l| l.destination.clone()).unwrap_or_default(),
                            "reason" => e.reason().as_str()
                        )
                        .increment(1);
                        let attempts = rows
                            .iter()
                            .find(|m| m.id == id)
                            .map_or(0, |m| u32::try_from(m.attempts).unwrap_or(0));
                        tracing::warn!(
                            message_id = %logged.get(&id).map(|l| l.message_id).unwrap_or_default(),
                            attempt = attempts + 1,
                            error = %e.chain(),
                            "publish failed; the transaction was aborted"
                        );
                        let outcome = Outcome::Failed {
                            error: e.chain(),
                            permanent: e.is_permanent(),
                            backoff: self.backoff().delay(attempts + 1),
                        };
                        (id, outcome)
                    })
                    .collect();
                self.record(&outcomes, &logged).await?;
            }
        }
        Ok(wait.unwrap_or_default())
    }

    /// Claims rows for one transaction: again at once while claims come back full, until
    /// `transaction_interval` has passed.
    async fn gather(
        &self,
        fence: &mut FenceTracker,
        held: Held,
        unmarked: &[RowId],
    ) -> Result<Vec<OutboxMessage>, CycleError> {
        let started = tokio::time::Instant::now();
        let limit = self.parts.config.batch_size.get().min(MAX_ROWS as u32);
        let mut rows: Vec<OutboxMessage> = Vec::new();
        loop {
            let exclude: Vec<i64> = unmarked
                .iter()
                .map(|id| id.0)
                .chain(rows.iter().map(|m| m.id.0))
                .collect();
            let claim = async {
                let (safe, floor) = fence.advance(&self.parts.pool).await?;
                let args = store::ClaimArgs {
                    fence_seq: safe,
                    limit,
                    lease: self.parts.lease.lease_ref(held),
                    exclude: &exclude,
                    held_back: &[],
                    floor,
                    partition: self.parts.partition.as_ref(),
                };
                store::claim(&self.parts.pool, &args).await
            };
            let batch = store::within(2 * self.parts.db_timeout, claim).await;
            self.parts.health.set_database_up(batch.is_ok());
            let batch = batch?;
            let full = batch.len() >= limit as usize;
            rows.extend(batch);
            // Bounded: the progress record names every row, and it must stay far below the
            // broker's message size limit (1 MB by default; an id takes up to 20 bytes).
            if !full || started.elapsed() >= self.interval || rows.len() >= MAX_ROWS {
                return Ok(rows);
            }
        }
    }

    /// Marks committed rows published in a task of their own.
    fn start_mark(&self, ids: Vec<RowId>, logged: HashMap<RowId, Logged>) -> Marking {
        let recorder = self.recorder();
        let outcomes: Vec<(RowId, Outcome)> =
            ids.iter().map(|id| (*id, Outcome::Published)).collect();
        let task = tokio::spawn(async move { recorder.record(&outcomes, &logged).await });
        Marking { ids, task }
    }

    async fn record(
        &self,
        outcomes: &[(RowId, Outcome)],
        logged: &HashMap<RowId, Logged>,
    ) -> Result<(), CycleError> {
        Ok(self.recorder().record(outcomes, logged).await?)
    }

    fn recorder(&self) -> Recorder {
        Recorder {
            pool: self.parts.pool.clone(),
            lease: self.parts.lease.clone(),
            limit: self.parts.db_timeout,
            max_attempts: self.parts.retry.max_attempts.get(),
            on_published: self.parts.on_published,
        }
    }

    /// A fenced producer means another replica holds the lease now: forget it here and stand
    /// by. A producer that must start again does so at the next turn.
    fn after_failure(&self, holding: &mut Holding, e: &TransactionError) {
        match e {
            TransactionError::Fenced { .. } => {
                tracing::error!(error = %e, "another relay initialised this transactional.id: standing by");
                self.parts.lease.forfeit();
                holding.token = None;
            }
            TransactionError::Restart(_) => holding.token = None,
            TransactionError::Retryable(_) => {}
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum CycleError {
    /// Names the key: a broker without transactions (or a principal without the rights on
    /// the transactional id) fails here, on every try.
    #[error("broker.kafka.delivery = \"exactly_once\": cannot initialise Kafka transactions: {0}")]
    TakeOver(TransactionError),
    #[error(transparent)]
    Kafka(TransactionError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the mark of committed rows stopped: {0}")]
    Mark(String),
}
