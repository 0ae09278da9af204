//! Shared liveness and readiness state, written by the tasks, read by the HTTP endpoints.

use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, Default)]
pub struct Health {
    alive: AtomicBool,
    database_up: AtomicBool,
    broker_up: AtomicBool,
    leader: AtomicBool,
}

impl Health {
    pub fn new() -> Self {
        let h = Self::default();
        h.alive.store(true, Ordering::Relaxed);
        h
    }

    pub fn set_alive(&self, v: bool) {
        self.alive.store(v, Ordering::Relaxed);
    }

    pub fn set_database_up(&self, v: bool) {
        self.database_up.store(v, Ordering::Relaxed);
        metrics::gauge!(crate::instruments::UP, "dependency" => "database")
            .set(f64::from(u8::from(v)));
    }

    pub fn set_broker_up(&self, v: bool) {
        self.broker_up.store(v, Ordering::Relaxed);
        metrics::gauge!(crate::instruments::UP, "dependency" => "broker")
            .set(f64::from(u8::from(v)));
    }

    pub fn set_leader(&self, v: bool) {
        self.leader.store(v, Ordering::Relaxed);
        metrics::gauge!(crate::instruments::LEADER).set(f64::from(u8::from(v)));
    }

    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    /// The process and its loops run. No dependency is checked: a broker outage must not get
    /// every replica restarted.
    pub fn live(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
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
