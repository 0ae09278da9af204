//! The relay publishing to a real Apache Kafka broker (a separate process, scripts/kafka.sh).

mod common;

use std::time::Duration;

use common::kafka::{bootstrap, consume, create_topic, record_count};
use common::{assert_in_order, kafka_test_config, start_relay, unique, RoundTripRows, TestDb};
use serde_json::json;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn committed_messages_round_trip_with_keys_headers_and_order() {
    let db = TestDb::new().await;
    let topic = unique("t");
    create_topic(&bootstrap(), &topic, 3).await;
    let relay = start_relay(kafka_test_config(&db, &bootstrap()));

    let RoundTripRows {
        expected,
        with_headers,
        keyless,
        rolled_back,
        undecided,
    } = db.round_trip_rows(&topic).await;

    db.wait_all(&expected, "published").await;
    let got = consume(&bootstrap(), &topic, 3, expected.len(), WAIT).await;
    assert_eq!(
        record_count(&bootstrap(), &topic, 3).await,
        expected.len() as i64,
        "nothing else in the topic"
    );
    let ids: Vec<Uuid> = got.iter().map(|r| r.message_id()).collect();
    for id in &expected {
        assert!(ids.contains(id), "{id} missing");
    }
    assert!(!ids.contains(&rolled_back) && !ids.contains(&undecided));
    assert_eq!(
        assert_in_order(got.iter().map(|r| (r.message_id(), r.json()))),
        0
    );

    let h = got.iter().find(|r| r.message_id() == with_headers).unwrap();
    assert_eq!(h.key.as_deref(), Some("h"));
    assert_eq!(h.headers["traceparent"], "00-abc");
    assert_eq!(h.headers["content-type"], "application/json");
    assert_eq!(h.json(), json!({"key": "h", "n": 1}));
    let k = got.iter().find(|r| r.message_id() == keyless).unwrap();
    assert_eq!(k.key, None);
    // A key always lands in one partition, which is what keeps its order.
    for key in ["k0", "k1", "k2", "k3"] {
        let partitions: std::collections::HashSet<i32> = got
            .iter()
            .filter(|r| r.key.as_deref() == Some(key))
            .map(|r| r.partition)
            .collect();
        assert_eq!(partitions.len(), 1, "{key} spread over {partitions:?}");
    }
    relay.stop().await;
}

#[tokio::test]
async fn unknown_topic_is_retried_then_dead_while_others_flow() {
    // Timed-out messages make the idempotent producer bump its epoch: the shared broker takes it.
    let bootstrap = bootstrap();
    let db = TestDb::new().await;
    let topic = unique("t");
    create_topic(&bootstrap, &topic, 1).await;
    let mut config = kafka_test_config(&db, &bootstrap);
    config.relay.publish_timeout = Duration::from_secs(1);
    config.retry.max_attempts = 2.try_into().unwrap();
    let relay = start_relay(config);

    let missing = db
        .enqueue(&unique("missing"), Some("k"), json!({"key": "k", "n": 0}))
        .await;
    let good = db
        .enqueue(&topic, Some("k"), json!({"key": "k", "n": 0}))
        .await;
    db.wait_status(good, "published").await;
    db.wait_status(missing, "dead").await;
    let (attempts, last_error) = db.attempts_and_error(missing).await;
    assert_eq!(attempts, 2, "retried before going dead");
    assert!(
        last_error.to_lowercase().contains("unknown") || last_error.contains("timed out"),
        "{last_error}"
    );
    relay.stop().await;
}
