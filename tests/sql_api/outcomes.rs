//! Outcome updates: marking and delete on publish.

use super::*;

/// Delete on publish: confirmed rows are deleted, failures recorded as retries or dead in the
/// same call, and a row an operator changed meanwhile (no longer committed) is left alone.
#[tokio::test]
async fn delete_on_publish_deletes_confirmed_rows_and_records_failures() {
    use outbox_relay::store::{self, MessageStatus, OnPublished, Outcome};
    let db = TestDb::new().await;
    let batch = claimed_with_the_last_discarded(&db, 4).await;
    let token = take_lease(&db).await;
    let recorded = store::record_outcomes(
        &db.pool,
        me(token),
        &[
            (batch[0].id, Outcome::Published),
            (batch[1].id, failed(false)),
            (batch[2].id, failed(true)),
            (batch[3].id, Outcome::Published),
        ],
        10,
        OnPublished::Delete,
    )
    .await
    .unwrap();
    let mut got: Vec<_> = recorded.iter().map(|r| (r.id, r.status)).collect();
    got.sort_by_key(|(id, _)| *id);
    assert_eq!(
        got,
        [
            (batch[0].id, MessageStatus::Published),
            (batch[1].id, MessageStatus::Committed),
            (batch[2].id, MessageStatus::Dead),
        ]
    );
    let left: Vec<(i64, String, i32)> =
        sqlx::query_as("SELECT id, status::text, attempts FROM outbox.messages ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        left,
        [
            (batch[1].id.0, "committed".to_string(), 1),
            (batch[2].id.0, "dead".to_string(), 1),
            (batch[3].id.0, "dead".to_string(), 0),
        ],
        "the confirmed row is gone, the others are as recorded or as the operator left them"
    );
}

/// Marking (the default): an update of confirms only and one that also carries failures both
/// leave a confirmed row `published` with its attempt, publish and finish times, record the
/// failures, and leave alone a row an operator changed meanwhile.
#[tokio::test]
async fn marking_records_confirmed_rows_alone_or_beside_failures() {
    use outbox_relay::store::{self, MessageStatus, OnPublished, Outcome};
    let db = TestDb::new().await;
    let batch = claimed_with_the_last_discarded(&db, 5).await;
    let token = take_lease(&db).await;
    let record = |outcomes: Vec<(store::RowId, Outcome)>| {
        let pool = db.pool.clone();
        async move {
            let recorded =
                store::record_outcomes(&pool, me(token), &outcomes, 10, OnPublished::Mark)
                    .await
                    .unwrap();
            let mut got: Vec<_> = recorded.iter().map(|r| (r.id, r.status)).collect();
            got.sort_by_key(|(id, _)| *id);
            got
        }
    };
    let confirms_only = record(vec![
        (batch[0].id, Outcome::Published),
        (batch[4].id, Outcome::Published),
    ])
    .await;
    assert_eq!(confirms_only, [(batch[0].id, MessageStatus::Published)]);
    let mixed = record(vec![
        (batch[1].id, Outcome::Published),
        (batch[2].id, failed(false)),
        (batch[3].id, failed(true)),
    ])
    .await;
    assert_eq!(
        mixed,
        [
            (batch[1].id, MessageStatus::Published),
            (batch[2].id, MessageStatus::Committed),
            (batch[3].id, MessageStatus::Dead),
        ]
    );
    let rows: Vec<(String, i32, bool, bool, Option<String>)> = sqlx::query_as(
        "SELECT status::text, attempts, published_at IS NOT NULL, finished_at IS NOT NULL, last_error
           FROM outbox.messages ORDER BY id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let row = |status: &str, attempts, published, finished, error: Option<&str>| {
        (
            status.to_string(),
            attempts,
            published,
            finished,
            error.map(str::to_string),
        )
    };
    assert_eq!(
        rows,
        [
            row("published", 1, true, true, None),
            row("published", 1, true, true, None),
            row("committed", 1, false, false, Some("broker said no")),
            row("dead", 1, false, true, Some("broker said no")),
            row("dead", 0, false, true, None),
        ],
        "confirmed rows are published, failures recorded, the operator's row as it was left"
    );
}
