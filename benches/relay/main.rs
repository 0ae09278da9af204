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
//! drain-rabbitmq-quorum, drain-kafka, drain-kafka-eos (needs drain-kafka for its ratio),
//! drain-redis, drain-redis-wait, drain-nsq, drain-replicas (1, 2 and 3 replicas sharing
//! partitions), delete, vacuum, naive, latency-rabbitmq,
//! latency-kafka, latency-kafka-eos, latency-redis, latency-nsq, latency-rabbitmq-delete);
//! BENCH_RELAY__SECTION__KEY overrides a relay setting.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::{FutureExt, StreamExt};

use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use outbox_relay::app;
use outbox_relay::config::{Config, KafkaConfig, LogFormat, SecretUrl};
use outbox_relay::health::Health;
use outbox_relay::publish::amqp::{self, AmqpPublisher};
use outbox_relay::publish::kafka::{self, client_config, KafkaPublisher};
use outbox_relay::publish::nsq::{NsqConfig, NsqPublisher};
use outbox_relay::publish::{PublishError, Publisher};
use outbox_relay::store::OutboxMessage;
use rand::Rng;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

const KEYS: i64 = 1000;
/// Partitions of the bench's topics.
const KAFKA_PARTITIONS: i32 = 3;
const PAYLOAD_BYTES: usize = 256;
/// Every drain's target, as a share of the lower of its broker's ceiling and the database's.
const TARGET: f64 = 0.8;
/// The relay setting of exactly-once delivery into Kafka.
const EXACTLY_ONCE: (&str, &str) = ("OUTBOX_RELAY__BROKER__KAFKA__DELIVERY", "exactly_once");

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

mod alone;
mod brokers;
mod ceilings;
#[path = "../../tests/common/mod.rs"]
mod common;
mod db;
mod latency;
mod process;
mod replicas;
mod report;

use alone::*;
use brokers::*;
use ceilings::*;
use common::kafka::{bootstrap, create_topic, delete_topic};
use common::{
    admin_database_url, amqp_url, Broker, DbOptions, Rabbit, RelayOptions, RelayProcess, TestDb,
};
use db::*;
use latency::*;
use process::*;
use replicas::*;
use report::*;

/// The RabbitMQ targets, by the kind of durable queue behind the exchange.
const CLASSIC: &str = "RabbitMQ (classic queue)";
const QUORUM: &str = "RabbitMQ (quorum queue)";

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
    let amqp_url = amqp_url();
    let bootstrap = bootstrap();
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let mut f = Figures::default();

    let (admin, _) = fresh_db().await;
    let machine = machine(&admin).await;
    admin.close().await;
    println!("outbox-relay bench: {rows} rows, {PAYLOAD_BYTES}-byte JSON payloads, {KEYS} keys, relay defaults");
    println!("machine: {machine}");
    add_speed_probe(&mut f, "at the start").await;

    // Durable queues, classic and quorum: what users run.
    let exchange = format!("bench.{run}");
    let classic = amqp_exchange(&exchange, QueueKind::Classic).await;
    let quorum_exchange = format!("bench.{run}.quorum");
    let quorum = amqp_exchange(&quorum_exchange, QueueKind::Quorum).await;
    let topic = format!("bench-{run}");
    create_topic(&bootstrap, &topic, KAFKA_PARTITIONS).await;
    // Every part that sends to Kafka finds its broker warm, whichever part comes first.
    let warm_topic = if KAFKA_PARTS.iter().any(|p| wanted(p)) {
        Some(warm_kafka(&mut f, &bootstrap, &run).await)
    } else {
        None
    };
    let stream = format!("bench-{run}");
    let ceiling_stream = format!("bench-{run}-ceiling");
    let redis_url = common::redis::url();
    // nsqd's topics of this run, deleted at the end: a topic without channels keeps every
    // message on disk.
    let nsq_topic = format!("bench-{run}");
    let nsq_ceiling_topic = format!("bench-{run}-ceiling");
    let nsq_address = common::nsq::address();

    let outbox = Outbox {
        exchange: &exchange,
        rows,
    };
    // Per broker, the drain is compared with the lower of its own ceiling and the database's.
    let mut broker_ceiling: HashMap<&'static str, f64> = HashMap::new();
    let targets = [
        (Broker::Amqp, CLASSIC, exchange.as_str(), "drain-rabbitmq"),
        (
            Broker::Amqp,
            QUORUM,
            quorum_exchange.as_str(),
            "drain-rabbitmq-quorum",
        ),
        (Broker::Kafka, "Kafka", topic.as_str(), "drain-kafka"),
        (Broker::Redis, "Redis", stream.as_str(), "drain-redis"),
        (Broker::Nsq, "NSQ", nsq_topic.as_str(), "drain-nsq"),
    ];
    let mut database_ceiling = f64::MAX;
    if wanted("ceilings") {
        let measures = [
            (
                CLASSIC,
                amqp_ceiling(&amqp_url, &exchange, rows as usize).boxed(),
            ),
            (
                QUORUM,
                amqp_ceiling(&amqp_url, &quorum_exchange, rows as usize).boxed(),
            ),
            (
                "Kafka",
                kafka_ceiling(&bootstrap, &topic, rows as usize).boxed(),
            ),
            (
                "Redis",
                redis_ceiling(&redis_url, &ceiling_stream, rows as usize).boxed(),
            ),
            (
                "NSQ",
                nsq_ceiling(&nsq_address, &nsq_ceiling_topic, rows as usize).boxed(),
            ),
        ];
        for (name, measure) in measures {
            quiet().await;
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
            let target = TARGET * kafka_alone.min(alone);
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
    let mut drain_redis = None;
    let mut drain_kafka = None;
    let modes = [
        ("", database_ceiling, &[][..]),
        (
            ", delete on publish",
            deleting_ceiling,
            &[("OUTBOX_RELAY__SWEEPER__PUBLISHED_RETENTION", "0s")][..],
        ),
    ];
    for (mode, (suffix, database_ceiling, settings)) in modes.into_iter().enumerate() {
        for (broker, target, destination, drain_part) in targets {
            let part = match mode {
                0 => drain_part,
                // Delete on publish: one RabbitMQ figure is enough.
                _ if target == QUORUM => continue,
                _ => "delete",
            };
            if !wanted(part) {
                continue;
            }
            let (pool, url) = fresh_db().await;
            fill(&pool, destination, rows).await;
            let label = format!("{drain_part}{}", ["", "-delete"][mode]);
            let d = drain(&pool, &url, broker, rows, &label, settings).await;
            let name = format!("{target}{suffix}");
            let rate = f.add(format!("drain: relay to {name}"), d.rate, "msg/s");
            let own = broker_ceiling.get(target).copied();
            add_drain_figures(&mut f, &name, &d, own.map(|own| own.min(database_ceiling)));
            if let (Some(own), 0) = (own, mode) {
                f.chart_drain(target, rate, own, database_ceiling);
            }
            if let Some(rss) = broker_rss_mib(broker) {
                f.add(format!("drain to {name}: broker RSS after"), rss, "MiB");
            }
            if broker == Broker::Redis && mode == 0 {
                drain_redis = Some(rate);
            }
            if broker == Broker::Kafka && mode == 0 {
                drain_kafka = Some((rate, d.publishing_rate));
                f.add(
                    format!("drain to {name}: once publishing"),
                    d.publishing_rate,
                    "msg/s",
                );
            }
            if target == CLASSIC && mode == 0 {
                drain_amqp = Some(rate);
                f.add(
                    format!("idle for {idle_secs} s: relay CPU (share of one core)"),
                    idle_cpu_percent(&d.relay, idle_secs).await,
                    "%",
                );
            }
            d.relay.stop_blocking();
        }
    }

    if wanted("drain-redis-wait") {
        // A WAIT behind every XADD holds the one connection for a replication round trip per
        // entry: the price of `wait_replicas`, on a quarter of the rows.
        let (pool, url) = fresh_db().await;
        fill(&pool, &stream, rows / 4).await;
        let settings = [("OUTBOX_RELAY__BROKER__REDIS__WAIT_REPLICAS", "1")];
        let d = drain(
            &pool,
            &url,
            Broker::Redis,
            rows / 4,
            "drain-redis-wait",
            &settings,
        )
        .await;
        d.relay.stop_blocking();
        let rate = f.add("drain to Redis, wait_replicas = 1", d.rate, "msg/s");
        if let Some(base) = drain_redis {
            f.add(
                "drain to Redis, wait_replicas = 1 / without",
                rate / base,
                "x",
            );
        }
    }

    if wanted("drain-kafka-eos") {
        let (pool, url) = fresh_db().await;
        fill(&pool, &topic, rows).await;
        let d = drain(
            &pool,
            &url,
            Broker::Kafka,
            rows,
            "drain-kafka-eos",
            &[EXACTLY_ONCE],
        )
        .await;
        d.relay.stop_blocking();
        let rate = f.add("drain to Kafka, exactly once", d.rate, "msg/s");
        let publishing = f.add(
            "drain to Kafka, exactly once: once publishing",
            d.publishing_rate,
            "msg/s",
        );
        f.add(
            "drain to Kafka, exactly once: start-up (initialising the producer, reading progress)",
            d.start_up.as_secs_f64() * 1000.0,
            "ms",
        );
        f.add(
            "drain to Kafka, exactly once: machine busy (all cores)",
            d.machine_busy,
            "%",
        );
        if let Some((base, base_publishing)) = drain_kafka {
            f.add(
                "drain to Kafka, exactly once / at least once",
                rate / base,
                "x",
            );
            f.add(
                "drain to Kafka, exactly once / at least once, once publishing",
                publishing / base_publishing,
                "x",
            );
        }
    }

    if wanted("vacuum") {
        let (pool, url) = fresh_db().await;
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
        d.relay.stop_blocking();
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
        let (pool, _) = fresh_db().await;
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

    if wanted("drain-replicas") {
        let partitioned = partitioned_database_ceiling(&mut f, outbox).await;
        let mut drains = replica_drains(&exchange, rows).await;
        report_replicas(&mut f, &drains, database_ceiling, partitioned);
        for d in &mut drains {
            let relays = std::mem::take(&mut d.relays);
            if relays.is_empty() {
                continue;
            }
            f.add(
                format!(
                    "idle for {idle_secs} s: {} replicas x {} partitions, CPU of all (share of one core)",
                    d.replicas, d.partitions
                ),
                idle_cpu_percent_of(&relays, idle_secs).await,
                "%",
            );
            for relay in relays {
                relay.stop_blocking();
            }
        }
    }

    latency_parts(&mut f, &wanted, latency_secs).await;
    classic.delete().await;
    quorum.delete().await;
    if wanted("drain-nsq") || wanted("delete") {
        common::nsq::delete_topic(&nsq_topic).await;
    }
    if let Some(warm_topic) = warm_topic {
        if let Err(e) = delete_topic(&bootstrap, &warm_topic).await {
            println!("  (could not delete the warm-up topic {warm_topic}: {e})");
        }
    }

    add_speed_probe(&mut f, "at the end").await;
    let (figures, charts) = f.json();
    let json = serde_json::json!({
        "rows": rows,
        "payload_bytes": PAYLOAD_BYTES,
        "keys": KEYS,
        "latency_seconds": latency_secs,
        "machine": machine,
        "date": chrono::Utc::now().format("%Y-%m-%d").to_string(),
        "revision": outbox_relay::telemetry::instruments::REVISION,
        "figures": figures,
        "charts": charts,
    });
    let out = out_dir().join("bench.json");
    std::fs::write(&out, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    println!("figures written to {}", out.display());
    let admin = admin_pool().await;
    drop_bench_databases(&admin).await;
    admin.close().await;
}
