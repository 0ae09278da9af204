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
//! Renewals come first in a round and run concurrently, so that a slow read or a broker probe
//! never lets a held lease lapse: a round is at most three statement times (renewals; the
//! live replicas; acquisitions).
//!
//! A replica whose claims find its broker unreachable for a lease ttl while it holds
//! partitions, and that sees another live replica, steps back: it hands its partitions off and
//! leaves the replica list, so that the others take them. It rejoins once a probe of its broker
//! succeeds, or when no other replica is live (someone must hold partition 0, whose holder runs
//! the sweeper and check-back).

pub mod assign;

use std::sync::Arc;
use std::time::Duration;

use futures::future::{join_all, BoxFuture};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::health::{Health, Heartbeat};
use crate::lease::{HaConfig, Lease, Renewal};
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

    /// Whether the broker answers (bounded), asked while this replica stepped back.
    fn broker_ready(&self) -> BoxFuture<'static, bool>;
}

/// A partition's loop died (panicked): the process stops, as it does when any task dies.
#[derive(Debug, thiserror::Error)]
#[error("the relay loop of partition {0} died: {1}")]
pub struct LoopDied(pub u32, pub String);

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

/// What a partition's task reports when its loop has ended.
struct Finished {
    index: u32,
    floor: Arc<PassedFloor>,
    died: Option<String>,
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
    finished_tx: mpsc::Sender<Finished>,
    finished_rx: mpsc::Receiver<Finished>,
    tracker: TaskTracker,
    /// The process's shutdown: every loop's stop token is a child of it.
    shutdown: CancellationToken,
    /// While partitions are held: since when the broker has not answered.
    broker_down_since: Option<Instant>,
    /// Out of the replica list until the broker answers again.
    stepped_back: bool,
    /// The broker probe under way while stepped back.
    probe: Option<JoinHandle<bool>>,
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
            shutdown: CancellationToken::new(),
            broker_down_since: None,
            stepped_back: false,
            probe: None,
            blocked: false,
        }
    }

    /// Partition 0's lease: its holder runs the sweeper and check-back, once per outbox.
    pub fn first_lease(&self) -> Arc<Lease> {
        self.leases[0].clone()
    }

    /// Renews, deals and hands off every `ha.lease_ttl / 3` until `shutdown`; then drains every
    /// partition it holds, releases them and leaves the replica list. A loop that died stops
    /// the others the same way and is reported.
    pub async fn run(
        mut self,
        shutdown: CancellationToken,
        beat: &Heartbeat,
    ) -> Result<(), LoopDied> {
        self.shutdown = shutdown.clone();
        let period = self.ttl / 3;
        tracing::info!(replica = %self.holder, partitions = self.count, lease = %self.names.group, "sharing the outbox's partitions");
        let mut next = Instant::now();
        let mut died = None;
        while died.is_none() {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {
                    // A round is up to three statement times, all bounded.
                    beat.beat_within(3 * self.db_timeout);
                    self.turn().await;
                    next = Instant::now() + period;
                    beat.beat_within(period);
                }
                Some(finished) = self.finished_rx.recv() => {
                    died = self.finished(finished).await;
                    beat.beat_within(next.saturating_duration_since(Instant::now()));
                }
                _ = shutdown.cancelled() => break,
            }
        }
        self.leave(period, beat).await;
        died.map_or(Ok(()), Err)
    }

    /// One round: renew, read the live replicas and deal, hand off and take.
    async fn turn(&mut self) {
        let held = self.renew().await;
        self.watch_broker();
        let want = self.deal().await;
        for index in 0..self.count {
            let renewed = held.iter().find(|(k, _)| *k == index).map(|(_, h)| *h);
            self.hand_off(index, renewed, want.contains(&index));
        }
        self.take(&want).await;
        self.show_held();
    }

    /// Renews, at once, the group lease, this replica's row (unless it stepped back) and every
    /// partition lease whose loop runs or drains. Returns each renewed partition with whether
    /// it is still held.
    async fn renew(&mut self) -> Vec<(u32, bool)> {
        let renewing: Vec<u32> = (0..self.count)
            .filter(|k| !matches!(self.slots[*k as usize], Slot::Idle))
            .collect();
        let partitions = join_all(renewing.iter().map(|k| self.leases[*k as usize].tick()));
        let me = async {
            if !self.stepped_back {
                self.me.tick().await;
            }
        };
        let (group, (), held) = tokio::join!(self.group.renew(), me, partitions);
        // A failed renewal says nothing about other modes; the partitions' own leases lapse by
        // themselves if the database stays away.
        let group_held = match group {
            Renewal::Held => true,
            Renewal::NotHeld => false,
            Renewal::Failed => !self.blocked,
        };
        if group_held == self.blocked {
            self.blocked = !group_held;
            if self.blocked {
                tracing::warn!(lease = %self.names.group, "the outbox is published by replicas run with another relay.partitions: standing by until they stop");
            } else {
                tracing::info!(lease = %self.names.group, "the group lease is ours again");
            }
        }
        renewing.into_iter().zip(held).collect()
    }

    /// The partitions this replica should hold: its share of the live replicas' deal, none
    /// while blocked or stepped back.
    async fn deal(&mut self) -> Vec<u32> {
        let live = match store::within(
            self.db_timeout,
            store::live_replicas(&self.pool, &self.names.replica_prefix),
        )
        .await
        {
            Ok(live) => live,
            Err(e) => {
                // Keep what is held (it runs out by itself if the database stays away); take
                // nothing new on a stale view.
                tracing::warn!(error = %e, "cannot read the live replicas");
                return self.running();
            }
        };
        let alone = live.iter().all(|r| *r == self.holder);
        if self.stepped_back && alone {
            tracing::info!(
                "no other replica is live: rejoining although the broker does not answer"
            );
            self.rejoin();
            // Its row is renewed with the next round's leases.
            return Vec::new();
        }
        if self.blocked || self.stepped_back {
            return Vec::new();
        }
        if !alone {
            self.step_back_if_cut_off();
        }
        if self.stepped_back {
            return Vec::new();
        }
        assign::assigned(&live, &self.holder, self.count)
    }

    /// Counts how long the broker has been down while partitions are held.
    fn watch_broker(&mut self) {
        if self.stepped_back {
            match self.probe.take() {
                Some(probe) if probe.is_finished() => {
                    if futures::FutureExt::now_or_never(probe).is_some_and(|r| r.unwrap_or(false)) {
                        tracing::info!("the broker answers again: rejoining the replicas");
                        self.rejoin();
                    }
                }
                Some(probe) => self.probe = Some(probe),
                None => self.probe = Some(tokio::spawn(self.loops.broker_ready())),
            }
            return;
        }
        if self.running().is_empty() || self.health.is_broker_up() {
            self.broker_down_since = None;
        } else {
            self.broker_down_since.get_or_insert_with(Instant::now);
        }
    }

    /// Steps back once the broker has been down for a lease ttl: the deal then gives this
    /// replica's partitions to the others.
    fn step_back_if_cut_off(&mut self) {
        if self
            .broker_down_since
            .is_some_and(|since| since.elapsed() >= self.ttl)
        {
            tracing::warn!(partitions = ?self.running(), "the broker has not answered for a lease ttl: handing the partitions to the other replicas");
            self.stepped_back = true;
            self.broker_down_since = None;
            // Its row expires within a ttl; released now, the others deal without it at once.
            let me = self.me.name().to_string();
            let pool = self.pool.clone();
            let (holder, limit) = (self.holder.clone(), self.db_timeout);
            self.tracker.spawn(async move {
                if let Err(e) = store::within(limit, store::release_lease(&pool, &me, &holder)).await {
                    tracing::warn!(error = %e, "cannot leave the replica list; the row expires by itself");
                }
            });
        }
    }

    fn rejoin(&mut self) {
        self.stepped_back = false;
        self.broker_down_since = None;
        if let Some(probe) = self.probe.take() {
            probe.abort();
        }
    }

    /// Stops the loop of a partition that is lost or no longer wanted; marks a draining one
    /// lost if its lease was.
    fn hand_off(&mut self, index: u32, renewed: Option<bool>, want: bool) {
        let Some(held) = renewed else {
            return;
        };
        let slot = &mut self.slots[index as usize];
        match slot {
            Slot::Running { stop } => {
                if !held || !want {
                    if held {
                        tracing::info!(partition = index, "handing the partition off");
                    }
                    stop.cancel();
                    *slot = Slot::Draining { lost: !held };
                }
            }
            Slot::Draining { lost } => *lost |= !held,
            Slot::Idle => {}
        }
    }

    /// Takes, at once, every wanted partition whose lease is free, and starts its loop.
    async fn take(&mut self, want: &[u32]) {
        let idle: Vec<u32> = want
            .iter()
            .copied()
            .filter(|k| matches!(self.slots[*k as usize], Slot::Idle))
            .collect();
        let taken = join_all(idle.iter().map(|k| self.leases[*k as usize].tick())).await;
        for (index, taken) in idle.into_iter().zip(taken) {
            if taken {
                self.start(index);
            }
        }
    }

    fn start(&mut self, index: u32) {
        let lease = self.leases[index as usize].clone();
        let partition = Partition {
            count: self.count,
            index,
            group: Some((self.names.group.clone(), self.names.group_holder.clone())),
        };
        let (floor, run) = self.loops.build(lease, partition);
        self.floors.add(floor.clone());
        let stop = self.shutdown.child_token();
        let beat = self.health.heartbeat("relay");
        let (health, finished, token) =
            (self.health.clone(), self.finished_tx.clone(), stop.clone());
        self.tracker.spawn(async move {
            let ran = tokio::spawn(run(token, beat.clone())).await;
            health.forget(&beat);
            let died = ran.err().map(|e| e.to_string());
            // Capacity is one per partition and each loop sends once: never full.
            let _ = finished.send(Finished { index, floor, died }).await;
        });
        metrics::counter!(instruments::HANDOFFS, "event" => "won").increment(1);
        tracing::info!(partition = index, replica = %self.holder, "publishing the partition");
        self.slots[index as usize] = Slot::Running { stop };
    }

    /// A partition's loop has ended: release its lease (a no-op if it was lost). A loop that
    /// died is returned, to stop the process.
    async fn finished(&mut self, finished: Finished) -> Option<LoopDied> {
        let Finished { index, floor, died } = finished;
        self.floors.remove(&floor);
        let slot = std::mem::replace(&mut self.slots[index as usize], Slot::Idle);
        let lost = matches!(slot, Slot::Draining { lost: true });
        self.leases[index as usize].release().await;
        let event = if lost { "lost" } else { "released" };
        metrics::counter!(instruments::HANDOFFS, "event" => event).increment(1);
        self.show_held();
        died.map(|e| {
            tracing::error!(partition = index, error = %e, "a partition's relay loop died; stopping");
            LoopDied(index, e)
        })
    }

    /// At shutdown: this replica leaves the list at once (the others deal without it), every
    /// loop drains (each within `relay.shutdown_grace`) while the group and partition leases
    /// are renewed, and each partition is released as its loop ends.
    async fn leave(mut self, period: Duration, beat: &Heartbeat) {
        self.stepped_back = true;
        self.me.release().await;
        for slot in &mut self.slots {
            if let Slot::Running { stop } = slot {
                stop.cancel();
                *slot = Slot::Draining { lost: false };
            }
        }
        let mut next = Instant::now();
        while self.slots.iter().any(|s| !matches!(s, Slot::Idle)) {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {
                    beat.beat_within(3 * self.db_timeout);
                    for (index, held) in self.renew().await {
                        self.hand_off(index, Some(held), false);
                    }
                    next = Instant::now() + period;
                    beat.beat_within(period);
                }
                Some(finished) = self.finished_rx.recv() => {
                    self.finished(finished).await;
                }
            }
        }
        self.tracker.close();
        self.tracker.wait().await;
        if let Some(probe) = self.probe.take() {
            probe.abort();
        }
        tracing::info!(replica = %self.holder, "left the replicas; partitions released");
    }

    /// The partitions whose loop runs here.
    fn running(&self) -> Vec<u32> {
        (0..self.count)
            .filter(|k| matches!(self.slots[*k as usize], Slot::Running { .. }))
            .collect()
    }

    fn show_held(&self) {
        let held = self.running().len();
        metrics::gauge!(instruments::PARTITIONS_HELD).set(held as f64);
        self.health.set_leader(held > 0);
    }
}
