//! Exponential backoff with jitter, for message retries and for reconnecting.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    /// Delay before attempt `failures + 1`, after `failures` failures in a row (1-based).
    /// "Equal jitter": half the exponential delay is fixed, half random, so retries of many
    /// rows that failed together spread out without ever retrying much sooner than planned.
    pub fn delay(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(32);
        let base = self
            .initial
            .saturating_mul(1u32 << exp.min(31))
            .min(self.max);
        let half = base / 2;
        let jitter_ms = rand::rng().random_range(0..=half.as_millis().max(1) as u64);
        (half + Duration::from_millis(jitter_ms)).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_within_bounds() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
        };
        for _ in 0..100 {
            let d1 = b.delay(1);
            assert!(
                d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(101),
                "{d1:?}"
            );
            let d3 = b.delay(3);
            assert!(
                d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(401),
                "{d3:?}"
            );
            let d20 = b.delay(20);
            assert!(
                d20 >= Duration::from_secs(1) && d20 <= Duration::from_secs(2),
                "{d20:?}"
            );
            assert!(b.delay(u32::MAX) <= Duration::from_secs(2));
        }
    }
}
