//! The commit fence, the claim window and the pending floor.

use super::*;

#[tokio::test]
async fn commit_fence_waits_for_open_writers() {
    use outbox_relay::store;
    let db = TestDb::new().await;
    let first = db.enqueue("d", Some("k"), json!({})).await;
    let _ = first;
    let mut open = db.pool.begin().await.unwrap();
    sqlx::query("SELECT outbox.enqueue('d', '{}', message_key => 'k')")
        .execute(&mut *open)
        .await
        .unwrap();
    let late = db.enqueue("d", Some("k"), json!({})).await;
    let late_seq: i64 =
        sqlx::query_scalar("SELECT commit_seq FROM outbox.messages WHERE message_id = $1")
            .bind(late)
            .fetch_one(&db.pool)
            .await
            .unwrap();

    // The relay's window: the fence waits while the open writer runs, whatever else commits.
    let waiting = store::claim_window(&db.pool, &store::ClaimWindow::default())
        .await
        .unwrap();
    let fence = waiting
        .waiting
        .clone()
        .expect("a fence waits for the open writer");
    assert_eq!(fence.fence_seq, late_seq);
    assert_eq!(
        fence.writers.len(),
        1,
        "the open transaction is a writer: {fence:?}"
    );
    assert!(waiting.safe < late_seq, "{waiting:?}");
    db.enqueue("d", Some("k"), json!({})).await;
    let still = store::claim_window(&db.pool, &waiting).await.unwrap();
    assert_eq!(still, waiting, "nothing moves while the writer runs");

    // What relays of earlier versions call instead, kept by migration 0005.
    let running = |writers: Vec<String>| {
        sqlx::query_scalar::<_, bool>("SELECT outbox.fence_writers_running($1)")
            .bind(writers)
            .fetch_one(&db.pool)
    };
    assert!(running(fence.writers.clone()).await.unwrap());
    assert_eq!(
        store::commit_fence(&db.pool).await.unwrap().writers,
        fence.writers
    );

    open.commit().await.unwrap();
    assert!(!running(fence.writers.clone()).await.unwrap());
    let after = store::claim_window(&db.pool, &still).await.unwrap();
    assert_eq!(after.waiting, None);
    assert!(
        after.safe > late_seq,
        "no writer left: the fence is the last value: {after:?}"
    );
    let first_seq: i64 = sqlx::query_scalar("SELECT min(commit_seq) FROM outbox.messages")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(after.floor, first_seq, "nothing is finished yet");
    // With the fence below the late row, the claim stops before it.
    let token = take_lease(&db).await;
    let claimed = store::claim(&db.pool, &claim_args(late_seq - 1, 100, token))
        .await
        .unwrap();
    assert!(claimed.iter().all(|m| m.commit_seq < late_seq));
    assert_eq!(claimed.len(), 2);
}

/// A fence waits only for the writers that were running when it was read: once they end it
/// holds, even while newer writers run, and the next fence waits for those.
#[tokio::test]
async fn a_waiting_fence_holds_once_its_own_writers_end() {
    use outbox_relay::store;
    let db = TestDb::new().await;
    let mut old_writer = db.pool.begin().await.unwrap();
    sqlx::query("SELECT outbox.enqueue('d', '{}', message_key => 'k')")
        .execute(&mut *old_writer)
        .await
        .unwrap();
    db.enqueue("d", Some("k"), json!({})).await;
    let first = store::claim_window(&db.pool, &store::ClaimWindow::default())
        .await
        .unwrap();
    let waiting = first.waiting.clone().expect("waits for the old writer");

    let mut new_writer = db.pool.begin().await.unwrap();
    sqlx::query("SELECT outbox.enqueue('d', '{}', message_key => 'k')")
        .execute(&mut *new_writer)
        .await
        .unwrap();
    old_writer.commit().await.unwrap();
    let next = store::claim_window(&db.pool, &first).await.unwrap();
    assert_eq!(next.safe, waiting.fence_seq, "{next:?}");
    let newer = next.waiting.clone().expect("waits for the new writer");
    assert_eq!(newer.fence_seq, waiting.fence_seq + 1);
    assert_ne!(newer.writers, waiting.writers);

    new_writer.rollback().await.unwrap();
    let last = store::claim_window(&db.pool, &next).await.unwrap();
    assert_eq!((last.safe, last.waiting), (newer.fence_seq, None));
}

/// The pending floor is the oldest pending row at or below the fence: it stays on a row that
/// waits for its retry, passes the fence only once every row up to it is finished, and a
/// requeued dead row (which draws a new commit_seq) is claimed above it.
#[tokio::test]
async fn pending_floor_never_passes_a_pending_row() {
    use outbox_relay::store::{self, pending_floor};
    let db = TestDb::new().await;
    db.enqueue_many("d", 1, 6, 6).await;
    let rows: Vec<(i64, i64)> =
        sqlx::query_as("SELECT id, commit_seq FROM outbox.messages ORDER BY commit_seq")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let seq = |n: usize| rows[n - 1].1;
    let set = |n: usize, assignment: &'static str| {
        let (pool, id) = (db.pool.clone(), rows[n - 1].0);
        async move {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE outbox.messages SET {assignment} WHERE id = $1"
            )))
            .bind(id)
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    let floor = |from: i64, fence: i64| pending_floor(&db.pool, from, fence);
    assert_eq!(floor(0, seq(6)).await.unwrap(), seq(1));

    set(1, "status = 'published'").await;
    set(2, "status = 'published'").await;
    set(3, "available_at = now() + interval '1 hour'").await;
    assert_eq!(floor(0, seq(6)).await.unwrap(), seq(3));
    assert_eq!(floor(seq(1), seq(6)).await.unwrap(), seq(3));
    let token = take_lease(&db).await;
    let claimed = store::claim(
        &db.pool,
        &store::ClaimArgs {
            floor: seq(3),
            ..claim_args(seq(6), 100, token)
        },
    )
    .await
    .unwrap();
    let got: Vec<i64> = claimed.iter().map(|m| m.commit_seq).collect();
    assert_eq!(got, [seq(4), seq(5), seq(6)], "the retrying row is not due");

    // Past the fence only when every row up to the fence is finished.
    set(3, "status = 'published'").await;
    assert_eq!(floor(seq(3), seq(4)).await.unwrap(), seq(4));
    set(4, "status = 'published'").await;
    assert_eq!(floor(seq(3), seq(4)).await.unwrap(), seq(4) + 1);

    set(5, "status = 'dead'").await;
    set(6, "status = 'published'").await;
    let everything_done = floor(seq(4), seq(6)).await.unwrap();
    assert_eq!(everything_done, seq(6) + 1);
    let requeued: i32 = sqlx::query_scalar("SELECT outbox.requeue_dead(NULL)")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(requeued, 1);
    let fence = store::commit_fence(&db.pool).await.unwrap().fence_seq;
    let floor_now = floor(everything_done, fence).await.unwrap();
    assert!(floor_now >= everything_done && floor_now <= fence);
    let claimed = store::claim(
        &db.pool,
        &store::ClaimArgs {
            floor: floor_now,
            ..claim_args(fence, 100, token)
        },
    )
    .await
    .unwrap();
    assert_eq!(
        claimed.len(),
        1,
        "the requeued row is claimed above the floor"
    );
    assert_eq!(claimed[0].id.0, rows[4].0);
}

/// Writers commit while a relay-like loop advances the window and finishes every row up to the
/// fence, as the relay does once it has published them. The fence must never be ahead of the
/// values drawn so far (a fence ahead would cover rows drawn after it by writers it never saw),
/// and when the writers are done, no committed row may be left below the pending floor, where
/// no claim would look for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_never_passes_rows_of_writers_it_has_not_seen() {
    use outbox_relay::store;
    let db = TestDb::new().await;
    let relay = relay_session(&db).await;
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let pool = db.pool.clone();
            tokio::spawn(async move {
                for i in 0..250i64 {
                    sqlx::query(
                        "SELECT outbox.enqueue('d', '{}', message_key => 'k' || ($1 + g))
                           FROM generate_series(1, $2) g",
                    )
                    .bind(w * 1000 + i)
                    .bind(i % 10 + 1)
                    .execute(&pool)
                    .await
                    .unwrap();
                }
            })
        })
        .collect();
    // Read here rather than through outbox.drawn_commit_seq(): a wrong read there would move
    // the fence and this figure alike.
    let drawn = || {
        sqlx::query_scalar::<_, i64>(
            "SELECT coalesce(pg_sequence_last_value('outbox.commit_seq'), 0)",
        )
        .fetch_one(&db.pool)
    };
    let finish_up_to_fence = |window: store::ClaimWindow| {
        sqlx::query(
            "UPDATE outbox.messages SET status = 'published'
              WHERE status = 'committed' AND commit_seq BETWEEN $1 AND $2",
        )
        .bind(window.floor)
        .bind(window.safe)
        .execute(&db.pool)
    };
    let mut window = store::ClaimWindow::default();
    let mut rounds = 0u64;
    while writers.iter().any(|w| !w.is_finished()) {
        window = store::claim_window(&relay, &window).await.unwrap();
        let now = drawn().await.unwrap();
        assert!(
            window.safe <= now,
            "the fence {} is ahead of the last value drawn, {now}",
            window.safe
        );
        finish_up_to_fence(window.clone()).await.unwrap();
        rounds += 1;
    }
    for w in writers {
        w.await.unwrap();
    }
    // No writer left: the next window settles the fence, the ones after it move the floor
    // past the rows just finished.
    for _ in 0..3 {
        window = store::claim_window(&relay, &window).await.unwrap();
        finish_up_to_fence(window.clone()).await.unwrap();
    }
    let total = drawn().await.unwrap();
    assert_eq!(window.safe, total, "after {rounds} rounds");
    let stranded: Vec<i64> = sqlx::query_scalar(
        "SELECT commit_seq FROM outbox.messages WHERE status = 'committed' ORDER BY commit_seq",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(
        stranded.is_empty(),
        "rows left below the floor {}: {stranded:?}",
        window.floor
    );
}
