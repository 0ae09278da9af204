//! Broker administration: the destination's exchange and queue, or its topic.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;

use crate::common;
use crate::rig::KAFKA_PARTITIONS;
use crate::settings::Settings;

pub async fn rabbit_admin(settings: &Settings) -> (Connection, Channel) {
    let conn = Connection::connect(&settings.amqp_url, ConnectionProperties::default())
        .await
        .expect("connect to RabbitMQ");
    let channel = conn.create_channel().await.expect("channel");
    (conn, channel)
}

/// A durable fanout exchange (it must survive broker restarts), and optionally a durable
/// queue bound to it.
pub async fn declare_exchange(admin: &(Connection, Channel), exchange: &str, queue: Option<&str>) {
    let channel = &admin.1;
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare exchange");
    if let Some(queue) = queue {
        channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare queue");
    }
}

pub async fn bind_queue(admin: &(Connection, Channel), queue: &str, exchange: &str) {
    admin
        .1
        .queue_bind(
            queue.into(),
            exchange.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind queue");
}

pub fn kafka_admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("kafka admin client")
}

/// Creates the topic, retrying while a deletion of the same name is still in progress.
pub async fn create_topic(bootstrap: &str, topic: &str) {
    let admin = kafka_admin(bootstrap);
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    common::wait_for(
        &format!("topic {topic} created"),
        Duration::from_secs(30),
        || async {
            let new = NewTopic::new(topic, KAFKA_PARTITIONS, TopicReplication::Fixed(1));
            match admin.create_topics(&[new], &options).await {
                Ok(results) => match results.into_iter().find_map(|r| r.err()) {
                    None => Some(()),
                    Some(e) => {
                        eprintln!("   create topic {topic}: {e:?}");
                        None
                    }
                },
                Err(e) => {
                    eprintln!("   create topic {topic}: {e}");
                    None
                }
            }
        },
    )
    .await
}

pub async fn delete_topic(bootstrap: &str, topic: &str) {
    let admin = kafka_admin(bootstrap);
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .delete_topics(&[topic], &options)
        .await
        .expect("delete topic");
    for r in results {
        r.expect("topic deleted");
    }
}
