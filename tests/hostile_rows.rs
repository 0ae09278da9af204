//! Rows the SQL API would have refused, or that the broker refuses: each gets a clear
//! `last_error`, goes dead when no retry can help, and never holds back other keys.

mod common;

use std::time::Duration;

use common::kafka::{bootstrap, consume, create_topic};
use common::{
    amqp_url, kafka_test_config, start_relay, test_config, unique, wait_for, Rabbit, TestDb,
};
use lapin::ExchangeKind;
use outbox_relay::config::SecretUrl;
use serde_json::json;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

/// Headers the SQL API rejects; a plain INSERT stores them anyway (the column is plain jsonb).
const BAD_HEADERS: &[(&str, &str)] = &[
    (
        r#"["a", "b"]"#,
        "headers must be a JSON object of strings, got an array",
    ),
    (
        "42",
        "headers must be a JSON object of strings, got a number",
    ),
    (
        r#""text""#,
        "headers must be a JSON object of strings, got a string",
    ),
    (r#"{"n": 1}"#, "header `n` must be a string, got a number"),
    (
        r#"{"ok": "x", "nested": {"a": "b"}}"#,
        "header `nested` must be a string, got an object",
    ),
    (
        r#"{"flag": true}"#,
        "header `flag` must be a string, got a boolean",
    ),
    (
        r#"{"none": null}"#,
        "header `none` must be a string, got null",
    ),
    (
        r#"{"list": ["x"]}"#,
        "header `list` must be a string, got an array",
    ),
];

/// Inserts one row per entry of [`BAD_HEADERS`] with a plain INSERT, all under key `bad`,
/// followed by a good row of the same key; returns the bad ids and the good one.
async fn insert_bad_headers(db: &TestDb, destination: &str) -> (Vec<Uuid>, Uuid) {
    let mut bad = Vec::new();
    for (n, (headers, _)) in BAD_HEADERS.iter().enumerate() {
        let id: Uuid = sqlx::query_scalar(
            "INSERT INTO outbox.messages (destination, message_key, payload, headers)
             VALUES ($1, 'bad', convert_to(jsonb_build_object('key', 'bad', 'n', $2::int)::text, 'UTF8'), $3::jsonb)
             RETURNING message_id",
        )
        .bind(destination)
        .bind(n as i32)
        .bind(headers)
        .fetch_one(&db.pool)
        .await
        .expect("a plain insert accepts any jsonb");
        bad.push(id);
    }
    let good = db
        .enqueue(destination, Some("bad"), json!({"key": "bad", "n": 99}))
        .await;
    (bad, good)
}

/// Every bad-header row is dead after one attempt with the reason in `last_error`.
async fn assert_bad_headers_dead(db: &TestDb, bad: &[Uuid]) {
    for (id, (headers, expected)) in bad.iter().zip(BAD_HEADERS) {
        db.wait_status(*id, "dead").await;
        let (attempts, last_error) = db.attempts_and_error(*id).await;
        assert_eq!(attempts, 1, "{headers}: a permanent error is not retried");
        assert!(
            last_error.contains(expected),
            "{headers}: last_error `{last_error}` does not say `{expected}`"
        );
    }
}

#[tokio::test]
async fn amqp_rows_with_headers_that_are_not_strings_go_dead_and_others_flow() {
    let db = TestDb::new().await;
    let rabbit = Rabbit::connect().await;
    let (exchange, queue) = rabbit.fanout_with_queue().await;
    let relay = start_relay(test_config(&db));
    let (bad, behind) = insert_bad_headers(&db, &exchange).await;
    let healthy = db.enqueue_many(&exchange, 1, 50, 5).await;

    assert_bad_headers_dead(&db, &bad).await;
    db.wait_status(behind, "published").await;
    for id in &healthy {
        db.wait_status(*id, "published").await;
    }
    let got: Vec<Uuid> = rabbit
        .drain(&queue)
        .await
        .iter()
        .map(|r| r.message_id())
        .collect();
    assert_eq!(got.len(), healthy.len() + 1, "only the good rows arrive");
    assert!(bad.iter().all(|id| !got.contains(id)));
    relay.stop().await;
}

#[tokio::test]
async fn kafka_rows_with_headers_that_are_not_strings_go_dead_and_others_flow() {
    let db = TestDb::new().await;
    let topic = unique("t");
    create_topic(&bootstrap(), &topic, 1).await;
    let relay = start_relay(kafka_test_config(&db, &bootstrap()));
    let (bad, behind) = insert_bad_headers(&db, &topic).await;
    let healthy = db.enqueue_many(&topic, 1, 20, 4).await;

    assert_bad_headers_dead(&db, &bad).await;
    db.wait_status(behind, "published").await;
    for id in &healthy {
        db.wait_status(*id, "published").await;
    }
    let got = consume(&bootstrap(), &topic, 1, healthy.len() + 1, WAIT).await;
    assert!(got.iter().all(|r| !bad.contains(&r.message_id())));
    relay.stop().await;
}

/// `scripts/services.sh` creates `outbox_limited`, which may publish only to exchanges named
/// `outbox_allowed.*`.
fn limited_amqp_url() -> String {
    let mut url = url::Url::parse(&amqp_url()).unwrap();
    url.set_username("outbox_limited").unwrap();
    url.set_password(Some("outbox_limited")).unwrap();
    url.to_string()
}

#[tokio::test]
async fn exchange_the_user_may_not_publish_to_goes_dead_and_allowed_ones_flow() {
    let db = TestDb::new().await;
    let rabbit = Rabbit::connect().await;
    let allowed = format!("outbox_allowed.{}", Uuid::new_v4().simple());
    let forbidden = unique("forbidden");
    for exchange in [&allowed, &forbidden] {
        rabbit
            .declare_exchange_of(exchange, ExchangeKind::Fanout)
            .await;
    }
    let allowed_queue = rabbit.bound_queue(&allowed, "").await;
    let forbidden_queue = rabbit.bound_queue(&forbidden, "").await;
    let mut config = test_config(&db);
    config.broker.amqp.url = SecretUrl::new(limited_amqp_url());
    config.retry.max_attempts = 20.try_into().unwrap();
    let relay = start_relay(config);

    let refused = db
        .enqueue(&forbidden, Some("k"), json!({"key": "k", "n": 1}))
        .await;
    let refused_too = db
        .enqueue(&forbidden, Some("k"), json!({"key": "k", "n": 2}))
        .await;
    let healthy = db.enqueue_many(&allowed, 1, 40, 4).await;

    for id in &healthy {
        db.wait_status(*id, "published").await;
    }
    for id in [refused, refused_too] {
        db.wait_status(id, "dead").await;
        let (attempts, last_error) = db.attempts_and_error(id).await;
        assert_eq!(attempts, 1, "access control is permanent: {last_error}");
        assert!(
            last_error.contains("ACCESS_REFUSED") && last_error.contains(&forbidden),
            "{last_error}"
        );
    }
    assert_eq!(rabbit.drain(&allowed_queue).await.len(), healthy.len());
    assert!(rabbit.drain(&forbidden_queue).await.is_empty());
    relay.stop().await;
}

#[tokio::test]
async fn amqp_headers_over_frame_max_go_dead_without_breaking_the_connection() {
    let db = TestDb::new().await;
    let rabbit = Rabbit::connect().await;
    let (exchange, queue) = rabbit.fanout_with_queue().await;
    // RabbitMQ's default frame_max is 128 KiB; the content header (with all headers) must fit
    // in one frame, while a body of any size is split over many.
    let huge: serde_json::Value = (0..64)
        .map(|i| (format!("h{i}"), json!("x".repeat(4096))))
        .collect::<serde_json::Map<_, _>>()
        .into();
    // All in the first batch, the oversized row between healthy ones, so that its publish
    // runs while theirs are in flight on the same connection.
    let mut healthy = db.enqueue_many(&exchange, 1, 40, 10).await;
    let too_big: Uuid = sqlx::query_scalar(
        "SELECT outbox.enqueue($1, '{\"key\": \"big\", \"n\": 1}', message_key => 'big', headers => $2)",
    )
    .bind(&exchange)
    .bind(&huge)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    healthy.extend(db.enqueue_many(&exchange, 41, 80, 10).await);
    let relay = start_relay(test_config(&db));

    db.wait_status(too_big, "dead").await;
    let (attempts, last_error) = db.attempts_and_error(too_big).await;
    assert_eq!(attempts, 1, "{last_error}");
    assert!(last_error.contains("frame_max"), "{last_error}");
    for id in &healthy {
        db.wait_status(*id, "published").await;
    }
    // No publish of the healthy rows failed because of the oversized one.
    let failed: Vec<String> = sqlx::query_scalar(
        "SELECT last_error FROM outbox.messages WHERE message_id = ANY($1) AND last_error IS NOT NULL",
    )
    .bind(&healthy)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(
        failed.is_empty(),
        "healthy rows failed alongside the oversized one: {failed:?}"
    );
    assert_eq!(rabbit.drain(&queue).await.len(), healthy.len());
    relay.stop().await;
}

#[tokio::test]
async fn thousands_of_rows_of_one_key_do_not_hold_back_other_keys() {
    let db = TestDb::new().await;
    let rabbit = Rabbit::connect().await;
    let (exchange, queue) = rabbit.fanout_with_queue().await;
    // Thousands of rows of one key, committed before any other key's rows.
    let hot = db.enqueue_many(&exchange, 1, 2000, 1).await;
    let relay = start_relay(test_config(&db));
    // Let the relay get into the hot key, then commit rows of other keys.
    wait_for("the hot key to start flowing", WAIT, || async {
        (db.count("published").await > 0).then_some(())
    })
    .await;
    let started = std::time::Instant::now();
    let cold: Vec<Uuid> = {
        let mut ids = Vec::new();
        for n in 0..5 {
            let key = format!("cold{n}");
            ids.push(
                db.enqueue(&exchange, Some(&key), json!({"key": key, "n": 1}))
                    .await,
            );
        }
        ids
    };
    for id in &cold {
        db.wait_status(*id, "published").await;
    }
    let cold_done = started.elapsed();
    let hot_pending: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox.messages WHERE message_id = ANY($1) AND status = 'committed'",
    )
    .bind(&hot)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    println!("other keys published after {cold_done:?} with {hot_pending} hot rows still pending");
    assert!(
        hot_pending > 0,
        "other keys waited until the whole backlog of one key was published"
    );
    wait_for("the hot key to drain", WAIT, || async {
        (db.count("published").await == 2005).then_some(())
    })
    .await;
    let got = rabbit.drain(&queue).await;
    common::assert_first_deliveries_in_order(&got);
    relay.stop().await;
}
