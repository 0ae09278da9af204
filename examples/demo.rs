//! The demo the README's first command runs (through scripts/demo.sh, with the relay running):
//! writes messages the three ways an application can, and prints what reaches RabbitMQ, or Kafka
//! with DEMO_BROKER=kafka, a Redis stream with DEMO_BROKER=redis, or an NSQ topic with
//! DEMO_BROKER=nsq.

// The tests' NSQ consumer (SUB, RDY, FIN): it needs only tokio and serde_json.
#[path = "../tests/common/nsq/consumer.rs"]
mod nsq_consumer;

use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

const EXCHANGE: &str = "demo.orders";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let db_url = std::env::var("DEMO_DATABASE_URL")?;
    let db = PgPoolOptions::new()
        .max_connections(2)
        .connect(&db_url)
        .await?;
    let mut inbox = match std::env::var("DEMO_BROKER").as_deref() {
        Ok("kafka") => Inbox::kafka(&std::env::var("DEMO_KAFKA_BOOTSTRAP")?).await?,
        Ok("redis") => Inbox::redis(&std::env::var("DEMO_REDIS_URL")?).await?,
        Ok("nsq") => Inbox::nsq(&std::env::var("DEMO_NSQD_ADDRESS")?).await?,
        _ => Inbox::amqp(&std::env::var("DEMO_AMQP_URL")?).await?,
    };
    let destination = inbox.destination.clone();
    let enqueue = |payload: &'static str, key: &'static str, rk: &'static str| {
        let db = db.clone();
        let destination = destination.clone();
        async move {
            sqlx::query_scalar::<_, Uuid>(
                "SELECT outbox.enqueue($1, $2::jsonb, message_key => $3, routing_key => $4)",
            )
            .bind(destination)
            .bind(payload)
            .bind(key)
            .bind(rk)
            .fetch_one(&db)
            .await
        }
    };
    let prepare = |payload: &'static str, key: &'static str| {
        let db = db.clone();
        let destination = destination.clone();
        async move {
            sqlx::query_scalar::<_, Uuid>(
                "SELECT outbox.prepare($1, $2::jsonb, message_key => $3, routing_key => 'order.paid', ttl => '1 minute')",
            )
            .bind(destination)
            .bind(payload)
            .bind(key)
            .fetch_one(&db)
            .await
        }
    };

    // 1. The classic outbox: the message commits with the business transaction.
    let enqueued = enqueue(
        r#"{"order": 1001, "event": "created"}"#,
        "order-1001",
        "order.created",
    )
    .await?;
    println!("enqueue            order 1001  message_id {enqueued}");

    // 2. Two-phase: prepare, run the local transaction, then commit the message.
    let prepared = prepare(r#"{"order": 1002, "event": "paid"}"#, "order-1002").await?;
    let committed: bool = sqlx::query_scalar("SELECT outbox.commit($1)")
        .bind(prepared)
        .fetch_one(&db)
        .await?;
    println!("prepare + commit   order 1002  message_id {prepared} (commit: {committed})");

    // 3. Two-phase where the local transaction failed: the message is rolled back.
    let doomed = prepare(r#"{"order": 1003, "event": "paid"}"#, "order-1003").await?;
    let rolled_back: bool = sqlx::query_scalar("SELECT outbox.rollback($1)")
        .bind(doomed)
        .fetch_one(&db)
        .await?;
    println!("prepare + rollback order 1003  message_id {doomed} (rollback: {rolled_back})");

    let last = enqueue(
        r#"{"order": 1004, "event": "created"}"#,
        "order-1004",
        "order.created",
    )
    .await?;
    println!("enqueue            order 1004  message_id {last}");
    println!();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut received = Vec::new();
    while received.len() < 3 {
        let (id, label, body) = inbox.next(deadline).await?;
        println!(
            "received from {}  {label:<22} message_id {id}  {body}",
            inbox.broker
        );
        received.push(id);
    }
    // Wait until the relay recorded the confirms, then make sure nothing else arrived.
    loop {
        let pending: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM outbox.messages WHERE message_id = ANY($1) AND status <> 'published'",
        )
        .bind(vec![enqueued, prepared, last])
        .fetch_one(&db)
        .await?;
        if pending == 0 {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "messages not marked published"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let extra = inbox
        .next(tokio::time::Instant::now() + Duration::from_millis(500))
        .await;
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

/// Where the demo reads what the relay published.
struct Inbox {
    broker: &'static str,
    destination: String,
    source: Source,
}

enum Source {
    Amqp(Box<lapin::Consumer>, #[allow(dead_code)] Box<Connection>),
    Kafka(StreamConsumer),
    /// The connection and the id of the last entry read.
    Redis(redis::aio::MultiplexedConnection, String),
    Nsq(nsq_consumer::Subscription),
}

impl Inbox {
    async fn amqp(url: &str) -> anyhow::Result<Self> {
        let amqp = Connection::connect(url, ConnectionProperties::default()).await?;
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
        let consumer = channel
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
        Ok(Self {
            broker: "RabbitMQ",
            destination: EXCHANGE.into(),
            source: Source::Amqp(Box::new(consumer), Box::new(amqp)),
        })
    }

    async fn kafka(bootstrap: &str) -> anyhow::Result<Self> {
        // A topic per run, so the demo shows only this run's messages.
        let topic = format!("demo-orders-{}", &Uuid::new_v4().simple().to_string()[..8]);
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .create()?;
        for r in admin
            .create_topics(
                &[NewTopic::new(&topic, 3, TopicReplication::Fixed(1))],
                &AdminOptions::new(),
            )
            .await?
        {
            r.map_err(|(t, e)| anyhow::anyhow!("create topic {t}: {e}"))?;
        }
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "outbox-relay-demo")
            .set("enable.auto.commit", "false")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..3 {
            tpl.add_partition_offset(&topic, p, Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        Ok(Self {
            broker: "Kafka",
            destination: topic,
            source: Source::Kafka(consumer),
        })
    }

    async fn redis(url: &str) -> anyhow::Result<Self> {
        // XREAD BLOCK waits up to a second per call; the deadline is the demo's own.
        let settings = redis::AsyncConnectionConfig::new().set_response_timeout(None);
        let con = redis::Client::open(url)?
            .get_multiplexed_async_connection_with_config(&settings)
            .await?;
        Ok(Self {
            broker: "Redis",
            // A stream per run, so the demo shows only this run's entries.
            destination: format!("demo-orders-{}", &Uuid::new_v4().simple().to_string()[..8]),
            source: Source::Redis(con, "0".into()),
        })
    }

    async fn nsq(address: &str) -> anyhow::Result<Self> {
        // A topic per run, so the demo shows only this run's messages; subscribing creates it
        // with the demo's channel, which nsqd gives every message published to it after that.
        let topic = format!("demo-orders-{}", &Uuid::new_v4().simple().to_string()[..8]);
        let subscription =
            nsq_consumer::Subscription::open(address, &topic, "demo", 10, Duration::from_secs(10))
                .await?;
        Ok(Self {
            broker: "NSQ",
            destination: topic,
            source: Source::Nsq(subscription),
        })
    }

    /// The next message: (message_id, routing key or record key, body).
    async fn next(
        &mut self,
        deadline: tokio::time::Instant,
    ) -> anyhow::Result<(String, String, String)> {
        let timed_out = || anyhow::anyhow!("timed out waiting for messages; is the relay running?");
        match &mut self.source {
            Source::Amqp(consumer, _) => {
                let d = tokio::time::timeout_at(deadline, consumer.next())
                    .await
                    .map_err(|_| timed_out())?
                    .ok_or_else(|| anyhow::anyhow!("consumer closed"))??;
                let id = d
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|s| s.to_string())
                    .unwrap_or_default();
                Ok((
                    id,
                    format!("routing key {}", d.routing_key),
                    String::from_utf8_lossy(&d.data).into_owned(),
                ))
            }
            Source::Kafka(consumer) => {
                let m = tokio::time::timeout_at(deadline, consumer.recv())
                    .await
                    .map_err(|_| timed_out())??;
                let id = m
                    .headers()
                    .and_then(|h| {
                        h.iter()
                            .find(|h| h.key == "message_id")
                            .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
                    })
                    .unwrap_or_default();
                let key = m
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned())
                    .unwrap_or_default();
                Ok((
                    id,
                    format!("key {key}"),
                    String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                ))
            }
            Source::Redis(con, last) => loop {
                if tokio::time::Instant::now() >= deadline {
                    return Err(timed_out());
                }
                let reply: Option<redis::streams::StreamReadReply> = redis::cmd("XREAD")
                    .arg("BLOCK")
                    .arg(1000)
                    .arg("COUNT")
                    .arg(1)
                    .arg("STREAMS")
                    .arg(&self.destination)
                    .arg(last.as_str())
                    .query_async(con)
                    .await?;
                let Some(entry) = reply
                    .and_then(|r| r.keys.into_iter().next())
                    .and_then(|k| k.ids.into_iter().next())
                else {
                    continue;
                };
                *last = entry.id.clone();
                let field = |name: &str| -> String {
                    entry
                        .map
                        .get(name)
                        .and_then(|v| redis::from_redis_value_ref::<Vec<u8>>(v).ok())
                        .map(|b| String::from_utf8_lossy(&b).into_owned())
                        .unwrap_or_default()
                };
                return Ok((
                    field("message_id"),
                    format!("key {}", field("key")),
                    field("payload"),
                ));
            },
            Source::Nsq(subscription) => {
                let m =
                    subscription
                        .next(deadline.into_std())
                        .await
                        .map_err(|e| match e.kind() {
                            std::io::ErrorKind::TimedOut => timed_out(),
                            _ => e.into(),
                        })?;
                // The CloudEvents envelope the relay publishes: the row's key is `partitionkey`.
                let event: serde_json::Value = serde_json::from_slice(&m.body)?;
                let attribute = |name: &str| event[name].as_str().unwrap_or_default().to_string();
                Ok((
                    attribute("id"),
                    format!("key {}", attribute("partitionkey")),
                    event["data"].to_string(),
                ))
            }
        }
    }
}
