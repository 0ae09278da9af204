//! Shared test harness: a fresh database per test, unique RabbitMQ names, waiting on
//! conditions with deadlines, and an in-process relay.
#![allow(dead_code)]

pub mod kafka;
pub mod nsq;
mod process;
mod rabbit;
pub mod redis;
pub mod tls;

// Each test crate uses some of the harness; the others' parts are unused there.
#[allow(unused_imports)]
pub use process::*;
#[allow(unused_imports)]
pub use rabbit::*;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use outbox_relay::app::{self, AppError};
use outbox_relay::config::{Config, LogFormat, SecretUrl};
use outbox_relay::health::Health;
use outbox_relay::publish::Publisher;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub fn admin_database_url() -> String {
    std::env::var("OUTBOX_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:54329/postgres".into())
}

/// A new, empty database named `prefix` plus a unique suffix: its name and its URL as the
/// test Postgres' admin.
pub async fn create_database(prefix: &str) -> (String, String) {
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&admin_database_url())
        .await
        .expect("connect to the test Postgres (run scripts/services.sh up)");
    let name = unique(prefix);
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .expect("create test database");
    admin.close().await;
    let mut url = url::Url::parse(&admin_database_url()).unwrap();
    url.set_path(&name);
    (name, url.to_string())
}

pub fn amqp_url() -> String {
    std::env::var("OUTBOX_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:56729/%2f".into())
}

/// The broker a relay publishes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broker {
    Amqp,
    Kafka,
    Redis,
    Nsq,
}

impl Broker {
    /// As people write it: `RabbitMQ`, `Kafka`.
    pub fn name(self) -> &'static str {
        match self {
            Broker::Amqp => "RabbitMQ",
            Broker::Kafka => "Kafka",
            Broker::Redis => "Redis",
            Broker::Nsq => "NSQ",
        }
    }

    /// In lower case: the service of `scripts/services.sh`, the fault suite's
    /// `FAULTS_BROKERS` and the names of the bench's parts (`rabbitmq`, `kafka`).
    pub fn id(self) -> &'static str {
        match self {
            Broker::Amqp => "rabbitmq",
            Broker::Kafka => "kafka",
            Broker::Redis => "redis",
            Broker::Nsq => "nsq",
        }
    }

    /// The relay's `broker.kind`.
    pub fn kind(self) -> &'static str {
        match self {
            Broker::Amqp => "amqp",
            Broker::Kafka => "kafka",
            Broker::Redis => "redis",
            Broker::Nsq => "nsq",
        }
    }
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", Uuid::new_v4().simple())
}

/// The login role the relay under test connects as: a member of `outbox_relay` (created by
/// the migrations) and nothing else. Shared by all tests; roles are cluster-wide.
pub const RELAY_LOGIN: &str = "outbox_relay_test";

/// The login role the tests' writes go through: a member of `outbox_writer` and nothing else,
/// as docs/SQL-API.md tells applications to set theirs up.
pub const WRITER_LOGIN: &str = "outbox_writer_test";

/// A database of its own for one test, migrated.
pub struct TestDb {
    pub name: String,
    /// The owner's URL (migrations, the application's writes, admin commands).
    pub url: String,
    /// The same database as [`RELAY_LOGIN`]: what the relay under test uses.
    pub relay_url: String,
    pub pool: PgPool,
    /// As [`WRITER_LOGIN`]: the helpers that write messages (`enqueue`, `prepare`, `commit`,
    /// `rollback`) use it.
    pub writer: PgPool,
}

/// How [`TestDb::create`] makes the database; the default is the tests' way.
#[derive(Debug, Clone)]
pub struct DbOptions {
    /// The start of its name, before a unique suffix: the bench finds its own by it.
    pub prefix: &'static str,
    /// Connections of [`TestDb::pool`].
    pub max_connections: u32,
    /// [`TestDb::pool`] with the relay's own session settings (`store::connect_options`:
    /// generic plans, no JIT, statement_timeout), as the bench measures the relay's path.
    pub relay_session: bool,
}

impl Default for DbOptions {
    fn default() -> Self {
        Self {
            prefix: "t",
            max_connections: 5,
            relay_session: false,
        }
    }
}

impl TestDb {
    pub async fn new() -> Self {
        Self::create(&DbOptions::default()).await
    }

    pub async fn create(options: &DbOptions) -> Self {
        let (name, url) = create_database(options.prefix).await;
        let pool = PgPoolOptions::new().max_connections(options.max_connections);
        let pool = if options.relay_session {
            let session = outbox_relay::store::connect_options(&url).expect("the relay's options");
            pool.connect_with(session).await
        } else {
            pool.connect(&url).await
        }
        .expect("connect to test database");
        outbox_relay::store::migrate(&pool).await.expect("migrate");
        create_login(&pool, RELAY_LOGIN, "outbox_relay").await;
        create_login(&pool, WRITER_LOGIN, "outbox_writer").await;
        let as_login = |login: &str| {
            let mut u = url::Url::parse(&url).unwrap();
            u.set_username(login).unwrap();
            u.set_password(None).unwrap();
            u.to_string()
        };
        let relay_url = as_login(RELAY_LOGIN);
        let writer = PgPoolOptions::new()
            .max_connections(2)
            .connect(&as_login(WRITER_LOGIN))
            .await
            .expect("connect as the writer's login role");
        Self {
            name,
            url,
            relay_url,
            pool,
            writer,
        }
    }

    /// A pool connected as the relay's login role, for running relay parts in-process.
    pub async fn relay_pool(&self) -> PgPool {
        PgPoolOptions::new()
            .max_connections(4)
            .connect(&self.relay_url)
            .await
            .expect("connect as the relay's role")
    }

    pub async fn enqueue(
        &self,
        destination: &str,
        key: Option<&str>,
        payload: serde_json::Value,
    ) -> Uuid {
        sqlx::query_scalar("SELECT outbox.enqueue($1, $2, message_key => $3)")
            .bind(destination)
            .bind(payload)
            .bind(key)
            .fetch_one(&self.writer)
            .await
            .expect("enqueue")
    }

    /// Commits messages `from..=to` in one transaction, spread over `keys` keys; each payload
    /// carries its key and number `n` (what the order checks read).
    pub async fn enqueue_many(
        &self,
        destination: &str,
        from: i64,
        to: i64,
        keys: i64,
    ) -> Vec<Uuid> {
        enqueue_range(&self.writer, destination, from, to, keys).await
    }

    /// `outbox.prepare` with its default ttl: the prepared message's id.
    pub async fn prepare(
        &self,
        destination: &str,
        key: Option<&str>,
        payload: serde_json::Value,
    ) -> Uuid {
        sqlx::query_scalar("SELECT outbox.prepare($1, $2, message_key => $3)")
            .bind(destination)
            .bind(payload)
            .bind(key)
            .fetch_one(&self.writer)
            .await
            .expect("prepare")
    }

    /// `outbox.prepare` expiring after `ttl`, an interval such as `1 hour`.
    pub async fn prepare_with_ttl(
        &self,
        destination: &str,
        key: Option<&str>,
        payload: serde_json::Value,
        ttl: &str,
    ) -> Uuid {
        sqlx::query_scalar(
            "SELECT outbox.prepare($1, $2, message_key => $3, ttl => $4::text::interval)",
        )
        .bind(destination)
        .bind(payload)
        .bind(key)
        .bind(ttl)
        .fetch_one(&self.writer)
        .await
        .expect("prepare with a ttl")
    }

    /// `outbox.commit`: whether the message went from prepared to committed.
    pub async fn commit(&self, id: Uuid) -> bool {
        sqlx::query_scalar("SELECT outbox.commit($1)")
            .bind(id)
            .fetch_one(&self.writer)
            .await
            .expect("commit")
    }

    /// `outbox.rollback`: whether the message went from prepared to rolled back.
    pub async fn rollback(&self, id: Uuid) -> bool {
        sqlx::query_scalar("SELECT outbox.rollback($1)")
            .bind(id)
            .fetch_one(&self.writer)
            .await
            .expect("rollback")
    }

    pub async fn status(&self, id: Uuid) -> String {
        sqlx::query_scalar("SELECT status::text FROM outbox.messages WHERE message_id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await
            .expect("status")
    }

    pub async fn attempts(&self, id: Uuid) -> i32 {
        sqlx::query_scalar("SELECT attempts FROM outbox.messages WHERE message_id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await
            .expect("attempts")
    }

    /// `attempts` and `last_error` (empty while there is none) of a message.
    pub async fn attempts_and_error(&self, id: Uuid) -> (i32, String) {
        sqlx::query_as(
            "SELECT attempts, coalesce(last_error, '') FROM outbox.messages WHERE message_id = $1",
        )
        .bind(id)
        .fetch_one(&self.pool)
        .await
        .expect("attempts and last_error")
    }

    /// How many of `ids` are not `published`: after a drain, messages the broker
    /// acknowledged but whose outcome was never recorded.
    pub async fn not_published(&self, ids: &[Uuid]) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM outbox.messages WHERE message_id = ANY($1) AND status <> 'published'",
        )
        .bind(ids)
        .fetch_one(&self.pool)
        .await
        .expect("count unpublished")
    }

    pub async fn count(&self, status: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM outbox.messages WHERE status::text = $1")
            .bind(status)
            .fetch_one(&self.pool)
            .await
            .expect("count")
    }

    /// Waits until every one of `ids` has `status`, each within [`Self::wait_status`]'s bound.
    pub async fn wait_all(&self, ids: &[Uuid], status: &str) {
        for id in ids {
            self.wait_status(*id, status).await;
        }
    }

    pub async fn wait_status(&self, id: Uuid, status: &str) {
        wait_for(
            &format!("message {id} to become {status}"),
            Duration::from_secs(30),
            || async { (self.status(id).await == status).then_some(()) },
        )
        .await
    }
}

/// Creates `login` as a member of `role` if it does not exist. Tests create it concurrently:
/// a lost race shows as duplicate_object or unique_violation. The local cluster trusts
/// loopback connections, so the role needs no password.
async fn create_login(pool: &PgPool, login: &str, role: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DO $$
         BEGIN
             IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = '{login}') THEN
                 CREATE ROLE {login} LOGIN IN ROLE {role};
             END IF;
         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
         END $$"
    )))
    .execute(pool)
    .await
    .expect("create a login role");
}

/// Polls `check` until it returns `Some`, or panics after `timeout` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A configuration for tests: fast polling, short backoff.
pub fn test_config(db: &TestDb) -> Config {
    let mut c = Config::default();
    c.database.url = SecretUrl::new(db.relay_url.clone());
    c.database.max_connections = 4.try_into().unwrap();
    c.broker.amqp.url = SecretUrl::new(amqp_url());
    c.relay.poll_interval = Duration::from_millis(20);
    c.relay.batch_size = 100.try_into().unwrap();
    c.relay.publish_timeout = Duration::from_secs(5);
    c.relay.shutdown_grace = Duration::from_secs(5);
    c.retry.max_attempts = 5.try_into().unwrap();
    c.retry.initial_backoff = Duration::from_millis(50);
    c.retry.max_backoff = Duration::from_millis(200);
    c.sweeper.interval = Duration::from_millis(50);
    c.http.listen = "127.0.0.1:0".parse().unwrap();
    c.ha.lease_name = unique("lease");
    c.ha.lease_ttl = Duration::from_secs(2);
    c.metrics.backlog_interval = Duration::from_millis(200);
    c.log.format = LogFormat::Text;
    c
}

/// What a broker's round-trip test wrote: rows that must arrive, in per-key order, and two
/// that never may.
pub struct RoundTripRows {
    pub expected: Vec<Uuid>,
    pub with_headers: Uuid,
    pub keyless: Uuid,
    pub rolled_back: Uuid,
    pub undecided: Uuid,
}

/// Every byte value once, then zeros and a 255: a payload no text encoding keeps intact.
pub fn binary_payload() -> Vec<u8> {
    (0..=255u8).chain([0, 0, 255]).collect()
}

impl TestDb {
    /// Commits [`binary_payload`] to `destination` as `application/octet-stream` and waits
    /// until the relay has published it.
    pub async fn publish_binary(&self, destination: &str) -> Uuid {
        let id: Uuid = sqlx::query_scalar(
            "INSERT INTO outbox.messages (destination, payload, content_type)
             VALUES ($1, $2, 'application/octet-stream') RETURNING message_id",
        )
        .bind(destination)
        .bind(binary_payload())
        .fetch_one(&self.pool)
        .await
        .expect("insert a binary row");
        self.wait_status(id, "published").await;
        id
    }

    /// The rows of every broker's round-trip test, to `destination`: 60 over four keys (each
    /// payload carries its key and number), one with a header (and a routing key the broker may
    /// ignore), one without a key, one prepared then committed; one prepared then rolled back
    /// and one left prepared.
    pub async fn round_trip_rows(&self, destination: &str) -> RoundTripRows {
        let mut expected = Vec::new();
        for n in 0..60 {
            let key = format!("k{}", n % 4);
            expected.push(
                self.enqueue(destination, Some(&key), json!({"key": key, "n": n}))
                    .await,
            );
        }
        let with_headers: Uuid = sqlx::query_scalar(
            "SELECT outbox.enqueue($1, '{\"key\": \"h\", \"n\": 1}', message_key => 'h',
                                   routing_key => 'ignored', headers => '{\"traceparent\": \"00-abc\"}')",
        )
        .bind(destination)
        .fetch_one(&self.pool)
        .await
        .expect("enqueue with headers");
        expected.push(with_headers);
        let keyless = self
            .enqueue(destination, None, json!({"key": "none", "n": 1}))
            .await;
        expected.push(keyless);
        let prepared = self
            .prepare(destination, Some("p"), json!({"key": "p", "n": 1}))
            .await;
        assert!(self.commit(prepared).await);
        expected.push(prepared);
        let rolled_back = self
            .prepare(destination, Some("r"), json!({"key": "r", "n": 1}))
            .await;
        self.rollback(rolled_back).await;
        let undecided = self
            .prepare(destination, Some("u"), json!({"key": "u", "n": 1}))
            .await;
        RoundTripRows {
            expected,
            with_headers,
            keyless,
            rolled_back,
            undecided,
        }
    }
}

/// A test configuration that publishes to Kafka at `bootstrap`.
pub fn kafka_test_config(db: &TestDb, bootstrap: &str) -> Config {
    let mut c = test_config(db);
    c.broker.kind = outbox_relay::config::BrokerKind::Kafka;
    c.broker.kafka.bootstrap_servers = bootstrap.to_string();
    c.broker.kafka.connect_timeout = Duration::from_secs(2);
    c.relay.publish_timeout = Duration::from_secs(5);
    c.retry.max_attempts = 50.try_into().unwrap();
    c
}

/// The relay running inside the test process.
pub struct RunningRelay {
    token: CancellationToken,
    handle: JoinHandle<Result<(), AppError>>,
    /// What `/livez` and `/readyz` read; `None` for [`start_relay`], whose HTTP listener
    /// (at `config.http.listen`) serves it.
    pub health: Option<Arc<Health>>,
}

pub fn start_relay(config: Config) -> RunningRelay {
    let token = CancellationToken::new();
    let handle = tokio::spawn(app::run(config, None, token.clone()));
    RunningRelay {
        token,
        handle,
        health: None,
    }
}

/// The relay with a publisher of the test's own (for example one that observes the real one).
pub async fn start_relay_with<P: Publisher>(config: Config, publisher: Arc<P>) -> RunningRelay {
    let token = CancellationToken::new();
    let health = Arc::new(Health::new(config.http.livez_stall_timeout));
    let handle = tokio::spawn(app::run_with(
        // The relay's own pool and session settings (generic plans, no JIT, statement_timeout),
        // as `run` builds them.
        outbox_relay::store::pool(&config.database).expect("the relay's pool"),
        publisher,
        config,
        health.clone(),
        token.clone(),
    ));
    RunningRelay {
        token,
        handle,
        health: Some(health),
    }
}

impl RunningRelay {
    pub async fn stop(self) {
        self.token.cancel();
        self.handle
            .await
            .expect("relay task")
            .expect("relay result");
    }
}

/// [`TestDb::enqueue_many`] on a pool of its own, for writers running in a task beside the test.
pub async fn enqueue_range(
    writer: &PgPool,
    destination: &str,
    from: i64,
    to: i64,
    keys: i64,
) -> Vec<Uuid> {
    sqlx::query_scalar(
        "SELECT outbox.enqueue($1, jsonb_build_object('key', 'k' || (g % $4), 'n', g), message_key => 'k' || (g % $4))
           FROM generate_series($2, $3) g ORDER BY g",
    )
    .bind(destination)
    .bind(from)
    .bind(to)
    .bind(keys)
    .fetch_all(writer)
    .await
    .expect("enqueue many")
}
