//! The one connection a publisher holds between `ready` and `publish`, numbered: a publish
//! that failed on an older connection must not drop the newer one another `ready` opened.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

pub(crate) struct Slot<C> {
    /// `None` until connected and after the connection broke: only `ready` connects.
    current: RwLock<Option<(C, u64)>>,
    connects: AtomicU64,
}

impl<C: Clone> Slot<C> {
    pub(crate) fn new() -> Self {
        Self {
            current: RwLock::new(None),
            connects: AtomicU64::new(0),
        }
    }

    /// The connection and its number.
    pub(crate) fn get(&self) -> Option<(C, u64)> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn set(&self, connection: C) {
        let generation = self.connects.fetch_add(1, Ordering::Relaxed);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some((connection, generation));
    }

    /// Forgets connection `generation` if it is still the current one, so that the next
    /// `ready` connects again.
    pub(crate) fn forget(&self, generation: u64) {
        let mut slot = self.current.write().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_some_and(|(_, g)| *g == generation) {
            *slot = None;
        }
    }

    /// Drops the held connection (the last handle closes it).
    pub(crate) fn clear(&self) {
        self.current
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_on_an_older_connection_leaves_the_newer_one() {
        let slot = Slot::new();
        slot.set("first");
        let (_, old) = slot.get().unwrap();
        slot.set("second");
        slot.forget(old);
        assert_eq!(slot.get().map(|(c, _)| c), Some("second"));
        let (_, new) = slot.get().unwrap();
        slot.forget(new);
        assert!(slot.get().is_none());
    }
}
