//! The verifier: consumers that record every delivery with its arrival time, and the checks
//! of those deliveries against the outbox once the load has stopped.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, Timestamp, TopicPartitionList};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: Uuid,
    pub key: String,
    pub at: Instant,
    /// The broker had delivered this very message before and put it back in its queue (NSQ:
    /// attempts above 1), so where it arrives says nothing of the order it was published in.
    pub requeued: bool,
}

/// Every delivery in arrival order, shared by the consumer tasks.
#[derive(Clone, Default)]
pub struct Deliveries {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    log: Vec<Delivery>,
    seen: HashSet<Uuid>,
    /// Re-deliveries to the verifier itself, not the relay's: RabbitMQ's after a broker restart,
    /// Kafka records read again at an offset already read.
    consumer_redeliveries: u64,
    /// RabbitMQ consumer sessions that ended (each is followed by a new one).
    sessions_ended: u64,
    /// Messages the verifier's channel never delivered that nsqd still held on a second
    /// channel (see `nsq_verify::HOLD`): in nsqd, not lost by the relay.
    held: HashSet<Uuid>,
}

impl Deliveries {
    fn record(&self, id: Uuid, key: String, redelivered: bool) {
        self.record_at(id, key, redelivered, Instant::now())
    }

    pub(crate) fn record_at(&self, id: Uuid, key: String, redelivered: bool, at: Instant) {
        self.record_delivery(
            Delivery {
                id,
                key,
                at,
                requeued: false,
            },
            redelivered,
        )
    }

    /// `redelivered`: the consumer may have read this message before (the broker says so); a
    /// message it did read before counts as the consumer's redelivery, not a duplicate.
    pub(crate) fn record_delivery(&self, delivery: Delivery, redelivered: bool) {
        let mut inner = self.inner.lock().expect("deliveries");
        if redelivered && inner.seen.contains(&delivery.id) {
            inner.consumer_redeliveries += 1;
            return;
        }
        inner.seen.insert(delivery.id);
        inner.log.push(delivery);
    }

    pub fn len(&self) -> usize {
        self.inner.lock().expect("deliveries").log.len()
    }

    pub fn distinct(&self) -> HashSet<Uuid> {
        self.inner.lock().expect("deliveries").seen.clone()
    }

    pub fn record_held(&self, ids: impl IntoIterator<Item = Uuid>) {
        self.inner.lock().expect("deliveries").held.extend(ids);
    }

    pub fn held(&self) -> HashSet<Uuid> {
        self.inner.lock().expect("deliveries").held.clone()
    }

    pub fn sessions_ended(&self) -> u64 {
        self.inner.lock().expect("deliveries").sessions_ended
    }

    pub fn snapshot(&self) -> (Vec<Delivery>, u64) {
        let inner = self.inner.lock().expect("deliveries");
        (inner.log.clone(), inner.consumer_redeliveries)
    }
}

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
    into.inner.lock().expect("deliveries").sessions_ended += 1;
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

/// One row of the outbox as the verifier needs it.
pub struct Row {
    pub status: String,
    pub commit_seq: Option<i64>,
}

pub async fn outbox_rows(pool: &PgPool) -> HashMap<Uuid, Row> {
    let rows: Vec<(Uuid, String, Option<i64>)> =
        sqlx::query_as("SELECT message_id, status::text, commit_seq FROM outbox.messages")
            .fetch_all(pool)
            .await
            .expect("read the outbox");
    rows.into_iter()
        .map(|(id, status, commit_seq)| (id, Row { status, commit_seq }))
        .collect()
}

/// A fault as it happened: from its start until the relay had recovered.
#[derive(Debug, Clone)]
pub struct FaultWindow {
    pub name: String,
    /// What the fault hit and what it caused (the broker, the producer's epoch bumps).
    pub detail: String,
    pub start: Instant,
    pub recovered: Instant,
    pub recovery: Duration,
    /// The fault did not do what it is there for (the epoch bump fault without a bump).
    pub failure: Option<String>,
    /// The relay had not recovered when the suite stopped waiting (twice the recovery bound):
    /// the relays' state, their last log lines and the backlog then (tests/faults/stuck.rs).
    pub stuck: Option<Vec<String>>,
}

#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub faults: usize,
    pub written: usize,
    pub committed: usize,
    pub rolled_back: usize,
    pub delivered: usize,
    pub lost: usize,
    /// Published rows the verifier's channel never delivered, held by nsqd on its second
    /// channel: nsqd lost them in flight to the verifier when it was killed (NSQ only).
    pub held_in_broker: usize,
    /// Of the lost, those the relay had not published when the run ended (still committed).
    pub lost_unpublished: usize,
    /// The lowest and highest commit_seq among the lost rows: a run of lost rows at the end
    /// points at a verifier that stopped, scattered ones at the relay.
    pub lost_seqs: Option<(i64, i64)>,
    pub dead: usize,
    pub wrongly_published: usize,
    pub order_violations: usize,
    /// First deliveries the broker had delivered before and requeued (NSQ only).
    pub requeued: usize,
    /// Of those, the ones that arrived after a later message of their key: the broker's
    /// requeue, not counted as order violations.
    pub requeued_out_of_order: usize,
    /// Requeued first deliveries by the fault whose window holds the time the broker took them.
    pub requeued_by_fault: BTreeMap<String, usize>,
    pub duplicates: usize,
    pub unexplained_duplicates: usize,
    /// Exactly-once delivery: every duplicate a read_committed consumer sees is a failure.
    pub exactly_once: bool,
    pub consumer_redeliveries: u64,
    pub longest_recovery: Duration,
    pub longest_recovery_fault: String,
    /// Explained duplicates by the fault whose window holds their first delivery.
    pub duplicates_by_fault: BTreeMap<String, usize>,
    /// Faults that did not do what they are there for.
    pub fault_failures: Vec<String>,
    /// What the relays and the backlog looked like after a fault they did not recover from.
    pub stuck_reports: Vec<String>,
}

/// The latest fault whose window, widened by `slack`, holds `at`: a confirm cut off by a fault
/// (or a message in flight when nsqd stopped) comes before the fault, so a window's slack
/// overlaps the previous fault's.
fn fault_at(faults: &[FaultWindow], at: Instant, slack: Duration) -> Option<&FaultWindow> {
    faults
        .iter()
        .filter(|f| at + slack >= f.start && at <= f.recovered + slack)
        .max_by_key(|f| f.start)
}

/// A duplicate can only come from a confirm that was not recorded, which needs a fault:
/// its first delivery must fall inside a fault window, widened by `slack` on both sides (a
/// confirm received just before the fault started may be the one whose update it cut off).
pub fn check(
    rows: &HashMap<Uuid, Row>,
    deliveries: &[Delivery],
    held: &HashSet<Uuid>,
    consumer_redeliveries: u64,
    faults: &[FaultWindow],
    slack: Duration,
) -> Summary {
    let mut s = Summary {
        faults: faults.len(),
        written: rows.len(),
        consumer_redeliveries,
        ..Default::default()
    };
    for row in rows.values() {
        match row.status.as_str() {
            "published" | "committed" => s.committed += 1,
            "dead" => {
                s.committed += 1;
                s.dead += 1;
            }
            _ => s.rolled_back += 1,
        }
    }
    for f in faults {
        if let Some(report) = &f.stuck {
            s.stuck_reports.push(format!("after {}:", f.name));
            s.stuck_reports
                .extend(report.iter().map(|l| format!("  {l}")));
        }
    }
    let mut first_at: HashMap<Uuid, Instant> = HashMap::new();
    let mut last_seq: HashMap<&str, i64> = HashMap::new();
    for d in deliveries {
        if let Some(first) = first_at.get(&d.id) {
            s.duplicates += 1;
            match fault_at(faults, *first, slack) {
                Some(f) => *s.duplicates_by_fault.entry(f.name.clone()).or_default() += 1,
                None => s.unexplained_duplicates += 1,
            }
            continue;
        }
        first_at.insert(d.id, d.at);
        let Some(row) = rows.get(&d.id) else {
            s.wrongly_published += 1;
            continue;
        };
        let (true, Some(seq)) = (
            matches!(row.status.as_str(), "published" | "committed" | "dead"),
            row.commit_seq,
        ) else {
            s.wrongly_published += 1;
            continue;
        };
        if d.requeued {
            s.requeued += 1;
            let fault = fault_at(faults, d.at, slack).map_or("outside every fault", |f| &f.name);
            *s.requeued_by_fault.entry(fault.to_string()).or_default() += 1;
        }
        match last_seq.get(d.key.as_str()) {
            Some(&prev) if prev > seq && d.requeued => {
                s.requeued_out_of_order += 1;
                continue;
            }
            Some(&prev) if prev > seq => s.order_violations += 1,
            _ => {}
        }
        last_seq.insert(d.key.as_str(), seq);
    }
    s.delivered = first_at.len();
    let undelivered = rows.iter().filter(|(id, row)| {
        matches!(row.status.as_str(), "published" | "committed" | "dead")
            && !first_at.contains_key(id)
    });
    let (held_in_broker, lost): (Vec<_>, Vec<_>) =
        undelivered.partition(|(id, row)| row.status == "published" && held.contains(id));
    s.held_in_broker = held_in_broker.len();
    let lost: Vec<&Row> = lost.into_iter().map(|(_, row)| row).collect();
    s.lost = lost.len();
    s.lost_unpublished = lost.iter().filter(|r| r.status == "committed").count();
    let seqs = lost.iter().filter_map(|r| r.commit_seq);
    s.lost_seqs = seqs.clone().min().zip(seqs.max());
    if let Some(f) = faults.iter().max_by_key(|f| f.recovery) {
        s.longest_recovery = f.recovery;
        s.longest_recovery_fault = f.name.clone();
    }
    s.fault_failures = faults
        .iter()
        .filter_map(|f| Some(format!("{}: {}", f.name, f.failure.as_ref()?)))
        .collect();
    s
}

impl Summary {
    pub fn violations(&self, recovery_bound: Duration) -> Vec<String> {
        let mut v = Vec::new();
        for (what, n) in [
            ("lost", self.lost),
            ("dead", self.dead),
            ("wrongly published", self.wrongly_published),
            ("order violations", self.order_violations),
            ("unexplained duplicates", self.unexplained_duplicates),
        ] {
            if n > 0 {
                v.push(format!("{what}: {n}"));
            }
        }
        if self.exactly_once && self.duplicates > 0 {
            v.push(format!(
                "duplicates under exactly-once delivery: {}",
                self.duplicates
            ));
        }
        v.extend(self.fault_failures.iter().cloned());
        if self.longest_recovery > recovery_bound {
            v.push(format!(
                "recovery from {} took {:?}, over the bound {recovery_bound:?}",
                self.longest_recovery_fault, self.longest_recovery
            ));
        }
        v
    }

    pub fn add(&mut self, o: &Summary) {
        self.faults += o.faults;
        self.written += o.written;
        self.committed += o.committed;
        self.rolled_back += o.rolled_back;
        self.delivered += o.delivered;
        self.lost += o.lost;
        self.lost_unpublished += o.lost_unpublished;
        self.dead += o.dead;
        self.wrongly_published += o.wrongly_published;
        self.order_violations += o.order_violations;
        self.requeued += o.requeued;
        self.held_in_broker += o.held_in_broker;
        self.requeued_out_of_order += o.requeued_out_of_order;
        self.duplicates += o.duplicates;
        self.unexplained_duplicates += o.unexplained_duplicates;
        self.consumer_redeliveries += o.consumer_redeliveries;
        if o.longest_recovery > self.longest_recovery {
            self.longest_recovery = o.longest_recovery;
            self.longest_recovery_fault = o.longest_recovery_fault.clone();
        }
        for (fault, n) in &o.duplicates_by_fault {
            *self.duplicates_by_fault.entry(fault.clone()).or_default() += n;
        }
        for (fault, n) in &o.requeued_by_fault {
            *self.requeued_by_fault.entry(fault.clone()).or_default() += n;
        }
        self.fault_failures.extend(o.fault_failures.iter().cloned());
    }
}
