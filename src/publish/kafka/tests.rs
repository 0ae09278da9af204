//! The publisher against librdkafka's mock cluster, and its error and header mapping.

use super::*;
use crate::publish::testing::{any_json, message};
use proptest::prelude::*;
use rdkafka::message::Headers;

#[test]
fn permanent_and_retryable_errors() {
    let e = |code| KafkaError::MessageProduction(code);
    assert!(classify(e(RDKafkaErrorCode::MessageSizeTooLarge)).is_permanent());
    assert!(classify(e(RDKafkaErrorCode::TopicAuthorizationFailed)).is_permanent());
    assert!(classify(e(RDKafkaErrorCode::InvalidTopic)).is_permanent());
    assert!(!classify(e(RDKafkaErrorCode::UnknownTopicOrPartition)).is_permanent());
    assert!(!classify(e(RDKafkaErrorCode::UnknownTopic)).is_permanent());
    assert!(!classify(e(RDKafkaErrorCode::NotLeaderForPartition)).is_permanent());
    assert!(!classify(e(RDKafkaErrorCode::RequestTimedOut)).is_permanent());
    assert!(!classify(e(RDKafkaErrorCode::MessageTimedOut)).is_permanent());
    assert!(!classify(e(RDKafkaErrorCode::QueueFull)).is_permanent());
    assert!(!classify(e(RDKafkaErrorCode::AllBrokersDown)).is_permanent());
}

/// A one-broker mock cluster with topic `events`, and a publisher connected to it.
async fn on_mock_cluster(
    publish_timeout: Duration,
) -> (
    rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    KafkaPublisher,
) {
    let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
    cluster.create_topic("events", 1, 1).unwrap();
    let config = KafkaConfig {
        bootstrap_servers: cluster.bootstrap_servers(),
        connect_timeout: Duration::from_millis(200),
        ..KafkaConfig::default()
    };
    let publisher = KafkaPublisher::new(&config, publish_timeout).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Err(e) = publisher.ready().await {
        assert!(
            Instant::now() < deadline,
            "the mock cluster never answered: {e}"
        );
    }
    (cluster, publisher)
}

/// A row for the mock cluster's topic.
fn event() -> OutboxMessage {
    let mut row = message(serde_json::json!({}));
    row.destination = "events".into();
    row.committed_at = chrono::Utc::now();
    row
}

/// The way out of a producer that stopped reconnecting: after a publish timeout without
/// an answer, `ready` puts a new producer in place, which publishes once the cluster is
/// back.
#[tokio::test]
async fn a_producer_without_an_answer_for_a_publish_timeout_is_replaced() {
    let (cluster, publisher) = on_mock_cluster(Duration::from_secs(1)).await;
    publisher.healthy.store(false, Ordering::Relaxed);
    cluster.broker_down(1).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut failed = 0;
    while publisher.current().unwrap().generation == 0 {
        assert!(
            Instant::now() < deadline,
            "still the first producer after {failed} unanswered checks"
        );
        assert!(publisher.ready().await.is_err(), "the broker is down");
        failed += 1;
    }
    assert!(
        failed >= 2,
        "replaced before a publish timeout without an answer"
    );
    cluster.broker_up(1).unwrap();
    let row = event();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if publisher.ready().await.is_ok() && publisher.publish(&row).await.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new producer never published"
        );
    }
    publisher.close().await;
}

/// A record whose delivery report does not come within the bound fails as a timeout
/// instead of holding its chain; the producer is then checked before the next claim.
#[tokio::test]
async fn a_record_without_a_delivery_report_fails_as_a_timeout() {
    // librdkafka would answer after a minute; the relay's bound is what ends the wait.
    let (cluster, mut publisher) = on_mock_cluster(Duration::from_secs(60)).await;
    publisher.answer_bound = Duration::from_millis(300);
    cluster.broker_down(1).unwrap();
    let row = event();
    let failed = tokio::time::timeout(Duration::from_secs(20), publisher.publish(&row))
        .await
        .expect("the publish ended within the bound")
        .expect_err("no broker to deliver to");
    assert_eq!(failed.reason(), FailureReason::Timeout);
    assert!(!failed.is_permanent());
    assert!(!publisher.healthy.load(Ordering::Relaxed));
    // The record given up on is delivered then, and the flush at close waits for it.
    cluster.broker_up(1).unwrap();
    publisher.close().await;
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Kafka headers come out of any headers column, or the row is refused as permanently
    /// invalid; the row's pairs arrive unchanged, followed by message_id and content-type.
    #[test]
    fn any_headers_build_kafka_headers_or_a_permanent_error(v in any_json()) {
        match headers(&message(v.clone())) {
            Ok(h) => {
                let object = v.as_object().expect("only objects convert");
                prop_assert_eq!(h.count(), object.len() + 2);
                for (i, (k, value)) in object.iter().enumerate() {
                    let got = h.get(i);
                    // librdkafka serialises the name with its length, but reading it back
                    // through rdkafka stops at a NUL (C string), so compare up to there.
                    let name = k.split('\0').next().unwrap_or_default();
                    prop_assert_eq!(got.key, name);
                    prop_assert_eq!(got.value, Some(value.as_str().unwrap().as_bytes()));
                }
            }
            Err(e) => {
                prop_assert!(e.is_permanent(), "{}", e);
                prop_assert_eq!(e.reason(), FailureReason::Invalid);
            }
        }
    }
}
