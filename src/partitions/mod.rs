//! Active-active (`relay.partitions > 1`): the replicas share the outbox's key partitions.
//!
//! Each partition has its own lease row, `<ha.lease_name>/p<k>`, with its own fencing token,
//! and its own relay loop on the replica that holds it: the loop claims only rows of its
//! partition, under that lease, checked in the claim's and the marks' statements. Beside them:
//!
//! - the **group lease** `<ha.lease_name>`, held by every partitioned replica together (one
//!   holder name, `partitions=N`), so that no replica run with another partition count, or
//!   without partitions, can publish beside them; the claims check it too;
//! - one **replica row** per replica, `<ha.lease_name>/replicas/<replica id>`, renewed with
//!   the leases: the list of live replicas from which [`assign::assigned`] deals the
//!   partitions out, the same on every replica.
//!
//! Every `ha.lease_ttl / 3` the coordinator renews those rows, reads the live replicas and
//! compares its share with what it holds. A partition it should no longer hold is handed off:
//! its loop stops claiming, drains what is in flight and records it (as on SIGTERM), and only
//! then is the lease released, while it is renewed meanwhile. A partition it should hold is
//! taken once its lease is free (released, or expired after a crash): a key's rows are never
//! published by two replicas at once, and the new owner's claims start from the rows the old
//! one left `committed`, in `commit_seq` order.
//!
//! A replica whose broker stays unreachable for a lease ttl while it holds partitions steps
//! back: it hands its partitions off and leaves the replica list, so that the others take
//! them, and rejoins once its broker answers again.

pub mod assign;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::health::{Health, Heartbeat};
use crate::lease::{HaConfig, Lease};
use crate::relay::{Partition, PassedFloor, PassedFloors};
use crate::store;
use crate::telemetry::instruments;

/// A relay loop ready to run: its future once given its stop token and heartbeat.
pub type LoopRun =
    Box<dyn FnOnce(CancellationToken, Arc<Heartbeat>) -> BoxFuture<'static, ()> + Send>;

/// What the coordinator starts partitions with; app.rs implements it over the publisher.
pub trait Loops: Send + Sync + 'static {
    /// The loop of one partition under its lease, and its floor for the backlog check.
    fn build(&self, lease: Arc<Lease>, partition: Partition) -> (Arc<PassedFloor>, LoopRun);

    /// Whether the broker answers, asked while this replica stepped back because it did not.
    fn broker_ready(&self) -> BoxFuture<'_, bool>;
}

/// The names every replica of a group derives from `ha.lease_name` and `relay.partitions`.
#[derive(Debug, Clone)]
pub struct Names {
    pub group: String,
    pub group_holder: String,
    pub replica_prefix: String,
}

impl Names {
    pub fn new(lease_name: &str, count: u32) -> Self {
        Self {
            group: lease_name.to_string(),
            group_holder: format!("partitions={count}"),
            replica_prefix: format!("{lease_name}/replicas/"),
        }
    }

    pub fn partition(&self, index: u32) -> String {
        format!("{}/p{index}", self.group)
    }
}

enum Slot {
    Idle,
    /// Its loop runs; `stop` starts its drain.
    Running {
        stop: CancellationToken,
    },
    /// Its loop drains; the lease is renewed until it has, then released.
    Draining {
        lost: bool,
    },
}

pub struct Coordinator<L> {
    pool: PgPool,
    loops: L,
    names: Names,
    count: u32,
    holder: String,
    ttl: Duration,
    db_timeout: Duration,
    health: Arc<Health>,
    floors: Arc<PassedFloors>,
    group: Lease,
    me: Lease,
    leases: Vec<Arc<Lease>>,
    slots: Vec<Slot>,
    /// Loops report here when they have drained: at most one message per partition.
    finished_tx: mpsc::Sender<(u32, Arc<PassedFloor>)>,
    finished_rx: mpsc::Receiver<(u32, Arc<PassedFloor>)>,
    tracker: TaskTracker,
    /// While its partitions are held: since when the broker has not answered.
    broker_down_since: Option<Instant>,
    /// Out of the replica list until the broker answers again.
    stepped_back: bool,
    /// Another mode (a partition count, or none) holds the group lease.
    blocked: bool,
}

impl<L: Loops> Coordinator<L> {
    pub fn new(
        pool: PgPool,
        loops: L,
        ha: &HaConfig,
        count: u32,
        health: Arc<Health>,
        floors: Arc<PassedFloors>,
        db_timeout: Duration,
    ) -> Self {
        let names = Names::new(&ha.lease_name, count);
        let holder = ha.effective_replica_id();
        let ttl = ha.lease_ttl;
        let lease = |name: String, holder: &str| {
            Lease::named(pool.clone(), name, holder.to_string(), ttl, db_timeout)
        };
        let group = lease(names.group.clone(), &names.group_holder);
        let me = lease(format!("{}{holder}", names.replica_prefix), &holder);
        let leases = (0..count)
            .map(|k| Arc::new(lease(names.partition(k), &holder)))
            .collect();
        let (finished_tx, finished_rx) = mpsc::channel(count as usize);
        Self {
            pool,
            loops,
            names,
            count,
            holder,
            ttl,
            db_timeout,
            health,
            floors,
            group,
            me,
            leases,
            slots: (0..count).map(|_| Slot::Idle).collect(),
            finished_tx,
            finished_rx,
            tracker: TaskTracker::new(),
            broker_down_since: None,
            stepped_back: false,
            blocked: false,
        }
    }

    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Partition 0's lease: its holder runs the sweeper and check-back, once per outbox.
    pub fn first_lease(&self) -> Arc<Lease> {
        self.leases[0].clone()
    }

    /// Renews, deals and hands off every `ha.lease_ttl / 3` until `shutdown`; then drains every
    /// partition it holds, releases them and leaves the replica list.
    pub async fn run(mut self, shutdown: CancellationToken, beat: &Heartbeat) {
        let period = self.ttl / 3;
        tracing::info!(replica = %self.holder, partitions = self.count, lease = %self.names.group, "sharing the outbox's partitions");
        let mut next = Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {
                    self.turn().await;
                    next = Instant::now() + period;
                    beat.beat_within(period);
                }
                Some((index, floor)) = self.finished_rx.recv() => {
                    self.finished(index, &floor).await;
                    beat.beat_within(next.saturating_duration_since(Instant::now()));
                }
                _ = shutdown.cancelled() => break,
            }
        }
        self.leave(period, beat).await;
    }

    /// One renewal round.
    async fn turn(&mut self) {
        let group_held = self.group.tick().await;
        if !group_held {
            if !self.blocked {
                tracing::warn!(lease = %self.names.group, "the outbox is published by replicas run with another relay.partitions: standing by until they stop");
                self.blocked = true;
            }
        } else if self.blocked {
            tracing::info!(lease = %self.names.group, "the group lease is ours again");
            self.blocked = false;
        }
        self.watch_broker().await;
        let want = if self.blocked || self.stepped_back {
            Vec::new()
        } else {
            self.me.tick().await;
            match store::within(
                self.db_timeout,
                store::live_replicas(&self.pool, &self.names.replica_prefix),
            )
            .await
            {
                Ok(live) => assign::assigned(&live, &self.holder, self.count),
                Err(e) => {
                    // Keep what is held (it runs out by itself if the database stays away);
                    // take nothing new on a stale view.
                    tracing::warn!(error = %e, "cannot read the live replicas");
                    self.held()
                }
            }
        };
        for index in 0..self.count {
            self.settle(index, want.contains(&index)).await;
        }
        let held = self.held().len();
        metrics::gauge!(instruments::PARTITIONS_HELD).set(held as f64);
        self.health.set_leader(held > 0);
    }

    /// Steps back from the replica list when the broker stays down, and rejoins once it answers.
    async fn watch_broker(&mut self) {
        if self.stepped_back {
            if self.loops.broker_ready().await {
                tracing::info!("the broker answers again: rejoining the replicas");
                self.stepped_back = false;
                self.broker_down_since = None;
            }
            return;
        }
        if self.held().is_empty() || self.health.is_broker_up() {
            self.broker_down_since = None;
            return;
        }
        let since = *self.broker_down_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= self.ttl {
            tracing::warn!(partitions = ?self.held(), "the broker has not answered for a lease ttl: handing the partitions to the other replicas");
            self.stepped_back = true;
            self.me.release().await;
        }
    }

    /// Brings one partition towards `want`: renews what is held, hands off what is not wanted,
    /// takes what is wanted once its lease is free.
    async fn settle(&mut self, index: u32, want: bool) {
        let lease = self.leases[index as usize].clone();
        match &self.slots[index as usize] {
            Slot::Idle => {
                if want && lease.tick().await {
                    self.start(index, lease);
                }
            }
            Slot::Running { stop } => {
                let stop = stop.clone();
                let held = lease.tick().await;
                if !held || !want {
                    if held {
                        tracing::info!(partition = index, "handing the partition off");
                    }
                    stop.cancel();
                    self.slots[index as usize] = Slot::Draining { lost: !held };
                }
            }
            Slot::Draining { lost } => {
                let lost = *lost;
                let held = lease.tick().await;
                self.slots[index as usize] = Slot::Draining {
                    lost: lost || !held,
                };
            }
        }
    }

    fn start(&mut self, index: u32, lease: Arc<Lease>) {
        let partition = Partition {
            count: self.count,
            index,
            group: Some((self.names.group.clone(), self.names.group_holder.clone())),
        };
        let (floor, run) = self.loops.build(lease, partition);
        self.floors.add(floor.clone());
        let stop = CancellationToken::new();
        let beat = self.health.heartbeat("relay");
        let (health, finished, token) =
            (self.health.clone(), self.finished_tx.clone(), stop.clone());
        self.tracker.spawn(async move {
            let ran = tokio::spawn(run(token, beat.clone())).await;
            health.forget(&beat);
            if let Err(e) = ran {
                tracing::error!(partition = index, error = %e, "partition loop died");
            }
            // Capacity is one per partition and each loop sends once: never full.
            let _ = finished.send((index, floor)).await;
        });
        metrics::counter!(instruments::HANDOFFS, "event" => "won").increment(1);
        tracing::info!(partition = index, replica = %self.holder, "publishing the partition");
        self.slots[index as usize] = Slot::Running { stop };
    }

    /// A partition's loop has drained: release its lease (a no-op if it was lost).
    async fn finished(&mut self, index: u32, floor: &Arc<PassedFloor>) {
        self.floors.remove(floor);
        let slot = std::mem::replace(&mut self.slots[index as usize], Slot::Idle);
        let lost = match slot {
            Slot::Draining { lost } => lost,
            // A loop that ended by itself (it panicked): give the partition back too.
            Slot::Running { .. } | Slot::Idle => false,
        };
        self.leases[index as usize].release().await;
        let event = if lost { "lost" } else { "released" };
        metrics::counter!(instruments::HANDOFFS, "event" => event).increment(1);
        let held = self.held().len();
        metrics::gauge!(instruments::PARTITIONS_HELD).set(held as f64);
        self.health.set_leader(held > 0);
    }

    /// At shutdown: every loop drains (each within `relay.shutdown_grace`) while the leases are
    /// renewed, each partition is released as its loop ends, then the replica leaves the list.
    async fn leave(mut self, period: Duration, beat: &Heartbeat) {
        for slot in &mut self.slots {
            if let Slot::Running { stop } = slot {
                stop.cancel();
                *slot = Slot::Draining { lost: false };
            }
        }
        let mut next = Instant::now() + period;
        while self.slots.iter().any(|s| !matches!(s, Slot::Idle)) {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {
                    for index in 0..self.count {
                        if matches!(self.slots[index as usize], Slot::Draining { .. }) {
                            self.settle(index, false).await;
                        }
                    }
                    next = Instant::now() + period;
                    beat.beat_within(period);
                }
                Some((index, floor)) = self.finished_rx.recv() => {
                    self.finished(index, &floor).await;
                }
            }
        }
        self.tracker.close();
        self.tracker.wait().await;
        self.me.release().await;
        tracing::info!(replica = %self.holder, "left the replicas; partitions released");
    }

    /// The partitions whose loop runs here.
    fn held(&self) -> Vec<u32> {
        (0..self.count)
            .filter(|k| matches!(self.slots[*k as usize], Slot::Running { .. }))
            .collect()
    }
}
