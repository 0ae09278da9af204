//! `make bench`: how fast the relay drains a backlog, next to the ceilings of the same machine
//! measured in the same run. Prints a table and writes the figures to target/bench.json.
//!
//! Parts so far: broker ceilings (RabbitMQ confirms, Kafka acks=all idempotent), the database
//! ceiling (the relay with a publisher that confirms instantly; bench-only), the drain for each
//! broker, and the naive one-at-a-time baseline. Size with BENCH_ROWS (default 200000).

use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use outbox_relay::app;
use outbox_relay::config::{BrokerKind, Config, LogFormat, SecretUrl};
use outbox_relay::health::Health;
use outbox_relay::publish::amqp::AmqpPublisher;
use outbox_relay::publish::kafka::KafkaPublisher;
use outbox_relay::publish::{PublishError, Publisher};
use outbox_relay::store::{self, OutboxMessage};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

const KEYS: i64 = 1000;
const PAYLOAD_BYTES: usize = 256;
const IN_FLIGHT: usize = 256;

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

async fn fresh_db(admin_url: &str) -> (PgPool, String) {
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(admin_url)
        .await
        .expect("admin connection");
    let name = format!("bench_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .unwrap();
    let mut url = url::Url::parse(admin_url).unwrap();
    url.set_path(&name);
    let url = url.to_string();
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
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
}

fn bench_config(db_url: &str) -> Config {
    let mut c = Config::default();
    c.database.url = SecretUrl::new(db_url.to_string());
    c.broker.amqp.url = SecretUrl::new(env(
        "OUTBOX_TEST_AMQP_URL",
        "amqp://guest:guest@127.0.0.1:56729/%2f",
    ));
    c.broker.kafka.bootstrap_servers = env("OUTBOX_TEST_KAFKA_BOOTSTRAP", "127.0.0.1:59092");
    c.relay.batch_size = 1000.try_into().unwrap();
    c.relay.max_in_flight = (IN_FLIGHT as u32).try_into().unwrap();
    c.relay.poll_interval = Duration::from_millis(10);
    c.http.listen = "127.0.0.1:0".parse().unwrap();
    c.ha.lease_ttl = Duration::from_secs(10);
    c.log.format = LogFormat::Text;
    c
}

/// Runs the relay in-process until `rows` rows are published; returns messages per second.
async fn drain<P: Publisher>(pool: &PgPool, config: Config, publisher: P, rows: i64) -> f64 {
    let token = CancellationToken::new();
    let started = Instant::now();
    let relay = tokio::spawn(app::run_with(
        pool.clone(),
        Arc::new(publisher),
        config,
        Arc::new(Health::new()),
        token.clone(),
    ));
    loop {
        let published: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outbox.messages WHERE status = 'published'")
                .fetch_one(pool)
                .await
                .unwrap();
        if published >= rows {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rate = rows as f64 / started.elapsed().as_secs_f64();
    token.cancel();
    let _ = relay.await;
    rate
}

async fn amqp_exchange(url: &str, name: &str) -> Connection {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("RabbitMQ");
    let ch = conn.create_channel().await.unwrap();
    ch.exchange_declare(
        name.into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
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
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            auto_delete: true,
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

/// RabbitMQ alone: confirms, persistent, mandatory, IN_FLIGHT unconfirmed at most.
async fn amqp_ceiling(url: &str, exchange: &str, n: usize) -> f64 {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let body = payload();
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
        if pending.len() >= IN_FLIGHT {
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

/// Kafka alone: the relay's producer settings, IN_FLIGHT outstanding at most.
async fn kafka_ceiling(bootstrap: &str, topic: &str, n: usize) -> f64 {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .create()
        .unwrap();
    let body = payload();
    let started = Instant::now();
    let mut pending = futures::stream::FuturesUnordered::new();
    use futures::StreamExt;
    for i in 0..n {
        let key = format!("k{}", i as i64 % KEYS);
        let p = producer.clone();
        let body = body.clone();
        pending.push(async move {
            p.send(
                FutureRecord::to(topic).key(&key).payload(&body),
                Duration::from_secs(30),
            )
            .await
        });
        if pending.len() >= IN_FLIGHT {
            pending.next().await.unwrap().map_err(|(e, _)| e).unwrap();
        }
    }
    while let Some(r) = pending.next().await {
        r.map_err(|(e, _)| e).unwrap();
    }
    n as f64 / started.elapsed().as_secs_f64()
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

#[tokio::main]
async fn main() {
    let rows: i64 = env("BENCH_ROWS", "200000").parse().expect("BENCH_ROWS");
    let naive_rows: i64 = env("BENCH_NAIVE_ROWS", "3000")
        .parse()
        .expect("BENCH_NAIVE_ROWS");
    let admin_url = env(
        "OUTBOX_TEST_DATABASE_URL",
        "postgres://postgres@127.0.0.1:54329/postgres",
    );
    let amqp_url = env(
        "OUTBOX_TEST_AMQP_URL",
        "amqp://guest:guest@127.0.0.1:56729/%2f",
    );
    let bootstrap = env("OUTBOX_TEST_KAFKA_BOOTSTRAP", "127.0.0.1:59092");
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let mut results: Vec<(&str, f64)> = Vec::new();

    let exchange = format!("bench.{run}");
    let _amqp = amqp_exchange(&amqp_url, &exchange).await;
    let topic = format!("bench-{run}");
    kafka_topic(&bootstrap, &topic).await;

    results.push((
        "ceiling: RabbitMQ alone (msg/s)",
        amqp_ceiling(&amqp_url, &exchange, rows as usize).await,
    ));
    results.push((
        "ceiling: Kafka alone (msg/s)",
        kafka_ceiling(&bootstrap, &topic, rows as usize).await,
    ));

    let (pool, url) = fresh_db(&admin_url).await;
    fill(&pool, &exchange, rows).await;
    results.push((
        "ceiling: database, instant publisher (msg/s)",
        drain(&pool, bench_config(&url), InstantPublisher, rows).await,
    ));

    let (pool, url) = fresh_db(&admin_url).await;
    fill(&pool, &exchange, rows).await;
    let config = bench_config(&url);
    let amqp = AmqpPublisher::new(config.broker.amqp.clone(), config.relay.publish_timeout);
    results.push((
        "drain: relay to RabbitMQ (msg/s)",
        drain(&pool, config, amqp, rows).await,
    ));

    let (pool, url) = fresh_db(&admin_url).await;
    fill(&pool, &topic, rows).await;
    let mut config = bench_config(&url);
    config.broker.kind = BrokerKind::Kafka;
    let kafka = KafkaPublisher::new(&config.broker.kafka, config.relay.publish_timeout).unwrap();
    results.push((
        "drain: relay to Kafka (msg/s)",
        drain(&pool, config, kafka, rows).await,
    ));

    let (pool, url) = fresh_db(&admin_url).await;
    fill(&pool, &exchange, naive_rows).await;
    let config = bench_config(&url);
    let amqp = AmqpPublisher::new(config.broker.amqp.clone(), config.relay.publish_timeout);
    results.push((
        "naive: one at a time to RabbitMQ (msg/s)",
        naive(&pool, &amqp, naive_rows).await,
    ));

    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    println!("outbox-relay bench: {rows} rows, {PAYLOAD_BYTES}-byte payloads, {KEYS} keys, {cores} cores");
    println!("{:<48} {:>12}", "figure", "value");
    for (name, v) in &results {
        println!("{name:<48} {v:>12.0}");
    }
    let json: serde_json::Map<String, serde_json::Value> = results
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::json!(v.round())))
        .collect();
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("bench.json");
    std::fs::write(&out, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    println!("figures written to {}", out.display());
}
