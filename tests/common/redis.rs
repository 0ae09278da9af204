//! Redis for the tests: the servers of scripts/redis.sh, a relay configuration for them, and
//! reading a stream back as a consumer would.

use std::collections::HashMap;
use std::time::Duration;

use outbox_relay::config::{BrokerKind, Config, SecretUrl};
use redis::aio::MultiplexedConnection;
use uuid::Uuid;

use super::{test_config, wait_for, TestDb};

pub fn url() -> String {
    std::env::var("OUTBOX_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:56379".into())
}

pub fn replica_url() -> String {
    std::env::var("OUTBOX_TEST_REDIS_REPLICA_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:56380".into())
}

pub fn tls_url() -> String {
    std::env::var("OUTBOX_TEST_REDISS_URL").unwrap_or_else(|_| "rediss://127.0.0.1:56381".into())
}

/// A test configuration that publishes to Redis at `url`.
pub fn redis_test_config(db: &TestDb, url: &str) -> Config {
    let mut c = test_config(db);
    c.broker.kind = BrokerKind::Redis;
    c.broker.redis.url = SecretUrl::new(url);
    c.broker.redis.connect_timeout = Duration::from_secs(2);
    c.retry.max_attempts = 50.try_into().unwrap();
    c
}

/// A connection without a response timeout: a test may stall the replica (DEBUG SLEEP) while
/// others read from it, and their reads then wait it out.
pub async fn connect(url: &str) -> MultiplexedConnection {
    let settings = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    redis::Client::open(url)
        .expect("redis url")
        .get_multiplexed_async_connection_with_config(&settings)
        .await
        .expect("connect to redis")
}

/// One stream entry as a consumer reads it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: String,
    pub fields: HashMap<String, Vec<u8>>,
}

impl Entry {
    pub fn text(&self, field: &str) -> Option<String> {
        self.fields
            .get(field)
            .map(|v| String::from_utf8(v.clone()).expect("utf-8 field"))
    }

    pub fn message_id(&self) -> Uuid {
        self.text("message_id")
            .expect("message_id field")
            .parse()
            .expect("a uuid")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.fields["payload"]).expect("json payload")
    }
}

/// The whole stream, oldest first (XRANGE - +).
pub async fn entries(url: &str, stream: &str) -> Vec<Entry> {
    let mut con = connect(url).await;
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(&mut con)
        .await
        .expect("XRANGE");
    reply
        .ids
        .into_iter()
        .map(|e| Entry {
            id: e.id,
            fields: e
                .map
                .into_iter()
                .map(|(k, v)| {
                    let bytes: Vec<u8> = redis::from_redis_value(v).expect("bytes");
                    (k, bytes)
                })
                .collect(),
        })
        .collect()
}

/// Waits (up to `timeout`) until the stream holds at least `n` entries and returns them all.
pub async fn wait_entries(url: &str, stream: &str, n: usize, timeout: Duration) -> Vec<Entry> {
    wait_for(&format!("{n} entries in {stream}"), timeout, || async {
        let got = entries(url, stream).await;
        (got.len() >= n).then_some(got)
    })
    .await
}
