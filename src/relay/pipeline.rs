//! The rows in hand: what the relay loop has claimed and not yet recorded or given back, and
//! which chain of them may start next.
//!
//! No I/O and no futures here: the loop reports each event (a claim returned, a chain ended,
//! an outcome update finished, the shutdown grace ran out) and asks what to do next.

use std::collections::{HashMap, HashSet, VecDeque};

use super::chains::key_of;
use super::keys::{Admitted, ChainEnd, Key, KeyGate};
use super::state::{Ended, Queued, Recordable};
use crate::store::{OutboxMessage, RowId};
use crate::telemetry::instruments;

pub(super) struct Pipeline {
    batch_size: usize,
    /// Admitted chains waiting for a slot, in claim order; bounded, as their rows are in hand
    /// (claims stop at four batches, see [`Self::room`]). A chain holds its slot from its first
    /// publish to its last instead of taking a permit per message: a chain future waiting
    /// for a permit has to be polled and woken through the semaphore, which measured slower
    /// (docs/performance.md), and the window is the same, one message per chain.
    ready: VecDeque<Queued>,
    gate: KeyGate<Queued>,
    batches: Batches,
    /// Every claimed row until its outcome is written or it goes back unpublished: the
    /// claims leave these out.
    in_hand: HashSet<RowId>,
    /// Outcomes not yet handed to an update.
    unrecorded: Vec<Recordable>,
    /// Keys stopped by a failure among `unrecorded`.
    failed_keys: Vec<Key>,
    /// The number the [`KeyGate`] gave the claim running, if one runs.
    claiming: Option<u64>,
    /// What the outcome update running covers, if one runs.
    recording: Option<Recording>,
}

/// The rows of the outcome update running alongside claims and publishes.
struct Recording {
    ids: Vec<RowId>,
    /// Keys stopped by a failure in this update: free again once it is written.
    failed_keys: Vec<Key>,
}

impl Pipeline {
    pub(super) fn new(batch_size: usize) -> Self {
        Self {
            batch_size,
            ready: VecDeque::new(),
            gate: KeyGate::default(),
            batches: Batches::default(),
            in_hand: HashSet::new(),
            unrecorded: Vec::new(),
            failed_keys: Vec::new(),
            claiming: None,
            recording: None,
        }
    }

    /// Backpressure: claim only while the publishers are short of work (less than half a
    /// batch of claimed rows unpublished), and stop while the outcome updates fall behind
    /// (four batches in hand).
    pub(super) fn room(&self) -> bool {
        let answered = self.unrecorded.len() + self.recording.as_ref().map_or(0, |r| r.ids.len());
        let unpublished = self.in_hand.len().saturating_sub(answered);
        unpublished < self.batch_size.div_ceil(2) && self.in_hand.len() < 4 * self.batch_size
    }

    /// The rows a claim must leave out: every row in hand.
    pub(super) fn exclude(&self) -> Vec<i64> {
        self.in_hand.iter().map(|id| id.0).collect()
    }

    /// A claim is about to start (one at a time): numbers it for the [`KeyGate`] and returns
    /// the rows it must leave out.
    pub(super) fn claim_started(&mut self) -> Vec<i64> {
        debug_assert!(self.claiming.is_none(), "one claim at a time");
        self.claiming = Some(self.gate.claim_started());
        self.exclude()
    }

    /// The claim returned, with the chains to publish (none if it failed or the relay is
    /// draining: those rows stay committed). Each chain is admitted in claim order: it is
    /// ready at once, waits behind the chain of its key in flight, or goes back (see
    /// [`KeyGate`]). Chains of a destination in `held_back` go back too: it may have timed
    /// out since the claim began.
    pub(super) fn claimed(&mut self, chains: Vec<Vec<OutboxMessage>>, held_back: &[String]) {
        let number = self.claiming.take().expect("a claim was running");
        self.gate.claim_done(number);
        let batch = self.batches.open();
        for chain in chains {
            if held_back.contains(&chain[0].destination) {
                continue;
            }
            self.in_hand.extend(chain.iter().map(|m| m.id));
            self.batches.chain_admitted(batch);
            let key = key_of(&chain[0]);
            match self.gate.admit(key.as_ref(), Queued { batch, chain }) {
                Admitted::Start(queued) => self.ready.push_back(queued),
                Admitted::Queued => {}
                Admitted::Dropped(queued) => self.release(queued),
            }
        }
    }

    /// The next admitted chain to start, in claim order.
    pub(super) fn next_chain(&mut self) -> Option<Queued> {
        self.ready.pop_front()
    }

    /// A chain ended: its unattempted rows go back at once, its outcomes wait for an update,
    /// and the next chain of its key, if one waits, is ready.
    pub(super) fn chain_ended(&mut self, ended: Ended) {
        let Ended {
            batch,
            key,
            end,
            outcomes,
            unattempted,
        } = ended;
        for id in unattempted {
            self.in_hand.remove(&id);
        }
        self.unrecorded.extend(outcomes);
        self.batches.chain_done(batch);
        let (next, dropped) = self.gate.ended(key.as_ref(), end);
        if let (ChainEnd::Failed, Some(key)) = (end, key) {
            self.failed_keys.push(key);
        }
        if let Some(queued) = dropped {
            self.release(queued);
        }
        if let Some(queued) = next {
            self.ready.push_back(queued);
        }
    }

    /// How many outcomes wait for an update.
    pub(super) fn unrecorded(&self) -> usize {
        self.unrecorded.len()
    }

    /// Hands every outcome waiting to a new update (one at a time); their rows stay in hand
    /// until [`Self::recorded`].
    pub(super) fn take_outcomes(&mut self) -> Vec<Recordable> {
        debug_assert!(self.recording.is_none(), "one outcome update at a time");
        let outcomes = std::mem::take(&mut self.unrecorded);
        self.recording = Some(Recording {
            ids: outcomes.iter().map(|(id, _, _)| *id).collect(),
            failed_keys: std::mem::take(&mut self.failed_keys),
        });
        outcomes
    }

    /// The update finished (or gave up at shutdown): its rows leave the hand and the keys its
    /// failures stopped are free for claims started from now on.
    pub(super) fn recorded(&mut self) {
        let done = self.recording.take().expect("an update was running");
        for id in &done.ids {
            self.in_hand.remove(id);
        }
        for key in &done.failed_keys {
            self.gate.failure_recorded(key);
        }
    }

    /// The shutdown grace ran out: no chain waiting starts any more. Their rows stay
    /// committed and are sent again later.
    pub(super) fn grace_over(&mut self) {
        self.ready.clear();
    }

    /// Gives a chain's rows back unpublished: they stay committed for a later claim.
    fn release(&mut self, queued: Queued) {
        for m in &queued.chain {
            self.in_hand.remove(&m.id);
        }
        self.batches.chain_done(queued.batch);
    }
}

/// Claims whose chains are not all answered yet, for the batch duration histogram.
#[derive(Debug, Default)]
struct Batches {
    next: u64,
    open: HashMap<u64, (std::time::Instant, usize)>,
}

impl Batches {
    fn open(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    fn chain_admitted(&mut self, batch: u64) {
        self.open
            .entry(batch)
            .or_insert_with(|| (std::time::Instant::now(), 0))
            .1 += 1;
    }

    fn chain_done(&mut self, batch: u64) {
        let Some((started, chains)) = self.open.get_mut(&batch) else {
            return;
        };
        *chains -= 1;
        if *chains == 0 {
            metrics::histogram!(instruments::BATCH_SECONDS).record(started.elapsed().as_secs_f64());
            self.open.remove(&batch);
        }
    }
}
