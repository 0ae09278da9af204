//! Chains: a batch split per key in commit order, cut to a share per key.

use std::collections::HashMap;

use super::keys::Key;
use crate::store::OutboxMessage;

/// Keeps the first `share` rows of each key's chain (in commit order); a keyless row is a
/// chain of its own and always stays.
pub(super) fn cut_chains(chains: &mut [Vec<OutboxMessage>], share: usize) {
    for chain in chains {
        chain.truncate(share);
    }
}

/// Splits a batch (in commit order) into chains: one per `(destination, message_key)` for keyed
/// rows, one per row otherwise. Each chain keeps commit order.
pub(super) fn into_chains(batch: Vec<OutboxMessage>) -> Vec<Vec<OutboxMessage>> {
    let mut chains: Vec<Vec<OutboxMessage>> = Vec::new();
    let mut by_key: HashMap<(String, String), usize> = HashMap::new();
    for message in batch {
        match &message.message_key {
            Some(key) => {
                let slot = (message.destination.clone(), key.clone());
                match by_key.get(&slot) {
                    Some(&i) => chains[i].push(message),
                    None => {
                        by_key.insert(slot, chains.len());
                        chains.push(vec![message]);
                    }
                }
            }
            None => chains.push(vec![message]),
        }
    }
    chains
}

/// The ordering key of a chain; `None` for a keyless row.
pub(super) fn key_of(head: &OutboxMessage) -> Option<Key> {
    head.message_key
        .clone()
        .map(|k| (head.destination.clone(), k))
}
