//! The active-active targets (`rabbitmq-aa`, `kafka-aa`): three replicas share the outbox's key
//! partitions (`relay.partitions`, a lease per partition; src/partitions/mod.rs). Their faults
//! hit one replica or two, and each ends with three replicas running again; after every fault
//! of such a target, the broker's too, the suite waits until the partitions are dealt evenly
//! again, within the recovery bound.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use rand::seq::index;

use crate::common::{Broker, RelayProcess};
use crate::fault::{random_between, Fault, Side};
use crate::rig::{poll_until, Rig};

/// The replicas of an active-active target.
pub const REPLICAS: usize = 3;
/// Its `relay.partitions`: two for each of the three replicas.
pub const PARTITIONS: u32 = 6;

const HELD: &str = "outbox_relay_partitions_held";
const LOST: &str = "outbox_relay_partition_handoffs_total{event=\"lost\"}";
/// What a replica logs when it steps back from a broker that did not answer for a lease ttl.
const STEPPED_BACK: &str = "the broker has not answered for a lease ttl";

/// The faults of one round against an active-active target: the replicas' own, the
/// relay-broker connection reset and the broker restart, as the other targets have them. With
/// Kafka that is a clean restart of broker 1 in the first round only: on 2 cores a broker takes
/// 40 to 50 s to start beside three relays, and the `kafka` target restarts each in turn.
pub fn catalogue(broker: Broker, round: usize) -> Vec<Fault> {
    let mut faults = vec![
        Fault::KillReplica,
        Fault::PauseReplica,
        Fault::Terminate(1),
        Fault::Terminate(2),
        Fault::Reset(Side::Broker),
    ];
    match broker {
        Broker::Kafka if round == 1 => faults.push(Fault::KafkaRestart(1)),
        Broker::Kafka => {}
        Broker::Amqp | Broker::Redis | Broker::Nsq => faults.push(Fault::BrokerRestart),
    }
    faults
}

/// A replica paused and resumed: its index, its count of lost partitions before the pause, and
/// the partitions it held then.
#[derive(Debug, Clone, Copy)]
pub struct Resumed {
    index: usize,
    lost_before: f64,
    held: u32,
}

/// A sample of a replica's `/metrics`; `None` while it does not answer (paused, starting).
async fn metric(relay: &RelayProcess, sample: &str) -> Option<f64> {
    tokio::time::timeout(Duration::from_millis(500), relay.metric(sample))
        .await
        .ok()
        .flatten()
}

/// The shares of `PARTITIONS` dealt evenly to `replicas`, in ascending order (`[2, 2, 2]`).
fn even(replicas: usize) -> Vec<u32> {
    let m = replicas as u32;
    let mut shares: Vec<u32> = (0..m)
        .map(|i| PARTITIONS / m + u32::from(i < PARTITIONS % m))
        .collect();
    shares.sort_unstable();
    shares
}

fn shares_text(shares: &[Option<u32>]) -> String {
    let shares: Vec<String> = shares
        .iter()
        .map(|s| s.map_or("?".into(), |n| n.to_string()))
        .collect();
    shares.join("/")
}

impl Rig<'_> {
    /// The three replicas, waited for (up to twice the recovery bound) until they hold two
    /// partitions each; how long that took, or what they held then.
    pub async fn start_replicas(&mut self) -> Result<Duration, String> {
        let started = Instant::now();
        for _ in 0..REPLICAS {
            let relay = self.spawn_relay();
            self.relays.push(relay);
        }
        self.wait_dealt(None, started, self.settings.recovery_bound * 2)
            .await
    }

    /// What each replica but `except` (a paused one) holds, by its gauge.
    async fn shares(&self, except: Option<usize>) -> Vec<Option<u32>> {
        let mut shares = Vec::new();
        for (i, r) in self.relays.iter().enumerate() {
            if Some(i) != except {
                shares.push(metric(r, HELD).await.map(|v| v as u32));
            }
        }
        shares
    }

    /// Waits until `since + within` for the replicas but `except` to hold every partition,
    /// dealt evenly among them: how long after `since` they did, or what they held at the end.
    async fn wait_dealt(
        &self,
        except: Option<usize>,
        since: Instant,
        within: Duration,
    ) -> Result<Duration, String> {
        let want = even(self.relays.len() - usize::from(except.is_some()));
        let dealt = poll_until(since + within, || async {
            let mut got: Vec<u32> = self.shares(except).await.into_iter().flatten().collect();
            got.sort_unstable();
            (got == want).then_some(())
        })
        .await;
        match dealt {
            Some(()) => Ok(since.elapsed()),
            None => Err(format!(
                "the replicas held {} partitions after {:.1?}, not {PARTITIONS} dealt {}",
                shares_text(&self.shares(except).await),
                since.elapsed(),
                shares_text(&want.iter().copied().map(Some).collect::<Vec<_>>()),
            )),
        }
    }

    /// Injects a fault on the replicas: its start and its end, once three replicas run again;
    /// what it did in `detail`, in `failure` what went wrong, and the paused replica, whose
    /// partitions [`Self::rebalanced`] checks it counted lost.
    pub async fn inject_replicas(
        &mut self,
        fault: Fault,
        detail: &mut String,
        failure: &mut Option<String>,
    ) -> (Instant, Instant, Option<Resumed>) {
        let count = match fault {
            Fault::Terminate(n) => n,
            _ => 1,
        };
        let victims = index::sample(&mut rand::rng(), self.relays.len(), count).into_vec();
        let start = match fault {
            Fault::KillReplica => {
                let start = Instant::now();
                let victim = self.relays.remove(victims[0]);
                victim.signal(Signal::SIGKILL);
                drop(victim);
                tokio::time::sleep(random_between(100, 2000)).await;
                start
            }
            Fault::PauseReplica => return self.pause(victims[0], detail, failure).await,
            Fault::Terminate(_) => self.terminate(victims, detail, failure).await,
            other => unreachable!("{} is not a fault of the replicas", other.name()),
        };
        for _ in 0..count {
            let relay = self.spawn_relay();
            self.relays.push(relay);
        }
        (start, Instant::now(), None)
    }

    /// SIGSTOP of a replica until the others hold its partitions too, and SIGCONT a moment
    /// later.
    async fn pause(
        &mut self,
        victim: usize,
        detail: &mut String,
        failure: &mut Option<String>,
    ) -> (Instant, Instant, Option<Resumed>) {
        let paused = &self.relays[victim];
        let lost_before = metric(paused, LOST).await.unwrap_or(0.0);
        let held = metric(paused, HELD).await.unwrap_or(0.0) as u32;
        let start = Instant::now();
        paused.signal(Signal::SIGSTOP);
        match self
            .wait_dealt(Some(victim), start, self.settings.recovery_bound)
            .await
        {
            Ok(took) => *detail = format!("the others took its {held} after {took:.1?}"),
            Err(e) => *failure = Some(format!("paused: {e}")),
        }
        tokio::time::sleep(random_between(0, 1500)).await;
        self.relays[victim].signal(Signal::SIGCONT);
        let resumed = Resumed {
            index: victim,
            lost_before,
            held,
        };
        (start, Instant::now(), Some(resumed))
    }

    /// SIGTERM of the `victims` (indices into the replicas), a clean exit each, and the
    /// partitions dealt among the others; returns the fault's start.
    async fn terminate(
        &mut self,
        mut victims: Vec<usize>,
        detail: &mut String,
        failure: &mut Option<String>,
    ) -> Instant {
        // Removed from the back, so that the indices left stay valid.
        victims.sort_unstable_by(|a, b| b.cmp(a));
        let start = Instant::now();
        let mut stopping: Vec<RelayProcess> =
            victims.iter().map(|&i| self.relays.remove(i)).collect();
        for r in &stopping {
            r.signal(Signal::SIGTERM);
        }
        for r in &mut stopping {
            let status = r.wait_exit(Duration::from_secs(30)).await;
            if !status.success() {
                *failure = Some(format!("a replica exited with {status} on SIGTERM"));
            }
        }
        match self
            .wait_dealt(None, start, self.settings.recovery_bound)
            .await
        {
            Ok(took) => *detail = format!("{REPLICAS} -> {} after {took:.1?}", self.relays.len()),
            Err(e) => *failure = Some(format!("scaled down: {e}")),
        }
        start
    }

    /// How often the replicas of this run stepped back from their broker so far, by every
    /// relay's log (src/partitions/mod.rs: out of the replica list until it answers again).
    pub fn step_backs(&self) -> usize {
        self.relay_logs
            .iter()
            .map(|log| {
                let log = std::fs::read_to_string(log).unwrap_or_default();
                log.matches(STEPPED_BACK).count()
            })
            .sum()
    }

    /// After a fault of an active-active target: waits until the three replicas hold two
    /// partitions each again, and a resumed replica has counted the partitions taken from it
    /// while it was paused as lost, each within the recovery bound from `end`. Returns what it
    /// saw for the fault's detail, with the step-backs since `step_backs` (a count of
    /// [`Self::step_backs`]).
    pub async fn rebalanced(
        &self,
        end: Instant,
        resumed: Option<Resumed>,
        step_backs: usize,
        failure: &mut Option<String>,
    ) -> Vec<String> {
        let bound = self.settings.recovery_bound;
        let mut seen = Vec::new();
        match self.wait_dealt(None, end, bound).await {
            Ok(took) => seen.push(format!("dealt evenly again after {took:.1?}")),
            Err(e) => *failure = Some(e),
        }
        let stepped = self.step_backs().saturating_sub(step_backs);
        if stepped > 0 {
            seen.push(format!("{stepped} stepped back from the broker"));
        }
        let Some(r) = resumed else {
            return seen;
        };
        let paused = &self.relays[r.index];
        let lost = || async { metric(paused, LOST).await.unwrap_or(0.0) - r.lost_before };
        let counted = poll_until(end + bound, || async {
            (lost().await >= f64::from(r.held)).then_some(())
        })
        .await;
        let lost = lost().await;
        seen.push(format!("it counted {lost} lost"));
        if counted.is_none() {
            *failure = Some(format!(
                "the resumed replica counted {lost} partitions lost, not the {} taken from it",
                r.held
            ));
        }
        seen
    }
}
