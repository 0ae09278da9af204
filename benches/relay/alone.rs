//! Kafka alone at a fixed rate: the broker's own share of commit-to-receive latency, with no
//! relay and no database, measured in the same run as the relay's latency parts.

use outbox_relay::publish::kafka::ReportPoller;
use rdkafka::producer::Producer;

use super::*;

/// How Kafka alone produces.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Alone {
    /// The relay's at-least-once producer: each message as it falls due, within the relay's
    /// in-flight limit.
    AtLeastOnce,
    /// The relay's exactly-once producer: one transaction at a time carrying every message
    /// that fell due since the last one began, committed at once, as the relay does when
    /// claims come back short (a rate far below its drain); read back with read_committed.
    Transactions,
}

/// Kafka alone at `rate` messages a second for `secs` seconds: the relay's producer settings,
/// keys spread as in the relay's runs, from the moment a message falls due to its receipt by a
/// consumer. Returns p50 and p99 in milliseconds.
pub(crate) async fn kafka_alone_latency(rate: u32, secs: u64, how: Alone) -> (f64, f64) {
    let topic = format!(
        "bench-alone-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let total = u64::from(rate) * secs;
    // One more: a first message, sent and reported before the clock starts, so the producer's
    // start (its id from the broker, the new topic's metadata) is not measured, as in a relay
    // that runs.
    let expected = Arc::new(AtomicUsize::new(total as usize + 1));
    let (subscribed, ready) = tokio::sync::oneshot::channel();
    let consumer = tokio::spawn(consume(
        Broker::Kafka,
        topic.clone(),
        expected,
        subscribed,
        how == Alone::Transactions,
    ));
    ready.await.unwrap();
    let sent_at = match how {
        Alone::AtLeastOnce => one_at_a_time(&topic, rate, total).await,
        Alone::Transactions => in_transactions(&topic, rate, total).await,
    };
    let receipts = consumer.await.unwrap();
    let mut ms: Vec<f64> = sent_at
        .iter()
        .filter_map(|(id, sent)| receipts.get(id)?.duration_since(*sent).ok())
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    assert_eq!(
        ms.len(),
        total as usize,
        "every message reached the consumer"
    );
    p50_p99(&mut ms)
}

fn record<'a>(
    topic: &'a str,
    body: &'a [u8],
    key: &'a str,
    id: &'a str,
) -> FutureRecord<'a, str, [u8]> {
    FutureRecord::to(topic)
        .payload(body)
        .key(key)
        .headers(OwnedHeaders::new().insert(Header {
            key: "message_id",
            value: Some(id),
        }))
}

/// The moment message `i` falls due, at `rate` from `started`.
fn due(started: tokio::time::Instant, i: u64, rate: u32) -> tokio::time::Instant {
    started + Duration::from_secs_f64(i as f64 / f64::from(rate))
}

async fn one_at_a_time(topic: &str, rate: u32, total: u64) -> Receipts {
    let producer = bench_producer(&bootstrap());
    let body = payload();
    let first = uuid::Uuid::new_v4().to_string();
    producer
        .send(record(topic, &body, "k0", &first), Duration::from_secs(30))
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    let mut sent_at = Receipts::new();
    let mut pending = futures::stream::FuturesUnordered::new();
    let started = tokio::time::Instant::now();
    for i in 0..total {
        let due = due(started, i, rate);
        // Within the relay's in-flight limit, as the relay would be.
        while pending.len() >= in_flight() {
            pending.next().await;
        }
        tokio::select! {
            () = tokio::time::sleep_until(due) => {}
            Some(()) = pending.next(), if !pending.is_empty() => {
                tokio::time::sleep_until(due).await;
            }
        }
        let id = uuid::Uuid::new_v4();
        let key = bench_key(i);
        let id_text = id.to_string();
        // Enqueued here, not on the first poll of a future: the loop may not poll `pending`
        // again before the next send is due, and a record waiting for that poll would be
        // counted as broker latency.
        sent_at.insert(id, SystemTime::now());
        pending.push(enqueue(&producer, record(topic, &body, &key, &id_text)));
    }
    while pending.next().await.is_some() {}
    sent_at
}

/// Transactions one after another, as the relay's exactly-once loop runs them. A message is
/// timed from when it fell due, so the wait for the transaction before it to commit counts,
/// as a row committed in Postgres waits for the relay's transaction in flight.
async fn in_transactions(topic: &str, rate: u32, total: u64) -> Receipts {
    const TIMEOUT: Duration = Duration::from_secs(30);
    let mut config = client_config(
        &KafkaConfig {
            bootstrap_servers: bootstrap(),
            ..Config::default().broker.kafka
        },
        TIMEOUT,
    );
    // As the relay's transactional producer sets them (publish/kafka/transactions.rs).
    config
        .set("transactional.id", format!("{topic}-alone"))
        .set("retry.backoff.ms", "5");
    let producer: FutureProducer = config.create().unwrap();
    let blocking = |f: fn(&FutureProducer) -> rdkafka::error::KafkaResult<()>| {
        let p = producer.clone();
        async move {
            tokio::task::spawn_blocking(move || f(&p))
                .await
                .unwrap()
                .unwrap()
        }
    };
    blocking(|p| p.init_transactions(TIMEOUT)).await;
    let body = payload();
    let first = uuid::Uuid::new_v4().to_string();
    producer.begin_transaction().unwrap();
    enqueue(&producer, record(topic, &body, "k0", &first)).await;
    blocking(|p| p.commit_transaction(TIMEOUT)).await;

    let mut sent_at = Receipts::new();
    let clock = (tokio::time::Instant::now(), SystemTime::now());
    let mut i = 0;
    while i < total {
        tokio::time::sleep_until(due(clock.0, i, rate)).await;
        producer.begin_transaction().unwrap();
        let mut reports = futures::stream::FuturesUnordered::new();
        let now = tokio::time::Instant::now();
        while i < total && due(clock.0, i, rate) <= now {
            let id = uuid::Uuid::new_v4();
            let key = bench_key(i);
            let id_text = id.to_string();
            sent_at.insert(id, clock.1 + (due(clock.0, i, rate) - clock.0));
            reports.push(enqueue(&producer, record(topic, &body, &key, &id_text)));
            i += 1;
        }
        // The relay waits for every delivery report before it adds its progress record and
        // commits, with its `ReportPoller` serving them meanwhile (the FutureProducer's own thread
        // may serve reports only at its next 100 ms wake-up).
        let poller = ReportPoller::start(&producer);
        while reports.next().await.is_some() {}
        poller.stop().await;
        blocking(|p| p.commit_transaction(TIMEOUT)).await;
    }
    sent_at
}
