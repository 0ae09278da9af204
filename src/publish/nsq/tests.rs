use super::*;
use crate::publish::testing::message;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

fn publisher(address: &str, publish_timeout: Duration) -> NsqPublisher {
    NsqPublisher::new(
        NsqConfig {
            nsqd_tcp_address: address.into(),
            connect_timeout: Duration::from_secs(5),
            ..NsqConfig::default()
        },
        publish_timeout,
    )
    .expect("no TLS to set up")
}

#[test]
fn error_frames_are_classified_by_code() {
    let e = |text: &str| classify(text);
    let bad_topic = e("E_BAD_TOPIC PUB topic name \"a b\" is not valid");
    assert!(bad_topic.is_permanent());
    assert_eq!(bad_topic.reason(), FailureReason::Invalid);
    assert!(
        bad_topic.chain().contains("(E_BAD_TOPIC)"),
        "{}",
        bad_topic.chain()
    );
    assert!(
        bad_topic.chain().contains("is not valid"),
        "nsqd's own text is kept"
    );
    let too_big = e("E_BAD_MESSAGE PUB message too big 2000000 > 1048576");
    assert!(too_big.is_permanent());
    assert_eq!(too_big.reason(), FailureReason::TooLarge);
    let empty = e("E_BAD_MESSAGE PUB invalid message body size 0");
    assert!(empty.is_permanent());
    assert_eq!(empty.reason(), FailureReason::Invalid);
    assert_eq!(
        e("E_UNAUTHORIZED AUTH not authorized").reason(),
        FailureReason::Unauthorized
    );
    assert!(e("E_UNAUTHORIZED AUTH not authorized").is_permanent());
    for retryable in [
        "E_PUB_FAILED PUB failed exiting",
        "E_MPUB_FAILED MPUB failed exiting",
        "E_DPUB_FAILED DPUB failed exiting",
        "E_INVALID PUB insufficient number of parameters",
        "E_AUTH_FIRST AUTH required before PUB",
        "E_SOMETHING_NEW",
        "unexpected response \"??\"",
    ] {
        assert!(!e(retryable).is_permanent(), "{retryable}");
    }
    assert_eq!(e("E_PUB_FAILED x").reason(), FailureReason::Rejected);
}

#[test]
fn lost_answers_are_retryable() {
    let t = lost(Lost::Timeout(Duration::from_secs(1)));
    assert!(!t.is_permanent());
    assert_eq!(t.reason(), FailureReason::Timeout);
    let c = lost(Lost::Closed);
    assert!(!c.is_permanent());
    assert_eq!(c.reason(), FailureReason::Unavailable);
}

#[test]
fn a_row_becomes_one_pub_to_its_topic() {
    let p = publisher("localhost:4150", Duration::from_secs(1));
    let mut m = message(serde_json::json!({}));
    m.destination = "orders#ephemeral".into();
    let Command::Pub { topic, body } = p.command(&m).unwrap() else {
        panic!("not a PUB")
    };
    assert_eq!(topic, "orders#ephemeral");
    let event: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(event["specversion"], "1.0");
    assert_eq!(event["source"], "outbox-relay");
    assert_eq!(event["type"], "outbox.message");
}

#[test]
fn invalid_topics_and_oversize_messages_are_refused_before_sending() {
    let mut p = publisher("localhost:4150", Duration::from_secs(1));
    let mut m = message(serde_json::json!({}));
    m.destination = "orders/eu".into();
    let e = p.command(&m).unwrap_err();
    assert!(e.is_permanent());
    assert_eq!(e.reason(), FailureReason::Invalid);
    assert!(e.to_string().contains("orders/eu"), "{e}");

    m.destination = "orders".into();
    p.config.max_message_bytes = 300;
    m.payload = vec![b'x'; 300];
    let e = p.command(&m).unwrap_err();
    assert!(e.is_permanent());
    assert_eq!(e.reason(), FailureReason::TooLarge);
    assert!(e.to_string().contains("max_message_bytes"), "{e}");
    m.payload = vec![b'x'; 10];
    assert!(p.command(&m).is_ok());
}

/// What a fake nsqd read from the relay.
#[derive(Debug, PartialEq)]
enum Seen {
    Pub(String),
    Nop,
}

/// Accepts one connection and answers the handshake as nsqd does.
async fn handshake(listener: &TcpListener) -> BufReader<TcpStream> {
    let (socket, _) = listener.accept().await.unwrap();
    let mut socket = BufReader::new(socket);
    let mut magic = [0u8; 4];
    socket.read_exact(&mut magic).await.unwrap();
    assert_eq!(&magic, b"  V2");
    let Some(line) = read_line(&mut socket).await else {
        panic!("no IDENTIFY")
    };
    assert_eq!(line, "IDENTIFY");
    let identify: serde_json::Value =
        serde_json::from_slice(&read_body(&mut socket).await).unwrap();
    assert_eq!(identify["feature_negotiation"], true);
    respond(
        &mut socket,
        0,
        br#"{"version":"1.3.0","auth_required":false}"#,
    )
    .await;
    socket
}

#[tokio::test]
async fn auth_is_sent_when_nsqd_requires_it_and_a_refusal_fails_ready() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let mut p = publisher(&address, Duration::from_secs(5));
    p.config.auth_secret = crate::config::Secret::new("s3cret");
    let server = async {
        for answer in [
            (0, &br#"{"identity":"relay","permission_count":1}"#[..]),
            (1, &b"E_AUTH_FAILED AUTH failed"[..]),
        ] {
            let (socket, _) = listener.accept().await.unwrap();
            let mut socket = BufReader::new(socket);
            let mut magic = [0u8; 4];
            socket.read_exact(&mut magic).await.unwrap();
            assert_eq!(read_line(&mut socket).await.as_deref(), Some("IDENTIFY"));
            read_body(&mut socket).await;
            respond(
                &mut socket,
                0,
                br#"{"version":"1.3.0","auth_required":true}"#,
            )
            .await;
            assert_eq!(read_line(&mut socket).await.as_deref(), Some("AUTH"));
            assert_eq!(read_body(&mut socket).await, b"s3cret");
            respond(&mut socket, answer.0, answer.1).await;
        }
    };
    let client = async {
        p.ready().await.unwrap();
        p.close().await;
        let e = p.ready().await.unwrap_err();
        assert!(!e.is_permanent(), "credentials may be fixed");
        assert!(e.chain().contains("E_AUTH_FAILED"), "{}", e.chain());
    };
    tokio::join!(server, client);
}

#[tokio::test]
async fn without_a_secret_an_nsqd_that_requires_auth_is_not_ready() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let p = publisher(
        &listener.local_addr().unwrap().to_string(),
        Duration::from_secs(5),
    );
    let server = async {
        let (socket, _) = listener.accept().await.unwrap();
        let mut socket = BufReader::new(socket);
        let mut magic = [0u8; 4];
        socket.read_exact(&mut magic).await.unwrap();
        read_line(&mut socket).await;
        read_body(&mut socket).await;
        respond(&mut socket, 0, br#"{"auth_required":true}"#).await;
        socket
    };
    let (_socket, outcome) = tokio::join!(server, p.ready());
    let e = outcome.unwrap_err();
    assert!(e.chain().contains("auth_secret is empty"), "{}", e.chain());
}

async fn read_line(socket: &mut BufReader<TcpStream>) -> Option<String> {
    let mut line = String::new();
    if socket.read_line(&mut line).await.unwrap() == 0 {
        return None;
    }
    Some(line.trim_end().to_string())
}

async fn read_body(socket: &mut BufReader<TcpStream>) -> Vec<u8> {
    let size = socket.read_u32().await.unwrap();
    let mut body = vec![0; size as usize];
    socket.read_exact(&mut body).await.unwrap();
    body
}

async fn read_command(socket: &mut BufReader<TcpStream>) -> Option<Seen> {
    let line = read_line(socket).await?;
    if line == "NOP" {
        return Some(Seen::Nop);
    }
    let topic = line.strip_prefix("PUB ").expect("a PUB").to_string();
    read_body(socket).await;
    Some(Seen::Pub(topic))
}

async fn respond(socket: &mut BufReader<TcpStream>, kind: u32, data: &[u8]) {
    let s = socket.get_mut();
    s.write_u32(data.len() as u32 + 4).await.unwrap();
    s.write_u32(kind).await.unwrap();
    s.write_all(data).await.unwrap();
}

fn topic_message(topic: &str) -> OutboxMessage {
    let mut m = message(serde_json::json!({}));
    m.destination = topic.into();
    m
}

#[tokio::test]
async fn pipelined_publishes_get_their_answers_in_order_and_heartbeats_a_nop() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let p = publisher(
        &listener.local_addr().unwrap().to_string(),
        Duration::from_secs(5),
    );
    let server = async {
        let mut socket = handshake(&listener).await;
        // Both PUBs arrive before any answer: they are pipelined.
        let first = read_command(&mut socket).await.unwrap();
        let second = read_command(&mut socket).await.unwrap();
        respond(&mut socket, 0, b"_heartbeat_").await;
        assert_eq!(read_command(&mut socket).await, Some(Seen::Nop));
        respond(&mut socket, 0, b"OK").await;
        respond(&mut socket, 1, b"E_BAD_TOPIC PUB topic name is not valid").await;
        (first, second)
    };
    let client = async {
        p.ready().await.unwrap();
        let a = topic_message("a");
        let b = topic_message("b");
        let (ra, rb) = tokio::join!(p.publish(&a), async {
            // The second is sent once the first is on the wire.
            tokio::task::yield_now().await;
            p.publish(&b).await
        });
        (ra, rb)
    };
    let ((first, second), (ra, rb)) = tokio::join!(server, client);
    assert_eq!(
        (first, second),
        (Seen::Pub("a".into()), Seen::Pub("b".into()))
    );
    assert!(ra.is_ok(), "{ra:?}");
    let e = rb.unwrap_err();
    assert!(e.is_permanent());
    assert_eq!(e.reason(), FailureReason::Invalid);
}

#[tokio::test]
async fn after_an_error_frame_only_ready_connects_again() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let p = publisher(
        &listener.local_addr().unwrap().to_string(),
        Duration::from_secs(5),
    );
    let m = topic_message("t");
    let server = async {
        let mut socket = handshake(&listener).await;
        read_command(&mut socket).await.unwrap();
        respond(&mut socket, 1, b"E_PUB_FAILED PUB failed exiting").await;
        // nsqd closes the connection after an error; the relay's side closes too.
        drop(socket);
        let mut socket = handshake(&listener).await;
        read_command(&mut socket).await.unwrap();
        respond(&mut socket, 0, b"OK").await;
        socket
    };
    let client = async {
        p.ready().await.unwrap();
        let e = p.publish(&m).await.unwrap_err();
        assert!(!e.is_permanent());
        assert_eq!(e.reason(), FailureReason::Rejected);
        let e = p.publish(&m).await.unwrap_err();
        assert_eq!(e.reason(), FailureReason::Unavailable, "{e}");
        p.ready().await.unwrap();
        p.publish(&m).await
    };
    let (_socket, second) = tokio::join!(server, client);
    assert!(second.is_ok(), "{second:?}");
}

#[tokio::test]
async fn a_publish_without_answer_times_out_and_drops_the_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let p = publisher(
        &listener.local_addr().unwrap().to_string(),
        Duration::from_millis(200),
    );
    let server = async {
        let mut socket = handshake(&listener).await;
        read_command(&mut socket).await.unwrap();
        socket // never answers
    };
    let client = async {
        p.ready().await.unwrap();
        p.publish(&topic_message("t")).await
    };
    let (_socket, outcome) = tokio::join!(server, client);
    let e = outcome.unwrap_err();
    assert_eq!(e.reason(), FailureReason::Timeout);
    assert!(p.current().is_none(), "the silent connection is forgotten");
}

#[tokio::test]
async fn ready_fails_retryably_while_nobody_listens() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let p = publisher(&format!("127.0.0.1:{port}"), Duration::from_secs(1));
    let e = p.ready().await.unwrap_err();
    assert!(!e.is_permanent());
    assert_eq!(e.reason(), FailureReason::Unavailable);
    assert!(p.publish(&topic_message("t")).await.is_err());
}
