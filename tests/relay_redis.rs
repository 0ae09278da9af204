//! The relay publishing to real Redis Streams (Debian's redis-server, scripts/redis.sh): a
//! primary with append-only persistence and its replica.

mod common;

use std::time::Duration;

use common::redis::{connect, entries, redis_test_config, replica_url, url, wait_entries};
use common::{assert_in_order, binary_payload, start_relay, unique, RoundTripRows, TestDb};
use serde_json::json;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

/// A new key holding a string, where the relay expects a stream.
async fn string_key() -> String {
    let key = unique("taken");
    let mut con = connect(&url()).await;
    let () = redis::cmd("SET")
        .arg(&key)
        .arg("a string")
        .query_async(&mut con)
        .await
        .unwrap();
    key
}

#[tokio::test]
async fn committed_messages_round_trip_with_keys_headers_payload_and_order() {
    let db = TestDb::new().await;
    let stream = unique("s");
    let relay = start_relay(redis_test_config(&db, &url()));

    let RoundTripRows {
        expected,
        with_headers,
        keyless,
        rolled_back,
        undecided,
    } = db.round_trip_rows(&stream).await;

    db.wait_all(&expected, "published").await;
    let got = entries(&url(), &stream).await;
    assert_eq!(got.len(), expected.len(), "nothing else in the stream");
    let ids: Vec<Uuid> = got.iter().map(|e| e.message_id()).collect();
    for id in &expected {
        assert!(ids.contains(id), "{id} missing");
    }
    assert!(!ids.contains(&rolled_back) && !ids.contains(&undecided));
    assert_eq!(
        assert_in_order(got.iter().map(|e| (e.message_id(), e.json()))),
        0
    );

    let h = got.iter().find(|e| e.message_id() == with_headers).unwrap();
    assert_eq!(h.text("key").as_deref(), Some("h"));
    assert_eq!(h.text("content_type").as_deref(), Some("application/json"));
    let headers: serde_json::Value = serde_json::from_str(&h.text("headers").unwrap()).unwrap();
    assert_eq!(headers, json!({"traceparent": "00-abc"}));
    assert_eq!(h.json(), json!({"key": "h", "n": 1}));
    let k = got.iter().find(|e| e.message_id() == keyless).unwrap();
    assert_eq!(k.text("key"), None, "no key field without a key");
    relay.stop().await;
}

#[tokio::test]
async fn binary_payloads_arrive_byte_for_byte() {
    let db = TestDb::new().await;
    let stream = unique("s");
    let relay = start_relay(redis_test_config(&db, &url()));
    let payload = binary_payload();
    db.publish_binary(&stream).await;
    let got = entries(&url(), &stream).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].fields["payload"], payload);
    assert_eq!(
        got[0].text("content_type").as_deref(),
        Some("application/octet-stream")
    );
    relay.stop().await;
}

#[tokio::test]
async fn a_key_of_another_type_is_retried_then_dead_while_others_flow() {
    let db = TestDb::new().await;
    let taken = string_key().await;
    let stream = unique("s");
    let mut config = redis_test_config(&db, &url());
    config.retry.max_attempts = 3.try_into().unwrap();
    let relay = start_relay(config);

    let blocked = db
        .enqueue(&taken, Some("k"), json!({"key": "k", "n": 0}))
        .await;
    let good = db
        .enqueue(&stream, Some("k"), json!({"key": "k", "n": 0}))
        .await;
    db.wait_status(good, "published").await;
    db.wait_status(blocked, "dead").await;
    let (attempts, last_error) = db.attempts_and_error(blocked).await;
    assert_eq!(attempts, 3, "retried before going dead");
    assert!(last_error.contains("WRONGTYPE"), "{last_error}");
    relay.stop().await;
}

#[tokio::test]
async fn a_stream_the_user_may_not_write_goes_dead_at_once_and_allowed_ones_flow() {
    let db = TestDb::new().await;
    let limited = url().replacen("redis://", "redis://outbox_limited:outbox_limited@", 1);
    let allowed = unique("outbox_allowed:s");
    let refused = unique("s");
    let relay = start_relay(redis_test_config(&db, &limited));

    let no = db
        .enqueue(&refused, Some("k"), json!({"key": "k", "n": 0}))
        .await;
    let yes = db
        .enqueue(&allowed, Some("k"), json!({"key": "k", "n": 1}))
        .await;
    db.wait_status(no, "dead").await;
    db.wait_status(yes, "published").await;
    let (attempts, last_error) = db.attempts_and_error(no).await;
    assert_eq!(attempts, 1, "permanent: no retry");
    assert!(last_error.contains("NOPERM"), "{last_error}");
    assert!(entries(&url(), &refused).await.is_empty());
    relay.stop().await;
}

#[tokio::test]
async fn an_entry_over_max_entry_bytes_goes_dead_at_once_and_does_not_block_its_key() {
    let db = TestDb::new().await;
    let stream = unique("s");
    let mut config = redis_test_config(&db, &url());
    config.broker.redis.max_entry_bytes = 4096;
    let relay = start_relay(config);

    let big = db
        .enqueue(
            &stream,
            Some("k"),
            json!({"key": "k", "n": 0, "pad": "x".repeat(5000)}),
        )
        .await;
    let next = db
        .enqueue(&stream, Some("k"), json!({"key": "k", "n": 1}))
        .await;
    db.wait_status(big, "dead").await;
    db.wait_status(next, "published").await;
    let (attempts, last_error) = db.attempts_and_error(big).await;
    assert_eq!(attempts, 1);
    assert!(last_error.contains("max_entry_bytes"), "{last_error}");
    let got = entries(&url(), &stream).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message_id(), next);
    relay.stop().await;
}

#[tokio::test]
async fn with_wait_replicas_a_row_waits_for_a_stalled_replica() {
    let db = TestDb::new().await;
    let stream = unique("s");
    let mut config = redis_test_config(&db, &url());
    config.broker.redis.wait_replicas = 1;
    config.broker.redis.wait_timeout = Duration::from_secs(6);
    config.relay.publish_timeout = Duration::from_secs(10);
    let relay = start_relay(config);
    // Published once before the stall: the relay is connected and past its first claim.
    let first = db
        .enqueue(&stream, Some("k"), json!({"key": "k", "n": 0}))
        .await;
    db.wait_status(first, "published").await;

    // Connected before the stall: a sleeping server does not finish a handshake.
    let probe = redis::Client::open(replica_url())
        .unwrap()
        .get_multiplexed_async_connection_with_config(
            &redis::AsyncConnectionConfig::new()
                .set_response_timeout(Some(Duration::from_millis(300))),
        )
        .await
        .unwrap();
    // The replica's event loop sleeps 4 s: it acknowledges nothing meanwhile.
    let mut replica = connect(&replica_url()).await;
    let stall = tokio::spawn(async move {
        let () = redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg(4)
            .query_async(&mut replica)
            .await
            .unwrap();
    });
    // Asleep once a PING from the other connection goes unanswered.
    common::wait_for("the replica to sleep", WAIT, || {
        let mut probe = probe.clone();
        async move {
            let pong: Result<String, _> = redis::cmd("PING").query_async(&mut probe).await;
            pong.is_err().then_some(())
        }
    })
    .await;
    let second = db
        .enqueue(&stream, Some("k"), json!({"key": "k", "n": 1}))
        .await;
    // The entry is on the primary (the XADD was answered) ...
    wait_entries(&url(), &stream, 2, WAIT).await;
    // ... and the row not yet published while the replica still sleeps.
    assert!(!stall.is_finished(), "the stall ended before the check");
    assert_eq!(db.status(second).await, "committed");
    stall.await.unwrap();
    db.wait_status(second, "published").await;
    let (_, last_error) = db.attempts_and_error(second).await;
    assert_eq!(last_error, "", "WAIT met in time: no failed attempt");
    relay.stop().await;
}

#[tokio::test]
async fn with_wait_replicas_a_key_of_another_type_still_names_wrongtype() {
    let db = TestDb::new().await;
    let taken = string_key().await;
    let mut config = redis_test_config(&db, &url());
    config.broker.redis.wait_replicas = 1;
    config.retry.max_attempts = 2.try_into().unwrap();
    let relay = start_relay(config);
    let blocked = db
        .enqueue(&taken, Some("k"), json!({"key": "k", "n": 0}))
        .await;
    db.wait_status(blocked, "dead").await;
    let (attempts, last_error) = db.attempts_and_error(blocked).await;
    assert_eq!(attempts, 2);
    assert!(last_error.contains("WRONGTYPE"), "{last_error}");
    relay.stop().await;
}

#[tokio::test]
async fn with_wait_replicas_an_entry_is_on_the_replica_when_the_row_is_published() {
    let db = TestDb::new().await;
    let stream = unique("s");
    let mut config = redis_test_config(&db, &url());
    config.broker.redis.wait_replicas = 1;
    let relay = start_relay(config);
    let ids = db.enqueue_many(&stream, 0, 49, 5).await;
    for id in &ids {
        db.wait_status(*id, "published").await;
        // Marked published only after WAIT: the replica has it already, no waiting here.
        let on_replica = entries(&replica_url(), &stream).await;
        assert!(
            on_replica.iter().any(|e| e.message_id() == *id),
            "{id} published but not on the replica"
        );
    }
    relay.stop().await;
}

#[tokio::test]
async fn more_replicas_than_acknowledge_in_time_is_a_retryable_failure() {
    let db = TestDb::new().await;
    let stream = unique("s");
    let mut config = redis_test_config(&db, &url());
    // The primary has one replica.
    config.broker.redis.wait_replicas = 2;
    config.broker.redis.wait_timeout = Duration::from_millis(100);
    config.retry.max_attempts = 2.try_into().unwrap();
    let relay = start_relay(config);
    let id = db
        .enqueue(&stream, Some("k"), json!({"key": "k", "n": 0}))
        .await;
    db.wait_status(id, "dead").await;
    let (attempts, last_error) = db.attempts_and_error(id).await;
    assert_eq!(attempts, 2, "retried");
    assert!(
        last_error.contains("1 of 2 replicas acknowledged"),
        "{last_error}"
    );
    // Each attempt appended the entry: at least once, as documented.
    assert_eq!(wait_entries(&url(), &stream, 2, WAIT).await.len(), 2);
    relay.stop().await;
}

#[tokio::test]
async fn maxlen_trims_the_stream_approximately() {
    let db = TestDb::new().await;
    let stream = unique("s");
    let mut config = redis_test_config(&db, &url());
    config.broker.redis.maxlen = 10;
    let relay = start_relay(config);
    let ids = db.enqueue_many(&stream, 0, 999, 10).await;
    for id in &ids {
        db.wait_status(*id, "published").await;
    }
    let mut con = connect(&url()).await;
    let len: usize = redis::cmd("XLEN")
        .arg(&stream)
        .query_async(&mut con)
        .await
        .unwrap();
    // `~` trims whole macro nodes (100 entries by default), never below the threshold.
    assert!((10..=200).contains(&len), "XLEN {len}");
    let last = entries(&url(), &stream).await.pop().unwrap();
    assert_eq!(last.json()["n"], 999);
    relay.stop().await;
}
