//! The brokers alone: RabbitMQ, Kafka, Redis and NSQ ceilings, round trips, the naive baseline.

use super::*;

/// The kind of durable queue behind a bench exchange: what users run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QueueKind {
    Classic,
    Quorum,
}

/// A fanout exchange `name` bound to a durable, bounded queue `{name}.q` of `kind`. Delete it
/// with [`BenchQueue::delete`] when done: a durable queue outlives the connection. One a run
/// did not delete (it failed) expires half an hour after its last use.
pub(crate) struct BenchQueue {
    pub(crate) rabbit: Rabbit,
    pub(crate) queue: String,
}

impl BenchQueue {
    pub(crate) async fn delete(self) {
        let _ = self.rabbit.delete_queue(&self.queue).await;
    }
}

pub(crate) async fn amqp_exchange(name: &str, kind: QueueKind) -> BenchQueue {
    let rabbit = Rabbit::connect().await;
    rabbit
        .declare_exchange_with(
            name,
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                // Gone with its queue's binding.
                auto_delete: true,
                ..Default::default()
            },
        )
        .await;
    let queue = format!("{name}.q");
    let mut args = FieldTable::default();
    // Bounded, dropping the oldest, so the bench never fills the disk. Left behind, each run's
    // queue kept up to 100,000 messages in RabbitMQ's memory and its work on them landed in
    // later runs' figures (docs/performance.md); x-expires removes a queue a failed run left.
    args.insert(
        "x-max-length".into(),
        lapin::types::AMQPValue::LongLongInt(100_000),
    );
    args.insert(
        "x-expires".into(),
        lapin::types::AMQPValue::LongLongInt(30 * 60 * 1000),
    );
    if kind == QueueKind::Quorum {
        args.insert(
            "x-queue-type".into(),
            lapin::types::AMQPValue::LongString("quorum".into()),
        );
    }
    rabbit
        .declare_queue(
            &queue,
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await;
    rabbit.bind(&queue, name, "").await;
    BenchQueue { rabbit, queue }
}

/// RabbitMQ alone: confirms, persistent, mandatory, the relay's in-flight limit, and each
/// message as the relay would publish the bench's row (its properties and routing key, from
/// the relay's own `prepare`): with a timestamp, content type and headers table the classic
/// queue took about a sixth fewer messages a second than with a message id alone
/// (docs/performance.md).
pub(crate) async fn amqp_ceiling(url: &str, exchange: &str, n: usize) -> f64 {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let window = in_flight();
    let started = Instant::now();
    let mut pending = std::collections::VecDeque::new();
    for i in 0..n {
        let message = bench_message(i, exchange, &bench_key(i as u64));
        let (exchange, routing_key, properties) = amqp::prepare(&message).unwrap();
        let confirm = ch
            .basic_publish(
                exchange,
                routing_key,
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &message.payload,
                properties,
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

/// Redis alone: the relay's XADD (same fields, one connection, pipelined) and in-flight limit.
pub(crate) async fn redis_ceiling(url: &str, stream: &str, n: usize) -> f64 {
    let mut con = common::redis::connect(url).await;
    let body = payload();
    let window = in_flight();
    let started = Instant::now();
    let mut pending = futures::stream::FuturesUnordered::new();
    for i in 0..n {
        while pending.len() >= window {
            pending.next().await;
        }
        let mut cmd = redis::cmd("XADD");
        cmd.arg(stream)
            .arg("*")
            .arg("message_id")
            .arg(uuid::Uuid::new_v4().to_string())
            .arg("key")
            .arg(bench_key(i as u64))
            .arg("payload")
            .arg(&body[..])
            .arg("content_type")
            .arg("application/json")
            .arg("headers")
            .arg("{}");
        let mut con = con.clone();
        pending.push(async move {
            let _: redis::Value = cmd.query_async(&mut con).await.unwrap();
        });
    }
    while pending.next().await.is_some() {}
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let _: () = redis::cmd("DEL")
        .arg(stream)
        .query_async(&mut con)
        .await
        .unwrap();
    rate
}

/// NSQ alone: the relay's own publisher (its envelope, one connection, PUBs pipelined) with
/// the relay's default settings and in-flight limit, its connection included as in a drain.
pub(crate) async fn nsq_ceiling(address: &str, topic: &str, n: usize) -> f64 {
    let config = Config::default();
    let nsq_config = NsqConfig {
        nsqd_tcp_address: address.to_string(),
        ..config.broker.nsq.clone()
    };
    let publisher = NsqPublisher::new(nsq_config, config.relay.publish_timeout).unwrap();
    let window = in_flight();
    let started = Instant::now();
    publisher.ready().await.expect("nsqd");
    let mut pending = futures::stream::FuturesUnordered::new();
    for i in 0..n {
        while pending.len() >= window {
            pending.next().await;
        }
        let message = bench_message(i, topic, &bench_key(i as u64));
        let publisher = &publisher;
        pending.push(async move { publisher.publish(&message).await.expect("publish") });
    }
    while pending.next().await.is_some() {}
    let rate = n as f64 / started.elapsed().as_secs_f64();
    publisher.close().await;
    // nsqd keeps a topic without channels on disk until it is deleted.
    common::nsq::delete_topic(topic).await;
    rate
}

/// The key of bench message `i`: `KEYS` keys, taken in turn.
pub(crate) fn bench_key(i: u64) -> String {
    format!("k{}", i % KEYS as u64)
}

/// Row `i` of the bench as the relay claims it: the bench payload, for `destination`.
pub(crate) fn bench_message(i: usize, destination: &str, key: &str) -> OutboxMessage {
    OutboxMessage {
        id: outbox_relay::store::RowId(i as i64),
        message_id: uuid::Uuid::new_v4(),
        destination: destination.to_string(),
        routing_key: None,
        message_key: Some(key.to_string()),
        payload: payload(),
        content_type: "application/json".into(),
        headers: serde_json::json!({}),
        commit_seq: i as i64,
        committed_at: chrono::Utc::now(),
        attempts: 0,
    }
}

/// A producer with the relay's client settings.
pub(crate) fn bench_producer(bootstrap: &str) -> FutureProducer {
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
pub(crate) async fn kafka_ceiling(bootstrap: &str, topic: &str, n: usize) -> f64 {
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

/// The parts that send to Kafka: whichever runs first finds the broker warm ([`warm_kafka`]).
pub(crate) const KAFKA_PARTS: [&str; 7] = [
    "ceilings",
    "beside-kafka",
    "drain-kafka",
    "delete",
    "drain-kafka-eos",
    "latency-kafka",
    "latency-kafka-eos",
];

/// Below this share of one core used by the broker's JIT compiler in two rounds running of
/// [`warm_kafka`], the broker counts as warm.
const WARM_JIT_SHARE: f64 = 0.05;

/// Produces flat out, in rounds of the relay's records, until the broker's JIT compiler has
/// little left to do (under [`WARM_JIT_SHARE`] of a core in two rounds running; it compiles in
/// bursts, so one quiet round can come between busy ones) or two minutes have passed; records
/// how long that took and returns the topic it wrote to. A broker that users run compiled its
/// produce path long ago; a freshly started one compiles it during its first seconds of load:
/// in one run its compiler used a fifth of the machine through the Kafka ceiling and the drain
/// after it, and the warm-up then took 17 s.
pub(crate) async fn warm_kafka(f: &mut Figures, bootstrap: &str, run: &str) -> String {
    const ROUND: usize = 50_000;
    // A topic of its own, which the bench deletes at its end: the warm-up writes up to a few
    // hundred MB.
    let topic = format!("bench-{run}-warm");
    create_topic(bootstrap, &topic, KAFKA_PARTITIONS).await;
    let started = Instant::now();
    let producer = bench_producer(bootstrap);
    let never = CancellationToken::new();
    let mut quiet_rounds = 0;
    let mut share = f64::MAX;
    while quiet_rounds < 2 && started.elapsed() < Duration::from_secs(120) {
        let (jit, round) = (jit_cpu_seconds(), Instant::now());
        kafka_at_rate(&producer, &topic, f64::INFINITY, &never, ROUND).await;
        share = (jit_cpu_seconds() - jit) / round.elapsed().as_secs_f64();
        quiet_rounds = if share < WARM_JIT_SHARE {
            quiet_rounds + 1
        } else {
            0
        };
    }
    if quiet_rounds < 2 {
        println!(
            "  (Kafka's JIT compiler still used {:.0} % of a core after two minutes of load; measuring anyway)",
            share * 100.0
        );
    }
    f.add(
        "Kafka broker warm-up (until its JIT compiler is quiet)",
        started.elapsed().as_secs_f64(),
        "s",
    );
    topic
}

/// Hands `record` to the producer now and returns its delivery report. `FutureProducer::send`
/// enqueues only when first polled, which a loop that also waits on a timer may put off.
pub(crate) fn enqueue<K, P>(
    producer: &FutureProducer,
    record: FutureRecord<'_, K, P>,
) -> impl std::future::Future<Output = ()>
where
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    let delivery = producer
        .send_result(record)
        .map_err(|(e, _)| e)
        .expect("the producer's queue has room for the in-flight window");
    async move {
        delivery
            .await
            .expect("producer dropped")
            .map_err(|(e, _)| e)
            .expect("delivered");
    }
}

/// Sends bench message `i` (key `k{i mod KEYS}`) as the relay's own record (its headers and
/// timestamp); resolves with its delivery report.
pub(crate) fn produce(
    producer: &FutureProducer,
    topic: &str,
    i: usize,
) -> impl std::future::Future<Output = ()> {
    let message = bench_message(i, topic, &bench_key(i as u64));
    enqueue(producer, kafka::record(&message).unwrap())
}

/// Produces at `rate` messages a second, within the relay's in-flight limit, until `stop` or
/// `n` messages; returns the rate confirmed until then. Sends at each confirm and each
/// millisecond, as many as are due since the start and fit in the window: after falling
/// behind, it catches up in bursts of up to the window. An infinite rate keeps the window
/// full, as the Kafka ceiling does.
pub(crate) async fn kafka_at_rate(
    producer: &FutureProducer,
    topic: &str,
    rate: f64,
    stop: &CancellationToken,
    n: usize,
) -> f64 {
    let window = in_flight();
    let started = Instant::now();
    let mut sent = 0usize;
    let mut pending = futures::stream::FuturesUnordered::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Some(()) = pending.next(), if !pending.is_empty() => {}
            () = stop.cancelled() => break,
        }
        if sent == n && pending.is_empty() {
            break;
        }
        let due = ((started.elapsed().as_secs_f64() * rate) as usize).min(n);
        while sent < due && pending.len() < window {
            pending.push(produce(producer, topic, sent));
            sent += 1;
        }
    }
    let confirmed = sent - pending.len();
    let elapsed = started.elapsed().as_secs_f64();
    while pending.next().await.is_some() {}
    confirmed as f64 / elapsed
}

/// One message at a time through the relay's own publisher, with a consumer attached: the
/// broker round trip that every message of a key pays (to the confirm) and the broker's own
/// delivery delay (to the consumer), the floors under commit-to-receive latency.
pub(crate) struct RoundTrip {
    pub(crate) confirm: (f64, f64),
    pub(crate) receive: (f64, f64),
}

pub(crate) async fn round_trip<P: Publisher>(broker: Broker, publisher: &P, n: usize) -> RoundTrip {
    let destination = match broker {
        Broker::Amqp => format!("bench.rt.{}", uuid::Uuid::new_v4().simple()),
        Broker::Kafka | Broker::Redis | Broker::Nsq => {
            format!("bench-rt-{}", uuid::Uuid::new_v4().simple())
        }
    };
    let expected = Arc::new(AtomicUsize::new(n));
    let (subscribed, ready) = tokio::sync::oneshot::channel();
    let consumer = tokio::spawn(consume(
        broker,
        destination.clone(),
        expected,
        subscribed,
        false,
    ));
    ready.await.unwrap();
    publisher.ready().await.expect("broker");
    let mut confirm = Vec::with_capacity(n);
    let mut sent = HashMap::with_capacity(n);
    for i in 0..n {
        let message = bench_message(i, &destination, "k");
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

pub(crate) fn p50_p99(ms: &mut [f64]) -> (f64, f64) {
    ms.sort_by(f64::total_cmp);
    let pct = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    (pct(0.5), pct(0.99))
}

/// The original design: select one, publish, wait for its confirm, update it.
pub(crate) async fn naive(pool: &PgPool, publisher: &AmqpPublisher, rows: i64) -> f64 {
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
