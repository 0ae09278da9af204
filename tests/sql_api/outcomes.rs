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

/// The statements that update rows the relay names (outcomes, expiry, check-back answers)
/// find them by key, whatever the statistics say. Taken while nothing was pending (the partial
/// indexes analyzed empty), they once led the planner to walk a partial index, every pending or
/// prepared row, for each update: under a backlog each update cost as much as the backlog, and
/// a relay at 5,000 msg/s fell 13 to 16 s behind (docs/performance.md). Checked under the
/// relay's own session settings (generic plans) and under custom plans.
#[tokio::test]
async fn updates_find_their_rows_by_key_under_stale_statistics() {
    let db = TestDb::new().await;
    let setup = [
        "ALTER TABLE outbox.messages SET (autovacuum_enabled = false)",
        "INSERT INTO outbox.messages (destination, message_key, payload)
         SELECT 'd', 'k' || (g % 100), '\\x00' FROM generate_series(1, 2000) g",
        "UPDATE outbox.messages SET status = 'published', published_at = now(), finished_at = now()",
        "VACUUM ANALYZE outbox.messages",
        // The backlog the statistics do not know, and prepared rows, past their time.
        "INSERT INTO outbox.messages (destination, message_key, payload)
         SELECT 'd', 'k' || (g % 100), '\\x00' FROM generate_series(1, 50000) g",
        "SELECT outbox.prepare('d', '{}', ttl => '1 second') FROM generate_series(1, 20000)",
    ];
    for statement in setup {
        sqlx::query(statement).execute(&db.pool).await.unwrap();
    }
    let pending_as_analyzed: f32 = sqlx::query_scalar(
        "SELECT reltuples FROM pg_class WHERE oid = 'outbox.messages_pending_idx'::regclass",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        pending_as_analyzed, 0.0,
        "the statistics say nothing is pending"
    );

    let ids = "'{30001,30002,30003,30004,30005,30006,30007,30008}'::bigint[]";
    let message_ids = "ARRAY[gen_random_uuid(), gen_random_uuid()]";
    // Each statement, its arguments, and the index that must find its rows.
    let statements = [
        (
            "mark",
            include_str!("../../src/store/sql/mark_published.sql"),
            format!("{ids}, 'l', 'me', 1"),
            "messages_pkey",
        ),
        (
            "remove",
            include_str!("../../src/store/sql/delete_published.sql"),
            format!("{ids}, 'l', 'me', 1"),
            "messages_pkey",
        ),
        (
            "fail",
            include_str!("../../src/store/sql/record_outcomes.sql"),
            format!(
                "{ids}, array_fill('e'::text, ARRAY[8]), array_fill(false, ARRAY[8]), \
                 array_fill(0::bigint, ARRAY[8]), 10, 'l', 'me', 1"
            ),
            "messages_pkey",
        ),
        (
            "expire",
            include_str!("../../src/store/sql/expire_prepared.sql"),
            "100".to_string(),
            "messages_pkey",
        ),
        (
            "ask_later",
            include_str!("../../src/store/sql/check_back_later.sql"),
            format!("{message_ids}, ARRAY[1000, 1000]::bigint[], ARRAY['unknown', 'unknown']"),
            "messages_message_id_key",
        ),
        (
            "rolled_back",
            include_str!("../../src/store/sql/check_back_rollback.sql"),
            message_ids.to_string(),
            "messages_message_id_key",
        ),
    ];
    let pool = relay_session(&db).await;
    let mut conn = pool.acquire().await.unwrap();
    for mode in ["force_generic_plan", "force_custom_plan"] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET plan_cache_mode = {mode}")))
            .execute(&mut *conn)
            .await
            .unwrap();
        for (name, sql, args, by) in &statements {
            let text = explain_prepared(&mut conn, &format!("{name}_{mode}"), "", sql, args).await;
            // The one partial index a statement may read is the one its own batch comes from
            // (expire: the rows past their time, in a subquery).
            let walks = text.matches("messages_pending").count()
                + text.matches("messages_prepared_expiry_idx").count();
            let own = usize::from(*name == "expire");
            assert!(
                text.contains(&format!("\"{by}\""))
                    && walks == own
                    && !text.contains("\"Seq Scan\""),
                "{name} ({mode}) must find its rows through {by}: {text}"
            );
        }
    }
}

/// The purge reads the rows past retention from messages_finished_idx under the relay's
/// generic plans. With `status = $1` alone the planner could not tell that the partial index
/// holds them, and every batch of every sweep scanned the whole table.
#[tokio::test]
async fn the_purge_reads_finished_rows_from_their_index_under_generic_plans() {
    let db = TestDb::new().await;
    for statement in [
        "INSERT INTO outbox.messages (destination, message_key, payload)
         SELECT 'd', 'k' || (g % 100), '\\x00' FROM generate_series(1, 50000) g",
        "UPDATE outbox.messages SET status = 'published', published_at = now(), finished_at = now()
          WHERE id % 2 = 0",
        "ANALYZE outbox.messages",
    ] {
        sqlx::query(statement).execute(&db.pool).await.unwrap();
    }
    let pool = relay_session(&db).await;
    let mut conn = pool.acquire().await.unwrap();
    let text = explain_prepared(
        &mut conn,
        "purge",
        "(outbox.message_status, bigint, bigint)",
        include_str!("../../src/store/sql/purge.sql"),
        "'published', 0, 1000",
    )
    .await;
    assert!(
        text.contains("messages_finished_idx") && !text.contains("\"Seq Scan\""),
        "the purge must read its rows from messages_finished_idx: {text}"
    );
}
