//! The claim statements: index scans, the rows in hand, due rows, other keys, the floor, JIT.

use super::*;

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
    // Both claims share $1 to $12; the second adds the rows and keys already claimed.
    let shared = [
        "1000000",
        "500",
        "'l'",
        "'me'",
        "1",
        "'{}'::bigint[]",
        "'{}'::text[]",
        "5",
        "1",
        "0",
        "NULL",
        "NULL",
    ];
    let other_keys = ["10", "'{d}'::text[]", "'{k1}'::text[]", "20000"];
    // The main claim's per-key check looks only at delayed rows, not at every pending row of
    // the key (the second statement's added clause needs the key's pending rows).
    let statements = [
        (
            "claim",
            include_str!("../../src/store/sql/claim.sql"),
            &[][..],
            Some("messages_delayed_key_idx"),
        ),
        (
            "claim_other_keys",
            include_str!("../../src/store/sql/claim_other_keys.sql"),
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
            include_str!("../../src/store/sql/claim.sql"),
            format!("1000000, 500, 'l', 'me', 1, {in_hand}, '{{}}'::text[], 5, 1, 0, NULL, NULL"),
        ),
        (
            "claim_other_keys",
            include_str!("../../src/store/sql/claim_other_keys.sql"),
            format!(
                "1000000, 500, 'l', 'me', 1, {in_hand}, '{{}}'::text[], 5, 1, 0, NULL, NULL, 10, '{{d}}'::text[], '{{k1}}'::text[], 20000"
            ),
        ),
    ];
    for (name, sql, args) in statements {
        let text = explain_prepared(&mut conn, name, "", sql, &args).await;
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
        me(token),
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
                "1",
                "0",
                "NULL",
                "NULL",
            ];
            let sql = include_str!("../../src/store/sql/claim.sql");
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

/// The statistics of a table being filled (autovacuum analyzes it after its first few thousand
/// rows) make a backlog look a few hundred rows long. Under the relay's generic plans the claim
/// then read every pending row in its window through a bitmap and sorted them, to return the
/// first batch: 40 to 80 ms a claim over a backlog of 200,000, growing with the backlog, and
/// drains to RabbitMQ fell from about 8,000 to 2,900 msg/s (docs/performance.md). Walking the
/// pending index in commit order stops after one batch, whatever the statistics say.
#[tokio::test]
async fn a_claim_reads_one_batch_of_a_backlog_the_statistics_do_not_know() {
    let db = TestDb::new().await;
    sqlx::query("ALTER TABLE outbox.messages SET (autovacuum_enabled = false)")
        .execute(&db.pool)
        .await
        .unwrap();
    // A drain part-way through, analyzed: 80,000 rows published, 20,000 pending.
    db.enqueue_many("d", 1, 100_000, 1_000).await;
    for statement in [
        "UPDATE outbox.messages SET status = 'published', published_at = now(),
                finished_at = now()
          WHERE commit_seq < (SELECT min(commit_seq) + 80000 FROM outbox.messages)",
        "ANALYZE outbox.messages",
    ] {
        sqlx::query(statement).execute(&db.pool).await.unwrap();
    }
    let token = take_lease(&db).await;
    let pool = relay_session(&db).await;
    let mut conn = pool.acquire().await.unwrap();
    let args = format!(
        "9223372036854775807, 500, 'l', 'me', {token}, '{{}}'::bigint[], '{{}}'::text[], 0, 1, 0, \
         NULL, NULL"
    );
    let sql = include_str!("../../src/store/sql/claim.sql");
    let plan =
        explain_prepared_with(&mut conn, "ANALYZE, FORMAT JSON", "claim", "", sql, &args).await;
    assert_eq!(plan[0]["Plan"]["Actual Rows"], 500, "one batch: {plan}");
    let read = pending_index_rows(&plan[0]["Plan"]);
    assert!(
        read <= 1_000,
        "the claim read {read} entries of the pending index for a batch of 500: {plan}"
    );
}

/// Rows read from messages_pending_idx by the nodes of `plan`, over all their loops.
fn pending_index_rows(plan: &serde_json::Value) -> i64 {
    let own = if plan["Index Name"] == "messages_pending_idx" {
        plan["Actual Rows"].as_i64().unwrap_or(0) * plan["Actual Loops"].as_i64().unwrap_or(1)
    } else {
        0
    };
    let children = plan["Plans"]
        .as_array()
        .map_or(0, |plans| plans.iter().map(pending_index_rows).sum::<i64>());
    own + children
}
