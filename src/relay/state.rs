//! The relay loop's own types: what runs beside it (the claim, the outcome update, the
//! chains), what woke it, and what logs and metrics carry about a row.

use super::keys::{ChainEnd, Key};
use super::window::FenceTracker;
use crate::store::{MessageStatus, OutboxMessage, Outcome, RowId, StoreError};
use crate::telemetry::instruments;

/// A publish outcome waiting to be written, with what logs and metrics need.
pub(super) type Recordable = (RowId, Outcome, Logged);

/// The outcome update running alongside claims and publishes (its rows: [`Pipeline`]).
///
/// [`Pipeline`]: super::pipeline::Pipeline
pub(super) type Recording<'a> = BoxFuture<'a, ()>;

/// The claim running alongside the publishes (its number for the key gate: [`Pipeline`]).
///
/// [`Pipeline`]: super::pipeline::Pipeline
pub(super) type Claiming<'a> = BoxFuture<'a, (FenceTracker, Claimed)>;

/// A claim's chains, or why it failed.
pub(super) type Claimed = Result<Vec<Vec<OutboxMessage>>, CycleError>;

pub(super) type BoxFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// A claimed chain and the claim it came from.
pub(super) struct Queued {
    pub(super) batch: u64,
    pub(super) chain: Vec<OutboxMessage>,
}

/// A chain that was published as far as it went.
pub(super) struct Ended {
    pub(super) batch: u64,
    pub(super) key: Option<Key>,
    pub(super) end: ChainEnd,
    pub(super) outcomes: Vec<Recordable>,
    /// Rows not attempted: they go back to the database as they were.
    pub(super) unattempted: Vec<RowId>,
}

/// Whether to write the `answered` outcomes now: half a batch of them, the oldest waiting
/// since `record_at`, or shutdown.
pub(super) fn record_due(
    answered: usize,
    batch_size: usize,
    record_at: Option<tokio::time::Instant>,
    now: tokio::time::Instant,
    stopping: bool,
) -> bool {
    answered > 0
        && (stopping || answered >= batch_size.div_ceil(2) || record_at.is_some_and(|at| now >= at))
}

/// Sleeps until `at`, or forever without one.
pub(super) async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What woke the relay loop.
pub(super) enum Event {
    Chain(Ended),
    Claimed(FenceTracker, Claimed),
    Recorded,
    GraceOver,
    Wake,
}

/// Awaits a future that may not exist; without one it never resolves.
pub(super) async fn in_progress<F: std::future::Future + Unpin>(f: Option<&mut F>) -> F::Output {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// What logs and metrics about a message carry: never its payload.
#[derive(Debug, Clone)]
pub(super) struct Logged {
    pub(super) message_id: uuid::Uuid,
    pub(super) destination: String,
    pub(super) committed_at: chrono::DateTime<chrono::Utc>,
    /// When the publish finished (confirm or failure).
    pub(super) answered_at: chrono::DateTime<chrono::Utc>,
}

impl Logged {
    pub(super) fn of(m: &OutboxMessage) -> Self {
        Self {
            message_id: m.message_id,
            destination: m.destination.clone(),
            committed_at: m.committed_at,
            answered_at: chrono::Utc::now(),
        }
    }

    /// Logs and counts the recorded status of a published or failed message.
    pub(super) fn observe(&self, status: MessageStatus) {
        match status {
            MessageStatus::Published => {
                metrics::counter!(instruments::PUBLISHED, "destination" => self.destination.clone())
                    .increment(1);
                let latency = (self.answered_at - self.committed_at)
                    .to_std()
                    .unwrap_or_default();
                metrics::histogram!(instruments::COMMIT_TO_PUBLISH).record(latency.as_secs_f64());
            }
            MessageStatus::Dead => {
                metrics::counter!(instruments::DEAD, "destination" => self.destination.clone())
                    .increment(1);
                tracing::error!(
                    message_id = %self.message_id,
                    destination = %self.destination,
                    "message is dead: it will not be retried (see last_error)"
                );
            }
            _ => {}
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(super) enum CycleError {
    #[error("broker not ready: {0}")]
    Broker(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}
