//! The verifier's consumers for RabbitMQ and Kafka (Redis' and nsqd's are in their own
//! modules): each records every delivery with its arrival time into `Deliveries`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, Timestamp, TopicPartitionList};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::verify::Deliveries;

pub(crate) fn key_of(payload: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| v["key"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// A consumer task that stops when its token is cancelled.
pub struct ConsumerTask {
    stop: CancellationToken,
    handle: JoinHandle<()>,
}

impl ConsumerTask {
    /// Runs `session` (a consumer's connection, until it fails) again and again, 200 ms apart
    /// while the broker restarts, until stopped. `state` (addresses, the position read to)
    /// goes from each session to the next.
    pub(crate) fn repeat<S, F, Fut>(mut state: S, mut session: F) -> Self
    where
        S: Send + 'static,
        F: FnMut(S) -> Fut + Send + 'static,
        Fut: Future<Output = S> + Send,
    {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let handle = tokio::spawn(async move {
            while !token.is_cancelled() {
                state = tokio::select! {
                    _ = token.cancelled() => return,
                    state = session(state) => state,
                };
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        });
        Self { stop, handle }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.handle.await;
    }
}

/// Consumes `queue` directly from RabbitMQ (not through the proxy), acking after recording
/// and reconnecting while the broker restarts.
pub fn consume_rabbit(amqp_url: String, queue: String, into: Deliveries) -> ConsumerTask {
    ConsumerTask::repeat((amqp_url, queue, into), |(url, queue, into)| async move {
        rabbit_session(&url, &queue, &into).await;
        (url, queue, into)
    })
}

async fn rabbit_session(url: &str, queue: &str, into: &Deliveries) {
    // Every step is bounded: a connection opened while the broker stops or starts can stay
    // silent for good, and the verifier would wait on it forever.
    let step = Duration::from_secs(5);
    let Ok(Ok(conn)) = tokio::time::timeout(
        step,
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    else {
        return;
    };
    let Ok(Ok(channel)) = tokio::time::timeout(step, conn.create_channel()).await else {
        return;
    };
    let qos = channel.basic_qos(500, BasicQosOptions::default());
    let Ok(Ok(())) = tokio::time::timeout(step, qos).await else {
        return;
    };
    let consume = channel.basic_consume(
        queue.into(),
        "faults-verifier".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    );
    let Ok(Ok(mut consumer)) = tokio::time::timeout(step, consume).await else {
        return;
    };
    let last_delivery = Mutex::new(Instant::now());
    let deliveries = async {
        while let Some(Ok(d)) = consumer.next().await {
            *last_delivery.lock().expect("last delivery") = Instant::now();
            let Some(id) = d
                .properties
                .message_id()
                .as_ref()
                .and_then(|m| m.as_str().parse::<Uuid>().ok())
            else {
                continue;
            };
            into.record(id, key_of(&d.data), d.redelivered);
            let _ = d.acker.ack(BasicAckOptions::default()).await;
        }
    };
    // Nor is the consumer stream relied on to end when the broker goes away: a session whose
    // connection or channel is down, or that received nothing for a while (the load never
    // pauses that long), ends and the caller opens a new one. Unacked deliveries come back
    // marked redelivered, which the verifier tells apart.
    let watchdog = async {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let quiet = last_delivery.lock().expect("last delivery").elapsed();
            if !conn.status().connected() || !channel.status().connected() || quiet > step {
                return;
            }
        }
    };
    tokio::select! {
        _ = deliveries => {}
        _ = watchdog => {}
    }
    into.end_session();
}

/// Reads every partition of `topic` from the beginning through `bootstrap`. A record's time is
/// when the broker appended it (the topic's LogAppendTime), not when the verifier read it, as
/// it may read late while brokers restart.
/// `read_committed`: only records of committed transactions (exactly-once delivery).
pub fn consume_kafka(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    read_committed: bool,
    into: Deliveries,
) -> ConsumerTask {
    let reader = KafkaReader {
        bootstrap: bootstrap.to_string(),
        topic: topic.to_string(),
        partitions,
        read_committed,
        into,
        next_offset: HashMap::new(),
    };
    ConsumerTask::repeat(reader, |mut reader| async move {
        reader.session().await;
        reader
    })
}

/// A Kafka verifier's state from one consumer to the next.
struct KafkaReader {
    bootstrap: String,
    topic: String,
    partitions: i32,
    read_committed: bool,
    into: Deliveries,
    /// The next offset of each partition: a record below it was read before.
    next_offset: HashMap<i32, i64>,
}

/// How long a consumer may receive nothing while its partitions hold more before it is
/// replaced. An assigned librdkafka consumer sometimes never fetches again after every broker
/// restarted (librdkafka#5153, rust-rdkafka#597); the load never pauses this long.
const KAFKA_QUIET: Duration = Duration::from_secs(10);

impl KafkaReader {
    /// One consumer, from where the last one stopped, until it stalls.
    async fn session(&mut self) {
        let isolation = if self.read_committed {
            "read_committed"
        } else {
            "read_uncommitted"
        };
        let Ok(consumer) = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("isolation.level", isolation)
            .set("group.id", super::common::unique("faults"))
            .set("client.id", "faults-verifier")
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "100")
            .create::<StreamConsumer>()
        else {
            return;
        };
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.partitions {
            let from = self
                .next_offset
                .get(&p)
                .map_or(Offset::Beginning, |&o| Offset::Offset(o));
            tpl.add_partition_offset(&self.topic, p, from)
                .expect("partition offset");
        }
        if consumer.assign(&tpl).is_err() {
            return;
        }
        let mut last_record = Instant::now();
        loop {
            let m = match tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await {
                Ok(Ok(m)) => m,
                // Transport errors while a broker or the proxy misbehaves; librdkafka retries.
                Ok(Err(_)) | Err(_) => {
                    if last_record.elapsed() > KAFKA_QUIET && self.behind().await {
                        println!(
                            "   verifier: nothing read for {KAFKA_QUIET:?} while {} holds more: \
                             reading on with a new consumer",
                            self.topic
                        );
                        return;
                    }
                    continue;
                }
            };
            last_record = Instant::now();
            let next = self.next_offset.entry(m.partition()).or_insert(0);
            let reread = m.offset() < *next;
            *next = (*next).max(m.offset() + 1);
            let id = m.headers().and_then(|h| {
                h.iter()
                    .find(|h| h.key == "message_id")
                    .and_then(|h| std::str::from_utf8(h.value?).ok()?.parse::<Uuid>().ok())
            });
            if let Some(id) = id {
                let key = key_of(m.payload().unwrap_or_default());
                self.into
                    .record_at(id, key, reread, appended_at(m.timestamp()));
            }
        }
    }

    /// Whether a partition holds more than this reader has read. A transaction ends with a
    /// marker, which takes an offset and is never delivered: with transactions, one offset
    /// past the last record read is the end.
    async fn behind(&self) -> bool {
        let ends = super::cluster::partition_ends(&self.bootstrap, &self.topic).await;
        let marker = i64::from(self.read_committed);
        ends.iter().any(|&(p, high, stable)| {
            let end = if self.read_committed { stable } else { high };
            let read = self.next_offset.get(&p).copied().unwrap_or(0);
            end.is_some_and(|end| end > read + marker)
        })
    }
}

/// A record's LogAppendTime as an `Instant` of this process.
fn appended_at(timestamp: Timestamp) -> Instant {
    let Timestamp::LogAppendTime(ms) = timestamp else {
        return Instant::now();
    };
    instant_at(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
}

/// A time the broker recorded, as an `Instant` of this process (the brokers share its clock).
pub(crate) fn instant_at(at: SystemTime) -> Instant {
    let now = Instant::now();
    let ago = SystemTime::now().duration_since(at).unwrap_or_default();
    now.checked_sub(ago).unwrap_or(now)
}
