//! The writers' side (migration 0010): the `outbox_writer` role, binary payloads, status,
//! extend, and deliver_at on prepare. Every statement here runs as a member of
//! `outbox_writer` (`TestDb::writer`), as an application would.

use super::*;

/// The SQLSTATE a statement fails with, or None.
async fn code_of(pool: &sqlx::PgPool, sql: &str) -> Option<String> {
    match sqlx::query(sqlx::AssertSqlSafe(sql)).execute(pool).await {
        Ok(_) => None,
        Err(e) => e
            .as_database_error()
            .and_then(|d| d.code().map(|c| c.to_string())),
    }
}

#[tokio::test]
async fn the_writer_role_has_the_api_and_the_insert_and_nothing_else() {
    let db = TestDb::new().await;
    let w = &db.writer;
    let prepared: Uuid = sqlx::query_scalar("SELECT outbox.prepare('d', '{}', ttl => '1 hour')")
        .fetch_one(w)
        .await
        .unwrap();
    let allowed = [
        "SELECT outbox.enqueue('d', '{\"a\": 1}')".to_string(),
        "SELECT outbox.enqueue_bytes('d', '\\x00ff', 'application/octet-stream')".into(),
        "SELECT outbox.prepare_bytes('d', '\\x00', 'application/x-protobuf')".into(),
        "INSERT INTO outbox.messages (destination, payload) VALUES ('d', '\\x01')".into(),
        format!("SELECT outbox.extend('{prepared}', '2 hours')"),
        format!("SELECT * FROM outbox.status('{prepared}')"),
        format!("SELECT outbox.commit('{prepared}')"),
        format!("SELECT outbox.rollback('{prepared}')"),
    ];
    for sql in &allowed {
        assert_eq!(code_of(w, sql).await, None, "the writer may run: {sql}");
    }
    let refused = [
        "SELECT payload FROM outbox.messages".to_string(),
        "UPDATE outbox.messages SET status = 'published'".into(),
        "DELETE FROM outbox.messages".into(),
        "SELECT outbox.requeue_dead(NULL)".into(),
        format!("SELECT * FROM outbox.commit_checked(ARRAY['{prepared}'::uuid])"),
        "SELECT * FROM outbox.relay_leases".into(),
    ];
    for sql in &refused {
        assert_eq!(
            code_of(w, sql).await.as_deref(),
            Some("42501"),
            "the writer must not run: {sql}"
        );
    }
    // Deciding and extending run with the owner's rights: for writers only, not for every role
    // that can see the schema, such as the relay's.
    let relay = db.relay_pool().await;
    for sql in [
        format!("SELECT outbox.commit('{prepared}')"),
        format!("SELECT outbox.rollback('{prepared}')"),
        format!("SELECT outbox.extend('{prepared}', '1 hour')"),
        format!("SELECT * FROM outbox.status('{prepared}')"),
    ] {
        assert_eq!(
            code_of(&relay, &sql).await.as_deref(),
            Some("42501"),
            "the relay's role must not run: {sql}"
        );
    }
}

#[tokio::test]
async fn binary_payloads_keep_their_bytes_and_content_type() {
    let db = TestDb::new().await;
    let bytes: Vec<u8> = (0..=255).collect();
    let committed: Uuid = sqlx::query_scalar(
        "SELECT outbox.enqueue_bytes('d', $1, 'application/x-protobuf', message_key => 'k')",
    )
    .bind(&bytes)
    .fetch_one(&db.writer)
    .await
    .unwrap();
    let prepared: Uuid =
        sqlx::query_scalar("SELECT outbox.prepare_bytes('d', $1, 'avro/binary', producer => 'p')")
            .bind(&bytes[..3])
            .fetch_one(&db.writer)
            .await
            .unwrap();
    assert!(db.commit(prepared).await);
    let rows: Vec<(Uuid, Vec<u8>, String, String)> = sqlx::query_as(
        "SELECT message_id, payload, content_type, status::text FROM outbox.messages ORDER BY commit_seq",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![
            (
                committed,
                bytes.clone(),
                "application/x-protobuf".into(),
                "committed".into()
            ),
            (
                prepared,
                bytes[..3].to_vec(),
                "avro/binary".into(),
                "committed".into()
            ),
        ]
    );
    for (sql, expected) in [
        (
            "SELECT outbox.enqueue_bytes('d', '\\x00', '')",
            "content_type",
        ),
        (
            "SELECT outbox.enqueue_bytes('d', '\\x00', NULL)",
            "content_type",
        ),
        ("SELECT outbox.enqueue_bytes('d', NULL, 'a/b')", "payload"),
        (
            "SELECT outbox.enqueue_bytes('', '\\x00', 'a/b')",
            "destination",
        ),
        (
            "SELECT outbox.prepare_bytes('d', '\\x00', 'a/b', ttl => '0')",
            "ttl",
        ),
        (
            "SELECT outbox.prepare_bytes('d', '\\x00', 'a/b', producer => 'no spaces')",
            "producer",
        ),
    ] {
        let err = sqlx::query(sql).execute(&db.writer).await.expect_err(sql);
        let e = err.as_database_error().unwrap();
        assert_eq!(e.code().as_deref(), Some("22023"), "{sql}");
        assert!(e.message().contains(expected), "{sql}: {}", e.message());
    }
    assert_eq!(db.count("committed").await, 2, "bad calls inserted nothing");
}

#[tokio::test]
async fn positional_calls_with_untyped_payloads_still_resolve() {
    let db = TestDb::new().await;
    // The reason the binary forms have names of their own: an overload would make these
    // ambiguous.
    for sql in [
        "SELECT outbox.enqueue('d', '{\"a\": 1}', 'key')",
        "SELECT outbox.prepare('d', '{\"a\": 1}', 'key', 'route')",
    ] {
        sqlx::query(sql).execute(&db.writer).await.expect(sql);
    }
}

#[tokio::test]
async fn status_reports_a_message_and_extend_gives_a_prepared_one_more_time() {
    let db = TestDb::new().await;
    let id = db.prepare_with_ttl("d", None, json!({}), "1 minute").await;
    let (status, attempts, last_error, published_at): (
        String,
        i32,
        Option<String>,
        Option<chrono::DateTime<chrono::Utc>>,
    ) = sqlx::query_as(
        "SELECT status::text, attempts, last_error, published_at FROM outbox.status($1)",
    )
    .bind(id)
    .fetch_one(&db.writer)
    .await
    .unwrap();
    assert_eq!(
        (status.as_str(), attempts, last_error, published_at),
        ("prepared", 0, None, None)
    );
    let none: Option<String> = sqlx::query_scalar("SELECT status::text FROM outbox.status($1)")
        .bind(Uuid::new_v4())
        .fetch_optional(&db.writer)
        .await
        .unwrap();
    assert_eq!(none, None, "an unknown id has no status");

    let extended: bool = sqlx::query_scalar("SELECT outbox.extend($1, '3 hours')")
        .bind(id)
        .fetch_one(&db.writer)
        .await
        .unwrap();
    assert!(extended);
    let left: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM expires_at - now())::float8 FROM outbox.messages WHERE message_id = $1",
    )
    .bind(id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(left > 2.0 * 3600.0, "expires in {left} s");

    assert!(db.commit(id).await);
    let again: bool = sqlx::query_scalar("SELECT outbox.extend($1, '1 hour')")
        .bind(id)
        .fetch_one(&db.writer)
        .await
        .unwrap();
    assert!(!again, "only a prepared message can be extended");
    let err = sqlx::query("SELECT outbox.extend($1, '-1 hour')")
        .bind(id)
        .execute(&db.writer)
        .await
        .expect_err("a negative ttl");
    assert_eq!(
        err.as_database_error().unwrap().code().as_deref(),
        Some("22023")
    );
}

#[tokio::test]
async fn a_prepared_message_with_deliver_at_is_not_due_before_it_even_once_committed() {
    let db = TestDb::new().await;
    let later: Uuid = sqlx::query_scalar(
        "SELECT outbox.prepare('d', '{}', deliver_at => now() + interval '1 hour')",
    )
    .fetch_one(&db.writer)
    .await
    .unwrap();
    let now: Uuid = sqlx::query_scalar("SELECT outbox.prepare('d', '{}')")
        .fetch_one(&db.writer)
        .await
        .unwrap();
    assert!(db.commit(later).await && db.commit(now).await);
    let due: Vec<(Uuid, bool)> = sqlx::query_as(
        "SELECT message_id, available_at <= committed_at FROM outbox.messages ORDER BY commit_seq",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(due, vec![(later, false), (now, true)]);
    let delay: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM available_at - now())::float8 FROM outbox.messages WHERE message_id = $1",
    )
    .bind(later)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(delay > 3000.0, "due in {delay} s");
}
