//! Which claimed chains may be published now: the per-key rules of the continuous pipeline.
//!
//! Claims run while earlier chains are still being published, so a claim can return rows of a
//! key that is still in flight, or of a key whose earlier row has just failed. A chain of a key
//! in flight waits behind it (one at most: a further one goes back); a chain of a key that stopped short (failure, lost lease,
//! shutdown) is dropped, and so is every chain of that key from claims that may not have seen
//! the stop, until a claim started after the key's rows were back in the database. Dropped
//! rows stay `committed` and come back, in order, with a later claim.

use std::collections::HashMap;

/// A `(destination, message_key)` pair: the unit of ordering.
pub type Key = (String, String);

/// How a chain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainEnd {
    /// Every message was confirmed.
    Finished,
    /// Shutdown or a lost lease: the rest was not attempted and is back in the database as it
    /// was.
    Stopped,
    /// A message failed; its failure, still to be recorded, holds the rest of the key back.
    Failed,
}

/// What to do with a claimed chain.
#[derive(Debug, PartialEq, Eq)]
pub enum Admitted<C> {
    Start(C),
    /// Waits behind the chain of its key in flight.
    Queued,
    /// The key stopped short since the claim began, or a chain of it is waiting already: the
    /// rows go back.
    Dropped(C),
}

#[derive(Debug)]
pub struct KeyGate<C> {
    /// Keys with a chain in flight, and the one chain that may wait behind it.
    busy: HashMap<Key, Option<C>>,
    /// Keys that stopped short. `None` while the failure is not recorded yet; `Some(n)` once
    /// it is, or once the rows were given back: claims numbered above `n` started afterwards
    /// and saw it.
    stopped: HashMap<Key, Option<u64>>,
    claims_started: u64,
}

impl<C> Default for KeyGate<C> {
    fn default() -> Self {
        Self {
            busy: HashMap::new(),
            stopped: HashMap::new(),
            claims_started: 0,
        }
    }
}

impl<C> KeyGate<C> {
    /// Numbers a claim about to start; pass the number to [`Self::claim_done`] when it returns.
    pub fn claim_started(&mut self) -> u64 {
        self.claims_started += 1;
        self.claims_started
    }

    /// A claim returned: keys whose stop it saw are free again.
    pub fn claim_done(&mut self, claim: u64) {
        self.stopped
            .retain(|_, seen_after| seen_after.is_none_or(|n| claim <= n));
    }

    /// Decides for one chain of the claim last passed to [`Self::claim_done`]; keyless chains
    /// always start.
    pub fn admit(&mut self, key: Option<&Key>, chain: C) -> Admitted<C> {
        let Some(key) = key else {
            return Admitted::Start(chain);
        };
        if self.stopped.contains_key(key) {
            return Admitted::Dropped(chain);
        }
        match self.busy.get_mut(key) {
            // One chain waits per key at most: with a backlog of one key, every claim brings
            // another share of it, and queueing them all would fill the pipeline with that key
            // and stop the claims that bring the other keys' rows.
            Some(Some(_)) => Admitted::Dropped(chain),
            Some(waiting) => {
                *waiting = Some(chain);
                Admitted::Queued
            }
            None => {
                self.busy.insert(key.clone(), None);
                Admitted::Start(chain)
            }
        }
    }

    /// A chain ended. Returns the chain of the same key to start next, if any, and the chain
    /// that was waiting behind one that stopped short, to give back.
    pub fn ended(&mut self, key: Option<&Key>, end: ChainEnd) -> (Option<C>, Option<C>) {
        let Some(key) = key else {
            return (None, None);
        };
        if end == ChainEnd::Finished {
            if let Some(next) = self.busy.get_mut(key).and_then(Option::take) {
                return (Some(next), None);
            }
            self.busy.remove(key);
            return (None, None);
        }
        let dropped = self.busy.remove(key).flatten();
        let seen_after = match end {
            ChainEnd::Failed => None,
            _ => Some(self.claims_started),
        };
        self.stopped.insert(key.clone(), seen_after);
        (None, dropped)
    }

    /// The failure that stopped `key` is in the database: claims started from now on see it.
    pub fn failure_recorded(&mut self, key: &Key) {
        if let Some(seen_after @ None) = self.stopped.get_mut(key) {
            *seen_after = Some(self.claims_started);
        }
    }

    /// Keys stopped short whose failure is not recorded yet or not seen by a claim yet.
    #[cfg(test)]
    pub fn stopped_keys(&self) -> usize {
        self.stopped.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(name: &str) -> Key {
        ("d".into(), name.into())
    }

    /// A claim that starts and returns with nothing happening meanwhile.
    fn claim(gate: &mut KeyGate<i32>) {
        let number = gate.claim_started();
        gate.claim_done(number);
    }

    #[test]
    fn a_chain_of_a_key_in_flight_waits_and_starts_when_it_finishes() {
        let mut gate: KeyGate<i32> = KeyGate::default();
        claim(&mut gate);
        assert_eq!(gate.admit(Some(&k("a")), 1), Admitted::Start(1));
        claim(&mut gate);
        assert_eq!(gate.admit(Some(&k("a")), 2), Admitted::Queued);
        assert_eq!(gate.admit(Some(&k("b")), 3), Admitted::Start(3));
        assert_eq!(gate.admit(None, 4), Admitted::Start(4));
        assert_eq!(
            gate.ended(Some(&k("a")), ChainEnd::Finished),
            (Some(2), None)
        );
        assert_eq!(gate.ended(Some(&k("a")), ChainEnd::Finished), (None, None));
        claim(&mut gate);
        assert_eq!(gate.admit(Some(&k("a")), 5), Admitted::Start(5));
    }

    #[test]
    fn one_chain_waits_per_key_and_later_ones_go_back() {
        let mut gate: KeyGate<i32> = KeyGate::default();
        claim(&mut gate);
        assert_eq!(gate.admit(Some(&k("hot")), 1), Admitted::Start(1));
        claim(&mut gate);
        assert_eq!(gate.admit(Some(&k("hot")), 2), Admitted::Queued);
        claim(&mut gate);
        assert_eq!(gate.admit(Some(&k("hot")), 3), Admitted::Dropped(3));
        assert_eq!(gate.admit(Some(&k("cold")), 4), Admitted::Start(4));
        assert_eq!(
            gate.ended(Some(&k("hot")), ChainEnd::Finished),
            (Some(2), None)
        );
        claim(&mut gate);
        assert_eq!(gate.admit(Some(&k("hot")), 5), Admitted::Queued);
    }

    #[test]
    fn after_a_failure_the_key_waits_for_a_claim_that_started_after_it_was_recorded() {
        let mut gate: KeyGate<i32> = KeyGate::default();
        claim(&mut gate);
        assert_eq!(gate.admit(Some(&k("a")), 1), Admitted::Start(1));
        claim(&mut gate);
        assert_eq!(gate.admit(Some(&k("a")), 2), Admitted::Queued);
        // Claim 3 runs while chain 1 fails.
        let c3 = gate.claim_started();
        assert_eq!(gate.ended(Some(&k("a")), ChainEnd::Failed), (None, Some(2)));
        gate.claim_done(c3);
        assert_eq!(gate.admit(Some(&k("a")), 3), Admitted::Dropped(3));
        // Claim 4 started before the failure was recorded: it may carry later rows.
        let c4 = gate.claim_started();
        gate.failure_recorded(&k("a"));
        gate.claim_done(c4);
        assert_eq!(gate.admit(Some(&k("a")), 4), Admitted::Dropped(4));
        assert_eq!(gate.admit(Some(&k("b")), 5), Admitted::Start(5));
        claim(&mut gate);
        assert_eq!(gate.admit(Some(&k("a")), 6), Admitted::Start(6));
        assert_eq!(gate.stopped_keys(), 0);
    }

    #[test]
    fn a_stopped_key_is_free_for_the_first_claim_started_after_the_stop() {
        let mut gate: KeyGate<i32> = KeyGate::default();
        claim(&mut gate);
        assert_eq!(gate.admit(Some(&k("a")), 1), Admitted::Start(1));
        let c2 = gate.claim_started();
        assert_eq!(gate.ended(Some(&k("a")), ChainEnd::Stopped), (None, None));
        gate.claim_done(c2);
        assert_eq!(gate.admit(Some(&k("a")), 2), Admitted::Dropped(2));
        claim(&mut gate);
        assert_eq!(gate.admit(Some(&k("a")), 3), Admitted::Start(3));
    }

    #[test]
    fn a_failure_never_recorded_keeps_the_key_back() {
        let mut gate: KeyGate<i32> = KeyGate::default();
        claim(&mut gate);
        gate.admit(Some(&k("a")), 1);
        gate.ended(Some(&k("a")), ChainEnd::Failed);
        for _ in 0..3 {
            claim(&mut gate);
            assert_eq!(gate.admit(Some(&k("a")), 2), Admitted::Dropped(2));
        }
    }
}
