//! `make bench`: how fast the relay drains a backlog, next to the ceilings of the same machine
//! measured in the same run. Prints a table and writes the figures to target/bench.json.
//!
//! Parts: broker ceilings (the relay's client settings, no database), the database ceiling (the
//! relay with a publisher that confirms instantly; bench-only), the drain for each broker with
//! the relay binary's peak RSS and CPU, its idle CPU, the drain with a REPEATABLE READ snapshot
//! held open, the naive one-at-a-time baseline, commit-to-receive latency at fixed rates, and
//! the database ceiling and both drains again with delete on publish
//! (`sweeper.published_retention = "0s"`); and whether the machine carries both halves of a
//! drain to Kafka (the database path and the Kafka traffic) at the target rate at once.
//! Sizes: BENCH_ROWS (200000), BENCH_LATENCY_SECS (60), BENCH_IDLE_SECS (30); BENCH_ONLY picks
//! parts (ceilings, beside-kafka (needs ceilings, and delete for that mode), drain-rabbitmq,
//! drain-kafka, delete, vacuum, naive, latency-rabbitmq, latency-kafka,
//! latency-rabbitmq-delete); BENCH_RELAY__SECTION__KEY overrides a relay setting.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::{FutureExt, StreamExt};

use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use outbox_relay::app;
use outbox_relay::config::{Config, KafkaConfig, LogFormat, SecretUrl};
use outbox_relay::health::Health;
use outbox_relay::publish::amqp::AmqpPublisher;
use outbox_relay::publish::kafka::{client_config, KafkaPublisher};
use outbox_relay::publish::{PublishError, Publisher};
use outbox_relay::store::{self, OutboxMessage};
use rand::Rng;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

const KEYS: i64 = 1000;
const PAYLOAD_BYTES: usize = 256;
/// The relay's `relay.max_in_flight` (as overridden with BENCH_RELAY__RELAY__MAX_IN_FLIGHT),
/// so that the broker ceilings keep as many messages unconfirmed as the relay may.
fn in_flight() -> usize {
    std::env::var("BENCH_RELAY__RELAY__MAX_IN_FLIGHT")
        .ok()
        .map(|v| v.parse().expect("BENCH_RELAY__RELAY__MAX_IN_FLIGHT"))
        .unwrap_or_else(|| Config::default().relay.max_in_flight.get() as usize)
}

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn payload() -> Vec<u8> {
    let mut p = format!("{{\"pad\":\"{}\"}}", "x".repeat(PAYLOAD_BYTES - 10)).into_bytes();
    p.truncate(PAYLOAD_BYTES);
    p
}

/// The bench-only publisher of the database ceiling: every publish succeeds at once.
struct InstantPublisher;

impl Publisher for InstantPublisher {
    async fn ready(&self) -> Result<(), PublishError> {
        Ok(())
    }
    async fn publish(&self, _: &OutboxMessage) -> Result<(), PublishError> {
        Ok(())
    }
    async fn close(&self) {}
}

/// The database path held to `rate`: every publish succeeds, at its slot in an even schedule
/// from the first one (so after a stall it catches up, and the drain's rate, timed from the
/// relay's start, reads a little under `rate`).
struct PacedPublisher {
    rate: f64,
    first: std::sync::OnceLock<tokio::time::Instant>,
    issued: AtomicUsize,
}

impl PacedPublisher {
    fn new(rate: f64) -> Self {
        Self {
            rate,
            first: std::sync::OnceLock::new(),
            issued: AtomicUsize::new(0),
        }
    }
}

impl Publisher for PacedPublisher {
    async fn ready(&self) -> Result<(), PublishError> {
        Ok(())
    }
    async fn publish(&self, _: &OutboxMessage) -> Result<(), PublishError> {
        let first = *self.first.get_or_init(tokio::time::Instant::now);
        let n = self.issued.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep_until(first + Duration::from_secs_f64(n as f64 / self.rate)).await;
        Ok(())
    }
    async fn close(&self) {}
}

/// Each part of a run leaves a few hundred MB in its database; drop them (before each part and
/// at the end), and any an interrupted run left behind. Runs of the bench never overlap.
async fn drop_bench_databases(admin: &PgPool) {
    let names: Vec<String> = sqlx::query_scalar(
        r"SELECT datname FROM pg_catalog.pg_database WHERE datname LIKE 'bench\_%'",
    )
    .fetch_all(admin)
    .await
    .expect("list bench databases");
    for name in names {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(admin)
        .await
        .expect("drop a bench database");
    }
}

async fn admin_pool(admin_url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(1)
        .connect(admin_url)
        .await
        .expect("admin connection")
}

/// A new database for the next part of the run. The databases of the parts before are dropped
/// first: their autovacuum work would otherwise land in this part's figures.
async fn fresh_db(admin_url: &str) -> (PgPool, String) {
    let admin = admin_pool(admin_url).await;
    drop_bench_databases(&admin).await;
    let name = format!("bench_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let mut url = url::Url::parse(admin_url).unwrap();
    url.set_path(&name);
    let url = url.to_string();
    // The relay's own session settings, so that the database ceiling measures its path.
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(store::connect_options(&url).unwrap())
        .await
        .unwrap();
    store::migrate(&pool).await.unwrap();
    (pool, url)
}

async fn fill(pool: &PgPool, destination: &str, rows: i64) {
    // Batches of 10,000 rows per transaction, like a busy application would write them.
    let mut done = 0;
    while done < rows {
        let n = (rows - done).min(10_000);
        sqlx::query(
            "INSERT INTO outbox.messages (destination, message_key, payload)
             SELECT $1, 'k' || (g % $2), $3 FROM generate_series(1, $4) g",
        )
        .bind(destination)
        .bind(KEYS)
        .bind(payload())
        .bind(n)
        .execute(pool)
        .await
        .unwrap();
        done += n;
    }
    sqlx::query("ANALYZE outbox.messages")
        .execute(pool)
        .await
        .unwrap();
    // Writes the fill's dirty pages out now, so that the checkpoint does not land in the
    // measurement that follows.
    sqlx::query("CHECKPOINT").execute(pool).await.unwrap();
}

/// Runs the relay in-process until `rows` rows are published; returns messages per second.
/// Only for the database ceiling, whose publisher cannot be configured in the product.
/// `drained` is cancelled once the drain is seen done (within [`wait_drained`]'s 50 ms), before
/// the relay stops.
async fn drain_in_process<P: Publisher>(
    pool: &PgPool,
    config: Config,
    publisher: P,
    rows: i64,
    drained: &CancellationToken,
) -> f64 {
    let token = CancellationToken::new();
    let started = Instant::now();
    let relay = tokio::spawn(app::run_with(
        pool.clone(),
        Arc::new(publisher),
        config,
        Arc::new(Health::new(std::time::Duration::from_secs(300))),
        token.clone(),
    ));
    wait_drained(pool).await;
    let rate = rows as f64 / started.elapsed().as_secs_f64();
    drained.cancel();
    token.cancel();
    let _ = relay.await;
    rate
}

/// Waits until no committed row is left (a row stays committed until its confirm is recorded).
///
/// Polls the status of the newest row, a primary-key lookup, and counts the committed rows
/// only once that one is done: a count every 50 ms walks the pending index, which costs the
/// database more the bigger the backlog, and under an open snapshot it visits every row
/// published so far. That work would be charged to the drain.
async fn wait_drained(pool: &PgPool) {
    // Generous: the slowest drain here takes under a minute; a stuck relay must not hang the run.
    let deadline = Instant::now() + Duration::from_secs(600);
    let newest: Option<i64> = sqlx::query_scalar("SELECT max(id) FROM outbox.messages")
        .fetch_one(pool)
        .await
        .unwrap();
    let mut newest_done = newest.is_none();
    loop {
        if !newest_done {
            // Gone counts as done: with delete on publish the relay deletes confirmed rows.
            newest_done = sqlx::query_scalar(
                "SELECT status <> 'committed' FROM outbox.messages WHERE id = $1",
            )
            .bind(newest)
            .fetch_optional(pool)
            .await
            .unwrap()
            .unwrap_or(true);
        }
        if newest_done {
            let left: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM outbox.messages WHERE status = 'committed'",
            )
            .fetch_one(pool)
            .await
            .unwrap();
            if left == 0 {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "rows still committed after 10 minutes; see target/bench-relay-*.log"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Broker {
    Amqp,
    Kafka,
}

impl Broker {
    fn name(self) -> &'static str {
        match self {
            Broker::Amqp => "RabbitMQ",
            Broker::Kafka => "Kafka",
        }
    }
}

/// The relay binary with its default configuration, publishing from `db_url`.
struct RelayProcess {
    child: std::process::Child,
}

/// `target/` of the repository, where the relay logs and `bench.json` go; created if the build
/// went to another `CARGO_TARGET_DIR`.
fn out_dir() -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&dir).expect("target directory");
    dir
}

impl RelayProcess {
    /// `settings`: OUTBOX_RELAY__* variables for this run, such as delete on publish.
    fn spawn(db_url: &str, broker: Broker, label: &str, settings: &[(&str, &str)]) -> Self {
        let log = out_dir().join(format!("bench-relay-{label}.log"));
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_outbox-relay"));
        cmd.arg("run")
            .env_remove("OUTBOX_RELAY_CONFIG")
            .env("OUTBOX_RELAY__DATABASE__URL", db_url)
            .env(
                "OUTBOX_RELAY__BROKER__KIND",
                match broker {
                    Broker::Amqp => "amqp",
                    Broker::Kafka => "kafka",
                },
            )
            .env("OUTBOX_RELAY__BROKER__AMQP__URL", amqp_url())
            .env(
                "OUTBOX_RELAY__BROKER__KAFKA__BOOTSTRAP_SERVERS",
                bootstrap(),
            )
            .env("OUTBOX_RELAY__HTTP__LISTEN", "127.0.0.1:0")
            .env("OUTBOX_RELAY__LOG__FORMAT", "text")
            .env("NO_COLOR", "1")
            .stdout(std::fs::File::create(&log).expect("relay log"))
            .stderr(std::fs::File::create(log.with_extension("stderr")).expect("relay log"));
        cmd.envs(settings.iter().copied());
        for (k, v) in std::env::vars() {
            // BENCH_RELAY__X__Y=v sets OUTBOX_RELAY__X__Y=v, to try settings without editing.
            if let Some(rest) = k.strip_prefix("BENCH_RELAY__") {
                cmd.env(format!("OUTBOX_RELAY__{rest}"), v);
            }
        }
        Self {
            child: cmd.spawn().expect("spawn outbox-relay"),
        }
    }

    fn pid(&self) -> Option<u32> {
        Some(self.child.id())
    }

    /// Peak resident set size so far, in MiB (VmHWM).
    fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM");
        kib / 1024.0
    }

    /// User plus system CPU time so far.
    fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
        // /proc reports in USER_HZ, which is 100 on every Linux architecture we run on.
        ticks / 100.0
    }

    fn stop(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

struct DrainFigures {
    rate: f64,
    peak_rss_mib: f64,
    cpu_seconds: f64,
    /// Where the machine's CPU went during the drain: seconds per command, busiest first.
    cpu_by_command: Vec<(String, f64)>,
    /// Share of all cores that was busy during the drain.
    machine_busy: f64,
    relay: RelayProcess,
}

/// CPU seconds so far of every process, by pid, with its command name.
fn cpu_by_process() -> HashMap<u32, (String, f64)> {
    let mut by = HashMap::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_string();
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        let ticks: f64 =
            fields[11].parse::<f64>().unwrap_or(0.0) + fields[12].parse::<f64>().unwrap_or(0.0);
        by.insert(pid, (comm, ticks / 100.0));
    }
    by
}

/// (busy, total) jiffies of all cores from /proc/stat.
fn machine_jiffies() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let v: Vec<f64> = stat
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap())
        .collect();
    let idle = v[3] + v[4];
    let total: f64 = v.iter().take(8).sum();
    (total - idle, total)
}

/// The local TCP ports of `pid`'s sockets: its connections' client ports.
fn tcp_ports_of(pid: u32) -> std::collections::HashSet<u16> {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.flatten()
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .filter_map(|target| {
                    let t = target.to_string_lossy().into_owned();
                    Some(t.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let port = f.get(1)?.rsplit_once(':')?.1;
            inodes
                .contains(*f.get(9)?)
                .then(|| u16::from_str_radix(port, 16).ok())?
        })
        .collect()
}

/// The client port of a Postgres backend, from its process title `postgres: user db
/// 127.0.0.1(port) ...`.
fn backend_client_port(pid: u32) -> Option<u16> {
    let title = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).ok()?;
    let (_, rest) = title.split_once("127.0.0.1(")?;
    rest.split_once(')')?.0.parse().ok()
}

/// Since the snapshots: the share of all cores that was busy (%), and the CPU seconds of the
/// six busiest commands. Differences are taken per pid (kernel workers rename themselves as they go), then summed by
/// command name. Postgres backends serving `relay`'s connections count apart from the rest
/// of Postgres (the writers, the consumer's bookkeeping, background work).
fn cpu_since(
    before: &HashMap<u32, (String, f64)>,
    jiffies_before: (f64, f64),
    relay: Option<u32>,
) -> (f64, Vec<(String, f64)>) {
    let jiffies_after = machine_jiffies();
    let relay_ports = relay.map(tcp_ports_of).unwrap_or_default();
    let mut by_command: HashMap<String, f64> = HashMap::new();
    for (pid, (comm, after)) in cpu_by_process() {
        let was = before.get(&pid).map_or(0.0, |(_, secs)| *secs);
        // Kernel workers by kind, not by instance.
        let name = match comm.split_once('/') {
            Some((kind, _)) if comm.starts_with("kworker") => kind.to_string(),
            _ if comm == "postgres"
                && backend_client_port(pid).is_some_and(|p| relay_ports.contains(&p)) =>
            {
                "postgres (the relay's sessions)".to_string()
            }
            _ => comm,
        };
        *by_command.entry(name).or_insert(0.0) += after - was;
    }
    let mut by: Vec<(String, f64)> = by_command
        .into_iter()
        .filter(|(_, used)| *used > 0.0)
        .collect();
    by.sort_by(|a, b| b.1.total_cmp(&a.1));
    by.truncate(6);
    (busy_between(jiffies_before, jiffies_after), by)
}

/// Share of all cores busy between two readings of [`machine_jiffies`], in percent.
fn busy_between(before: (f64, f64), after: (f64, f64)) -> f64 {
    (after.0 - before.0) / (after.1 - before.1) * 100.0
}

/// A fresh outbox and the configuration of a relay that drains it in-process;
/// `published_retention` zero means delete on publish.
async fn ceiling_outbox(outbox: Outbox<'_>, published_retention: Duration) -> (PgPool, Config) {
    let (pool, url) = fresh_db(outbox.admin_url).await;
    fill(&pool, outbox.exchange, outbox.rows).await;
    let mut config = Config::default();
    config.database.url = SecretUrl::new(url);
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.log.format = LogFormat::Text;
    config.sweeper.published_retention = published_retention;
    (pool, config)
}

/// The relay's own claim and outcome path on a fresh outbox, with a publisher that confirms at
/// once.
async fn database_ceiling_of(
    f: &mut Figures,
    outbox: Outbox<'_>,
    name: &str,
    published_retention: Duration,
) -> f64 {
    let (pool, config) = ceiling_outbox(outbox, published_retention).await;
    let drained = CancellationToken::new();
    let drain = drain_in_process(&pool, config, InstantPublisher, outbox.rows, &drained);
    ceiling(f, name, drain).await
}

/// One way round of both halves of a drain to Kafka: the database path on a fresh outbox with
/// `publisher`, beside Kafka traffic of its own until the drain is seen done. Records both
/// rates and each side against `target`; the flat-out side is the one not held to a rate
/// (Kafka when `kafka.rate` is infinite, the database path otherwise).
async fn both_halves_way<P: Publisher>(
    f: &mut Figures,
    outbox: Outbox<'_>,
    name: &str,
    published_retention: Duration,
    publisher: P,
    kafka: KafkaAlongside<'_>,
    target: f64,
) {
    let (pool, config) = ceiling_outbox(outbox, published_retention).await;
    let producer = bench_producer(kafka.bootstrap);
    // Connected before the clock starts: in a drain of one to three seconds, the connection
    // set-up would otherwise be a good part of the Kafka side's time.
    kafka_at_rate(
        &producer,
        kafka.topic,
        f64::INFINITY,
        &CancellationToken::new(),
        1,
    )
    .await;
    let stop = CancellationToken::new();
    let traffic = {
        let (topic, rate, stop) = (kafka.topic.to_string(), kafka.rate, stop.clone());
        tokio::spawn(async move { kafka_at_rate(&producer, &topic, rate, &stop, usize::MAX).await })
    };
    let drain = drain_in_process(&pool, config, publisher, outbox.rows, &stop);
    let database = ceiling(f, name, drain).await;
    let alongside = traffic.await.unwrap();
    let alongside = f.add(format!("{name}: Kafka alongside"), alongside, "msg/s");
    let (flat_out, paced) = if kafka.rate.is_finite() {
        (database, alongside)
    } else {
        (alongside, database)
    };
    f.add(
        format!("{name}: flat-out side / target"),
        flat_out / target,
        "x",
    );
    f.add(format!("{name}: paced side / target"), paced / target, "x");
}

/// A fresh outbox of `rows` committed rows for `exchange`, in a database of its own.
#[derive(Clone, Copy)]
struct Outbox<'a> {
    admin_url: &'a str,
    exchange: &'a str,
    rows: i64,
}

/// Kafka traffic to run beside the database path.
#[derive(Clone, Copy)]
struct KafkaAlongside<'a> {
    bootstrap: &'a str,
    topic: &'a str,
    /// Messages a second; infinite for as many as the in-flight limit allows.
    rate: f64,
}

/// Runs `measure` (a ceiling) and records its rate and how busy the machine was meanwhile:
/// a ceiling that keeps both cores busy leaves no room for anything running beside it.
async fn ceiling(
    f: &mut Figures,
    name: &str,
    measure: impl std::future::Future<Output = f64>,
) -> f64 {
    let before = machine_jiffies();
    let rate = measure.await;
    f.add(
        format!("{name}: machine busy (all cores)"),
        busy_between(before, machine_jiffies()),
        "%",
    );
    f.add(name.to_string(), rate, "msg/s")
}

/// Drains `rows` committed rows with the relay binary; the relay keeps running afterwards.
async fn drain(
    pool: &PgPool,
    db_url: &str,
    broker: Broker,
    rows: i64,
    label: &str,
    settings: &[(&str, &str)],
) -> DrainFigures {
    let (cpu_before, jiffies_before) = (cpu_by_process(), machine_jiffies());
    let started = Instant::now();
    let relay = RelayProcess::spawn(db_url, broker, label, settings);
    wait_drained(pool).await;
    let rate = rows as f64 / started.elapsed().as_secs_f64();
    let (machine_busy, cpu_by_command) = cpu_since(&cpu_before, jiffies_before, relay.pid());
    DrainFigures {
        rate,
        cpu_by_command,
        machine_busy,
        peak_rss_mib: relay.peak_rss_mib(),
        cpu_seconds: relay.cpu_seconds(),
        relay,
    }
}

/// Share of one core the relay uses over `secs` with nothing to publish.
async fn idle_cpu_percent(relay: &RelayProcess, secs: u64) -> f64 {
    let before = relay.cpu_seconds();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    (relay.cpu_seconds() - before) / secs as f64 * 100.0
}

/// A fanout exchange `name` bound to a bounded queue `{name}.q`, both there as long as the
/// returned connection is open.
async fn amqp_exchange(url: &str, name: &str) -> Connection {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("RabbitMQ");
    let ch = conn.create_channel().await.unwrap();
    // Gone with its queue's binding.
    ch.exchange_declare(
        name.into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let queue = format!("{name}.q");
    let args = {
        // A bounded queue that drops the oldest, so the bench never fills the disk.
        let mut t = FieldTable::default();
        t.insert(
            "x-max-length".into(),
            lapin::types::AMQPValue::LongLongInt(100_000),
        );
        t
    };
    // Exclusive, so that RabbitMQ deletes it with this connection, the bench's end included:
    // an auto-delete queue goes only after a consumer leaves, and the drains' queue never has
    // one. Left behind, each run's queue kept up to 100,000 messages in RabbitMQ's memory,
    // and RabbitMQ's work on them landed in later runs' figures (docs/performance.md).
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        args,
    )
    .await
    .unwrap();
    ch.queue_bind(
        queue.as_str().into(),
        name.into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    conn
}

/// RabbitMQ alone: confirms, persistent, mandatory, the relay's in-flight limit.
async fn amqp_ceiling(url: &str, exchange: &str, n: usize) -> f64 {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let body = payload();
    let window = in_flight();
    let started = Instant::now();
    let mut pending = std::collections::VecDeque::new();
    for i in 0..n {
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(uuid::Uuid::new_v4().to_string().into());
        let key = format!("k{}", i as i64 % KEYS);
        let confirm = ch
            .basic_publish(
                exchange.into(),
                key.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &body,
                props,
            )
            .await
            .unwrap();
        pending.push_back(confirm);
        if pending.len() >= window {
            pending.pop_front().unwrap().await.unwrap();
        }
    }
    for c in pending {
        c.await.unwrap();
    }
    n as f64 / started.elapsed().as_secs_f64()
}

async fn kafka_topic(bootstrap: &str, topic: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    for r in admin
        .create_topics(
            &[NewTopic::new(topic, 3, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap()
    {
        r.unwrap();
    }
}

/// A producer with the relay's client settings.
fn bench_producer(bootstrap: &str) -> FutureProducer {
    let config = KafkaConfig {
        bootstrap_servers: bootstrap.to_string(),
        ..Config::default().broker.kafka
    };
    client_config(&config, Duration::from_secs(30))
        .create()
        .unwrap()
}

/// Kafka alone: the relay's producer settings and in-flight limit, the producer's start
/// included as in a drain.
async fn kafka_ceiling(bootstrap: &str, topic: &str, n: usize) -> f64 {
    let producer = bench_producer(bootstrap);
    kafka_at_rate(
        &producer,
        topic,
        f64::INFINITY,
        &CancellationToken::new(),
        n,
    )
    .await
}

/// Sends bench message `i` (key `k{i mod KEYS}`) and waits for its delivery report.
async fn produce(
    producer: FutureProducer,
    topic: &str,
    i: usize,
    body: Vec<u8>,
) -> Result<(), rdkafka::error::KafkaError> {
    let key = format!("k{}", i as i64 % KEYS);
    let record = FutureRecord::to(topic).key(&key).payload(&body);
    match producer.send(record, Duration::from_secs(30)).await {
        Ok(_) => Ok(()),
        Err((e, _)) => Err(e),
    }
}

/// Produces at `rate` messages a second, within the relay's in-flight limit, until `stop` or
/// `n` messages; returns the rate confirmed until then. Sends at each confirm and each
/// millisecond, as many as are due since the start and fit in the window: after falling
/// behind, it catches up in bursts of up to the window. An infinite rate keeps the window
/// full, as the Kafka ceiling does.
async fn kafka_at_rate(
    producer: &FutureProducer,
    topic: &str,
    rate: f64,
    stop: &CancellationToken,
    n: usize,
) -> f64 {
    let body = payload();
    let window = in_flight();
    let started = Instant::now();
    let mut sent = 0usize;
    let mut pending = futures::stream::FuturesUnordered::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Some(r) = pending.next(), if !pending.is_empty() => {
                let r: Result<(), rdkafka::error::KafkaError> = r;
                r.unwrap();
            }
            () = stop.cancelled() => break,
        }
        if sent == n && pending.is_empty() {
            break;
        }
        let due = ((started.elapsed().as_secs_f64() * rate) as usize).min(n);
        while sent < due && pending.len() < window {
            pending.push(produce(producer.clone(), topic, sent, body.clone()));
            sent += 1;
        }
    }
    let confirmed = sent - pending.len();
    let elapsed = started.elapsed().as_secs_f64();
    while let Some(r) = pending.next().await {
        r.unwrap();
    }
    confirmed as f64 / elapsed
}

/// One message at a time through the relay's own publisher, with a consumer attached: the
/// broker round trip that every message of a key pays (to the confirm) and the broker's own
/// delivery delay (to the consumer), the floors under commit-to-receive latency.
struct RoundTrip {
    confirm: (f64, f64),
    receive: (f64, f64),
}

async fn round_trip<P: Publisher>(broker: Broker, publisher: &P, n: usize) -> RoundTrip {
    let destination = match broker {
        Broker::Amqp => format!("bench.rt.{}", uuid::Uuid::new_v4().simple()),
        Broker::Kafka => format!("bench-rt-{}", uuid::Uuid::new_v4().simple()),
    };
    let expected = Arc::new(AtomicUsize::new(n));
    let (subscribed, ready) = tokio::sync::oneshot::channel();
    let consumer = tokio::spawn(consume(broker, destination.clone(), expected, subscribed));
    ready.await.unwrap();
    publisher.ready().await.expect("broker");
    let mut confirm = Vec::with_capacity(n);
    let mut sent = HashMap::with_capacity(n);
    for i in 0..n {
        let message = OutboxMessage {
            id: outbox_relay::store::RowId(i as i64),
            message_id: uuid::Uuid::new_v4(),
            destination: destination.clone(),
            routing_key: None,
            message_key: Some("k".into()),
            payload: payload(),
            content_type: "application/json".into(),
            headers: serde_json::json!({}),
            commit_seq: i as i64,
            committed_at: chrono::Utc::now(),
            attempts: 0,
        };
        sent.insert(message.message_id, SystemTime::now());
        let started = Instant::now();
        publisher.publish(&message).await.expect("publish");
        confirm.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    publisher.close().await;
    let receipts = consumer.await.unwrap();
    let mut receive: Vec<f64> = receipts
        .iter()
        .map(|(id, at)| {
            at.duration_since(sent[id])
                .unwrap_or_default()
                .as_secs_f64()
                * 1000.0
        })
        .collect();
    RoundTrip {
        confirm: p50_p99(&mut confirm),
        receive: p50_p99(&mut receive),
    }
}

fn p50_p99(ms: &mut [f64]) -> (f64, f64) {
    ms.sort_by(f64::total_cmp);
    let pct = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    (pct(0.5), pct(0.99))
}

/// The original design: select one, publish, wait for its confirm, update it.
async fn naive(pool: &PgPool, publisher: &AmqpPublisher, rows: i64) -> f64 {
    let started = Instant::now();
    for _ in 0..rows {
        let m: OutboxMessage = sqlx::query_as(
            "SELECT id, message_id, destination, routing_key, message_key, payload, content_type, headers,
                    commit_seq, committed_at, attempts
               FROM outbox.messages WHERE status = 'committed' ORDER BY commit_seq LIMIT 1",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        publisher.publish(&m).await.unwrap();
        sqlx::query(
            "UPDATE outbox.messages SET status = 'published', published_at = now() WHERE id = $1",
        )
        .bind(m.id)
        .execute(pool)
        .await
        .unwrap();
    }
    rows as f64 / started.elapsed().as_secs_f64()
}

fn amqp_url() -> String {
    env(
        "OUTBOX_TEST_AMQP_URL",
        "amqp://guest:guest@127.0.0.1:56729/%2f",
    )
}

fn bootstrap() -> String {
    env("OUTBOX_TEST_KAFKA_BOOTSTRAP", "127.0.0.1:59092")
}

/// Commit-to-receive latency percentiles, in milliseconds.
struct Latency {
    p50: f64,
    p99: f64,
    p999: f64,
    recorded_p50: Option<f64>,
    recorded_p99: Option<f64>,
    /// From `committed_at` (the insert) to the writer's commit returning: the part no relay
    /// can shorten, since a row is invisible until then.
    visible_p50: f64,
    visible_p99: f64,
    /// Share of all cores busy while the load ran, and the busiest commands.
    machine_busy: f64,
    cpu_by_command: Vec<(String, f64)>,
}

type Receipts = HashMap<uuid::Uuid, SystemTime>;

/// Consumes `destination` until `expected` distinct messages arrived (or a deadline passed),
/// keeping the moment each message id was first received.
async fn consume(
    broker: Broker,
    destination: String,
    expected: Arc<AtomicUsize>,
    subscribed: tokio::sync::oneshot::Sender<()>,
) -> Receipts {
    let mut got = Receipts::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    if broker == Broker::Kafka {
        kafka_topic(&bootstrap(), &destination).await;
    }
    let done =
        |got: &Receipts| got.len() >= expected.load(Ordering::Acquire) || Instant::now() > deadline;
    match broker {
        Broker::Amqp => {
            let conn = amqp_exchange(&amqp_url(), &destination).await;
            let ch = conn.create_channel().await.unwrap();
            let mut deliveries = ch
                .basic_consume(
                    format!("{destination}.q").as_str().into(),
                    "bench".into(),
                    BasicConsumeOptions {
                        no_ack: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .unwrap();
            let _ = subscribed.send(());
            while !done(&got) {
                let Ok(Some(d)) =
                    tokio::time::timeout(Duration::from_millis(500), deliveries.next()).await
                else {
                    continue;
                };
                let d = d.unwrap();
                let now = SystemTime::now();
                if let Some(id) = d.properties.message_id() {
                    got.entry(id.as_str().parse().unwrap()).or_insert(now);
                }
            }
        }
        Broker::Kafka => {
            let consumer: StreamConsumer = ClientConfig::new()
                .set("bootstrap.servers", bootstrap())
                .set("group.id", format!("{destination}-bench"))
                .set("enable.auto.commit", "false")
                // The consumer's own wait must not dominate what is measured.
                .set("fetch.wait.max.ms", "5")
                .create()
                .unwrap();
            let mut partitions = TopicPartitionList::new();
            for p in 0..3 {
                partitions
                    .add_partition_offset(&destination, p, Offset::Beginning)
                    .unwrap();
            }
            consumer.assign(&partitions).unwrap();
            let _ = subscribed.send(());
            while !done(&got) {
                let Ok(m) = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await
                else {
                    continue;
                };
                let m = m.unwrap();
                let now = SystemTime::now();
                let id = m.headers().and_then(|h| {
                    h.iter()
                        .find(|h| h.key == "message_id")
                        .and_then(|h| h.value)
                        .map(|v| std::str::from_utf8(v).unwrap().parse().unwrap())
                });
                if let Some(id) = id {
                    got.entry(id).or_insert(now);
                }
            }
        }
    }
    got
}

/// Commits messages at `rate` per second for `secs` seconds, in transactions of 1-10 messages
/// over all keys, with the relay running; measures committed_at to consumer receipt.
/// `settings`: OUTBOX_RELAY__* variables for this run, such as delete on publish.
async fn latency(
    admin_url: &str,
    broker: Broker,
    rate: u32,
    secs: u64,
    label: &str,
    settings: &[(&str, &str)],
) -> Latency {
    let (pool, url) = fresh_db(admin_url).await;
    let writers = PgPoolOptions::new()
        .max_connections(16)
        .connect(&url)
        .await
        .unwrap();
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let destination = match broker {
        Broker::Amqp => format!("bench.latency.{run}"),
        Broker::Kafka => format!("bench-latency-{run}"),
    };
    let expected = Arc::new(AtomicUsize::new(usize::MAX));
    let (subscribed, ready) = tokio::sync::oneshot::channel();
    let consumer = tokio::spawn(consume(
        broker,
        destination.clone(),
        expected.clone(),
        subscribed,
    ));
    ready.await.unwrap();
    let relay = RelayProcess::spawn(&url, broker, label, settings);
    // The relay is up once its lease row exists; load before that would measure start-up.
    while sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbox.relay_leases")
        .fetch_one(&pool)
        .await
        .unwrap()
        == 0
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let payload = String::from_utf8(payload()).unwrap();
    let total = u64::from(rate) * secs;
    let in_flight = Arc::new(tokio::sync::Semaphore::new(64));
    let visible: Arc<std::sync::Mutex<Receipts>> = Arc::default();
    let committed: Arc<std::sync::Mutex<Receipts>> = Arc::default();
    let (cpu_before, jiffies_before) = (cpu_by_process(), machine_jiffies());
    let started = tokio::time::Instant::now();
    let mut sent = 0u64;
    let mut rng = rand::rng();
    while sent < total {
        let n = rng.random_range(1..=10u64).min(total - sent);
        tokio::time::sleep_until(started + Duration::from_secs_f64(sent as f64 / f64::from(rate)))
            .await;
        let permit = in_flight.clone().acquire_owned().await.unwrap();
        let (writers, destination, payload, visible, committed) = (
            writers.clone(),
            destination.clone(),
            payload.clone(),
            visible.clone(),
            committed.clone(),
        );
        let first_key = rng.random_range(0..KEYS);
        tokio::spawn(async move {
            // committed_at is the trigger's clock_timestamp() inside enqueue; the one read
            // right after it is within microseconds, and stays known once the relay deleted
            // the row (delete on publish).
            let rows: Vec<(uuid::Uuid, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
                "SELECT outbox.enqueue($1, $2::text::jsonb, 'k' || (($3 + g) % 1000)),
                        clock_timestamp()
                   FROM generate_series(1, $4) g",
            )
            .bind(destination)
            .bind(payload)
            .bind(first_key)
            .bind(n as i64)
            .fetch_all(&writers)
            .await
            .unwrap();
            let now = SystemTime::now();
            visible
                .lock()
                .unwrap()
                .extend(rows.iter().map(|(id, _)| (*id, now)));
            committed
                .lock()
                .unwrap()
                .extend(rows.into_iter().map(|(id, at)| (id, at.into())));
            drop(permit);
        });
        sent += n;
    }
    let _ = in_flight.acquire_many(64).await.unwrap();
    let (machine_busy, cpu_by_command) = cpu_since(&cpu_before, jiffies_before, relay.pid());
    expected.store(sent as usize, Ordering::Release);
    let receipts = consumer.await.unwrap();
    relay.stop();
    assert_eq!(
        receipts.len() as u64,
        sent,
        "every message reached the consumer"
    );

    let committed = std::mem::take(&mut *committed.lock().unwrap());
    let since_commit = |at: &Receipts| {
        let mut ms: Vec<f64> = committed
            .iter()
            .map(|(id, committed_at)| {
                at[id]
                    .duration_since(*committed_at)
                    .unwrap_or_default()
                    .as_secs_f64()
                    * 1000.0
            })
            .collect();
        ms.sort_by(f64::total_cmp);
        ms
    };
    let pct = |ms: &[f64], q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    let received = since_commit(&receipts);
    let visible = since_commit(&visible.lock().unwrap());
    // The relay's own share: commit to the confirm recorded in the row (published_at); no
    // rows, so no figure, with delete on publish.
    let recorded: Vec<Option<f64>> = sqlx::query_scalar(
        "SELECT unnest(percentile_cont(array[0.5, 0.99, 0.999]) WITHIN GROUP
                (ORDER BY extract(epoch FROM published_at - committed_at)::float8 * 1000))
           FROM outbox.messages",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    Latency {
        p50: pct(&received, 0.50),
        p99: pct(&received, 0.99),
        p999: pct(&received, 0.999),
        recorded_p50: recorded.first().copied().flatten(),
        recorded_p99: recorded.get(1).copied().flatten(),
        visible_p50: pct(&visible, 0.50),
        visible_p99: pct(&visible, 0.99),
        machine_busy,
        cpu_by_command,
    }
}

/// What the figures were measured on.
async fn machine(pool: &PgPool) -> serde_json::Value {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kib| kib / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let postgres: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(pool)
        .await
        .unwrap();
    let command = |program: &str, args: &[&str]| {
        std::process::Command::new(program)
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|| "unknown".into())
    };
    serde_json::json!({
        "cores": cores,
        "memory_gib": (mem_gib * 10.0).round() / 10.0,
        "cpu": cpu,
        "postgres": postgres,
        "rabbitmq": command("dpkg-query", &["-W", "-f=${Version}", "rabbitmq-server"]),
        "kafka_broker": format!("tansu {}", command("tansu", &["--version"]).trim_start_matches("tansu ")),
    })
}

struct Figures(Vec<(String, f64, &'static str)>);

impl Figures {
    fn add(&mut self, name: impl Into<String>, value: f64, unit: &'static str) -> f64 {
        let name = name.into();
        // Ratios are compared with targets such as 0.8: one decimal would round 0.76 up.
        let decimals = if unit == "x" { 2 } else { 1 };
        println!("  {name:<58} {value:>10.decimals$} {unit}");
        self.0.push((name, value, unit));
        value
    }
}

#[tokio::main]
async fn main() {
    let rows: i64 = env("BENCH_ROWS", "200000").parse().expect("BENCH_ROWS");
    let naive_rows: i64 = env("BENCH_NAIVE_ROWS", "3000")
        .parse()
        .expect("BENCH_NAIVE_ROWS");
    let latency_secs: u64 = env("BENCH_LATENCY_SECS", "60")
        .parse()
        .expect("BENCH_LATENCY_SECS");
    let idle_secs: u64 = env("BENCH_IDLE_SECS", "30")
        .parse()
        .expect("BENCH_IDLE_SECS");
    let only = env("BENCH_ONLY", "");
    let wanted = |part: &str| only.is_empty() || only.split(',').any(|p| p == part);
    let admin_url = env(
        "OUTBOX_TEST_DATABASE_URL",
        "postgres://postgres@127.0.0.1:54329/postgres",
    );
    let amqp_url = amqp_url();
    let bootstrap = bootstrap();
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let mut f = Figures(Vec::new());

    let (admin, _) = fresh_db(&admin_url).await;
    let machine = machine(&admin).await;
    admin.close().await;
    println!("outbox-relay bench: {rows} rows, {PAYLOAD_BYTES}-byte JSON payloads, {KEYS} keys, relay defaults");
    println!("machine: {machine}");

    let exchange = format!("bench.{run}");
    let _amqp = amqp_exchange(&amqp_url, &exchange).await;
    let topic = format!("bench-{run}");
    kafka_topic(&bootstrap, &topic).await;

    let outbox = Outbox {
        admin_url: &admin_url,
        exchange: &exchange,
        rows,
    };
    // Per broker, the drain is compared with the lower of its own ceiling and the database's.
    let mut broker_ceiling: HashMap<&'static str, f64> = HashMap::new();
    let mut database_ceiling = f64::MAX;
    if wanted("ceilings") {
        let measures = [
            (
                Broker::Amqp,
                amqp_ceiling(&amqp_url, &exchange, rows as usize).boxed(),
            ),
            (
                Broker::Kafka,
                kafka_ceiling(&bootstrap, &topic, rows as usize).boxed(),
            ),
        ];
        for (broker, measure) in measures {
            let name = broker.name();
            let rate = ceiling(&mut f, &format!("ceiling: {name} alone"), measure).await;
            broker_ceiling.insert(name, rate);
        }
        let config = Config::default();
        let mut amqp_config = config.broker.amqp.clone();
        amqp_config.url = SecretUrl::new(amqp_url.clone());
        let amqp = AmqpPublisher::new(amqp_config, config.relay.publish_timeout);
        let rt = round_trip(Broker::Amqp, &amqp, 2000).await;
        f.add(
            "one at a time: RabbitMQ publish to confirm, p50",
            rt.confirm.0,
            "ms",
        );
        f.add(
            "one at a time: RabbitMQ publish to confirm, p99",
            rt.confirm.1,
            "ms",
        );
        f.add(
            "one at a time: RabbitMQ publish to consumer, p50",
            rt.receive.0,
            "ms",
        );
        f.add(
            "one at a time: RabbitMQ publish to consumer, p99",
            rt.receive.1,
            "ms",
        );
        let kafka_config = KafkaConfig {
            bootstrap_servers: bootstrap.clone(),
            ..config.broker.kafka.clone()
        };
        let kafka = KafkaPublisher::new(&kafka_config, config.relay.publish_timeout).unwrap();
        let rt = round_trip(Broker::Kafka, &kafka, 2000).await;
        for (name, v) in [
            ("produce to delivery report, p50", rt.confirm.0),
            ("produce to delivery report, p99", rt.confirm.1),
            ("produce to consumer, p50", rt.receive.0),
            ("produce to consumer, p99", rt.receive.1),
        ] {
            f.add(format!("one at a time: Kafka {name}"), v, "ms");
        }

        database_ceiling = database_ceiling_of(
            &mut f,
            outbox,
            "ceiling: database (claim and mark, instant publisher)",
            Config::default().sweeper.published_retention,
        )
        .await;
    }

    // The database ceiling with delete on publish, for the drains in that mode.
    let mut deleting_ceiling = f64::MAX;
    if wanted("delete") {
        deleting_ceiling = database_ceiling_of(
            &mut f,
            outbox,
            "ceiling: database (claim and delete on publish, instant publisher)",
            Duration::ZERO,
        )
        .await;
    }

    // Whether the machine carries both halves of a drain to Kafka at the target rate (0.8 x
    // the lower ceiling) at once, each way round: the database path flat out beside Kafka
    // traffic held to that rate, and Kafka flat out beside the database path held to it. If a
    // flat-out side falls below the target while the paced side holds it, no relay whose work
    // costs the same could drain to Kafka at the target rate on this machine
    // (docs/performance.md).
    if wanted("beside-kafka") {
        let kafka_alone = broker_ceiling.get("Kafka").copied();
        let modes = [
            (
                "claim and mark",
                database_ceiling,
                Config::default().sweeper.published_retention,
            ),
            (
                "claim and delete on publish",
                deleting_ceiling,
                Duration::ZERO,
            ),
        ];
        for (mode, alone, retention) in modes {
            let Some(kafka_alone) = kafka_alone.filter(|_| alone != f64::MAX) else {
                println!("  beside-kafka ({mode}): skipped; needs its ceilings in the same run");
                continue;
            };
            let target = 0.8 * kafka_alone.min(alone);
            let name = format!("both halves of a drain to Kafka ({mode})");
            f.add(format!("{name}: target rate"), target, "msg/s");
            let beside = |rate| KafkaAlongside {
                bootstrap: &bootstrap,
                topic: &topic,
                rate,
            };
            both_halves_way(
                &mut f,
                outbox,
                &format!("{name}: database path flat out, Kafka at the target rate"),
                retention,
                InstantPublisher,
                beside(target),
                target,
            )
            .await;
            both_halves_way(
                &mut f,
                outbox,
                &format!("{name}: database path at the target rate, Kafka flat out"),
                retention,
                PacedPublisher::new(target),
                beside(f64::INFINITY),
                target,
            )
            .await;
        }
    }

    let mut drain_amqp = None;
    let modes = [
        ("", database_ceiling, &[][..]),
        (
            ", delete on publish",
            deleting_ceiling,
            &[("OUTBOX_RELAY__SWEEPER__PUBLISHED_RETENTION", "0s")][..],
        ),
    ];
    for (mode, (suffix, database_ceiling, settings)) in modes.into_iter().enumerate() {
        for broker in [Broker::Amqp, Broker::Kafka] {
            let part = match mode {
                0 => format!("drain-{}", broker.name().to_lowercase()),
                _ => "delete".to_string(),
            };
            if !wanted(&part) {
                continue;
            }
            let (pool, url) = fresh_db(&admin_url).await;
            fill(
                &pool,
                if broker == Broker::Amqp {
                    &exchange
                } else {
                    &topic
                },
                rows,
            )
            .await;
            let label = format!("drain-{}{}", broker.name(), ["", "-delete"][mode]);
            let d = drain(&pool, &url, broker, rows, &label, settings).await;
            let name = format!("{}{suffix}", broker.name());
            let rate = f.add(format!("drain: relay to {name}"), d.rate, "msg/s");
            if let Some(own) = broker_ceiling.get(broker.name()) {
                f.add(
                    format!("drain to {name} / lower of its ceiling and the database's"),
                    rate / own.min(database_ceiling),
                    "x",
                );
            }
            f.add(
                format!("drain to {name}: relay peak RSS"),
                d.peak_rss_mib,
                "MiB",
            );
            f.add(format!("drain to {name}: relay CPU"), d.cpu_seconds, "s");
            f.add(
                format!("drain to {name}: machine busy (all cores)"),
                d.machine_busy,
                "%",
            );
            for (comm, used) in &d.cpu_by_command {
                f.add(format!("drain to {name}: CPU of {comm}"), *used, "s");
            }
            if broker == Broker::Amqp && mode == 0 {
                drain_amqp = Some(rate);
                f.add(
                    format!("idle for {idle_secs} s: relay CPU (share of one core)"),
                    idle_cpu_percent(&d.relay, idle_secs).await,
                    "%",
                );
            }
            d.relay.stop();
        }
    }

    if wanted("vacuum") {
        let (pool, url) = fresh_db(&admin_url).await;
        fill(&pool, &exchange, rows).await;
        // A REPEATABLE READ snapshot in the same database keeps every row version the relay
        // updates from being pruned or vacuumed for the whole drain.
        let mut holder = pool.begin().await.unwrap();
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .execute(&mut *holder)
            .await
            .unwrap();
        sqlx::query("SELECT count(*) FROM outbox.messages")
            .execute(&mut *holder)
            .await
            .unwrap();
        let d = drain(&pool, &url, Broker::Amqp, rows, "drain-held-back", &[]).await;
        d.relay.stop();
        holder.rollback().await.unwrap();
        let rate = f.add(
            "drain to RabbitMQ, REPEATABLE READ held open",
            d.rate,
            "msg/s",
        );
        if let Some(base) = drain_amqp {
            f.add("held-back drain / drain", rate / base, "x");
        }
    }

    if wanted("naive") {
        let (pool, _) = fresh_db(&admin_url).await;
        fill(&pool, &exchange, naive_rows).await;
        let config = Config::default();
        let mut amqp_config = config.broker.amqp.clone();
        amqp_config.url = SecretUrl::new(amqp_url.clone());
        let amqp = AmqpPublisher::new(amqp_config, config.relay.publish_timeout);
        amqp.ready().await.expect("RabbitMQ");
        let rate = f.add(
            "naive: one at a time to RabbitMQ",
            naive(&pool, &amqp, naive_rows).await,
            "msg/s",
        );
        if let Some(base) = drain_amqp {
            f.add("drain to RabbitMQ / naive", base / rate, "x");
        }
    }

    // RabbitMQ only with delete on publish: Kafka's latency is bounded by tansu.
    let latency_parts = [
        (Broker::Amqp, "", &[][..]),
        (Broker::Kafka, "", &[][..]),
        (
            Broker::Amqp,
            ", delete on publish",
            &[("OUTBOX_RELAY__SWEEPER__PUBLISHED_RETENTION", "0s")][..],
        ),
    ];
    for (broker, suffix, settings) in latency_parts {
        let part = format!(
            "latency-{}{}",
            broker.name().to_lowercase(),
            if settings.is_empty() { "" } else { "-delete" }
        );
        if !wanted(&part) {
            continue;
        }
        for rate in env("BENCH_RATES", "1000,5000")
            .split(',')
            .map(|r| r.parse::<u32>().expect("BENCH_RATES"))
        {
            let label = format!("{part}-{rate}");
            let l = latency(&admin_url, broker, rate, latency_secs, &label, settings).await;
            let name = format!("latency to {}{suffix} at {rate} msg/s", broker.name());
            f.add(format!("{name}: p50"), l.p50, "ms");
            f.add(format!("{name}: p99"), l.p99, "ms");
            f.add(format!("{name}: p99.9"), l.p999, "ms");
            if let (Some(p50), Some(p99)) = (l.recorded_p50, l.recorded_p99) {
                f.add(format!("{name}: p50 to published_at"), p50, "ms");
                f.add(format!("{name}: p99 to published_at"), p99, "ms");
            }
            f.add(
                format!("{name}: p50 to the writer's commit"),
                l.visible_p50,
                "ms",
            );
            f.add(
                format!("{name}: p99 to the writer's commit"),
                l.visible_p99,
                "ms",
            );
            f.add(format!("{name}: machine busy"), l.machine_busy, "%");
            for (comm, used) in &l.cpu_by_command {
                f.add(format!("{name}: CPU of {comm}"), *used, "s");
            }
        }
    }

    let json = serde_json::json!({
        "rows": rows,
        "payload_bytes": PAYLOAD_BYTES,
        "keys": KEYS,
        "latency_seconds": latency_secs,
        "machine": machine,
        "figures": f.0.iter().map(|(name, v, unit)| serde_json::json!({
            "figure": name, "value": (v * 100.0).round() / 100.0, "unit": unit,
        })).collect::<Vec<_>>(),
    });
    let out = out_dir().join("bench.json");
    std::fs::write(&out, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    println!("figures written to {}", out.display());
    let admin = admin_pool(&admin_url).await;
    drop_bench_databases(&admin).await;
    admin.close().await;
}
