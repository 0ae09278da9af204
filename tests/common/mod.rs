//! Shared test harness: a fresh database per test, unique RabbitMQ names, waiting on
//! conditions with deadlines, and an in-process relay.
#![allow(dead_code)]

pub mod kafka;
pub mod tls;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use outbox_relay::app::{self, AppError};
use outbox_relay::config::{Config, LogFormat, SecretUrl};
use outbox_relay::health::Health;
use outbox_relay::publish::Publisher;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub fn admin_database_url() -> String {
    std::env::var("OUTBOX_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:54329/postgres".into())
}

pub fn amqp_url() -> String {
    std::env::var("OUTBOX_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:56729/%2f".into())
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", Uuid::new_v4().simple())
}

/// The login role the relay under test connects as: a member of `outbox_relay` (created by
/// the migrations) and nothing else. Shared by all tests; roles are cluster-wide.
pub const RELAY_LOGIN: &str = "outbox_relay_test";

/// A database of its own for one test, migrated.
pub struct TestDb {
    pub name: String,
    /// The owner's URL (migrations, the application's writes, admin commands).
    pub url: String,
    /// The same database as [`RELAY_LOGIN`]: what the relay under test uses.
    pub relay_url: String,
    pub pool: PgPool,
}

impl TestDb {
    pub async fn new() -> Self {
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&admin_database_url())
            .await
            .expect("connect to the test Postgres (run scripts/services.sh up)");
        let name = unique("t");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .expect("create test database");
        admin.close().await;
        let mut url = url::Url::parse(&admin_database_url()).unwrap();
        url.set_path(&name);
        let url = url.to_string();
        let pool = PgPoolOptions::new()
            .max_connections(5)
            .connect(&url)
            .await
            .expect("connect to test database");
        outbox_relay::store::migrate(&pool).await.expect("migrate");
        create_relay_login(&pool).await;
        let mut relay_url = url::Url::parse(&url).unwrap();
        relay_url.set_username(RELAY_LOGIN).unwrap();
        relay_url.set_password(None).unwrap();
        Self {
            name,
            url,
            relay_url: relay_url.to_string(),
            pool,
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
            .fetch_one(&self.pool)
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
        sqlx::query_scalar(
            "SELECT outbox.enqueue($1, jsonb_build_object('key', 'k' || (g % $4), 'n', g), message_key => 'k' || (g % $4))
               FROM generate_series($2, $3) g ORDER BY g",
        )
        .bind(destination)
        .bind(from)
        .bind(to)
        .bind(keys)
        .fetch_all(&self.pool)
        .await
        .expect("enqueue many")
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

    pub async fn count(&self, status: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM outbox.messages WHERE status::text = $1")
            .bind(status)
            .fetch_one(&self.pool)
            .await
            .expect("count")
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

/// Creates [`RELAY_LOGIN`] if it does not exist. Tests create it concurrently: a lost race
/// shows as duplicate_object or unique_violation. The local cluster trusts loopback
/// connections, so the role needs no password.
async fn create_relay_login(pool: &PgPool) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DO $$
         BEGIN
             IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = '{RELAY_LOGIN}') THEN
                 CREATE ROLE {RELAY_LOGIN} LOGIN IN ROLE outbox_relay;
             END IF;
         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
         END $$"
    )))
    .execute(pool)
    .await
    .expect("create the relay's login role");
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
pub async fn start_relay_with<P: Publisher>(
    db: &TestDb,
    config: Config,
    publisher: Arc<P>,
) -> RunningRelay {
    let token = CancellationToken::new();
    let health = Arc::new(Health::new(config.http.livez_stall_timeout));
    let handle = tokio::spawn(app::run_with(
        db.relay_pool().await,
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

/// A RabbitMQ connection for declaring topology and reading what the relay published.
pub struct Rabbit {
    pub conn: Connection,
    pub channel: Channel,
}

impl Rabbit {
    /// A new fanout exchange with one exclusive queue bound to it: (exchange, queue).
    pub async fn fanout_with_queue(&self) -> (String, String) {
        let exchange = unique("ex");
        self.declare_exchange_of(&exchange, ExchangeKind::Fanout)
            .await;
        let queue = self.bound_queue(&exchange, "").await;
        (exchange, queue)
    }

    pub async fn connect() -> Self {
        let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .expect("connect to the test RabbitMQ (run scripts/services.sh up)");
        let channel = conn.create_channel().await.expect("channel");
        Self { conn, channel }
    }

    pub async fn declare_exchange(&self, name: &str) {
        self.declare_exchange_of(name, ExchangeKind::Direct).await
    }

    pub async fn declare_exchange_of(&self, name: &str, kind: ExchangeKind) {
        self.channel
            .exchange_declare(
                name.into(),
                kind,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("declare exchange");
    }

    pub async fn delete_exchange(&self, name: &str) {
        self.channel
            .exchange_delete(name.into(), ExchangeDeleteOptions::default())
            .await
            .expect("delete exchange");
    }

    /// A new exclusive queue bound to `exchange` with `routing_key`.
    pub async fn bound_queue(&self, exchange: &str, routing_key: &str) -> String {
        let queue = unique("q");
        self.channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare queue");
        self.bind(&queue, exchange, routing_key).await;
        queue
    }

    pub async fn bind(&self, queue: &str, exchange: &str, routing_key: &str) {
        self.channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind queue");
    }

    /// Everything in the queue right now (the relay only marks a row published after the
    /// broker confirmed it, so a published row's message is already in the queue).
    pub async fn drain(&self, queue: &str) -> Vec<Received> {
        let mut out = Vec::new();
        while let Some(m) = self
            .channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
        {
            out.push(Received::from_parts(
                m.delivery.routing_key.to_string(),
                m.delivery.properties.clone(),
                m.delivery.data.clone(),
            ));
        }
        out
    }

    /// Waits until `n` messages arrived on `queue`, then returns them in arrival order.
    pub async fn collect(&self, queue: &str, n: usize, timeout: Duration) -> Vec<Received> {
        let mut consumer = self
            .channel
            .basic_consume(
                queue.into(),
                unique("c").as_str().into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consume");
        let mut out = Vec::with_capacity(n);
        let deadline = tokio::time::Instant::now() + timeout;
        while out.len() < n {
            match tokio::time::timeout_at(deadline, consumer.next()).await {
                Ok(Some(Ok(d))) => out.push(Received::from_parts(
                    d.routing_key.to_string(),
                    d.properties.clone(),
                    d.data.clone(),
                )),
                Ok(other) => panic!("consumer ended: {other:?}"),
                Err(_) => panic!(
                    "timed out after {timeout:?}: {} of {n} messages arrived",
                    out.len()
                ),
            }
        }
        out
    }
}

#[derive(Debug, Clone)]
pub struct Received {
    pub routing_key: String,
    pub properties: BasicProperties,
    pub payload: Vec<u8>,
}

impl Received {
    fn from_parts(routing_key: String, properties: BasicProperties, payload: Vec<u8>) -> Self {
        Self {
            routing_key,
            properties,
            payload,
        }
    }

    pub fn message_id(&self) -> Uuid {
        self.properties
            .message_id()
            .as_ref()
            .expect("message_id property")
            .as_str()
            .parse()
            .expect("uuid")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).expect("json payload")
    }
}

/// Checks per-key order of first deliveries: for each key, the sequence numbers (`n` in the
/// payload) of first deliveries must be increasing. Returns the number of duplicates.
pub fn assert_first_deliveries_in_order(received: &[Received]) -> usize {
    assert_in_order(received.iter().map(|r| (r.message_id(), r.json())))
}

/// The same check over `(message_id, payload)` pairs in arrival order.
pub fn assert_in_order(received: impl IntoIterator<Item = (Uuid, serde_json::Value)>) -> usize {
    use std::collections::{HashMap, HashSet};
    let mut seen = HashSet::new();
    let mut last: HashMap<String, i64> = HashMap::new();
    let mut duplicates = 0;
    for (id, v) in received {
        if !seen.insert(id) {
            duplicates += 1;
            continue;
        }
        let key = v["key"].as_str().expect("key in payload").to_string();
        let n = v["n"].as_i64().expect("n in payload");
        if let Some(prev) = last.insert(key.clone(), n) {
            assert!(
                prev < n,
                "key {key}: message {n} first delivered after {prev}"
            );
        }
    }
    duplicates
}

/// The relay binary as a child process, configured through environment variables, its
/// stderr (text logs) and stdout captured to one file.
pub struct RelayProcess {
    pub child: std::process::Child,
    pub log: std::path::PathBuf,
    pub http: std::net::SocketAddr,
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl RelayProcess {
    pub fn spawn(db_url: &str, extra_env: &[(&str, &str)]) -> Self {
        let log = std::env::temp_dir().join(format!("{}.log", unique("relay")));
        let file = std::fs::File::create(&log).expect("log file");
        let http: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_outbox-relay"));
        cmd.arg("run")
            .env("OUTBOX_RELAY__HTTP__LISTEN", http.to_string())
            .env("OUTBOX_RELAY__HA__LEASE_TTL", "1s")
            .env("OUTBOX_RELAY__METRICS__BACKLOG_INTERVAL", "200ms")
            .env_remove("OUTBOX_RELAY_CONFIG")
            .env("OUTBOX_RELAY__DATABASE__URL", db_url)
            .env("OUTBOX_RELAY__BROKER__AMQP__URL", amqp_url())
            .env("OUTBOX_RELAY__RELAY__POLL_INTERVAL", "20ms")
            .env("OUTBOX_RELAY__RETRY__INITIAL_BACKOFF", "50ms")
            .env("OUTBOX_RELAY__RETRY__MAX_BACKOFF", "500ms")
            .env("OUTBOX_RELAY__LOG__FORMAT", "text")
            .env("OUTBOX_RELAY__LOG__LEVEL", "info")
            .env("NO_COLOR", "1")
            .stdout(file.try_clone().expect("log file"))
            .stderr(file);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn outbox-relay");
        Self { child, log, http }
    }

    /// GET a path on the relay's HTTP listener: (status code, body), or None if unreachable.
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.http, path).await
    }

    /// The value of an unlabelled (or fully labelled) sample from `/metrics`.
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics").await?;
        body.lines()
            .find(|l| l.starts_with(sample) && l[sample.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal)
            .expect("send signal");
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log has `needle` on `n` lines, checks the process is still running (it
    /// retries rather than exits), and returns the first such line.
    pub async fn wait_logged_while_running(
        &mut self,
        needle: &str,
        n: usize,
        timeout: Duration,
    ) -> String {
        let deadline = Instant::now() + timeout;
        while self.logs().matches(needle).count() < n {
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {n} log lines with `{needle}`; the log:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "the relay must keep retrying:\n{}",
            self.logs()
        );
        let logs = self.logs();
        logs.lines()
            .find(|l| l.contains(needle))
            .unwrap()
            .to_string()
    }

    /// SIGTERM, then a clean exit within `timeout`.
    pub async fn terminate(mut self, timeout: Duration) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let status = self.wait_exit(timeout).await;
        assert!(status.success(), "{status:?}");
    }

    /// Waits for the process to exit, polling so the test runtime is never blocked.
    pub async fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let child = &mut self.child;
        let log = self.log.clone();
        wait_for(
            &format!("relay to exit (log {})", log.display()),
            timeout,
            || {
                let status = child.try_wait().expect("try_wait");
                async move { status }
            },
        )
        .await
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 GET over loopback: (status, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    http_request(addr, "GET", path).await
}

/// A minimal HTTP/1.1 request without a body over loopback: (status, body).
pub async fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}
