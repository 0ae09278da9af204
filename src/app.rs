//! Wires the long-running parts together: the relay loop and the sweeper schedules, as named
//! tasks on one tracker, stopped by one cancellation token.

use std::sync::Arc;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::doctor::BrokerReport;
use crate::backoff::Backoff;
use crate::check_back::CheckBack;
use crate::config::{BrokerKind, Config};
use crate::health::{Health, Heartbeat};
use crate::http;
use crate::lease::Lease;
use crate::partitions::{Coordinator, LoopRun, Loops};
use crate::publish::amqp::AmqpPublisher;
use crate::publish::kafka::{self, Delivery, KafkaPublisher, KafkaSetupError, Transactions};
use crate::publish::nsq::{NsqPublisher, NsqSetupError};
use crate::publish::redis::{RedisPublisher, RedisSetupError};
use crate::publish::Publisher;
use crate::relay::{ExactlyOnce, Partition, Parts, PassedFloor, PassedFloors, Relay};
use crate::store::{self, StoreError};
use crate::sweeper::Sweeper;
use crate::telemetry::gauges::Gauges;
use crate::telemetry::instruments;
use futures::future::BoxFuture;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    KafkaSetup(#[from] KafkaSetupError),
    #[error(transparent)]
    RedisSetup(#[from] RedisSetupError),
    #[error(transparent)]
    NsqSetup(#[from] NsqSetupError),
    #[error(transparent)]
    CheckBackSetup(#[from] crate::check_back::SetupError),
    #[error("cannot listen on {0}: {1}")]
    Http(std::net::SocketAddr, std::io::Error),
    #[error("task `{0}` failed: {1}")]
    TaskFailed(&'static str, String),
    #[error(transparent)]
    LoopDied(#[from] crate::partitions::LoopDied),
}

/// Runs the relay until `shutdown` is cancelled. Returns an error if a task died.
/// `metrics` renders `/metrics` when the caller installed the Prometheus recorder.
pub async fn run(
    config: Config,
    metrics: Option<instruments::Exporter>,
    shutdown: CancellationToken,
) -> Result<(), AppError> {
    let health = Arc::new(Health::new(config.http.livez_stall_timeout));
    let listener = http::bind(config.http.listen)
        .await
        .map_err(|e| AppError::Http(config.http.listen, e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| AppError::Http(config.http.listen, e))?;
    tracing::info!(address = %bound, "serving /livez, /readyz and /metrics");
    let server = tokio::spawn(http::serve(
        listener,
        health.clone(),
        metrics,
        shutdown.clone(),
    ));
    let result = run_relay(config, health, shutdown.clone()).await;
    shutdown.cancel();
    match server.await {
        Ok(Err(e)) => tracing::warn!(error = %e, "HTTP listener"),
        Err(e) => tracing::warn!(error = %e, "HTTP listener task"),
        Ok(Ok(())) => {}
    }
    result
}

async fn run_relay(
    config: Config,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> Result<(), AppError> {
    let pool = store::pool(&config.database)?;
    // Built before waiting for the database so that bad client settings fail at once.
    let publisher = match config.broker.kind {
        BrokerKind::Amqp => Built::Amqp(AmqpPublisher::new(
            config.broker.amqp.clone(),
            config.relay.publish_timeout,
        )),
        BrokerKind::Kafka if config.broker.kafka.delivery == Delivery::ExactlyOnce => {
            Built::KafkaTransactions(kafka_transactions(&config)?)
        }
        BrokerKind::Kafka => Built::Kafka(kafka_publisher(&config)?),
        BrokerKind::Redis => Built::Redis(RedisPublisher::new(
            config.broker.redis.clone(),
            config.relay.publish_timeout,
        )?),
        BrokerKind::Nsq => Built::Nsq(NsqPublisher::new(
            config.broker.nsq.clone(),
            config.relay.publish_timeout,
        )?),
    };
    if !wait_for_schema(&pool, &config, &shutdown).await {
        return Ok(());
    }
    match publisher {
        Built::Amqp(p) => run_with(pool, Arc::new(p), config, health, shutdown).await,
        Built::Kafka(p) => run_with(pool, Arc::new(p), config, health, shutdown).await,
        Built::KafkaTransactions(t) => {
            run_loop(pool, Transactional(t), config, health, shutdown).await
        }
        Built::Redis(p) => run_with(pool, Arc::new(p), config, health, shutdown).await,
        Built::Nsq(p) => run_with(pool, Arc::new(p), config, health, shutdown).await,
    }
}

/// The publisher of `broker.kind`; the relay is generic over it.
enum Built {
    Amqp(AmqpPublisher),
    Kafka(KafkaPublisher),
    KafkaTransactions(Transactions),
    Redis(RedisPublisher),
    Nsq(NsqPublisher),
}

/// Whether the configured broker accepts a connection, and what it says of each of
/// `destinations` (`doctor`): the publisher's own `ready` and `presence`, each within the
/// broker's connect timeout and some slack, then `close`.
pub async fn broker_check(config: &Config, destinations: Vec<String>) -> BrokerReport {
    let limit = config
        .broker
        .connect_timeouts()
        .map(|(_, d)| d)
        .max()
        .unwrap_or_default()
        + std::time::Duration::from_secs(5);
    let timeout = config.relay.publish_timeout;
    let refused = |e: String| BrokerReport {
        ready: Err(e),
        destinations: Vec::new(),
    };
    match config.broker.kind {
        BrokerKind::Amqp => {
            let p = AmqpPublisher::new(config.broker.amqp.clone(), timeout);
            probe(p, limit, destinations).await
        }
        BrokerKind::Kafka => match kafka_publisher(config) {
            Ok(p) => probe(p, limit, destinations).await,
            Err(e) => refused(e.to_string()),
        },
        BrokerKind::Redis => match RedisPublisher::new(config.broker.redis.clone(), timeout) {
            Ok(p) => probe(p, limit, destinations).await,
            Err(e) => refused(e.to_string()),
        },
        BrokerKind::Nsq => match NsqPublisher::new(config.broker.nsq.clone(), timeout) {
            Ok(p) => probe(p, limit, destinations).await,
            Err(e) => refused(e.to_string()),
        },
    }
}

async fn probe<P: Publisher>(
    p: P,
    limit: std::time::Duration,
    destinations: Vec<String>,
) -> BrokerReport {
    async fn within<T>(
        limit: std::time::Duration,
        f: impl std::future::Future<Output = Result<T, crate::publish::PublishError>>,
    ) -> Result<T, String> {
        match tokio::time::timeout(limit, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(e.chain()),
            Err(_) => Err(format!(
                "no answer within {}",
                humantime::format_duration(limit)
            )),
        }
    }
    let ready = within(limit, p.ready()).await;
    let mut checked = Vec::new();
    if ready.is_ok() {
        for d in destinations {
            let found = within(limit, p.presence(&d)).await;
            checked.push((d, found));
        }
    }
    p.close().await;
    BrokerReport {
        ready,
        destinations: checked,
    }
}

/// Creates the Kafka producer, which validates every librdkafka property.
pub fn kafka_publisher(config: &Config) -> Result<KafkaPublisher, KafkaSetupError> {
    KafkaPublisher::new(&config.broker.kafka, config.relay.publish_timeout)
}

/// The transactional producer of `delivery = "exactly_once"`, under the configured or the
/// derived `transactional.id`.
pub fn kafka_transactions(config: &Config) -> Result<Transactions, AppError> {
    let db = store::connect_options(config.database.url.expose())?;
    let id = kafka::transactional_id(
        &config.broker.kafka,
        db.get_host(),
        db.get_port(),
        db.get_database().unwrap_or("postgres"),
    );
    Ok(Transactions::new(
        &config.broker.kafka,
        id,
        config.relay.publish_timeout,
    )?)
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
        let check = store::check_schema(pool);
        match store::within(config.database.call_timeout(), check).await {
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
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> Result<(), AppError> {
    if config.relay.partitions.get() > 1 {
        return run_partitioned(pool, publisher, config, health, shutdown).await;
    }
    run_loop(pool, AtLeastOnce(publisher), config, health, shutdown).await
}

/// Builds the relay loop once the lease exists: the default one over a publisher, or the
/// exactly-once one over Kafka transactions.
trait BuildLoop {
    fn build(self, parts: Parts, config: &Config) -> RelayLoop;
}

struct AtLeastOnce<P>(Arc<P>);
struct Transactional(Transactions);

impl<P: Publisher> BuildLoop for AtLeastOnce<P> {
    fn build(self, parts: Parts, _: &Config) -> RelayLoop {
        let publisher = self.0.clone();
        let (passed, run) = relay_loop(Relay::new(parts, self.0));
        RelayLoop {
            passed,
            // The only loop over this publisher: it closes it once drained.
            run: Box::new(move |token, beat| {
                Box::pin(async move {
                    run(token, beat).await;
                    publisher.close().await;
                })
            }),
        }
    }
}

impl BuildLoop for Transactional {
    fn build(self, parts: Parts, config: &Config) -> RelayLoop {
        let relay = ExactlyOnce::new(parts, self.0, config.broker.kafka.transaction_interval);
        let passed = relay.passed_floor();
        RelayLoop {
            passed,
            run: Box::new(move |token, beat| {
                Box::pin(async move { relay.run(token, &beat).await })
            }),
        }
    }
}

/// A relay loop over a publisher, ready to run, with its floor for the backlog check.
fn relay_loop<P: Publisher>(relay: Relay<P>) -> (Arc<PassedFloor>, LoopRun) {
    let passed = relay.passed_floor();
    let run: LoopRun =
        Box::new(move |token, beat| Box::pin(async move { relay.run(token, &beat).await }));
    (passed, run)
}

/// What a relay loop runs with, from the configuration: the whole outbox or one partition.
fn parts(
    pool: &PgPool,
    config: &Config,
    lease: Arc<Lease>,
    partition: Partition,
    health: &Arc<Health>,
) -> Parts {
    Parts {
        pool: pool.clone(),
        config: config.relay.clone(),
        retry: config.retry.clone(),
        on_published: config.sweeper.on_published(),
        lease,
        partition,
        health: health.clone(),
        db_timeout: config.database.call_timeout(),
    }
}

/// A relay loop ready to run, and its floor for the backlog check.
struct RelayLoop {
    passed: Arc<PassedFloor>,
    run: LoopRun,
}

async fn run_loop(
    pool: PgPool,
    relay: impl BuildLoop,
    config: Config,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> Result<(), AppError> {
    let tasks = Tasks::new(&shutdown, &health);

    let db_timeout = config.database.call_timeout();
    let lease = Arc::new(Lease::new(
        pool.clone(),
        config.ha.clone(),
        health.clone(),
        db_timeout,
    ));
    tracing::info!(replica = lease.holder(), lease = %config.ha.lease_name, "standing by for the lease");
    let parts = parts(&pool, &config, lease.clone(), Partition::whole(), &health);
    let RelayLoop { passed, run } = relay.build(parts, &config);
    let floors = Arc::new(PassedFloors::default());
    floors.add(passed);

    // The lease is renewed until the relay has drained, not just until shutdown begins:
    // otherwise a standby could take over while confirms are still being recorded.
    let relay_done = CancellationToken::new();
    let (l, token) = (lease.clone(), relay_done.clone());
    tasks.spawn("lease", |beat| async move { l.run(token, &beat).await });
    let (l, token) = (lease.clone(), shutdown.clone());
    tasks.spawn("relay", |beat| async move {
        // Stops the renewals on return and on panic alike.
        let stop_lease = relay_done.drop_guard();
        run(token, beat).await;
        drop(stop_lease);
        // Only after the last outcome is recorded may a standby take over.
        l.release().await;
    });
    tasks.spawn_once_per_outbox(&pool, &config, lease, floors)?;

    let result = tasks.wait().await;
    pool.close().await;
    result
}

/// Spawns the long-running tasks: each is watched by `/livez` through its heartbeat from its
/// start until it returns, and a task that panics shuts everything down with the failure
/// reported, instead of the process limping on without it.
struct Tasks {
    tracker: TaskTracker,
    shutdown: CancellationToken,
    failure: Arc<std::sync::Mutex<Option<AppError>>>,
    health: Arc<Health>,
}

impl Tasks {
    fn new(shutdown: &CancellationToken, health: &Arc<Health>) -> Self {
        Self {
            tracker: TaskTracker::new(),
            shutdown: shutdown.clone(),
            failure: Arc::default(),
            health: health.clone(),
        }
    }

    /// Waits for every task to end; the first failure, if one died.
    async fn wait(self) -> Result<(), AppError> {
        self.tracker.close();
        self.tracker.wait().await;
        let failed = self
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        failed.map_or(Ok(()), Err)
    }

    /// The backlog gauges (every replica), and the sweeper and check-back, which act only
    /// while `leader` is held: once per outbox, not once per replica.
    fn spawn_once_per_outbox(
        &self,
        pool: &PgPool,
        config: &Config,
        leader: Arc<Lease>,
        floors: Arc<PassedFloors>,
    ) -> Result<(), AppError> {
        let db_timeout = config.database.call_timeout();
        let sweeper = Arc::new(Sweeper::new(
            pool.clone(),
            config.sweeper.clone(),
            Some(leader.clone()),
            db_timeout,
        ));
        let check_back =
            CheckBack::new(pool.clone(), config.check_back.clone(), leader, db_timeout)?;
        let gauges = Gauges::new(
            pool.clone(),
            self.health.clone(),
            floors,
            config.metrics.backlog_interval,
            db_timeout,
        );
        let token = self.shutdown.clone();
        self.spawn("backlog", |beat| gauges.run(beat, token));
        let (s, token) = (sweeper.clone(), self.shutdown.clone());
        self.spawn("sweeper-expire", |beat| async move {
            s.run_expiry(token, &beat).await
        });
        let token = self.shutdown.clone();
        self.spawn("sweeper-purge", |beat| async move {
            sweeper.run_purge(token, &beat).await
        });
        let token = self.shutdown.clone();
        self.spawn("check-back", |beat| async move {
            check_back.run(token, &beat).await
        });
        Ok(())
    }

    fn spawn<F, Fut>(&self, name: &'static str, task: F)
    where
        F: FnOnce(Arc<Heartbeat>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let beat = self.health.heartbeat(name);
        let handle = tokio::spawn(task(beat.clone()));
        let shutdown = self.shutdown.clone();
        let failure = self.failure.clone();
        self.tracker.spawn(async move {
            match handle.await {
                Ok(()) => beat.done(),
                Err(e) => {
                    tracing::error!(task = name, error = %e, "task died; shutting down");
                    fail(
                        &failure,
                        &shutdown,
                        AppError::TaskFailed(name, e.to_string()),
                    );
                }
            }
        });
    }
}

/// Records the first failure and stops everything: the process then exits with it.
fn fail(failure: &std::sync::Mutex<Option<AppError>>, shutdown: &CancellationToken, e: AppError) {
    failure
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_or_insert(e);
    shutdown.cancel();
}

/// Active-active (`relay.partitions > 1`): the partition coordinator starts and stops one relay
/// loop per partition this replica holds, all over one publisher.
async fn run_partitioned<P: Publisher>(
    pool: PgPool,
    publisher: Arc<P>,
    config: Config,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> Result<(), AppError> {
    let tasks = Tasks::new(&shutdown, &health);
    let db_timeout = config.database.call_timeout();
    let floors = Arc::new(PassedFloors::default());
    let loops = PartitionLoops {
        pool: pool.clone(),
        publisher: publisher.clone(),
        config: config.clone(),
        health: health.clone(),
    };
    let coordinator = Coordinator::new(
        pool.clone(),
        loops,
        &config.ha,
        config.relay.partitions.get(),
        health.clone(),
        floors.clone(),
        db_timeout,
    );
    let first = coordinator.first_lease();
    let token = shutdown.clone();
    let failure = tasks.failure.clone();
    tasks.spawn("partitions", |beat| async move {
        if let Err(e) = coordinator.run(token.clone(), &beat).await {
            fail(&failure, &token, AppError::LoopDied(e));
        }
    });
    tasks.spawn_once_per_outbox(&pool, &config, first, floors)?;
    let result = tasks.wait().await;
    // Every partition's loop has drained: the publisher they shared may close.
    publisher.close().await;
    pool.close().await;
    result
}

/// Builds the partitions' loops, all over one publisher.
struct PartitionLoops<P> {
    pool: PgPool,
    publisher: Arc<P>,
    config: Config,
    health: Arc<Health>,
}

impl<P: Publisher> Loops for PartitionLoops<P> {
    fn build(&self, lease: Arc<Lease>, partition: Partition) -> (Arc<PassedFloor>, LoopRun) {
        let parts = parts(&self.pool, &self.config, lease, partition, &self.health);
        // Not closed by the loop: run_partitioned closes it once every partition has drained.
        relay_loop(Relay::new(parts, self.publisher.clone()))
    }

    fn broker_ready(&self) -> BoxFuture<'static, bool> {
        let limit = self.config.relay.publish_timeout;
        let publisher = self.publisher.clone();
        Box::pin(async move {
            matches!(
                tokio::time::timeout(limit, publisher.ready()).await,
                Ok(Ok(()))
            )
        })
    }
}
