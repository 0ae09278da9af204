//! The demo the README's first command runs (through scripts/demo.sh, with the relay running):
//! writes three messages the three ways an application can, and prints what reaches RabbitMQ.

use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

const EXCHANGE: &str = "demo.orders";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let db_url = std::env::var("DEMO_DATABASE_URL")?;
    let amqp_url = std::env::var("DEMO_AMQP_URL")?;
    let db = PgPoolOptions::new()
        .max_connections(2)
        .connect(&db_url)
        .await?;
    let amqp = Connection::connect(&amqp_url, ConnectionProperties::default()).await?;
    let channel = amqp.create_channel().await?;
    channel
        .exchange_declare(
            EXCHANGE.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let queue = format!("demo.orders.{}", Uuid::new_v4().simple());
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.as_str().into(),
            EXCHANGE.into(),
            "order.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "demo".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;

    // 1. The classic outbox: the message commits with the business transaction.
    let mut tx = db.begin().await?;
    let enqueued: Uuid = sqlx::query_scalar(
        "SELECT outbox.enqueue('demo.orders', '{\"order\": 1001, \"event\": \"created\"}',
                               message_key => 'order-1001', routing_key => 'order.created')",
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    println!("enqueue           order 1001  message_id {enqueued}");

    // 2. Two-phase: prepare, run the local transaction, then commit the message.
    let prepared: Uuid = sqlx::query_scalar(
        "SELECT outbox.prepare('demo.orders', '{\"order\": 1002, \"event\": \"paid\"}',
                               message_key => 'order-1002', routing_key => 'order.paid', ttl => '1 minute')",
    )
    .fetch_one(&db)
    .await?;
    let committed: bool = sqlx::query_scalar("SELECT outbox.commit($1)")
        .bind(prepared)
        .fetch_one(&db)
        .await?;
    println!("prepare + commit  order 1002  message_id {prepared} (commit: {committed})");

    // 3. Two-phase where the local transaction failed: the message is rolled back.
    let doomed: Uuid = sqlx::query_scalar(
        "SELECT outbox.prepare('demo.orders', '{\"order\": 1003, \"event\": \"paid\"}',
                               message_key => 'order-1003', routing_key => 'order.paid', ttl => '1 minute')",
    )
    .fetch_one(&db)
    .await?;
    let rolled_back: bool = sqlx::query_scalar("SELECT outbox.rollback($1)")
        .bind(doomed)
        .fetch_one(&db)
        .await?;
    println!("prepare + rollback order 1003 message_id {doomed} (rollback: {rolled_back})");

    // A last committed message: the relay publishes in commit order, so once it is published
    // everything committed before it has been handled.
    let last: Uuid = sqlx::query_scalar(
        "SELECT outbox.enqueue('demo.orders', '{\"order\": 1004, \"event\": \"created\"}',
                               message_key => 'order-1004', routing_key => 'order.created')",
    )
    .fetch_one(&db)
    .await?;
    println!("enqueue           order 1004  message_id {last}");
    println!();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut received = Vec::new();
    while received.len() < 3 {
        let delivery = tokio::time::timeout_at(deadline, consumer.next())
            .await
            .map_err(|_| anyhow::anyhow!("timed out waiting for messages; is the relay running?"))?
            .ok_or_else(|| anyhow::anyhow!("consumer closed"))??;
        let id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default();
        println!(
            "received from RabbitMQ  routing_key {:<14} message_id {id}  {}",
            delivery.routing_key.as_str(),
            String::from_utf8_lossy(&delivery.data)
        );
        received.push(id);
    }
    // Wait for the relay to record the last confirm, then check nothing else arrived.
    loop {
        let status: String =
            sqlx::query_scalar("SELECT status::text FROM outbox.messages WHERE message_id = $1")
                .bind(last)
                .fetch_one(&db)
                .await?;
        if status == "published" {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "last message not marked published"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let extra = tokio::time::timeout(Duration::from_millis(500), consumer.next()).await;
    anyhow::ensure!(
        extra.is_err(),
        "an unexpected extra message arrived: {extra:?}"
    );
    let status: String =
        sqlx::query_scalar("SELECT status::text FROM outbox.messages WHERE message_id = $1")
            .bind(doomed)
            .fetch_one(&db)
            .await?;
    println!();
    println!("rolled-back message {doomed}: status {status}, never delivered");
    anyhow::ensure!(
        !received.contains(&doomed.to_string()),
        "the rolled-back message arrived"
    );
    println!("demo ok: the 3 committed messages were delivered, the rolled-back one was not");
    Ok(())
}
