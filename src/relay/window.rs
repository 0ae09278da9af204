//! Where the next claim may look: the commit fence and the pending floor, kept between claims,
//! and the check that the floor never passed a committed row.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

use sqlx::PgPool;

use crate::store::{self, StoreError};
use crate::telemetry::instruments;

/// The claim window ([`store::ClaimWindow`], advanced by `outbox.claim_window`).
///
/// A transaction making a row committed holds a shared advisory lock from before it draws its
/// `commit_seq` until it ends. Reading the last drawn value and then the lock holders gives a
/// fence: once those holders are gone, every row at or below it is either visible or never
/// will be. Publishing beyond the fence could let a key overtake a row whose transaction
/// commits late. The claims look only at `commit_seq` from the floor up to the fence.
#[derive(Debug)]
pub(super) struct FenceTracker {
    window: store::ClaimWindow,
    passed: Arc<PassedFloor>,
}

impl FenceTracker {
    pub(super) fn new(passed: Arc<PassedFloor>) -> Self {
        Self {
            window: store::ClaimWindow::default(),
            passed,
        }
    }

    /// Brings the window up to date; returns the fence and the floor.
    pub(super) async fn advance(&mut self, pool: &PgPool) -> Result<(i64, i64), StoreError> {
        if self.passed.take_rescan() {
            self.window.floor = 0;
        }
        self.window = store::claim_window(pool, &self.window).await?;
        self.passed.set(self.window.floor);
        Ok((self.window.safe, self.window.floor))
    }

    pub(super) fn is_pending(&self) -> bool {
        self.window.waiting.is_some()
    }

    /// After a database error: the floor is only an optimisation, and 0 is always right (the
    /// database may have been restored to an earlier point).
    pub(super) fn forget_floor(&mut self) {
        self.window.floor = 0;
        self.passed.set(0);
    }
}

/// The pending floor the claims have moved past, shared with the backlog check.
///
/// The floor only rises, so a committed row below it would wait for a restart. That happened
/// once, when the fence read the sequence without its lock (migration 0006). Every committed
/// row below a floor the relay has reached is finished for good: a requeue draws a new
/// `commit_seq`, and a wrong fence is the only way to commit one below it later. So the backlog
/// query, which scans the pending rows anyway, also reports the lowest pending `commit_seq`;
/// one below the floor read before the query means rows were passed, and the next claim
/// searches from 0 again.
#[derive(Debug, Default)]
pub struct PassedFloor {
    floor: AtomicI64,
    rescan: AtomicBool,
}

impl PassedFloor {
    fn set(&self, floor: i64) {
        self.floor.store(floor, Ordering::Release);
    }

    fn take_rescan(&self) -> bool {
        self.rescan.swap(false, Ordering::AcqRel)
    }

    /// The floor to compare the backlog with; read it before the backlog query starts.
    pub fn current(&self) -> i64 {
        self.floor.load(Ordering::Acquire)
    }

    /// Compares the lowest pending `commit_seq` of a backlog query with the floor read before
    /// it; when the claims had passed it, asks the next claim to search from 0.
    pub fn check(&self, floor_before: i64, lowest_pending: Option<i64>) {
        let Some(lowest) = lowest_pending else {
            return;
        };
        if lowest < floor_before {
            metrics::counter!(instruments::PASSED_ROWS_FOUND).increment(1);
            tracing::warn!(
                floor = floor_before,
                found = lowest,
                "committed rows were found below the point the claims had passed; they are published now, possibly after later rows of their key"
            );
            self.rescan.store(true, Ordering::Release);
        }
    }
}

/// The floors of every relay loop this replica runs (one, or one per partition held), for the
/// backlog check. Every loop's floor is a bound for the whole outbox (the fence and the floor
/// do not depend on the partition), so a pending row below any of them was passed.
#[derive(Debug, Default)]
pub struct PassedFloors(std::sync::Mutex<Vec<Arc<PassedFloor>>>);

impl PassedFloors {
    pub fn add(&self, floor: Arc<PassedFloor>) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(floor);
    }

    pub fn remove(&self, floor: &Arc<PassedFloor>) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|f| !Arc::ptr_eq(f, floor));
    }

    /// Each floor with its value now; read before the backlog query starts.
    pub fn current(&self) -> Vec<(Arc<PassedFloor>, i64)> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|f| (f.clone(), f.current()))
            .collect()
    }

    /// As [`PassedFloor::check`], for every floor read before the query.
    pub fn check(before: &[(Arc<PassedFloor>, i64)], lowest_pending: Option<i64>) {
        for (floor, value) in before {
            floor.check(*value, lowest_pending);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_row_below_the_floor_read_before_asks_for_one_rescan() {
        let passed = PassedFloor::default();
        passed.set(10);
        let before = passed.current();
        passed.check(before, None);
        passed.check(before, Some(10));
        passed.check(before, Some(25));
        assert!(!passed.take_rescan(), "nothing below the floor");
        passed.check(before, Some(9));
        assert!(passed.take_rescan());
        assert!(!passed.take_rescan(), "one rescan per find");
    }
}
