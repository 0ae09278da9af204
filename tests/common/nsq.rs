//! nsqd for the tests: the server of scripts/nsq.sh, a relay configuration for it, and reading
//! a topic back as a consumer does, over nsqd's TCP protocol (SUB, RDY, FIN).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use outbox_relay::config::{BrokerKind, Config};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use uuid::Uuid;

use super::{test_config, wait_for, TestDb};

pub mod consumer;

use consumer::Subscription;

pub fn address() -> String {
    std::env::var("OUTBOX_TEST_NSQD_ADDRESS").unwrap_or_else(|_| "127.0.0.1:54150".into())
}

/// nsqd's HTTP listener: the TCP port + 1 (scripts/nsq.sh).
pub fn http_address() -> SocketAddr {
    let mut a: SocketAddr = address().parse().expect("nsqd address as ip:port");
    a.set_port(a.port() + 1);
    a
}

/// A test configuration that publishes to the nsqd at `address`.
pub fn nsq_test_config(db: &TestDb, address: &str) -> Config {
    let mut c = test_config(db);
    c.broker.kind = BrokerKind::Nsq;
    c.broker.nsq.nsqd_tcp_address = address.to_string();
    c.broker.nsq.connect_timeout = Duration::from_secs(2);
    c.retry.max_attempts = 50.try_into().unwrap();
    c
}

/// One message as a consumer reads it: nsqd's delivery attempts and the CloudEvents envelope.
#[derive(Debug, Clone)]
pub struct Event {
    pub attempts: u16,
    pub event: Value,
}

impl Event {
    pub fn message_id(&self) -> Uuid {
        self.event["id"]
            .as_str()
            .expect("id attribute")
            .parse()
            .expect("a uuid")
    }

    /// `data`: the JSON payload.
    pub fn json(&self) -> Value {
        self.event.get("data").cloned().expect("data attribute")
    }

    /// The payload bytes: `data_base64` decoded, or `data` as JSON text.
    pub fn payload(&self) -> Vec<u8> {
        match self.event.get("data_base64") {
            Some(b) => base64::engine::general_purpose::STANDARD
                .decode(b.as_str().expect("base64 text"))
                .expect("base64"),
            None => self.json().to_string().into_bytes(),
        }
    }

    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.event
            .get(name)
            .map(|v| v.as_str().expect("string attribute"))
    }

    /// `outboxheaders` parsed: the row's headers.
    pub fn headers(&self) -> Option<Value> {
        self.attribute("outboxheaders")
            .map(|h| serde_json::from_str(h).expect("headers as a JSON object"))
    }
}

/// Reads `n` messages of `topic` through channel `tests` (created by the first read; nsqd keeps
/// a topic's messages until it has a channel), finishing each, oldest first. Panics after
/// `timeout`.
pub async fn collect(topic: &str, n: usize, timeout: Duration) -> Vec<Event> {
    let deadline = Instant::now() + timeout;
    let mut subscription = Subscription::open(&address(), topic, "tests", 1000, timeout)
        .await
        .expect("SUB to nsqd");
    let mut got = Vec::new();
    while got.len() < n {
        let m = subscription
            .next(deadline)
            .await
            .expect("a message from nsqd in time");
        let event = serde_json::from_slice(&m.body).expect("a JSON envelope");
        got.push(Event {
            attempts: m.attempts,
            event,
        });
    }
    got
}

/// A request to nsqd's HTTP API: (status, body). HTTP/1.0, so that nsqd's answer ends with the
/// connection and is never chunked.
async fn http(method: &str, path_and_query: &str) -> (u16, String) {
    let exchange = async {
        let mut stream = TcpStream::connect(http_address()).await.expect("nsqd HTTP");
        let request = format!("{method} {path_and_query} HTTP/1.0\r\nContent-Length: 0\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        raw
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("nsqd's HTTP API answers within 10 s");
    let text = String::from_utf8(raw).expect("UTF-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("an HTTP status");
    (status, body.to_string())
}

/// nsqd's `/stats` of `topic`, `None` before the topic exists.
async fn topic_stats(topic: &str) -> Option<Value> {
    let (status, body) = http("GET", &format!("/stats?format=json&topic={topic}")).await;
    assert_eq!(status, 200, "{body}");
    let stats: Value = serde_json::from_str(&body).expect("stats JSON");
    stats["topics"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["topic_name"] == topic)
        .cloned()
}

/// How many messages nsqd took for `topic`, 0 before the topic exists.
pub async fn message_count(topic: &str) -> u64 {
    topic_stats(topic)
        .await
        .map_or(0, |t| t["message_count"].as_u64().expect("message_count"))
}

/// Whether `topic` has `channel` yet.
pub async fn has_channel(topic: &str, channel: &str) -> bool {
    topic_stats(topic).await.is_some_and(|t| {
        t["channels"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["channel_name"] == channel)
    })
}

/// Deletes `topic` with its channels and the messages they hold, so that runs leave nothing
/// on nsqd's disk; a topic that does not exist is no error.
pub async fn delete_topic(topic: &str) {
    let (status, body) = http("POST", &format!("/topic/delete?topic={topic}")).await;
    assert!(
        status == 200 || (status == 404 && body.contains("TOPIC_NOT_FOUND")),
        "delete topic {topic}: {status} {body}"
    );
}

/// Waits until nsqd took at least `n` messages for `topic`.
pub async fn wait_count(topic: &str, n: u64, timeout: Duration) -> u64 {
    wait_for(&format!("{n} messages in {topic}"), timeout, || async {
        let count = message_count(topic).await;
        (count >= n).then_some(count)
    })
    .await
}
