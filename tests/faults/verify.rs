//! The verifier: every delivery the consumers (tests/faults/consume.rs, redis_verify.rs,
//! nsq_verify.rs) recorded, with its arrival time, and the checks of those deliveries against
//! the outbox once the load has stopped.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use sqlx::PgPool;
use uuid::Uuid;

use crate::consume;

#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: Uuid,
    pub key: String,
    /// When the broker took the message, where it says (Kafka's LogAppendTime, nsqd's
    /// timestamp); otherwise when it arrived here (RabbitMQ).
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
    pub(crate) fn record(&self, id: Uuid, key: String, redelivered: bool) {
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

    pub(crate) fn end_session(&self) {
        self.inner.lock().expect("deliveries").sessions_ended += 1;
    }

    pub fn sessions_ended(&self) -> u64 {
        self.inner.lock().expect("deliveries").sessions_ended
    }

    pub fn snapshot(&self) -> (Vec<Delivery>, u64) {
        let inner = self.inner.lock().expect("deliveries");
        (inner.log.clone(), inner.consumer_redeliveries)
    }
}

/// One row of the outbox as the verifier needs it.
pub struct Row {
    pub status: String,
    pub commit_seq: Option<i64>,
    /// When the relay marked it published, just after the broker's acknowledgement.
    pub published_at: Option<Instant>,
}

pub async fn outbox_rows(pool: &PgPool) -> HashMap<Uuid, Row> {
    let rows: Vec<(Uuid, String, Option<i64>, Option<f64>)> = sqlx::query_as(
        "SELECT message_id, status::text, commit_seq, extract(epoch FROM published_at)::float8
           FROM outbox.messages",
    )
    .fetch_all(pool)
    .await
    .expect("read the outbox");
    rows.into_iter()
        .map(|(id, status, commit_seq, published_at)| {
            let published_at = published_at
                .map(|s| consume::instant_at(SystemTime::UNIX_EPOCH + Duration::from_secs_f64(s)));
            let row = Row {
                status,
                commit_seq,
                published_at,
            };
            (id, row)
        })
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
    /// The fault may make the broker lose what it acknowledged up to this long before `start`:
    /// nsqd's writes it had not synced yet, at a kill -9 (see `NSQD_UNSYNCED` in fault.rs).
    pub loses_acknowledged: Option<Duration>,
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
    /// Published rows delivered on neither of nsqd's channels, acknowledged by nsqd within the
    /// unsynced window before it was killed: lost by nsqd, not by the relay, by that fault.
    pub lost_in_broker: BTreeMap<String, usize>,
    /// The longest time between the relay marking one of those published and the kill.
    pub lost_in_broker_before: Duration,
    /// Of the lost, those the relay had not published when the run ended (still committed).
    pub lost_unpublished: usize,
    /// The lowest and highest commit_seq among the lost rows: a run of lost rows at the end
    /// points at a verifier that stopped, scattered ones at the relay.
    pub lost_seqs: Option<(i64, i64)>,
    pub dead: usize,
    pub wrongly_published: usize,
    pub order_violations: usize,
    /// First deliveries after a later message of their key that the broker had taken before
    /// it (its own time of taking them says so): reordered by the broker, not by the relay.
    pub reordered_in_broker: usize,
    /// The first few order violations: the key, both commit_seqs, how far apart they arrived.
    pub order_details: Vec<String>,
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

/// How long after a fault started the relay may still be marking rows the broker acknowledged
/// before it: an outcome update follows its acknowledgement within milliseconds.
const MARK_SLACK: Duration = Duration::from_secs(1);

/// The fault that may have made the broker lose this published row (one that loses what the
/// broker acknowledged shortly before it, with the row marked published in that stretch), and
/// how long before the fault the row was marked.
fn broker_lost<'f>(faults: &'f [FaultWindow], row: &Row) -> Option<(&'f FaultWindow, Duration)> {
    let at = row.published_at.filter(|_| row.status == "published")?;
    let fault = faults.iter().find(|f| {
        f.loses_acknowledged
            .is_some_and(|window| at + window >= f.start && at <= f.start + MARK_SLACK)
    })?;
    Some((fault, fault.start.saturating_duration_since(at)))
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
    let mut last_seq: HashMap<&str, (i64, Instant)> = HashMap::new();
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
            Some(&(prev, _)) if prev > seq && d.requeued => {
                s.requeued_out_of_order += 1;
                continue;
            }
            // The broker took this message before the later one of its key, and delivered it
            // after: nsqd replaying its on-disk queue after a kill -9. The relay's order is the
            // order the broker took the messages in (a re-send gets a new time).
            Some(&(prev, prev_at)) if prev > seq && d.at < prev_at => {
                s.reordered_in_broker += 1;
                continue;
            }
            Some(&(prev, prev_at)) if prev > seq => {
                s.order_violations += 1;
                if s.order_details.len() < 10 {
                    let fault = fault_at(faults, d.at, slack).map_or("no fault", |f| &f.name);
                    s.order_details.push(format!(
                        "key {}: commit_seq {seq} delivered after commit_seq {prev}, its time \
                         {:?} later (the broker's, or the arrival where it gives none) ({fault})",
                        d.key,
                        d.at.saturating_duration_since(prev_at)
                    ));
                }
            }
            _ => {}
        }
        last_seq.insert(d.key.as_str(), (seq, d.at));
    }
    s.delivered = first_at.len();
    let undelivered = rows.iter().filter(|(id, row)| {
        matches!(row.status.as_str(), "published" | "committed" | "dead")
            && !first_at.contains_key(id)
    });
    let (held_in_broker, gone): (Vec<_>, Vec<_>) =
        undelivered.partition(|(id, row)| row.status == "published" && held.contains(id));
    s.held_in_broker = held_in_broker.len();
    let mut lost: Vec<&Row> = Vec::new();
    for (_, row) in gone {
        let Some((fault, before)) = broker_lost(faults, row) else {
            lost.push(row);
            continue;
        };
        *s.lost_in_broker.entry(fault.name.clone()).or_default() += 1;
        s.lost_in_broker_before = s.lost_in_broker_before.max(before);
    }
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
        self.reordered_in_broker += o.reordered_in_broker;
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
        for (fault, n) in &o.lost_in_broker {
            *self.lost_in_broker.entry(fault.clone()).or_default() += n;
        }
        for (fault, n) in &o.requeued_by_fault {
            *self.requeued_by_fault.entry(fault.clone()).or_default() += n;
        }
        self.fault_failures.extend(o.fault_failures.iter().cloned());
    }
}
