//! Kafka helpers: topics and a consumer that reads everything from the beginning.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use uuid::Uuid;

use super::wait_for;

pub fn bootstrap() -> String {
    std::env::var("OUTBOX_TEST_KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:59092".into())
}

/// Client settings for `bootstrap`, to which callers add more (TLS).
pub fn client_config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    c
}

/// An admin client for `bootstrap`.
pub fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    client_config(bootstrap)
        .create()
        .expect("kafka admin client")
}

pub async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    create_topic_with(&client_config(bootstrap), topic, partitions).await
}

/// Where a new topic's replicas go.
#[derive(Clone, Copy)]
pub enum Replicas<'a> {
    /// This many per partition, placed by the cluster.
    Count(i32),
    /// Each partition's broker ids, the preferred leader first.
    Assigned(&'a [Vec<i32>]),
}

/// Creates the topic with its `replicas` and the topic `config`, retrying for up to 30 s
/// while a deletion of the same name is still in progress.
pub async fn create_topic_retrying(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    replicas: Replicas<'_>,
    config: &[(&str, &str)],
) {
    let admin = admin(bootstrap);
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let assigned: Vec<&[i32]> = match replicas {
        Replicas::Count(_) => Vec::new(),
        Replicas::Assigned(a) => {
            assert_eq!(a.len(), partitions as usize, "one assignment per partition");
            a.iter().map(Vec::as_slice).collect()
        }
    };
    let replication = || match replicas {
        Replicas::Count(n) => TopicReplication::Fixed(n),
        Replicas::Assigned(_) => TopicReplication::Variable(&assigned),
    };
    wait_for(
        &format!("topic {topic} created"),
        Duration::from_secs(30),
        || async {
            let new = config.iter().fold(
                NewTopic::new(topic, partitions, replication()),
                |new, (k, v)| new.set(k, v),
            );
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

/// Deletes the topic: the request's error, or the topic's own.
pub async fn delete_topic(bootstrap: &str, topic: &str) -> KafkaResult<()> {
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for r in admin(bootstrap).delete_topics(&[topic], &options).await? {
        r.map_err(|(_, code)| KafkaError::AdminOp(code))?;
    }
    Ok(())
}

pub async fn create_topic_with(client: &ClientConfig, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = client.create().expect("admin client");
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create topics");
    for r in results {
        r.expect("topic created");
    }
}

#[derive(Debug, Clone)]
pub struct KafkaReceived {
    pub key: Option<String>,
    pub headers: HashMap<String, String>,
    pub payload: Vec<u8>,
    pub partition: i32,
}

impl KafkaReceived {
    pub fn message_id(&self) -> Uuid {
        self.headers["message_id"]
            .parse()
            .expect("message_id header")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).expect("json payload")
    }
}

/// Reads `n` records from all `partitions` of `topic`, from the beginning.
pub async fn consume(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    n: usize,
    timeout: Duration,
) -> Vec<KafkaReceived> {
    consume_with(&client_config(bootstrap), topic, partitions, n, timeout).await
}

pub async fn consume_with(
    client: &ClientConfig,
    topic: &str,
    partitions: i32,
    n: usize,
    timeout: Duration,
) -> Vec<KafkaReceived> {
    let consumer: StreamConsumer = client
        .clone()
        .set("group.id", super::unique("g"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::with_capacity(n);
    let deadline = tokio::time::Instant::now() + timeout;
    while out.len() < n {
        let m = match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(m) => m.expect("consume"),
            Err(_) => panic!(
                "timed out after {timeout:?}: {} of {n} records arrived",
                out.len()
            ),
        };
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_string(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(KafkaReceived {
            key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            headers,
            payload: m.payload().unwrap_or_default().to_vec(),
            partition: m.partition(),
        });
    }
    out
}

/// Total records in the topic (sum of high watermarks), read off the runtime.
pub async fn record_count(bootstrap: &str, topic: &str, partitions: i32) -> i64 {
    let bootstrap = bootstrap.to_string();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", super::unique("g"))
            .create()
            .expect("consumer");
        (0..partitions)
            .map(|p| {
                consumer
                    .fetch_watermarks(&topic, p, Duration::from_secs(10))
                    .expect("watermarks")
                    .1
            })
            .sum()
    })
    .await
    .unwrap()
}
