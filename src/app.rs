//! Wires the long-running parts together: the relay loop and the sweeper schedules, as named
//! tasks on one tracker, stopped by one cancellation token.

use std::sync::Arc;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backoff::Backoff;
use crate::config::{BrokerKind, Config};
use crate::publish::amqp::AmqpPublisher;
use crate::publish::kafka::{KafkaPublisher, KafkaSetupError};
use crate::publish::Publisher;
use crate::relay::Relay;
use crate::store::{self, StoreError};
use crate::sweeper::Sweeper;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    KafkaSetup(#[from] KafkaSetupError),
    #[error("task `{0}` failed: {1}")]
    TaskFailed(&'static str, String),
}

/// Runs the relay until `shutdown` is cancelled. Returns an error if a task died.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), AppError> {
    let pool = store::pool(&config.database)?;
    // Built before waiting for the database so that bad producer settings fail at once.
    let kafka = match config.broker.kind {
        BrokerKind::Kafka => Some(kafka_publisher(&config)?),
        BrokerKind::Amqp => None,
    };
    if !wait_for_schema(&pool, &config, &shutdown).await {
        return Ok(());
    }
    match kafka {
        Some(publisher) => run_with(pool, Arc::new(publisher), config, shutdown).await,
        None => {
            let publisher =
                AmqpPublisher::new(config.broker.amqp.clone(), config.relay.publish_timeout);
            run_with(pool, Arc::new(publisher), config, shutdown).await
        }
    }
}

/// Creates the Kafka producer, which validates every librdkafka property.
pub fn kafka_publisher(config: &Config) -> Result<KafkaPublisher, KafkaSetupError> {
    KafkaPublisher::new(&config.broker.kafka, config.relay.publish_timeout)
}

/// Waits until the database answers and the schema is migrated, retrying with backoff.
/// Returns false if shutdown came first.
async fn wait_for_schema(pool: &PgPool, config: &Config, shutdown: &CancellationToken) -> bool {
    let backoff = Backoff {
        initial: config.retry.initial_backoff,
        max: config.retry.max_backoff,
    };
    let mut failures = 0;
    loop {
        match store::check_schema(pool).await {
            Ok(()) => {
                tracing::info!(database = %config.database.url, "database ready");
                return true;
            }
            Err(e) => {
                failures += 1;
                let delay = backoff.delay(failures);
                tracing::warn!(database = %config.database.url, error = %e, retry_in = ?delay, "database not ready");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return false,
                }
            }
        }
    }
}

pub async fn run_with<P: Publisher>(
    pool: PgPool,
    publisher: Arc<P>,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), AppError> {
    let tracker = TaskTracker::new();
    let failure: Arc<std::sync::Mutex<Option<AppError>>> = Arc::default();

    let relay = Relay::new(
        pool.clone(),
        publisher,
        config.relay.clone(),
        config.retry.clone(),
    );
    let sweeper = Arc::new(Sweeper::new(pool.clone(), config.sweeper.clone()));

    spawn_named(
        &tracker,
        &shutdown,
        &failure,
        "relay",
        relay.run(shutdown.clone()),
    );
    let s = sweeper.clone();
    let token = shutdown.clone();
    spawn_named(
        &tracker,
        &shutdown,
        &failure,
        "sweeper-expire",
        async move { s.run_expiry(token).await },
    );
    let token = shutdown.clone();
    spawn_named(&tracker, &shutdown, &failure, "sweeper-purge", async move {
        sweeper.run_purge(token).await
    });

    tracker.close();
    tracker.wait().await;
    pool.close().await;
    let failed = failure.lock().unwrap_or_else(|p| p.into_inner()).take();
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Spawns a task; if it panics, everything shuts down and the failure is reported, instead of
/// the process limping on without it.
fn spawn_named<F>(
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
    failure: &Arc<std::sync::Mutex<Option<AppError>>>,
    name: &'static str,
    task: F,
) where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let handle = tokio::spawn(task);
    let shutdown = shutdown.clone();
    let failure = failure.clone();
    tracker.spawn(async move {
        if let Err(e) = handle.await {
            tracing::error!(task = name, error = %e, "task died; shutting down");
            failure
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert(AppError::TaskFailed(name, e.to_string()));
            shutdown.cancel();
        }
    });
}
