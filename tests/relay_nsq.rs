//! The relay publishing to a real nsqd (built from the pinned NSQ release by scripts/nsq.sh,
//! run with --mem-queue-size=0 and --max-msg-size=1048576).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::nsq::{address, collect, message_count, nsq_test_config, wait_count};
use common::{
    assert_in_order, binary_payload, free_port, http_get, start_relay, unique, wait_for,
    RoundTripRows, TestDb,
};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn committed_messages_round_trip_with_keys_headers_payload_and_order() {
    let db = TestDb::new().await;
    let topic = unique("t");
    let relay = start_relay(nsq_test_config(&db, &address()));

    let RoundTripRows {
        expected,
        with_headers,
        keyless,
        rolled_back,
        undecided,
    } = db.round_trip_rows(&topic).await;

    db.wait_all(&expected, "published").await;
    assert_eq!(
        message_count(&topic).await,
        expected.len() as u64,
        "nothing else in the topic"
    );
    let got = collect(&topic, expected.len(), WAIT).await;
    let ids: Vec<Uuid> = got.iter().map(|e| e.message_id()).collect();
    for id in &expected {
        assert!(ids.contains(id), "{id} missing");
    }
    assert!(!ids.contains(&rolled_back) && !ids.contains(&undecided));
    // First deliveries of one consumer, nothing requeued: in the order nsqd took them.
    assert!(got.iter().all(|e| e.attempts == 1));
    assert_eq!(
        assert_in_order(got.iter().map(|e| (e.message_id(), e.json()))),
        0
    );

    let h = got.iter().find(|e| e.message_id() == with_headers).unwrap();
    assert_eq!(h.attribute("specversion"), Some("1.0"));
    assert_eq!(h.attribute("source"), Some("outbox-relay"));
    assert_eq!(h.attribute("type"), Some("outbox.message"));
    assert_eq!(h.attribute("datacontenttype"), Some("application/json"));
    assert_eq!(h.attribute("partitionkey"), Some("h"));
    assert_eq!(h.headers(), Some(json!({"traceparent": "00-abc"})));
    assert_eq!(h.json(), json!({"key": "h", "n": 1}));
    let committed_at: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT committed_at FROM outbox.messages WHERE message_id = $1")
            .bind(with_headers)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let time = chrono::DateTime::parse_from_rfc3339(h.attribute("time").unwrap()).unwrap();
    assert_eq!(time, committed_at);
    let k = got.iter().find(|e| e.message_id() == keyless).unwrap();
    assert_eq!(
        k.attribute("partitionkey"),
        None,
        "no key attribute without a key"
    );
    assert_eq!(k.headers(), None, "no headers attribute without headers");
    relay.stop().await;
}

#[tokio::test]
async fn binary_payloads_arrive_byte_for_byte() {
    let db = TestDb::new().await;
    let topic = unique("t");
    let relay = start_relay(nsq_test_config(&db, &address()));
    let payload = binary_payload();
    let id = db.publish_binary(&topic).await;
    let got = collect(&topic, 1, WAIT).await;
    assert_eq!(got[0].message_id(), id);
    assert_eq!(got[0].payload(), payload);
    assert!(got[0].event.get("data").is_none());
    assert_eq!(
        got[0].attribute("datacontenttype"),
        Some("application/octet-stream")
    );
    relay.stop().await;
}

#[tokio::test]
async fn an_invalid_topic_name_goes_dead_at_once_while_others_flow() {
    let db = TestDb::new().await;
    let topic = unique("t");
    let relay = start_relay(nsq_test_config(&db, &address()));
    let bad = db
        .enqueue("orders/eu", Some("k"), json!({"key": "k", "n": 0}))
        .await;
    let good: Vec<Uuid> = db.enqueue_many(&topic, 0, 19, 2).await;
    db.wait_status(bad, "dead").await;
    for id in &good {
        db.wait_status(*id, "published").await;
    }
    let (attempts, last_error) = db.attempts_and_error(bad).await;
    assert_eq!(attempts, 1, "permanent: no retry");
    assert!(last_error.contains("not an NSQ topic name"), "{last_error}");
    assert_eq!(collect(&topic, 20, WAIT).await.len(), 20);
    relay.stop().await;
}

#[tokio::test]
async fn a_message_over_nsqds_max_msg_size_goes_dead_at_once_and_does_not_block_its_key() {
    let db = TestDb::new().await;
    let topic = unique("t");
    let mut config = nsq_test_config(&db, &address());
    // Above nsqd's --max-msg-size (1 MiB), so that nsqd itself refuses the message.
    config.broker.nsq.max_message_bytes = 4 * 1024 * 1024;
    let relay = start_relay(config);
    let big = db
        .enqueue(
            &topic,
            Some("k"),
            json!({"key": "k", "n": 0, "pad": "x".repeat(1_100_000)}),
        )
        .await;
    let next = db
        .enqueue(&topic, Some("k"), json!({"key": "k", "n": 1}))
        .await;
    db.wait_status(big, "dead").await;
    db.wait_status(next, "published").await;
    let (attempts, last_error) = db.attempts_and_error(big).await;
    // nsqd closes the connection right after its refusal, while the body is still being
    // written; when that close is a reset the refusal is lost with it and the row is retried
    // (rarely: the relay reads what arrived before the write failed). Once the refusal gets
    // through, the row is dead, long before retry.max_attempts.
    assert!(attempts < 5, "{attempts} attempts");
    assert!(last_error.contains("E_BAD_MESSAGE"), "{last_error}");
    let got = collect(&topic, 1, WAIT).await;
    assert_eq!(got[0].message_id(), next);
    assert_eq!(message_count(&topic).await, 1);
    relay.stop().await;
}

#[tokio::test]
async fn a_message_over_max_message_bytes_goes_dead_without_being_sent() {
    let db = TestDb::new().await;
    let topic = unique("t");
    // broker.nsq.max_message_bytes at its default, nsqd's --max-msg-size (1 MiB).
    let relay = start_relay(nsq_test_config(&db, &address()));
    let big = db
        .enqueue(
            &topic,
            Some("k"),
            json!({"key": "k", "n": 0, "pad": "x".repeat(1_100_000)}),
        )
        .await;
    let next = db
        .enqueue(&topic, Some("k"), json!({"key": "k", "n": 1}))
        .await;
    db.wait_status(big, "dead").await;
    db.wait_status(next, "published").await;
    let (attempts, last_error) = db.attempts_and_error(big).await;
    assert_eq!(attempts, 1);
    assert!(last_error.contains("max_message_bytes"), "{last_error}");
    assert_eq!(wait_count(&topic, 1, WAIT).await, 1);
    relay.stop().await;
}

#[tokio::test]
async fn with_nsqd_unreachable_at_start_nothing_is_claimed_until_it_answers() {
    let db = TestDb::new().await;
    let topic = unique("t");
    // Nobody listens on this port until the test forwards it to the shared nsqd.
    let port = free_port();
    let mut config = nsq_test_config(&db, &format!("127.0.0.1:{port}"));
    config.http.listen = ([127, 0, 0, 1], free_port()).into();
    let http = config.http.listen;
    let id = db
        .enqueue(&topic, Some("k"), json!({"key": "k", "n": 0}))
        .await;
    let relay = start_relay(config);

    let body = wait_for("/readyz to report the broker", WAIT, || async {
        match http_get(http, "/readyz").await {
            Some((503, body)) if body.contains("broker") => Some(body),
            _ => None,
        }
    })
    .await;
    assert!(body.contains("not ready"), "{body}");
    assert_eq!(db.status(id).await, "committed");
    assert_eq!(
        db.attempts(id).await,
        0,
        "no attempts spent while nsqd is away"
    );

    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let upstream = address();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                if let Ok(mut server) = TcpStream::connect(&upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    db.wait_status(id, "published").await;
    assert_eq!(db.attempts(id).await, 1);
    assert_eq!(collect(&topic, 1, WAIT).await[0].message_id(), id);
    wait_for("/readyz to pass", WAIT, || async {
        (http_get(http, "/readyz").await?.0 == 200).then_some(())
    })
    .await;
    relay.stop().await;
}

/// Forwards a loopback port to nsqd and can cut every connection it carries.
struct Proxy {
    address: String,
    accepted: Arc<AtomicUsize>,
    links: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Proxy {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listen = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let links: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (count, tasks) = (accepted.clone(), links.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tasks.lock().unwrap().push(tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(address()).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                }));
            }
        });
        Self {
            address: listen,
            accepted,
            links,
        }
    }

    /// Closes both sides of every connection so far, as a network failure or an nsqd restart
    /// would.
    fn cut(&self) {
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }
}

#[tokio::test]
async fn a_connection_cut_mid_stream_is_replaced_and_every_key_stays_in_order() {
    let db = TestDb::new().await;
    let topic = unique("t");
    let proxy = Proxy::start().await;
    let relay = start_relay(nsq_test_config(&db, &proxy.address));
    let ids = db.enqueue_many(&topic, 0, 499, 8).await;
    wait_for("a fifth of the rows published", WAIT, || async {
        (db.count("published").await >= 100).then_some(())
    })
    .await;
    // Rows in flight then (usually one per key) lose their answer and are retried.
    proxy.cut();
    for id in &ids {
        db.wait_status(*id, "published").await;
    }
    assert!(
        proxy.accepted.load(Ordering::SeqCst) >= 2,
        "the relay connected again"
    );
    // A PUB whose OK was lost with the connection is sent again: at least once.
    let taken = message_count(&topic).await;
    assert!(taken >= ids.len() as u64, "{taken}");
    let got = collect(&topic, taken as usize, WAIT).await;
    let duplicates = assert_in_order(got.iter().map(|e| (e.message_id(), e.json())));
    assert_eq!(got.len() - duplicates, ids.len());
    relay.stop().await;
}
