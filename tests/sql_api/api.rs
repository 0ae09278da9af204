//! The SQL API writers call, the schema check, the lease, and what each function may change.

use super::*;

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
    let prepared = db.prepare("d", None, json!({})).await;
    let later = db.enqueue("d", None, json!({})).await;
    assert!(db.commit(prepared).await);
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
    let prep = |ttl| db.prepare_with_ttl("d", None, json!({}), ttl);

    let a = prep("5 minutes").await;
    assert_eq!(db.status(a).await, "prepared");
    assert!(db.commit(a).await);
    assert_eq!(db.status(a).await, "committed");
    assert!(!db.commit(a).await, "second commit is not a transition");
    assert!(
        !db.rollback(a).await,
        "a committed message cannot be rolled back"
    );

    let b = prep("5 minutes").await;
    assert!(db.rollback(b).await);
    assert_eq!(db.status(b).await, "rolled_back");
    assert!(
        !db.commit(b).await,
        "a rolled back message cannot be committed"
    );

    // An expired prepared row cannot be committed even before the sweeper ran.
    let c = prep("1 millisecond").await;
    sqlx::query("SELECT pg_sleep(0.01)")
        .execute(&db.pool)
        .await
        .unwrap();
    assert!(!db.commit(c).await);
    assert_eq!(db.status(c).await, "prepared");

    assert!(!db.commit(Uuid::new_v4()).await, "unknown id");
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
async fn lease_has_one_holder_and_a_new_token_on_takeover() {
    use outbox_relay::store::{self, ClaimArgs, LeaseRef};
    let db = TestDb::new().await;
    db.enqueue("d", None, json!({})).await;
    let ttl = Duration::from_millis(300);
    let a = store::acquire_lease(&db.pool, "l", "a", ttl)
        .await
        .unwrap()
        .expect("a gets it")
        .token;
    assert_eq!(
        store::acquire_lease(&db.pool, "l", "b", ttl).await.unwrap(),
        None,
        "b must wait"
    );
    assert_eq!(
        store::acquire_lease(&db.pool, "l", "a", ttl)
            .await
            .unwrap()
            .map(|l| l.token),
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
        .expect("b takes over")
        .token;
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
    let expired = db
        .prepare_with_ttl("d", None, json!({}), "1 millisecond")
        .await;
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
    let prepared = db.prepare("d", None, json!({})).await;
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
