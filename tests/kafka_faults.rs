//! Kafka fault injection with librdkafka's in-process mock cluster (on loopback).

mod common;

use std::time::Duration;

use common::kafka::consume;
use common::{assert_in_order, kafka_test_config, start_relay, wait_for, TestDb};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use serde_json::json;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);
const TOPIC: &str = "events";

async fn assert_all_delivered_in_order(bootstrap: &str, ids: &[Uuid]) -> usize {
    assert_all_delivered_in_order_on(bootstrap, TOPIC, 3, ids).await
}

async fn assert_all_delivered_in_order_on(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    ids: &[Uuid],
) -> usize {
    let got = consume(bootstrap, topic, partitions, ids.len(), WAIT).await;
    let arrived: std::collections::HashSet<Uuid> = got.iter().map(|r| r.message_id()).collect();
    assert!(ids.iter().all(|id| arrived.contains(id)), "messages lost");
    assert_in_order(got.iter().map(|r| (r.message_id(), r.json())))
}

#[tokio::test]
async fn broker_down_mid_batch_then_back_loses_nothing_and_keeps_order() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, 3, 1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    let db = TestDb::new().await;
    let mut config = kafka_test_config(&db, &bootstrap);
    config.relay.publish_timeout = Duration::from_secs(2);
    config.relay.batch_size = 50.try_into().unwrap();
    let relay = start_relay(config);

    let ids = db.enqueue_many(TOPIC, 1, 2000, 10).await;
    wait_for("some published", WAIT, || async {
        (db.count("published").await >= 100).then_some(())
    })
    .await;
    cluster.broker_down(1).unwrap();
    wait_for(
        "a failed attempt while the broker is down",
        WAIT,
        || async {
            let failed: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM outbox.messages WHERE last_error IS NOT NULL",
            )
            .fetch_one(&db.pool)
            .await
            .unwrap();
            (failed > 0).then_some(())
        },
    )
    .await;
    assert!(
        db.count("published").await < 2000,
        "the outage must land mid-stream"
    );
    cluster.broker_up(1).unwrap();

    wait_for("everything published", WAIT, || async {
        (db.count("published").await == 2000).then_some(())
    })
    .await;
    assert_eq!(db.count("dead").await, 0);
    let duplicates = assert_all_delivered_in_order(&bootstrap, &ids).await;
    println!("broker outage: {duplicates} duplicates");
    relay.stop().await;
}

#[tokio::test]
async fn injected_produce_errors_are_retried_without_loss_or_reordering() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, 3, 1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    let errors: Vec<RDKafkaRespErr> = [
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
    ]
    .into_iter()
    .cycle()
    .take(40)
    .collect();
    cluster.request_errors(RDKafkaApiKey::Produce, &errors);
    let db = TestDb::new().await;
    let relay = start_relay(kafka_test_config(&db, &bootstrap));

    let ids = db.enqueue_many(TOPIC, 1, 500, 10).await;
    wait_for("everything published", WAIT, || async {
        (db.count("published").await == 500).then_some(())
    })
    .await;
    assert_eq!(db.count("dead").await, 0);
    assert_all_delivered_in_order(&bootstrap, &ids).await;
    relay.stop().await;
}

#[tokio::test]
async fn oversized_message_goes_dead_at_once_and_does_not_block_its_key_or_others() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, 3, 1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    let db = TestDb::new().await;
    let mut config = kafka_test_config(&db, &bootstrap);
    config
        .broker
        .kafka
        .properties
        .0
        .insert("message.max.bytes".into(), "10000".into());
    let relay = start_relay(config);

    let before = db
        .enqueue(TOPIC, Some("big"), json!({"key": "big", "n": 1}))
        .await;
    let huge = db
        .enqueue(
            TOPIC,
            Some("big"),
            json!({"key": "big", "n": 2, "pad": "x".repeat(20_000)}),
        )
        .await;
    let after = db
        .enqueue(TOPIC, Some("big"), json!({"key": "big", "n": 3}))
        .await;
    let other = db
        .enqueue(TOPIC, Some("other"), json!({"key": "other", "n": 1}))
        .await;

    db.wait_status(huge, "dead").await;
    for id in [before, after, other] {
        db.wait_status(id, "published").await;
    }
    let (attempts, last_error) = db.attempts_and_error(huge).await;
    assert_eq!(attempts, 1, "a permanent error is not retried");
    assert!(
        last_error.to_lowercase().contains("too large"),
        "{last_error}"
    );
    let got = consume(&bootstrap, TOPIC, 3, 3, WAIT).await;
    let big_order: Vec<Uuid> = got
        .iter()
        .filter(|r| r.key.as_deref() == Some("big"))
        .map(|r| r.message_id())
        .collect();
    assert_eq!(big_order, vec![before, after]);
    relay.stop().await;
}

#[tokio::test]
async fn a_destination_that_times_out_does_not_slow_the_others() {
    // Two brokers: the slow topic's leader never answers within publish_timeout.
    let cluster = MockCluster::new(2).unwrap();
    cluster.create_topic("slow", 1, 1).unwrap();
    cluster.create_topic("fast", 1, 1).unwrap();
    cluster.partition_leader("slow", 0, Some(1)).unwrap();
    cluster.partition_leader("fast", 0, Some(2)).unwrap();
    cluster
        .broker_round_trip_time(1, Duration::from_secs(4))
        .unwrap();
    let bootstrap = cluster.bootstrap_servers();
    let db = TestDb::new().await;
    let mut config = kafka_test_config(&db, &bootstrap);
    config.relay.publish_timeout = Duration::from_secs(1);
    config.relay.batch_size = 20.try_into().unwrap();
    // Long enough that the held-back destination stays out of every claim of this test.
    config.retry.initial_backoff = Duration::from_secs(60);
    config.retry.max_backoff = Duration::from_secs(60);
    // Interleaved: every batch would hold slow rows (each its own key) next to fast ones.
    let mut fast = Vec::new();
    for i in 0..200 {
        db.enqueue("slow", Some(&format!("s{i}")), json!({ "n": i }))
            .await;
        fast.push(
            db.enqueue("fast", Some("k"), json!({ "key": "k", "n": i }))
                .await,
        );
    }
    let relay = start_relay(config);
    wait_for("every fast message published", WAIT, || async {
        let done: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM outbox.messages WHERE destination = 'fast' AND status = 'published'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        (done == 200).then_some(())
    })
    .await;
    // Without holding the slow topic back, each of the 20 batches would have sent (and
    // waited a publish_timeout for) its slow rows.
    let tried: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox.messages WHERE destination = 'slow' AND attempts > 0",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(
        tried <= 10,
        "{tried} slow rows were sent while the fast ones waited"
    );
    assert_all_delivered_in_order_on(&bootstrap, "fast", 1, &fast).await;
    relay.stop().await;
}
