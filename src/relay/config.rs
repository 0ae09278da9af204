//! The `[relay]` and `[retry]` sections.

use std::num::NonZeroU32;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{Checks, DAY};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    pub batch_size: NonZeroU32,
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    pub max_in_flight: NonZeroU32,
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Key partitions the replicas share (active-active); 1 means one replica publishes.
    pub partitions: NonZeroU32,
}

/// More partitions than this would cost a lease row, a claim loop and a renewal per partition
/// for no gain: a replica needs only a few to keep its share even.
pub const MAX_PARTITIONS: u32 = 256;

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: NonZeroU32::new(500).expect("non-zero"),
            poll_interval: Duration::from_millis(100),
            max_in_flight: NonZeroU32::new(256).expect("non-zero"),
            publish_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
            partitions: NonZeroU32::MIN,
        }
    }
}

impl RelayConfig {
    pub(crate) fn check(&self, c: &mut Checks) {
        c.duration("relay.poll_interval", self.poll_interval, DAY);
        c.duration("relay.publish_timeout", self.publish_timeout, DAY);
        // Zero is allowed: stop at once, leaving in-flight rows to be sent again.
        c.at_most("relay.shutdown_grace", self.shutdown_grace, DAY);
        if self.partitions.get() > MAX_PARTITIONS {
            c.issue(
                "relay.partitions",
                format!("must be at most {MAX_PARTITIONS}"),
            );
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    pub max_attempts: NonZeroU32,
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: NonZeroU32::new(10).expect("non-zero"),
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
        }
    }
}

impl RetryConfig {
    pub(crate) fn check(&self, c: &mut Checks) {
        c.duration("retry.initial_backoff", self.initial_backoff, 30 * DAY);
        c.at_most("retry.max_backoff", self.max_backoff, 30 * DAY);
        c.ordered(
            "retry.initial_backoff",
            self.initial_backoff,
            "retry.max_backoff",
            self.max_backoff,
        );
    }
}
