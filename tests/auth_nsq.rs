//! AUTH against a real nsqd of its own (the binary scripts/nsq.sh built), started with
//! --auth-http-address pointing at an auth server of the test's: it knows one secret, which
//! may publish to topics starting with `allowed`.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::{free_port, start_relay, unique, wait_for, TestDb};
use outbox_relay::config::Secret;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const WAIT: Duration = Duration::from_secs(30);
const SECRET: &str = "s3cret";

fn nsqd_bin() -> PathBuf {
    std::env::var_os("OUTBOX_TEST_NSQD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".local/nsq/bin/nsqd"))
}

/// Answers nsqd's `GET /auth?...&secret=...`: the one secret may publish to `allowed.*`.
async fn auth_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&request);
                let known = text.contains(&format!("secret={SECRET}&"))
                    || text.contains(&format!("secret={SECRET} "));
                let (status, body) = if known {
                    (
                        "200 OK",
                        json!({"ttl": 3600, "identity": "relay", "identity_url": "",
                               "authorizations": [{"topic": "allowed.*", "channels": [".*"],
                                                   "permissions": ["publish"]}]})
                        .to_string(),
                    )
                } else {
                    // Not 403: nsqd's client retries a 403 over https.
                    ("401 Unauthorized", "{}".to_string())
                };
                let answer = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    port
}

/// An nsqd that requires AUTH; killed when dropped.
struct AuthNsqd {
    _child: tokio::process::Child,
    _data: tempfile::TempDir,
    address: String,
}

async fn auth_nsqd() -> AuthNsqd {
    let auth = auth_server().await;
    let (tcp, http) = (free_port(), free_port());
    let data = tempfile::tempdir().unwrap();
    let child = tokio::process::Command::new(nsqd_bin())
        .arg(format!("--tcp-address=127.0.0.1:{tcp}"))
        .arg(format!("--http-address=127.0.0.1:{http}"))
        .arg("--broadcast-address=127.0.0.1")
        .arg(format!("--data-path={}", data.path().display()))
        .arg("--mem-queue-size=0")
        .arg(format!("--auth-http-address=127.0.0.1:{auth}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("nsqd (scripts/services.sh up nsq builds it)");
    let address = format!("127.0.0.1:{tcp}");
    wait_for("nsqd to listen", WAIT, || async {
        tokio::net::TcpStream::connect(&address)
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    AuthNsqd {
        _child: child,
        _data: data,
        address,
    }
}

#[tokio::test]
async fn with_its_secret_the_relay_publishes_and_a_topic_it_may_not_write_goes_dead() {
    let nsqd = auth_nsqd().await;
    let db = TestDb::new().await;
    let mut config = common::nsq::nsq_test_config(&db, &nsqd.address);
    config.broker.nsq.auth_secret = Secret::new(SECRET);
    let relay = start_relay(config);
    let allowed = unique("allowed");
    let refused = unique("other");
    let no = db
        .enqueue(&refused, Some("k"), json!({"key": "k", "n": 0}))
        .await;
    let yes = db
        .enqueue(&allowed, Some("k"), json!({"key": "k", "n": 0}))
        .await;
    db.wait_status(yes, "published").await;
    db.wait_status(no, "dead").await;
    let (attempts, last_error) = db.attempts_and_error(no).await;
    assert_eq!(attempts, 1, "permanent: no retry");
    assert!(last_error.contains("E_UNAUTHORIZED"), "{last_error}");
    relay.stop().await;
}

#[tokio::test]
async fn with_a_wrong_secret_nothing_is_claimed() {
    let nsqd = auth_nsqd().await;
    let db = TestDb::new().await;
    let mut config = common::nsq::nsq_test_config(&db, &nsqd.address);
    config.broker.nsq.auth_secret = Secret::new("wrong");
    let publisher =
        outbox_relay::publish::nsq::NsqPublisher::new(config.broker.nsq, Duration::from_secs(5))
            .unwrap();
    let e = outbox_relay::publish::Publisher::ready(&publisher)
        .await
        .unwrap_err();
    assert!(!e.is_permanent());
    assert!(e.chain().contains("E_AUTH_FAILED"), "{}", e.chain());
    assert!(
        !e.chain().contains("wrong"),
        "the secret is never shown: {}",
        e.chain()
    );
}
