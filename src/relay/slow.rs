//! Destinations held back after a publish timeout.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::backoff::Backoff;

/// Destinations whose last publish timed out, and until when their rows are not claimed.
///
/// A batch ends when its slowest chain does, so without this one destination whose confirms
/// never come would slow every destination to one batch per `relay.publish_timeout`. Leaving
/// its rows unclaimed for a backoff keeps the others flowing; nothing of the destination is
/// sent meanwhile, so its order is untouched and no attempt is used up.
#[derive(Debug, Default)]
pub(super) struct SlowDestinations(Mutex<HashMap<String, Slow>>);

#[derive(Debug)]
pub(super) struct Slow {
    pub(super) until: std::time::Instant,
    pub(super) timeouts: u32,
}

impl SlowDestinations {
    /// The destinations to leave out of the next claim. An entry stays (counting timeouts, so
    /// the pause grows) until a publish to its destination is confirmed.
    pub(super) fn held_back(&self) -> Vec<String> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.is_empty() {
            return Vec::new();
        }
        let now = std::time::Instant::now();
        map.iter()
            .filter(|(_, s)| s.until > now)
            .map(|(d, _)| d.clone())
            .collect()
    }

    pub(super) fn timed_out(&self, destination: &str, backoff: &Backoff) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        let slow = map.entry(destination.to_string()).or_insert(Slow {
            until: now,
            timeouts: 0,
        });
        if slow.until > now {
            return; // already held back by another chain's timeout of the same batch
        }
        slow.timeouts = slow.timeouts.saturating_add(1);
        let pause = backoff.delay(slow.timeouts);
        slow.until = now + pause;
        tracing::warn!(
            destination,
            pause = ?pause,
            "publish to this destination timed out; its rows are not claimed for a while so that other destinations keep flowing"
        );
    }

    pub(super) fn confirmed(&self, destination: &str) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if !map.is_empty() {
            map.remove(destination);
        }
    }
}
