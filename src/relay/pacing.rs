//! Adaptive polling: how long the loop waits before its next claim.

use std::time::Duration;

use super::KEY_SHARE;
use crate::store::OutboxMessage;

/// How soon to look again while the fence waits for writers that are still running.
pub(super) const FENCE_RECHECK: Duration = Duration::from_millis(1);

/// The first pause after a claim that found rows but not a full batch. Empty claims double
/// it up to `relay.poll_interval`, so a busy outbox is polled every millisecond or two (low
/// commit-to-publish latency) and an idle one every `poll_interval` (low idle cost).
pub(super) const BUSY_POLL: Duration = Duration::from_millis(1);

/// What a claim says about the rows behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Found {
    /// A full batch, or a key cut to its share (`share_with_other_keys`): more rows are
    /// waiting, so the next claim runs as soon as the pipeline has room for it.
    Backlog,
    /// Fewer rows than a batch: the outbox is caught up, and the next claim waits for
    /// [`Pacing`].
    CaughtUp,
}

impl Found {
    /// `claimed`: the rows in `chains`.
    pub(super) fn of(chains: &[Vec<OutboxMessage>], claimed: usize, batch_size: usize) -> Self {
        if claimed >= batch_size || chains.iter().any(|c| c.len() >= KEY_SHARE) {
            Self::Backlog
        } else {
            Self::CaughtUp
        }
    }
}

/// Adaptive polling: how long to wait before the next claim.
#[derive(Debug, Default)]
pub(super) struct Pacing {
    pub(super) empty_claims: u32,
}

impl Pacing {
    /// `None`: claim again at once (the last claim left rows waiting: see [`Found`]).
    pub(super) fn next_wait(
        &mut self,
        claimed: usize,
        found: Found,
        poll_interval: Duration,
        fence_pending: bool,
    ) -> Option<Duration> {
        if found == Found::Backlog {
            self.empty_claims = 0;
            return None;
        }
        if claimed > 0 {
            self.empty_claims = 0;
        } else {
            self.empty_claims = self.empty_claims.saturating_add(1);
        }
        let grown = BUSY_POLL.saturating_mul(1 << self.empty_claims.min(16));
        let wait = grown.min(poll_interval);
        Some(if fence_pending {
            wait.min(FENCE_RECHECK)
        } else {
            wait
        })
    }
}
