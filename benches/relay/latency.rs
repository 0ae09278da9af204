//! Commit-to-receive latency at fixed rates.

use super::*;

/// Commit-to-receive latency percentiles, in milliseconds.
pub(crate) struct Latency {
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) p999: f64,
    pub(crate) recorded_p50: Option<f64>,
    pub(crate) recorded_p99: Option<f64>,
    /// From `committed_at` (the insert) to the writer's commit returning: the part no relay
    /// can shorten, since a row is invisible until then.
    pub(crate) visible_p50: f64,
    pub(crate) visible_p99: f64,
    /// The relay's `outbox_relay_broker_ack_seconds`, from handing a message to the broker
    /// client to its acknowledgement: what the broker took, apart from rows waiting in the
    /// relay. Interpolated within the histogram's buckets, as Prometheus does.
    pub(crate) broker_ack_p50: f64,
    pub(crate) broker_ack_p99: f64,
    /// Share of all cores busy while the load ran, and the busiest commands.
    pub(crate) machine_busy: f64,
    pub(crate) cpu_by_command: Vec<(String, f64)>,
}

impl Latency {
    /// Adds this run's figures, each named after `name`.
    pub(crate) fn report(&self, f: &mut Figures, name: &str) {
        f.add(format!("{name}: p50"), self.p50, "ms");
        f.add(format!("{name}: p99"), self.p99, "ms");
        f.add(format!("{name}: p99.9"), self.p999, "ms");
        if let (Some(p50), Some(p99)) = (self.recorded_p50, self.recorded_p99) {
            f.add(format!("{name}: p50 to published_at"), p50, "ms");
            f.add(format!("{name}: p99 to published_at"), p99, "ms");
        }
        f.add(
            format!("{name}: p50 to the writer's commit"),
            self.visible_p50,
            "ms",
        );
        f.add(
            format!("{name}: p99 to the writer's commit"),
            self.visible_p99,
            "ms",
        );
        f.add(
            format!("{name}: p50 broker acknowledgement"),
            self.broker_ack_p50,
            "ms",
        );
        f.add(
            format!("{name}: p99 broker acknowledgement"),
            self.broker_ack_p99,
            "ms",
        );
        f.add(format!("{name}: machine busy"), self.machine_busy, "%");
        for (comm, used) in &self.cpu_by_command {
            f.add(format!("{name}: CPU of {comm}"), *used, "s");
        }
    }
}

pub(crate) type Receipts = HashMap<uuid::Uuid, SystemTime>;

/// Consumes `destination` until `expected` distinct messages arrived (or a deadline passed),
/// keeping the moment each message id was first received.
/// `read_committed`: a Kafka consumer that sees only committed transactions (exactly-once
/// delivery); what such a consumer waits for is what is measured.
pub(crate) async fn consume(
    broker: Broker,
    destination: String,
    expected: Arc<AtomicUsize>,
    subscribed: tokio::sync::oneshot::Sender<()>,
    read_committed: bool,
) -> Receipts {
    let mut got = Receipts::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    if broker == Broker::Kafka {
        create_topic(&bootstrap(), &destination, KAFKA_PARTITIONS).await;
    }
    let done =
        |got: &Receipts| got.len() >= expected.load(Ordering::Acquire) || Instant::now() > deadline;
    match broker {
        Broker::Amqp => {
            let bench_queue = amqp_exchange(&destination, QueueKind::Classic).await;
            let ch = bench_queue.rabbit.conn.create_channel().await.unwrap();
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
            drop(deliveries);
            let _ = ch.close(200, "done".into()).await;
            bench_queue.delete().await;
        }
        Broker::Kafka => {
            let consumer: StreamConsumer = ClientConfig::new()
                .set("bootstrap.servers", bootstrap())
                .set("group.id", format!("{destination}-bench"))
                .set("enable.auto.commit", "false")
                // The consumer's own waits must not dominate what is measured: the broker's
                // long poll (500 ms by default) and the pause after a failed fetch (500 ms by
                // default; a fetch fails while a new topic's leaders settle).
                .set("fetch.wait.max.ms", "5")
                .set("fetch.error.backoff.ms", "5")
                .set(
                    "isolation.level",
                    if read_committed {
                        "read_committed"
                    } else {
                        "read_uncommitted"
                    },
                )
                .create()
                .unwrap();
            // The topic is new: offset 0 is its start, and fetching from there at once spares
            // the offset lookup that `Beginning` costs before the first fetch.
            let mut partitions = TopicPartitionList::new();
            for p in 0..KAFKA_PARTITIONS {
                partitions
                    .add_partition_offset(&destination, p, Offset::Offset(0))
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
        Broker::Redis => {
            let url = common::redis::url();
            let settings = redis::AsyncConnectionConfig::new().set_response_timeout(None);
            let mut con = redis::Client::open(url.as_str())
                .unwrap()
                .get_multiplexed_async_connection_with_config(&settings)
                .await
                .unwrap();
            // From the start of the stream: it is new, and the relay may append before this
            // consumer's first read.
            let mut last = "0".to_string();
            let _ = subscribed.send(());
            while !done(&got) {
                let reply: Option<redis::streams::StreamReadReply> = redis::cmd("XREAD")
                    .arg("COUNT")
                    .arg(1000)
                    .arg("BLOCK")
                    .arg(500)
                    .arg("STREAMS")
                    .arg(&destination)
                    .arg(last.as_str())
                    .query_async(&mut con)
                    .await
                    .unwrap();
                let now = SystemTime::now();
                for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
                    last = entry.id.clone();
                    let id: Option<String> = entry.get("message_id");
                    if let Some(id) = id.and_then(|id| id.parse().ok()) {
                        got.entry(id).or_insert(now);
                    }
                }
            }
            let _: Result<(), _> = redis::cmd("DEL")
                .arg(&destination)
                .query_async(&mut con)
                .await;
        }
        Broker::Nsq => {
            // Subscribing creates the topic with the bench's channel, its first, before the
            // relay publishes: nsqd gives a channel added later only what comes after it.
            let mut subscription = common::nsq::consumer::Subscription::open(
                &common::nsq::address(),
                &destination,
                "bench",
                1000,
                Duration::from_secs(10),
            )
            .await
            .unwrap();
            let _ = subscribed.send(());
            while !done(&got) {
                let m = match subscription
                    .next(Instant::now() + Duration::from_millis(500))
                    .await
                {
                    Ok(m) => m,
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
                    Err(e) => panic!("consuming from nsqd: {e}"),
                };
                let now = SystemTime::now();
                let event: serde_json::Value = serde_json::from_slice(&m.body).unwrap();
                if let Some(id) = event["id"].as_str().and_then(|id| id.parse().ok()) {
                    got.entry(id).or_insert(now);
                }
            }
            common::nsq::delete_topic(&destination).await;
        }
    }
    got
}

/// Commits messages at `rate` per second for `secs` seconds, in transactions of 1-10 messages
/// over all keys, with the relay running; measures committed_at to consumer receipt.
/// `settings`: OUTBOX_RELAY__* variables for this run, such as delete on publish.
pub(crate) async fn latency(
    broker: Broker,
    rate: u32,
    secs: u64,
    label: &str,
    settings: &[(&str, &str)],
) -> Latency {
    let (pool, url) = fresh_db().await;
    let writers = PgPoolOptions::new()
        .max_connections(16)
        .connect(&url)
        .await
        .unwrap();
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let destination = match broker {
        Broker::Amqp => format!("bench.latency.{run}"),
        Broker::Kafka | Broker::Redis | Broker::Nsq => format!("bench-latency-{run}"),
    };
    let expected = Arc::new(AtomicUsize::new(usize::MAX));
    let (subscribed, ready) = tokio::sync::oneshot::channel();
    let read_committed =
        settings.contains(&("OUTBOX_RELAY__BROKER__KAFKA__DELIVERY", "exactly_once"));
    let consumer = tokio::spawn(consume(
        broker,
        destination.clone(),
        expected.clone(),
        subscribed,
        read_committed,
    ));
    ready.await.unwrap();
    let relay = spawn_relay(&url, broker, label, settings);
    // The relay is up once it holds the lease and is ready (its broker connected; with
    // exactly-once delivery, its transactions initialised): load before that would measure
    // start-up.
    let started_up = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let leases: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox.relay_leases")
            .fetch_one(&pool)
            .await
            .unwrap();
        let ready = matches!(relay.get("/readyz").await, Some((200, _)));
        if leases > 0 && ready {
            break;
        }
        assert!(
            tokio::time::Instant::now() < started_up,
            "the relay did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let payload = String::from_utf8(payload()).unwrap();
    let total = u64::from(rate) * secs;
    let in_flight = Arc::new(tokio::sync::Semaphore::new(64));
    let visible: Arc<std::sync::Mutex<Receipts>> = Arc::default();
    let committed: Arc<std::sync::Mutex<Receipts>> = Arc::default();
    quiet().await;
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
    let (machine_busy, cpu_by_command) = cpu_since(&cpu_before, jiffies_before, Some(relay.pid()));
    expected.store(sent as usize, Ordering::Release);
    let receipts = consumer.await.unwrap();
    let (_, metrics) = relay.get("/metrics").await.expect("the relay's /metrics");
    let broker_ack =
        |q| histogram_quantile(&metrics, "outbox_relay_broker_ack_seconds", q) * 1000.0;
    let (broker_ack_p50, broker_ack_p99) = (broker_ack(0.5), broker_ack(0.99));
    relay.stop_blocking();
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
        broker_ack_p50,
        broker_ack_p99,
        visible_p50: pct(&visible, 0.50),
        visible_p99: pct(&visible, 0.99),
        machine_busy,
        cpu_by_command,
    }
}

/// The `q` quantile of histogram `name` in a Prometheus text exposition, interpolated
/// linearly within the bucket it falls in (Prometheus' `histogram_quantile`).
fn histogram_quantile(exposition: &str, name: &str, q: f64) -> f64 {
    let prefix = format!("{name}_bucket{{le=\"");
    let buckets: Vec<(f64, f64)> = exposition
        .lines()
        .filter_map(|l| {
            let (le, count) = l.strip_prefix(&prefix)?.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.parse().ok()?))
        })
        .collect();
    let total = buckets.last().expect("the histogram's buckets").1;
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for (le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return lower;
            }
            return lower + (le - lower) * (rank - below) / (count - below).max(1.0);
        }
        (lower, below) = (le, count);
    }
    lower
}

/// Commit-to-consumer latency of each part BENCH_ONLY asks for, at each rate of BENCH_RATES.
pub(crate) async fn latency_parts(
    f: &mut Figures,
    wanted: &impl Fn(&str) -> bool,
    latency_secs: u64,
) {
    // Delete on publish for RabbitMQ only: it changes the database path, which both share.
    let latency_parts = [
        ("latency-rabbitmq", Broker::Amqp, "", &[][..]),
        ("latency-kafka", Broker::Kafka, "", &[][..]),
        ("latency-redis", Broker::Redis, "", &[][..]),
        ("latency-nsq", Broker::Nsq, "", &[][..]),
        (
            "latency-rabbitmq-delete",
            Broker::Amqp,
            ", delete on publish",
            &[("OUTBOX_RELAY__SWEEPER__PUBLISHED_RETENTION", "0s")][..],
        ),
        // Read back with read_committed: what such a consumer waits for is the commit.
        (
            "latency-kafka-eos",
            Broker::Kafka,
            ", exactly once",
            &[EXACTLY_ONCE][..],
        ),
    ];
    for (part, broker, suffix, settings) in latency_parts {
        if !wanted(part) {
            continue;
        }
        for rate in env("BENCH_RATES", "1000,5000")
            .split(',')
            .map(|r| r.parse::<u32>().expect("BENCH_RATES"))
        {
            let label = format!("{part}-{rate}");
            let l = latency(broker, rate, latency_secs, &label, settings).await;
            l.report(
                f,
                &format!("latency to {}{suffix} at {rate} msg/s", broker.name()),
            );
            f.chart_latency(&format!("{}{suffix}", broker.name()), rate, &l);
            if broker == Broker::Kafka {
                // The broker's own share, in the same run: produce to consume at this rate, as
                // the relay produces in this mode.
                let (how, alone) = if settings.is_empty() {
                    (
                        Alone::AtLeastOnce,
                        format!("Kafka alone at {rate} msg/s, produce to consumer"),
                    )
                } else {
                    (
                        Alone::Transactions,
                        format!("Kafka alone in transactions at {rate} msg/s, due to read_committed consumer"),
                    )
                };
                let (p50, p99) = kafka_alone_latency(rate, latency_secs.min(30), how).await;
                f.add(format!("{alone}: p50"), p50, "ms");
                f.add(format!("{alone}: p99"), p99, "ms");
            }
        }
    }
}
