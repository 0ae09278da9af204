//! Shared liveness and readiness state, written by the tasks, read by the HTTP endpoints.
//!
//! Liveness means "every loop turns": each long-running task holds a [`Heartbeat`] and marks
//! it on every turn, announcing how long it means to wait before the next one (a poll
//! interval, a retry backoff). A task is stuck when it is later than that by more than
//! `http.livez_stall_timeout`. Outages never make a task late: every database and broker call
//! has a timeout, and a failed one is followed by a backoff the task announces.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Health {
    database_up: AtomicBool,
    broker_up: AtomicBool,
    leader: AtomicBool,
    stall_timeout: Duration,
    origin: Instant,
    tasks: Mutex<Vec<(&'static str, Arc<Heartbeat>)>>,
}

/// When a task is next expected to turn, in milliseconds since its [`Health`]'s origin.
#[derive(Debug)]
pub struct Heartbeat {
    origin: Instant,
    due_ms: AtomicU64,
    turns: AtomicU64,
}

impl Heartbeat {
    /// The task turned and will turn again at once (or when work it waits for arrives).
    pub fn beat(&self) {
        self.beat_within(Duration::ZERO);
    }

    /// The task turned and deliberately waits up to `wait` before its next turn.
    pub fn beat_within(&self, wait: Duration) {
        let due = self.origin.elapsed().saturating_add(wait);
        self.due_ms.store(millis(due), Ordering::Relaxed);
        self.turns.fetch_add(1, Ordering::Relaxed);
    }

    /// How many turns the task has made: proof that it ran while something did not happen.
    pub fn turns(&self) -> u64 {
        self.turns.load(Ordering::Relaxed)
    }

    /// The task ended normally: it is never late again.
    pub fn done(&self) {
        self.due_ms.store(u64::MAX, Ordering::Relaxed);
    }

    /// How far past its announced turn the task is (zero when on time).
    fn late_by(&self, now: Duration) -> Duration {
        now.saturating_sub(Duration::from_millis(self.due_ms.load(Ordering::Relaxed)))
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A task that has not turned for longer than the stall timeout allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stalled {
    pub task: &'static str,
    pub late_by: Duration,
}

impl Health {
    pub fn new(stall_timeout: Duration) -> Self {
        Self {
            database_up: AtomicBool::default(),
            broker_up: AtomicBool::default(),
            leader: AtomicBool::default(),
            stall_timeout,
            origin: Instant::now(),
            tasks: Mutex::default(),
        }
    }

    /// Registers a task that `/livez` watches from now on; it counts as having just turned.
    pub fn heartbeat(&self, task: &'static str) -> Arc<Heartbeat> {
        let beat = Arc::new(Heartbeat {
            origin: self.origin,
            due_ms: AtomicU64::new(0),
            turns: AtomicU64::new(0),
        });
        beat.beat();
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((task, beat.clone()));
        beat
    }

    /// Stops watching a task that ended (a partition's loop after a hand-off), so that tasks
    /// started and ended over the process's life do not pile up.
    pub fn forget(&self, beat: &Arc<Heartbeat>) {
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(_, b)| !Arc::ptr_eq(b, beat));
    }

    pub fn is_broker_up(&self) -> bool {
        self.broker_up.load(Ordering::Relaxed)
    }

    pub fn set_database_up(&self, v: bool) {
        self.database_up.store(v, Ordering::Relaxed);
        metrics::gauge!(crate::telemetry::instruments::UP, "dependency" => "database")
            .set(f64::from(u8::from(v)));
    }

    pub fn set_broker_up(&self, v: bool) {
        self.broker_up.store(v, Ordering::Relaxed);
        metrics::gauge!(crate::telemetry::instruments::UP, "dependency" => "broker")
            .set(f64::from(u8::from(v)));
    }

    pub fn set_leader(&self, v: bool) {
        self.leader.store(v, Ordering::Relaxed);
        metrics::gauge!(crate::telemetry::instruments::LEADER).set(f64::from(u8::from(v)));
    }

    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    /// No task is stuck. No dependency is checked: a broker outage must not get every replica
    /// restarted.
    pub fn live(&self) -> Result<(), Stalled> {
        self.stalled().map_or(Ok(()), Err)
    }

    /// The heartbeat of a registered task.
    pub fn task(&self, name: &str) -> Option<Arc<Heartbeat>> {
        let tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks
            .iter()
            .find(|(t, _)| *t == name)
            .map(|(_, b)| b.clone())
    }

    /// The task furthest past its turn, if it is later than the stall timeout.
    pub fn stalled(&self) -> Option<Stalled> {
        self.stalled_at(self.origin.elapsed())
    }

    fn stalled_at(&self, now: Duration) -> Option<Stalled> {
        let tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks
            .iter()
            .map(|(task, beat)| Stalled {
                task,
                late_by: beat.late_by(now),
            })
            .filter(|s| s.late_by > self.stall_timeout)
            .max_by_key(|s| s.late_by)
    }

    /// The database answers and, on the publishing replica, the broker is connected. A
    /// standby only needs the database.
    pub fn ready(&self) -> Result<(), &'static str> {
        if !self.database_up.load(Ordering::Relaxed) {
            return Err("database not reachable");
        }
        if self.is_leader() && !self.broker_up.load(Ordering::Relaxed) {
            return Err("broker not connected");
        }
        Ok(())
    }
}

impl std::fmt::Display for Stalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "task `{}` has not turned for {}s past its schedule",
            self.task,
            self.late_by.as_secs()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_is_stalled_only_past_its_announced_wait_plus_the_timeout() {
        let health = Health::new(Duration::from_secs(60));
        let relay = health.heartbeat("relay");
        let sweeper = health.heartbeat("sweeper");
        assert_eq!(health.live(), Ok(()));
        // The sweeper announces a long wait; the relay announces none.
        sweeper.beat_within(Duration::from_secs(3600));
        relay.beat();
        let now = health.origin.elapsed();
        assert_eq!(health.stalled_at(now + Duration::from_secs(59)), None);
        let s = health
            .stalled_at(now + Duration::from_secs(120))
            .expect("the relay is two minutes late");
        assert_eq!(s.task, "relay");
        assert!(s.late_by >= Duration::from_secs(119), "{s:?}");
        // Within its announced wait the sweeper is on time, however long that is.
        let later = now + Duration::from_secs(3600);
        relay.beat_within(Duration::from_secs(7200));
        assert_eq!(health.stalled_at(later), None);
        let s = health.stalled_at(later + Duration::from_secs(61)).unwrap();
        assert_eq!(s.task, "sweeper");
    }
}
