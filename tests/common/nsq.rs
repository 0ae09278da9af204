//! nsqd for the tests: the server of scripts/nsq.sh, a relay configuration for it, and reading
//! a topic back as a consumer does, over nsqd's TCP protocol (SUB, RDY, FIN).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use outbox_relay::config::{BrokerKind, Config};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use uuid::Uuid;

use super::{test_config, wait_for, TestDb};

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
    let mut socket = BufReader::new(TcpStream::connect(address()).await.expect("nsqd"));
    let s = socket.get_mut();
    s.write_all(format!("  V2SUB {topic} tests\n").as_bytes())
        .await
        .unwrap();
    let (kind, data) = frame(&mut socket, deadline).await;
    assert_eq!((kind, &data[..]), (0, &b"OK"[..]), "SUB");
    socket.get_mut().write_all(b"RDY 1000\n").await.unwrap();
    let mut got = Vec::new();
    while got.len() < n {
        let (kind, data) = frame(&mut socket, deadline).await;
        match kind {
            0 if data == b"_heartbeat_" => socket.get_mut().write_all(b"NOP\n").await.unwrap(),
            2 => {
                let attempts = u16::from_be_bytes([data[8], data[9]]);
                let id = &data[10..26];
                let event = serde_json::from_slice(&data[26..]).expect("a JSON envelope");
                let mut fin = b"FIN ".to_vec();
                fin.extend(id);
                fin.push(b'\n');
                socket.get_mut().write_all(&fin).await.unwrap();
                got.push(Event { attempts, event });
            }
            _ => panic!(
                "frame {kind} while consuming: {}",
                String::from_utf8_lossy(&data)
            ),
        }
    }
    got
}

async fn frame(socket: &mut BufReader<TcpStream>, deadline: Instant) -> (u32, Vec<u8>) {
    let left = deadline.saturating_duration_since(Instant::now());
    tokio::time::timeout(left, async {
        let size = socket.read_u32().await.expect("frame size");
        let kind = socket.read_u32().await.expect("frame type");
        let mut data = vec![0; size as usize - 4];
        socket.read_exact(&mut data).await.expect("frame data");
        (kind, data)
    })
    .await
    .expect("a frame from nsqd in time")
}

/// How many messages nsqd took for `topic` (its `/stats`), 0 before the topic exists.
pub async fn message_count(topic: &str) -> u64 {
    // HTTP/1.0: nsqd's answer then ends with the connection, never chunked.
    let mut stream = TcpStream::connect(http_address()).await.expect("nsqd HTTP");
    let request = format!("GET /stats?format=json&topic={topic} HTTP/1.0\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).expect("UTF-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.split_whitespace().nth(1) == Some("200"), "{head}");
    let stats: Value = serde_json::from_str(body).expect("stats JSON");
    stats["topics"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["topic_name"] == topic)
        .map_or(0, |t| t["message_count"].as_u64().expect("message_count"))
}

/// Waits until nsqd took at least `n` messages for `topic`.
pub async fn wait_count(topic: &str, n: u64, timeout: Duration) -> u64 {
    wait_for(&format!("{n} messages in {topic}"), timeout, || async {
        let count = message_count(topic).await;
        (count >= n).then_some(count)
    })
    .await
}
