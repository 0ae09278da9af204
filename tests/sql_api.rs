//! The SQL API and schema contract, against a real Postgres.

mod common;

use common::TestDb;
use serde_json::json;
use sqlx::Row;
use std::time::Duration;
use uuid::Uuid;

#[tokio::test]
async fn plain_insert_is_a_committed_publishable_message() {
    let db = TestDb::new().await;
    let row = sqlx::query(
        "INSERT INTO outbox.messages (destination, payload) VALUES ('orders', '\\x7b7d')
         RETURNING status::text, commit_seq, committed_at, message_id, available_at",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(row.get::<String, _>("status"), "committed");
    assert!(row.get::<Option<i64>, _>("commit_seq").is_some());
    assert!(row
        .get::<Option<chrono::DateTime<chrono::Utc>>, _>("committed_at")
        .is_some());
    assert!(!row.get::<Uuid, _>("message_id").is_nil());
}

#[tokio::test]
async fn commit_seq_follows_the_order_rows_become_committed() {
    let db = TestDb::new().await;
    let prepared: Uuid = sqlx::query_scalar("SELECT outbox.prepare('d', '{}')")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let later = db.enqueue("d", None, json!({})).await;
    let committed: bool = sqlx::query_scalar("SELECT outbox.commit($1)")
        .bind(prepared)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(committed);
    let seq = |id: Uuid| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT commit_seq FROM outbox.messages WHERE message_id = $1",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    assert!(
        seq(prepared).await > seq(later).await,
        "commit_seq is taken at commit, not at prepare"
    );
}

#[tokio::test]
async fn enqueue_stores_payload_headers_and_delay() {
    let db = TestDb::new().await;
    let id: Uuid = sqlx::query_scalar(
        "SELECT outbox.enqueue(destination => 'orders', payload => '{\"a\":1}', message_key => 'k',
                               routing_key => 'rk', headers => '{\"h\":\"v\"}',
                               deliver_at => now() + interval '1 hour')",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let row = sqlx::query(
        "SELECT status::text, payload, message_key, routing_key, headers,
                available_at > now() + interval '59 minutes' AS delayed
           FROM outbox.messages WHERE message_id = $1",
    )
    .bind(id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(row.get::<String, _>("status"), "committed");
    let payload: serde_json::Value =
        serde_json::from_slice(&row.get::<Vec<u8>, _>("payload")).unwrap();
    assert_eq!(payload, json!({"a": 1}));
    assert_eq!(row.get::<String, _>("message_key"), "k");
    assert_eq!(row.get::<String, _>("routing_key"), "rk");
    assert_eq!(
        row.get::<serde_json::Value, _>("headers"),
        json!({"h": "v"})
    );
    assert!(row.get::<bool, _>("delayed"));
}

#[tokio::test]
async fn prepare_commit_and_rollback_transitions() {
    let db = TestDb::new().await;
    let prep = |ttl: &'static str| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, Uuid>("SELECT outbox.prepare('d', '{}', ttl => $1::interval)")
                .bind(ttl)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let call = |f: &'static str, id: Uuid| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, bool>(sqlx::AssertSqlSafe(format!("SELECT outbox.{f}($1)")))
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };

    let a = prep("5 minutes").await;
    assert_eq!(db.status(a).await, "prepared");
    assert!(call("commit", a).await);
    assert_eq!(db.status(a).await, "committed");
    assert!(
        !call("commit", a).await,
        "second commit is not a transition"
    );
    assert!(
        !call("rollback", a).await,
        "a committed message cannot be rolled back"
    );

    let b = prep("5 minutes").await;
    assert!(call("rollback", b).await);
    assert_eq!(db.status(b).await, "rolled_back");
    assert!(
        !call("commit", b).await,
        "a rolled back message cannot be committed"
    );

    // An expired prepared row cannot be committed even before the sweeper ran.
    let c = prep("1 millisecond").await;
    sqlx::query("SELECT pg_sleep(0.01)")
        .execute(&db.pool)
        .await
        .unwrap();
    assert!(!call("commit", c).await);
    assert_eq!(db.status(c).await, "prepared");

    assert!(!call("commit", Uuid::new_v4()).await, "unknown id");
}

#[tokio::test]
async fn bad_arguments_raise_and_insert_nothing() {
    let db = TestDb::new().await;
    let cases = [
        ("SELECT outbox.enqueue('', '{}')", "destination"),
        ("SELECT outbox.enqueue(NULL, '{}')", "destination"),
        ("SELECT outbox.enqueue('d', NULL)", "payload"),
        (
            "SELECT outbox.enqueue('d', '{}', headers => '[1]')",
            "headers must be a JSON object",
        ),
        (
            "SELECT outbox.enqueue('d', '{}', headers => '{\"a\": 1}')",
            "header \"a\" must be a string",
        ),
        ("SELECT outbox.prepare('', '{}')", "destination"),
        (
            "SELECT outbox.prepare('d', '{}', headers => '\"x\"')",
            "headers must be a JSON object",
        ),
        (
            "SELECT outbox.prepare('d', '{}', ttl => '-1 minute')",
            "ttl must be a positive interval",
        ),
        (
            "SELECT outbox.prepare('d', '{}', ttl => '0')",
            "ttl must be a positive interval",
        ),
        (
            "SELECT outbox.prepare('d', '{}', ttl => NULL)",
            "ttl must be a positive interval",
        ),
        ("SELECT outbox.prepare(NULL, '{}')", "destination"),
        ("SELECT outbox.prepare('d', NULL)", "payload"),
        (
            "SELECT outbox.enqueue('d', '{}', headers => NULL)",
            "headers must be a JSON object of string values, got null",
        ),
        (
            "SELECT outbox.prepare('d', '{}', headers => NULL)",
            "headers must be a JSON object of string values, got null",
        ),
        (
            "SELECT outbox.enqueue('d', '{}', headers => '{\"a\": {\"b\": \"c\"}}')",
            "header \"a\" must be a string",
        ),
        (
            "SELECT outbox.prepare('d', '{}', headers => '{\"a\": true}')",
            "header \"a\" must be a string",
        ),
        (
            "SELECT outbox.prepare('d', '{}', headers => '[\"a\"]')",
            "headers must be a JSON object",
        ),
    ];
    for (sql, expected) in cases {
        let err = sqlx::query(sql).execute(&db.pool).await.expect_err(sql);
        let db_err = err.as_database_error().expect("a database error");
        assert!(
            db_err.message().contains(expected),
            "{sql}: {}",
            db_err.message()
        );
        assert_eq!(db_err.code().as_deref(), Some("22023"), "{sql}");
    }
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox.messages")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(total, 0);
}

#[tokio::test]
async fn migrate_is_idempotent() {
    let db = TestDb::new().await;
    outbox_relay::store::migrate(&db.pool).await.unwrap();
    outbox_relay::store::check_schema(&db.pool).await.unwrap();
}

/// The README's upgrade rule, "migrate first": a relay does not start on a schema that lacks
/// its latest migration (such as 0007's time-ordered ids), and says to run `migrate`.
#[tokio::test]
async fn check_schema_refuses_a_schema_without_the_latest_migration() {
    use outbox_relay::store::{self, StoreError};
    let db = TestDb::new().await;
    let latest: i64 =
        sqlx::query_scalar("SELECT max(version) FROM outbox._sqlx_migrations WHERE success")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    // As a database migrated by the relay before: the latest migration not applied.
    sqlx::query("DELETE FROM outbox._sqlx_migrations WHERE version = $1")
        .bind(latest)
        .execute(&db.pool)
        .await
        .unwrap();
    let err = store::check_schema(&db.pool)
        .await
        .expect_err("older schema");
    assert!(matches!(err, StoreError::SchemaMissing(_)), "{err:?}");
    let shown = err.to_string();
    assert!(
        shown.contains("outbox-relay migrate") && shown.contains(&format!("needs {latest}")),
        "{shown}"
    );
}

#[tokio::test]
async fn claims_are_index_scans_over_pending_rows_only() {
    let db = TestDb::new().await;
    sqlx::query(
        "INSERT INTO outbox.messages (destination, message_key, payload)
         SELECT 'd', 'k' || (g % 100), '\\x00' FROM generate_series(1, 50000) g",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query("UPDATE outbox.messages SET status = 'published' WHERE id > 20")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("ANALYZE outbox.messages")
        .execute(&db.pool)
        .await
        .unwrap();
    // Both claims share $1 to $8; the second adds the rows and keys already claimed.
    let shared = [
        "1000000",
        "500",
        "'l'",
        "'me'",
        "1",
        "'{}'::bigint[]",
        "'{}'::text[]",
        "5",
    ];
    let other_keys = ["10", "'{d}'::text[]", "'{k1}'::text[]", "20000"];
    // The main claim's per-key check looks only at delayed rows, not at every pending row of
    // the key (the second statement's added clause needs the key's pending rows).
    let statements = [
        (
            "claim",
            include_str!("../src/store/sql/claim.sql"),
            &[][..],
            Some("messages_delayed_key_idx"),
        ),
        (
            "claim_other_keys",
            include_str!("../src/store/sql/claim_other_keys.sql"),
            &other_keys[..],
            None,
        ),
    ];
    for (name, sql, extra, per_key_index) in statements {
        let args: Vec<&str> = shared.iter().chain(extra).copied().collect();
        let text = explain(&db.pool, "FORMAT JSON", sql, &args)
            .await
            .to_string();
        assert!(
            text.contains("messages_pending_idx"),
            "{name} must use the pending index: {text}"
        );
        assert!(
            !text.contains("\"Seq Scan\""),
            "{name} must not scan the table: {text}"
        );
        if let Some(index) = per_key_index {
            assert!(
                text.contains(index) && !text.contains("messages_pending_key_idx"),
                "{name}'s per-key check must use {index} only: {text}"
            );
        }
    }
}

/// The claims leave out every row in hand (up to a few thousand ids). The relay's sessions use
/// generic plans, where `id <> ALL ($6)` walks the whole array for every row the scan passes:
/// that cost about 15 ms per claim of 500 rows with 2,000 rows in hand, and a third of
/// Postgres' CPU in the Kafka drain (docs/performance.md). A hashed subplan looks each row up
/// once.
#[tokio::test]
async fn claims_look_up_the_rows_in_hand_by_hash_under_the_relays_plans() {
    let db = TestDb::new().await;
    let pool = relay_session(&db).await;
    let mut conn = pool.acquire().await.unwrap();
    let in_hand = "'{1,2,3,4,5,6,7,8,9,10,11,12}'::bigint[]";
    let statements = [
        (
            "claim",
            include_str!("../src/store/sql/claim.sql"),
            format!("1000000, 500, 'l', 'me', 1, {in_hand}, '{{}}'::text[], 5"),
        ),
        (
            "claim_other_keys",
            include_str!("../src/store/sql/claim_other_keys.sql"),
            format!(
                "1000000, 500, 'l', 'me', 1, {in_hand}, '{{}}'::text[], 5, 10, '{{d}}'::text[], '{{k1}}'::text[], 20000"
            ),
        ),
    ];
    for (name, sql, args) in statements {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("PREPARE {name} AS {sql}")))
            .execute(&mut *conn)
            .await
            .unwrap();
        let plan: serde_json::Value = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "EXPLAIN (FORMAT JSON) EXECUTE {name}({args})"
        )))
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        let text = plan.to_string();
        assert!(
            text.contains("hashed SubPlan") && !text.contains("id <> ALL"),
            "{name} must look the rows in hand up by hash: {text}"
        );
    }
}

/// A row that was never delayed is due from its commit on. Were it judged by the clock alone, a
/// database clock that stepped back behind its committed_at would leave it unclaimed while the
/// per-key check (which only sees delayed rows) let its key's later rows go ahead. A retry's
/// backoff must hold in that case too.
#[tokio::test]
async fn a_row_due_at_commit_goes_first_even_when_the_clock_is_behind_it() {
    use outbox_relay::store;
    let db = TestDb::new().await;
    let first = db.enqueue("d", Some("k"), json!({})).await;
    // As if the clock had stepped back an hour since the commit.
    sqlx::query(
        "UPDATE outbox.messages
            SET committed_at = now() + interval '1 hour', available_at = now() + interval '1 hour'
          WHERE message_id = $1",
    )
    .bind(first)
    .execute(&db.pool)
    .await
    .unwrap();
    let second = db.enqueue("d", Some("k"), json!({})).await;
    // A delayed row still holds its key back.
    let delayed: Uuid = sqlx::query_scalar(
        "SELECT outbox.enqueue('d', '{}', message_key => 'j', deliver_at => now() + interval '1 hour')",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let behind_delayed = db.enqueue("d", Some("j"), json!({})).await;

    let token = take_lease(&db).await;
    let batch = store::claim(&db.pool, &claim_args(i64::MAX, 10, token))
        .await
        .unwrap();
    let got: Vec<Uuid> = batch.iter().map(|m| m.message_id).collect();
    assert_eq!(
        got,
        [first, second],
        "delayed: {delayed}, behind it: {behind_delayed}"
    );
    // The second statement applies the same rule.
    let others = store::claim_other_keys(
        &db.pool,
        &claim_args(i64::MAX, 10, token),
        store::OtherKeys {
            after_seq: 0,
            claimed: &[],
            lookahead: 1000,
        },
    )
    .await
    .unwrap();
    let got: Vec<Uuid> = others.iter().map(|m| m.message_id).collect();
    assert_eq!(got, [first, second]);

    // A failed attempt backs off from committed_at at the earliest, so the row stays delayed
    // (and holds its key back) although the clock is behind it.
    store::record_outcomes(
        &db.pool,
        &[(batch[0].id, failed(false))],
        10,
        store::OnPublished::Mark,
    )
    .await
    .unwrap();
    let batch = store::claim(&db.pool, &claim_args(i64::MAX, 10, token))
        .await
        .unwrap();
    assert!(
        batch.is_empty(),
        "the failed row waits for its backoff and its key behind it: {batch:?}"
    );
}

/// Delete on publish: confirmed rows are deleted, failures recorded as retries or dead in the
/// same call, and a row an operator changed meanwhile (no longer committed) is left alone.
#[tokio::test]
async fn delete_on_publish_deletes_confirmed_rows_and_records_failures() {
    use outbox_relay::store::{self, MessageStatus, OnPublished, Outcome};
    let db = TestDb::new().await;
    let batch = claimed_with_the_last_discarded(&db, 4).await;
    let recorded = store::record_outcomes(
        &db.pool,
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
    let record = |outcomes: Vec<(store::RowId, Outcome)>| {
        let pool = db.pool.clone();
        async move {
            let recorded = store::record_outcomes(&pool, &outcomes, 10, OnPublished::Mark)
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

/// `claim_other_keys` runs after `claim`: a row that was not due for `claim` may be due by
/// then, and its key's later rows must still wait for it.
#[tokio::test]
async fn claim_of_other_keys_keeps_each_key_behind_rows_the_first_claim_left() {
    use outbox_relay::store::{self, OtherKeys};
    let db = TestDb::new().await;
    let enqueue = |destination: &'static str, key: &'static str, delay: &'static str| {
        let pool = db.pool.clone();
        async move {
            let id: Uuid = sqlx::query_scalar(
                "SELECT outbox.enqueue($1, '{}', message_key => $2, deliver_at => now() + $3::interval)",
            )
            .bind(destination)
            .bind(key)
            .bind(delay)
            .fetch_one(&pool)
            .await
            .unwrap();
            id
        }
    };
    let late = enqueue("d", "late", "1 hour").await; // not due when `claim` runs
    let recorded = enqueue("d", "recorded", "0").await;
    for _ in 0..10 {
        enqueue("d", "hot", "0").await;
    }
    let behind_late = enqueue("d", "late", "0").await;
    let behind_recorded = enqueue("d", "recorded", "0").await;
    let held_back = enqueue("slow", "s", "0").await;
    let fresh = enqueue("d", "fresh", "0").await;
    let more_hot = enqueue("d", "hot", "0").await;

    let token = take_lease(&db).await;
    let batch = store::claim(&db.pool, &claim_args(i64::MAX, 11, token))
        .await
        .unwrap();
    let keys: Vec<&str> = batch
        .iter()
        .map(|m| m.message_key.as_deref().unwrap())
        .collect();
    assert_eq!(keys, [&["recorded"][..], &["hot"; 10]].concat());
    // Meanwhile the delayed row became due, and the first row of `recorded` was confirmed
    // and is being recorded.
    sqlx::query("UPDATE outbox.messages SET available_at = now() WHERE message_id = $1")
        .bind(late)
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(batch[0].message_id, recorded);
    let being_recorded = [batch[0].id.0];
    let hot = batch[1..].to_vec();
    let claimed = [("d", "hot")];
    let slow = ["slow".to_string()];
    let others = store::claim_other_keys(
        &db.pool,
        &store::ClaimArgs {
            exclude: &being_recorded,
            held_back: &slow,
            ..claim_args(i64::MAX, 100, token)
        },
        OtherKeys {
            after_seq: hot.iter().map(|m| m.commit_seq).max().unwrap(),
            claimed: &claimed,
            lookahead: 1000,
        },
    )
    .await
    .unwrap();
    let got: Vec<Uuid> = others.iter().map(|m| m.message_id).collect();
    assert_eq!(
        got,
        [behind_recorded, fresh],
        "late: {late}, behind it: {behind_late}, held back: {held_back}, hot: {more_hot}"
    );
}

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

#[tokio::test]
async fn lease_has_one_holder_and_a_new_token_on_takeover() {
    use outbox_relay::store::{self, ClaimArgs, LeaseRef};
    let db = TestDb::new().await;
    db.enqueue("d", None, json!({})).await;
    let ttl = Duration::from_millis(300);
    let a = store::acquire_lease(&db.pool, "l", "a", ttl)
        .await
        .unwrap()
        .expect("a gets it");
    assert_eq!(
        store::acquire_lease(&db.pool, "l", "b", ttl).await.unwrap(),
        None,
        "b must wait"
    );
    assert_eq!(
        store::acquire_lease(&db.pool, "l", "a", ttl).await.unwrap(),
        Some(a),
        "renewal keeps the token"
    );
    let a_args = ClaimArgs {
        lease: LeaseRef {
            name: "l",
            holder: "a",
            token: a,
        },
        ..claim_args(i64::MAX, 10, a)
    };
    assert_eq!(store::claim(&db.pool, &a_args).await.unwrap().len(), 1);

    sqlx::query("SELECT pg_sleep(0.35)")
        .execute(&db.pool)
        .await
        .unwrap();
    assert!(
        store::claim(&db.pool, &a_args).await.unwrap().is_empty(),
        "an expired lease claims nothing"
    );
    let b = store::acquire_lease(&db.pool, "l", "b", ttl)
        .await
        .unwrap()
        .expect("b takes over");
    assert!(b > a, "takeover changes the token");
    assert!(store::claim(&db.pool, &a_args).await.unwrap().is_empty());
    let b_args = ClaimArgs {
        lease: LeaseRef {
            name: "l",
            holder: "b",
            token: b,
        },
        ..a_args
    };
    assert_eq!(store::claim(&db.pool, &b_args).await.unwrap().len(), 1);
    store::release_lease(&db.pool, "l", "b").await.unwrap();
    assert!(
        store::acquire_lease(&db.pool, "l", "a", ttl)
            .await
            .unwrap()
            .is_some(),
        "released at once"
    );
}

#[tokio::test]
async fn commit_rollback_and_requeue_change_nothing_they_do_not_own() {
    let db = TestDb::new().await;
    // One row in every status, plus a prepared row that has expired but was not swept yet.
    let committed = db.enqueue("d", Some("k"), serde_json::json!({})).await;
    let mut ids = vec![committed];
    for status in ["published", "dead", "rolled_back"] {
        let id: Uuid = sqlx::query_scalar(
            "INSERT INTO outbox.messages (destination, payload, status) VALUES ('d', '\\x00', $1::text::outbox.message_status) RETURNING message_id",
        )
        .bind(status)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        ids.push(id);
    }
    let expired: Uuid =
        sqlx::query_scalar("SELECT outbox.prepare('d', '{}', ttl => '1 millisecond')")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    common::wait_for(
        "the prepared row to expire",
        Duration::from_secs(5),
        || async {
            sqlx::query_scalar::<_, bool>(
                "SELECT expires_at < clock_timestamp() FROM outbox.messages WHERE message_id = $1",
            )
            .bind(expired)
            .fetch_one(&db.pool)
            .await
            .unwrap()
            .then_some(())
        },
    )
    .await;
    // Every column a transition writes, as text so that one tuple type holds them all.
    let snapshot = || async {
        sqlx::query_as::<_, (Uuid, String)>(
            "SELECT message_id,
                    concat_ws('|', status, commit_seq, attempts, committed_at, available_at,
                              expires_at, published_at, finished_at, last_error)
               FROM outbox.messages ORDER BY id",
        )
        .fetch_all(&db.pool)
        .await
        .unwrap()
    };
    let before = snapshot().await;

    let mut calls: Vec<(String, Option<Uuid>)> = Vec::new();
    for id in ids
        .iter()
        .copied()
        .chain([Uuid::new_v4()])
        .map(Some)
        .chain([None])
    {
        calls.push(("commit".into(), id));
        calls.push(("rollback".into(), id));
    }
    calls.push(("commit".into(), Some(expired)));
    for (function, id) in calls {
        let done: Option<bool> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT outbox.{function}($1)")))
                .bind(id)
                .fetch_one(&db.pool)
                .await
                .unwrap();
        assert_eq!(
            done,
            Some(false),
            "{function}({id:?}) claims to have done something"
        );
    }
    // Requeue touches dead rows only, and only those it is asked for.
    let dead = ids[2];
    let not_dead: Vec<Uuid> = ids
        .iter()
        .copied()
        .filter(|id| *id != dead)
        .chain([expired, Uuid::new_v4()])
        .collect();
    // What is asked for, `ids`, `only_destination`.
    type Requeue<'a> = (&'a str, Option<Vec<Uuid>>, Option<&'a str>);
    let requeues: [Requeue; 4] = [
        ("rows that are not dead", Some(not_dead), None),
        ("no ids", Some(Vec::new()), None),
        (
            "a dead row of another destination",
            Some(vec![dead]),
            Some("other"),
        ),
        ("all of another destination", None, Some("other")),
    ];
    for (what, ids, destination) in requeues {
        let n: i32 = sqlx::query_scalar("SELECT outbox.requeue_dead($1, $2)")
            .bind(ids)
            .bind(destination)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(n, 0, "requeue_dead of {what} requeued something");
    }
    assert_eq!(snapshot().await, before, "a refused call changed a row");
}

/// The relay's sessions run without JIT: with a backlog of some 10^5 rows the claim's cost
/// estimate crosses `jit_above_cost`, and compiling it cost more than running it, on every
/// claim (docs/performance.md).
#[tokio::test]
async fn relay_sessions_run_without_jit() {
    let db = TestDb::new().await;
    let pool = relay_session(&db).await;
    let jit: String = sqlx::query_scalar("SHOW jit")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(jit, "off");
    let plans: String = sqlx::query_scalar("SHOW plan_cache_mode")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(plans, "force_generic_plan");
    let name: String = sqlx::query_scalar("SHOW application_name")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(name, "outbox-relay");
}

/// One connection with the relay's own session settings (`store::connect_options`).
async fn relay_session(db: &TestDb) -> sqlx::PgPool {
    let options = outbox_relay::store::connect_options(&db.relay_url).unwrap();
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .unwrap()
}

/// `EXPLAIN (options)` of a statement of the store, with literal arguments for its `$n`.
async fn explain(
    pool: &sqlx::PgPool,
    options: &str,
    sql: &str,
    args: &[&str],
) -> serde_json::Value {
    let mut sql = sql.to_string();
    // Highest first, so that `$1` does not match the start of `$10`.
    for (i, arg) in args.iter().enumerate().rev() {
        sql = sql.replace(&format!("${}", i + 1), arg);
    }
    assert!(!sql.contains('$'), "a parameter is left: {sql}");
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN ({options}) {sql}")))
        .fetch_one(pool)
        .await
        .unwrap()
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

/// While another session holds an old snapshot, Postgres keeps the index entries of every
/// published row; a claim from the pending floor does not visit them, a claim from 0 visits
/// each (a heap fetch apiece). Buffer counts, not timings: deterministic for the same data.
#[tokio::test]
async fn claims_from_the_floor_skip_rows_published_under_an_open_snapshot() {
    use outbox_relay::store;
    let db = TestDb::new().await;
    db.enqueue_many("d", 1, 40_000, 100).await;
    let mut snapshot = db.pool.begin().await.unwrap();
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *snapshot)
        .await
        .unwrap();
    sqlx::query("SELECT count(*) FROM outbox.messages")
        .execute(&mut *snapshot)
        .await
        .unwrap();
    let last_published: i64 = sqlx::query_scalar(
        "WITH p AS (UPDATE outbox.messages SET status = 'published'
                     WHERE commit_seq < (SELECT min(commit_seq) + 39900 FROM outbox.messages)
                 RETURNING commit_seq)
         SELECT max(commit_seq) FROM p",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let fence = store::commit_fence(&db.pool).await.unwrap().fence_seq;
    let floor = store::pending_floor(&db.pool, 0, fence).await.unwrap();
    assert_eq!(floor, last_published + 1);

    let token = take_lease(&db).await.to_string();
    let fence = fence.to_string();
    let buffers = |floor: i64| {
        let pool = db.pool.clone();
        let (token, fence) = (token.clone(), fence.clone());
        async move {
            let floor = floor.to_string();
            let args = [
                fence.as_str(),
                "1000",
                "'l'",
                "'me'",
                token.as_str(),
                "'{}'::bigint[]",
                "'{}'::text[]",
                floor.as_str(),
            ];
            let sql = include_str!("../src/store/sql/claim.sql");
            let plan = explain(&pool, "ANALYZE, BUFFERS, FORMAT JSON", sql, &args).await;
            let top = &plan[0]["Plan"];
            assert_eq!(
                top["Actual Rows"], 100,
                "every pending row is claimed: {plan}"
            );
            top["Shared Hit Blocks"].as_i64().unwrap() + top["Shared Read Blocks"].as_i64().unwrap()
        }
    };
    let from_floor = buffers(floor).await;
    let from_zero = buffers(0).await;
    // From 0 the scan of the pending index walks the entries of the 39,900 published rows,
    // which the open snapshot keeps; from the floor it reads about two buffers per claimed row.
    assert!(
        from_floor * 4 < from_zero,
        "from the floor: {from_floor} buffers, from 0: {from_zero}"
    );
    snapshot.rollback().await.unwrap();
}

/// A message id the database generates is a version 7 UUID: it starts with the insert time in
/// milliseconds, so ids of later rows sort after those of earlier milliseconds and the entries of
/// rows written together share pages of the unique index; an id given by the application is
/// kept.
#[tokio::test]
async fn generated_message_ids_are_time_ordered_uuid_v7() {
    let db = TestDb::new().await;
    let millis = |id: Uuid| {
        let b = id.as_bytes();
        b[..6]
            .iter()
            .fold(0u64, |ms, byte| (ms << 8) | u64::from(*byte))
    };
    let before: i64 =
        sqlx::query_scalar("SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint - 1")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let first = db.enqueue("d", Some("k"), json!({})).await;
    let prepared: Uuid = sqlx::query_scalar("SELECT outbox.prepare('d', '{}')")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let after: i64 =
        sqlx::query_scalar("SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint + 1")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    for id in [first, prepared] {
        assert_eq!(id.get_version_num(), 7, "{id}");
        assert_eq!(id.as_bytes()[8] >> 6, 0b10, "RFC 9562 variant: {id}");
        let ms = millis(id) as i64;
        assert!(
            (before..=after).contains(&ms),
            "{id}: {ms} not in {before}..={after}"
        );
    }
    assert!(millis(first) <= millis(prepared), "{first} then {prepared}");

    let given = Uuid::new_v4();
    let kept: Uuid = sqlx::query_scalar(
        "INSERT INTO outbox.messages (message_id, destination, payload) VALUES ($1, 'd', '')
         RETURNING message_id",
    )
    .bind(given)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(kept, given);
}

/// `n` rows of one key claimed, and the last of them discarded by an operator while in flight.
async fn claimed_with_the_last_discarded(
    db: &TestDb,
    n: usize,
) -> Vec<outbox_relay::store::OutboxMessage> {
    for i in 0..n {
        db.enqueue("d", Some("k"), json!({ "n": i })).await;
    }
    let token = take_lease(db).await;
    let batch = outbox_relay::store::claim(&db.pool, &claim_args(i64::MAX, 10, token))
        .await
        .unwrap();
    assert_eq!(batch.len(), n);
    sqlx::query("UPDATE outbox.messages SET status = 'dead' WHERE id = $1")
        .bind(batch[n - 1].id.0)
        .execute(&db.pool)
        .await
        .unwrap();
    batch
}

/// A publish failure as the relay records it.
fn failed(permanent: bool) -> outbox_relay::store::Outcome {
    outbox_relay::store::Outcome::Failed {
        error: "broker said no".into(),
        permanent,
        backoff: Duration::from_secs(1),
    }
}

/// Takes the lease `l` as holder `me`, for tests that call the claim statements directly.
async fn take_lease(db: &TestDb) -> i64 {
    outbox_relay::store::acquire_lease(&db.pool, "l", "me", Duration::from_secs(10))
        .await
        .unwrap()
        .expect("the lease is free")
}

/// Claim arguments under `me`'s lease `token`, excluding nothing and holding nothing back.
fn claim_args(fence_seq: i64, limit: u32, token: i64) -> outbox_relay::store::ClaimArgs<'static> {
    outbox_relay::store::ClaimArgs {
        fence_seq,
        limit,
        lease: outbox_relay::store::LeaseRef {
            name: "l",
            holder: "me",
            token,
        },
        exclude: &[],
        held_back: &[],
        floor: 0,
    }
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
