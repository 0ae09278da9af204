//! Unit tests of the loop's parts: pacing, outcome timing, chains, the rows in hand.

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

fn chain(dest: &str, key: Option<&str>, ids: std::ops::RangeInclusive<i64>) -> Vec<OutboxMessage> {
    ids.map(|id| msg(id, dest, key)).collect()
}

/// One claim that returns `chains`, with no destination held back.
fn claim(p: &mut Pipeline, chains: Vec<Vec<OutboxMessage>>) {
    p.claim_started();
    p.claimed(chains, &[]);
}

/// Every chain ready to start, in the order they start.
fn start_all(p: &mut Pipeline) -> Vec<Queued> {
    std::iter::from_fn(|| p.next_chain()).collect()
}

fn ids_of(chains: &[Queued]) -> Vec<Vec<i64>> {
    chains
        .iter()
        .map(|q| q.chain.iter().map(|m| m.id.0).collect())
        .collect()
}

fn in_hand(p: &Pipeline) -> Vec<i64> {
    let mut ids = p.exclude();
    ids.sort();
    ids
}

/// What `publish_chain` returns when the first `confirmed` rows of `queued` are confirmed and
/// the chain then ends with `end`: finished, stopped before the next row, or the next row
/// failed.
fn ended(queued: Queued, confirmed: usize, end: ChainEnd) -> Ended {
    let key = key_of(&queued.chain[0]);
    let mut rows = queued.chain.into_iter();
    let mut outcomes: Vec<Recordable> = rows
        .by_ref()
        .take(confirmed)
        .map(|m| (m.id, Outcome::Published, Logged::of(&m)))
        .collect();
    if end == ChainEnd::Failed {
        let m = rows.next().expect("a row to fail");
        let failed = Outcome::Failed {
            error: "nack".into(),
            permanent: false,
            backoff: Duration::from_secs(1),
        };
        outcomes.push((m.id, failed, Logged::of(&m)));
    }
    Ended {
        batch: queued.batch,
        key,
        end,
        outcomes,
        unattempted: rows.map(|m| m.id).collect(),
    }
}

#[test]
fn a_claims_chains_start_in_claim_order_and_a_chain_of_a_key_in_flight_waits_behind_it() {
    let mut p = Pipeline::new(100);
    claim(
        &mut p,
        vec![
            chain("d", Some("k"), 1..=2),
            chain("d", None, 3..=3),
            chain("d", Some("j"), 4..=4),
        ],
    );
    let mut first = start_all(&mut p);
    assert_eq!(ids_of(&first), vec![vec![1, 2], vec![3], vec![4]]);
    claim(
        &mut p,
        vec![chain("d", Some("k"), 5..=5), chain("e", Some("k"), 6..=6)],
    );
    assert_eq!(
        ids_of(&start_all(&mut p)),
        vec![vec![6]],
        "d/k is in flight"
    );
    assert_eq!(
        in_hand(&p),
        vec![1, 2, 3, 4, 5, 6],
        "a waiting chain is in hand"
    );
    p.chain_ended(ended(first.remove(0), 2, ChainEnd::Finished));
    assert_eq!(ids_of(&start_all(&mut p)), vec![vec![5]]);
}

#[test]
fn a_chains_unattempted_rows_leave_the_hand_at_once_and_its_outcomes_once_recorded() {
    let mut p = Pipeline::new(100);
    claim(&mut p, vec![chain("d", Some("k"), 1..=4)]);
    let queued = p.next_chain().expect("ready");
    // The lease ran out after the first confirm.
    p.chain_ended(ended(queued, 1, ChainEnd::Stopped));
    assert_eq!(in_hand(&p), vec![1]);
    assert_eq!(p.unrecorded(), 1);
    let outcomes = p.take_outcomes();
    assert_eq!(outcomes.iter().map(|o| o.0).collect::<Vec<_>>(), [RowId(1)]);
    assert_eq!(p.unrecorded(), 0);
    assert_eq!(
        p.claim_started(),
        vec![1],
        "a claim leaves out rows being recorded"
    );
    p.claimed(Vec::new(), &[]);
    p.recorded();
    assert_eq!(in_hand(&p), Vec::<i64>::new());
}

#[test]
fn a_failed_chains_key_goes_to_the_update_and_is_free_only_once_recorded() {
    let mut p = Pipeline::new(100);
    claim(&mut p, vec![chain("d", Some("k"), 1..=3)]);
    let failing = p.next_chain().expect("ready");
    claim(&mut p, vec![chain("d", Some("k"), 4..=4)]);
    assert!(p.next_chain().is_none(), "waits behind 1..=3");
    // Row 1 confirmed, row 2 failed: row 3 and the chain waiting behind go back.
    p.chain_ended(ended(failing, 1, ChainEnd::Failed));
    assert_eq!(in_hand(&p), vec![1, 2]);
    assert!(p.next_chain().is_none());
    // A claim before the failure is written may bring later rows of the key: they go back.
    claim(
        &mut p,
        vec![chain("d", Some("k"), 3..=4), chain("d", Some("j"), 5..=5)],
    );
    assert_eq!(ids_of(&start_all(&mut p)), vec![vec![5]]);
    assert_eq!(in_hand(&p), vec![1, 2, 5]);
    let outcomes = p.take_outcomes();
    assert_eq!(outcomes.len(), 2);
    // A claim started while the update runs may not see it either.
    p.claim_started();
    p.recorded();
    p.claimed(vec![chain("d", Some("k"), 3..=3)], &[]);
    assert!(p.next_chain().is_none());
    assert_eq!(in_hand(&p), vec![5]);
    // The first claim started after the update sees the failure.
    claim(&mut p, vec![chain("d", Some("k"), 3..=4)]);
    assert_eq!(ids_of(&start_all(&mut p)), vec![vec![3, 4]]);
}

#[test]
fn claims_stop_at_half_a_batch_unpublished_and_at_four_batches_in_hand() {
    let mut p = Pipeline::new(4);
    assert!(p.room());
    claim(&mut p, vec![chain("d", None, 1..=1)]);
    assert!(p.room(), "one row unpublished");
    claim(&mut p, vec![chain("d", None, 2..=2)]);
    assert!(!p.room(), "half a batch unpublished");
    let mut running = start_all(&mut p);
    assert!(!p.room(), "publishing is not published");
    p.chain_ended(ended(running.remove(0), 1, ChainEnd::Finished));
    assert!(p.room(), "answered rows are not unpublished");
    p.chain_ended(ended(running.remove(0), 1, ChainEnd::Finished));
    for id in 3..=16 {
        assert!(p.room(), "{} rows in hand", id - 1);
        claim(&mut p, vec![chain("d", None, id..=id)]);
        let queued = p.next_chain().expect("ready");
        p.chain_ended(ended(queued, 1, ChainEnd::Finished));
    }
    assert!(!p.room(), "four batches in hand");
    let _ = p.take_outcomes();
    assert!(!p.room(), "in hand until recorded");
    p.recorded();
    assert!(p.room());
}

#[test]
fn chains_of_a_destination_held_back_since_the_claim_began_go_back() {
    let mut p = Pipeline::new(100);
    p.claim_started();
    p.claimed(
        vec![
            chain("slow", Some("k"), 1..=2),
            chain("fast", Some("k"), 3..=3),
        ],
        &["slow".to_string()],
    );
    assert_eq!(ids_of(&start_all(&mut p)), vec![vec![3]]);
    assert_eq!(in_hand(&p), vec![3]);
}

#[test]
fn grace_over_clears_the_chains_waiting_for_a_slot() {
    let mut p = Pipeline::new(100);
    claim(
        &mut p,
        vec![
            chain("d", Some("a"), 1..=1),
            chain("d", Some("b"), 2..=2),
            chain("d", Some("c"), 3..=3),
        ],
    );
    assert!(p.next_chain().is_some());
    p.grace_over();
    assert!(p.next_chain().is_none());
}
