//! The transactional producer of exactly-once delivery against the real broker: what a
//! read_committed consumer sees, the progress record a new holder reads, and fencing.

mod common;

use std::time::Duration;

use common::kafka::{bootstrap, client_config, consume_with, create_topic};
use common::unique;
use outbox_relay::publish::kafka::{Delivered, KafkaConfig, TransactionError, Transactions};
use outbox_relay::store::{OutboxMessage, RowId};

const WAIT: Duration = Duration::from_secs(60);

fn config(progress_topic: &str) -> KafkaConfig {
    KafkaConfig {
        bootstrap_servers: bootstrap(),
        progress_topic: progress_topic.to_string(),
        ..KafkaConfig::default()
    }
}

fn row(id: i64, topic: &str, key: &str) -> OutboxMessage {
    OutboxMessage {
        id: RowId(id),
        message_id: uuid::Uuid::new_v4(),
        destination: topic.to_string(),
        routing_key: None,
        message_key: Some(key.to_string()),
        payload: serde_json::to_vec(&serde_json::json!({"id": id})).unwrap(),
        content_type: "application/json".into(),
        headers: serde_json::json!({}),
        commit_seq: id,
        committed_at: chrono::Utc::now(),
        attempts: 0,
    }
}

async fn read_committed(topic: &str, n: usize) -> Vec<i64> {
    let mut client = client_config(&bootstrap());
    client.set("isolation.level", "read_committed");
    consume_with(&client, topic, 1, n, WAIT)
        .await
        .iter()
        .map(|r| r.json()["id"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn a_new_holder_reads_the_rows_of_the_last_committed_transaction() {
    let topic = unique("eos");
    create_topic(&bootstrap(), &topic, 1).await;
    let progress = unique("progress");
    let id = unique("txn");
    let mut first = Transactions::new(&config(&progress), id.clone(), WAIT).unwrap();
    assert_eq!(first.take_over().await.unwrap(), Vec::<RowId>::new());
    let rows: Vec<_> = (1..=3).map(|i| row(i, &topic, "k")).collect();
    assert!(matches!(
        first.deliver(&rows, &[]).await.unwrap(),
        Delivered::Committed
    ));
    let more = [row(4, &topic, "k")];
    // Rows 1 to 3 not yet marked: the next record repeats them.
    assert!(matches!(
        first
            .deliver(&more, &[RowId(1), RowId(2), RowId(3)])
            .await
            .unwrap(),
        Delivered::Committed
    ));
    assert_eq!(read_committed(&topic, 4).await, vec![1, 2, 3, 4]);

    let mut second = Transactions::new(&config(&progress), id, WAIT).unwrap();
    let mut named = second.take_over().await.unwrap();
    named.sort();
    assert_eq!(named, vec![RowId(1), RowId(2), RowId(3), RowId(4)]);
    first.stop().await;
    second.stop().await;
}

#[tokio::test]
async fn a_failed_record_aborts_its_transaction_and_names_its_row() {
    let topic = unique("eos");
    create_topic(&bootstrap(), &topic, 1).await;
    let progress = unique("progress");
    let mut t = Transactions::new(&config(&progress), unique("txn"), WAIT).unwrap();
    t.take_over().await.unwrap();
    let mut poison = row(2, &topic, "k");
    poison.headers = serde_json::json!({"n": 1});
    let rows = [row(1, &topic, "k"), poison, row(3, &topic, "k")];
    match t.deliver(&rows, &[]).await.unwrap() {
        Delivered::Aborted(failed) => {
            assert_eq!(failed.len(), 1);
            assert_eq!(failed[0].0, RowId(2));
            assert!(failed[0].1.is_permanent());
        }
        other => panic!("expected an abort, got {other:?}"),
    }
    // The positive signal: a later committed row arrives, and nothing of the aborted one
    // before it.
    assert!(matches!(
        t.deliver(&[row(9, &topic, "k")], &[]).await.unwrap(),
        Delivered::Committed
    ));
    assert_eq!(read_committed(&topic, 1).await, vec![9]);
    t.stop().await;
}

#[tokio::test]
async fn an_earlier_holder_is_fenced_when_a_new_one_takes_over() {
    let topic = unique("eos");
    create_topic(&bootstrap(), &topic, 1).await;
    let progress = unique("progress");
    let id = unique("txn");
    let mut zombie = Transactions::new(&config(&progress), id.clone(), WAIT).unwrap();
    zombie.take_over().await.unwrap();
    let mut holder = Transactions::new(&config(&progress), id, WAIT).unwrap();
    holder.take_over().await.unwrap();
    let err = zombie
        .deliver(&[row(1, &topic, "k")], &[])
        .await
        .expect_err("the earlier holder must not commit");
    assert!(
        matches!(err, TransactionError::Fenced { .. }),
        "expected fencing, got {err:?}"
    );
    assert!(matches!(
        holder.deliver(&[row(2, &topic, "k")], &[]).await.unwrap(),
        Delivered::Committed
    ));
    assert_eq!(read_committed(&topic, 1).await, vec![2]);
    zombie.stop().await;
    holder.stop().await;
}
