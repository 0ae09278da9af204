//! Unit tests of the loop's parts: pacing, outcome timing, chains.

use super::pacing::{BUSY_POLL, FENCE_RECHECK};
use super::*;
use chrono::Utc;
use uuid::Uuid;

fn msg(id: i64, dest: &str, key: Option<&str>) -> OutboxMessage {
    OutboxMessage {
        id: RowId(id),
        message_id: Uuid::new_v4(),
        destination: dest.into(),
        routing_key: None,
        message_key: key.map(Into::into),
        payload: vec![],
        content_type: "application/json".into(),
        headers: serde_json::json!({}),
        commit_seq: id,
        committed_at: Utc::now(),
        attempts: 0,
    }
}

#[test]
fn polling_is_immediate_after_a_full_batch_fast_while_busy_and_slow_when_idle() {
    let poll = Duration::from_millis(100);
    let mut p = Pacing::default();
    let (backlog, caught_up) = (Found::Backlog, Found::CaughtUp);
    assert_eq!(p.next_wait(500, backlog, poll, false), None);
    assert_eq!(p.next_wait(3, caught_up, poll, false), Some(BUSY_POLL));
    let idle: Vec<_> = (0..8)
        .map(|_| p.next_wait(0, caught_up, poll, false))
        .collect();
    assert_eq!(idle[0], Some(Duration::from_millis(2)));
    assert_eq!(idle[1], Some(Duration::from_millis(4)));
    assert_eq!(idle[7], Some(poll));
    assert_eq!(p.next_wait(0, caught_up, poll, true), Some(FENCE_RECHECK));
    assert_eq!(p.next_wait(1, caught_up, poll, false), Some(BUSY_POLL));
}

#[test]
fn outcomes_are_written_at_half_a_batch_after_the_delay_or_at_shutdown() {
    let now = tokio::time::Instant::now();
    let later = Some(now + RECORD_DELAY);
    assert!(!record_due(0, 500, None, now, true), "nothing to write");
    assert!(!record_due(1, 500, later, now, false), "waits for more");
    assert!(!record_due(249, 500, later, now, false), "waits for more");
    assert!(record_due(250, 500, later, now, false), "half a batch");
    assert!(
        record_due(1, 500, later, now + RECORD_DELAY, false),
        "waited long enough"
    );
    assert!(record_due(1, 500, later, now, true), "shutting down");
}

#[test]
fn a_full_batch_or_a_key_cut_to_its_share_means_a_backlog() {
    let chain = |key: &str, n: i64| -> Vec<OutboxMessage> {
        (0..n).map(|i| msg(i, "d", Some(key))).collect()
    };
    let few = vec![chain("a", 3), chain("b", 2)];
    assert_eq!(Found::of(&few, 5, 500), Found::CaughtUp);
    assert_eq!(Found::of(&few, 5, 5), Found::Backlog);
    let cut = vec![chain("hot", KEY_SHARE as i64), chain("b", 1)];
    assert_eq!(Found::of(&cut, KEY_SHARE + 1, 500), Found::Backlog);
}

#[test]
fn cut_keeps_the_first_rows_of_each_key_and_every_keyless_row() {
    let batch = vec![
        msg(1, "a", Some("k")),
        msg(2, "a", None),
        msg(3, "b", Some("k")),
        msg(4, "a", Some("k")),
        msg(5, "a", Some("k")),
        msg(6, "a", None),
        msg(7, "b", Some("k")),
    ];
    let mut chains = into_chains(batch);
    assert_eq!(chains[0].len(), 3, "a/k has three rows");
    cut_chains(&mut chains, 2);
    let mut ids: Vec<i64> = chains.iter().flatten().map(|m| m.id.0).collect();
    ids.sort();
    assert_eq!(ids, vec![1, 2, 3, 4, 6, 7]);
}

#[test]
fn chains_group_by_destination_and_key_in_order() {
    let batch = vec![
        msg(1, "a", Some("k")),
        msg(2, "a", None),
        msg(3, "b", Some("k")),
        msg(4, "a", Some("k")),
        msg(5, "a", None),
    ];
    let chains: Vec<Vec<i64>> = into_chains(batch)
        .into_iter()
        .map(|c| c.into_iter().map(|m| m.id.0).collect())
        .collect();
    assert_eq!(chains, vec![vec![1, 4], vec![2], vec![3], vec![5]]);
}
