//! RabbitMQ for the tests: declaring topology, reading what the relay published, and the
//! per-key order checks.

use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use uuid::Uuid;

use super::{amqp_url, unique};

/// A RabbitMQ connection for declaring topology and reading what the relay published.
pub struct Rabbit {
    pub conn: Connection,
    pub channel: Channel,
}

impl Rabbit {
    /// A new fanout exchange with one exclusive queue bound to it: (exchange, queue).
    pub async fn fanout_with_queue(&self) -> (String, String) {
        let exchange = unique("ex");
        self.declare_exchange_of(&exchange, ExchangeKind::Fanout)
            .await;
        let queue = self.bound_queue(&exchange, "").await;
        (exchange, queue)
    }

    pub async fn connect() -> Self {
        let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .expect("connect to the test RabbitMQ (run scripts/services.sh up)");
        let channel = conn.create_channel().await.expect("channel");
        Self { conn, channel }
    }

    pub async fn declare_exchange(&self, name: &str) {
        self.declare_exchange_of(name, ExchangeKind::Direct).await
    }

    pub async fn declare_exchange_of(&self, name: &str, kind: ExchangeKind) {
        self.declare_exchange_with(name, kind, ExchangeDeclareOptions::default())
            .await
    }

    /// An exchange with `options` (durable, auto-delete).
    pub async fn declare_exchange_with(
        &self,
        name: &str,
        kind: ExchangeKind,
        options: ExchangeDeclareOptions,
    ) {
        self.channel
            .exchange_declare(name.into(), kind, options, FieldTable::default())
            .await
            .expect("declare exchange");
    }

    pub async fn delete_exchange(&self, name: &str) -> lapin::Result<()> {
        self.channel
            .exchange_delete(name.into(), ExchangeDeleteOptions::default())
            .await
    }

    /// A queue named `name` with `options` (durable, exclusive) and `arguments` (such as
    /// `x-max-length`), not bound.
    pub async fn declare_queue(
        &self,
        name: &str,
        options: QueueDeclareOptions,
        arguments: FieldTable,
    ) {
        self.channel
            .queue_declare(name.into(), options, arguments)
            .await
            .expect("declare queue");
    }

    /// Deletes the queue; the number of messages it held.
    pub async fn delete_queue(&self, name: &str) -> lapin::Result<u32> {
        self.channel
            .queue_delete(name.into(), QueueDeleteOptions::default())
            .await
    }

    /// Messages ready in `queue`, as the broker counts them; `None` if it does not exist.
    pub async fn queue_depth(&self, queue: &str) -> Option<u32> {
        self.channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .ok()
            .map(|q| q.message_count())
    }

    /// A new exclusive queue bound to `exchange` with `routing_key`.
    pub async fn bound_queue(&self, exchange: &str, routing_key: &str) -> String {
        let queue = unique("q");
        self.declare_queue(
            &queue,
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
        self.bind(&queue, exchange, routing_key).await;
        queue
    }

    pub async fn bind(&self, queue: &str, exchange: &str, routing_key: &str) {
        self.channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind queue");
    }

    /// Everything in the queue right now (the relay only marks a row published after the
    /// broker confirmed it, so a published row's message is already in the queue).
    pub async fn drain(&self, queue: &str) -> Vec<Received> {
        let mut out = Vec::new();
        while let Some(m) = self
            .channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
        {
            out.push(Received::from_parts(
                m.delivery.routing_key.to_string(),
                m.delivery.properties.clone(),
                m.delivery.data.clone(),
            ));
        }
        out
    }

    /// Waits until `n` messages arrived on `queue`, then returns them in arrival order.
    pub async fn collect(&self, queue: &str, n: usize, timeout: Duration) -> Vec<Received> {
        let mut consumer = self
            .channel
            .basic_consume(
                queue.into(),
                unique("c").as_str().into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consume");
        let mut out = Vec::with_capacity(n);
        let deadline = tokio::time::Instant::now() + timeout;
        while out.len() < n {
            match tokio::time::timeout_at(deadline, consumer.next()).await {
                Ok(Some(Ok(d))) => out.push(Received::from_parts(
                    d.routing_key.to_string(),
                    d.properties.clone(),
                    d.data.clone(),
                )),
                Ok(other) => panic!("consumer ended: {other:?}"),
                Err(_) => panic!(
                    "timed out after {timeout:?}: {} of {n} messages arrived",
                    out.len()
                ),
            }
        }
        out
    }
}

#[derive(Debug, Clone)]
pub struct Received {
    pub routing_key: String,
    pub properties: BasicProperties,
    pub payload: Vec<u8>,
}

impl Received {
    fn from_parts(routing_key: String, properties: BasicProperties, payload: Vec<u8>) -> Self {
        Self {
            routing_key,
            properties,
            payload,
        }
    }

    pub fn message_id(&self) -> Uuid {
        self.properties
            .message_id()
            .as_ref()
            .expect("message_id property")
            .as_str()
            .parse()
            .expect("uuid")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).expect("json payload")
    }
}

/// Checks per-key order of first deliveries: for each key, the sequence numbers (`n` in the
/// payload) of first deliveries must be increasing. Returns the number of duplicates.
pub fn assert_first_deliveries_in_order(received: &[Received]) -> usize {
    assert_in_order(received.iter().map(|r| (r.message_id(), r.json())))
}

/// The same check over `(message_id, payload)` pairs in arrival order.
pub fn assert_in_order(received: impl IntoIterator<Item = (Uuid, serde_json::Value)>) -> usize {
    use std::collections::{HashMap, HashSet};
    let mut seen = HashSet::new();
    let mut last: HashMap<String, i64> = HashMap::new();
    let mut duplicates = 0;
    for (id, v) in received {
        if !seen.insert(id) {
            duplicates += 1;
            continue;
        }
        let key = v["key"].as_str().expect("key in payload").to_string();
        let n = v["n"].as_i64().expect("n in payload");
        if let Some(prev) = last.insert(key.clone(), n) {
            assert!(
                prev < n,
                "key {key}: message {n} first delivered after {prev}"
            );
        }
    }
    duplicates
}
