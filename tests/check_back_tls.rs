//! Check-back over HTTPS: the relay verifies the producer's certificate against the CA it is
//! given and sends the bearer token of `token_file`; a producer whose certificate another CA
//! signed is never told anything and decides nothing. The producer here is a minimal HTTPS
//! endpoint in the test that answers `committed` to a request carrying the right token.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::tls::{acceptor, ca, other_ca, require_tls_services};
use common::{start_relay, test_config, wait_for, RunningRelay, TestDb};
use outbox_relay::config::{ProducerConfig, Secret, SecretUrl};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use uuid::Uuid;

const TOKEN: &str = "s3cret-check-token";

/// An HTTPS producer on 127.0.0.1 presenting the local CA's server certificate. It answers
/// `committed` when the request carries the bearer token, 401 otherwise, and keeps the
/// authorization headers it saw.
async fn producer() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://127.0.0.1:{}/check",
        listener.local_addr().unwrap().port()
    );
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (tls, log) = (acceptor("server"), seen.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (tls, log) = (tls.clone(), log.clone());
            tokio::spawn(async move {
                let Ok(mut stream) = tls.accept(tcp).await else {
                    return;
                };
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                // One request per connection: the headers, then a body of Content-Length.
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&request).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let length = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap())
                            })
                            .unwrap_or(0);
                        if body.len() < length {
                            continue;
                        }
                        let auth = head
                            .lines()
                            .find(|l| l.to_ascii_lowercase().starts_with("authorization:"))
                            .map(|l| l[14..].trim().to_string())
                            .unwrap_or_default();
                        log.lock().unwrap().push(auth.clone());
                        let (status, answer) = if auth == format!("Bearer {TOKEN}") {
                            ("200 OK", r#"{"status": "committed"}"#)
                        } else {
                            ("401 Unauthorized", "{}")
                        };
                        let response = format!(
                            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                            answer.len()
                        );
                        let _ = stream.write_all(response.as_bytes()).await;
                        let _ = stream.shutdown().await;
                        return;
                    }
                }
            });
        }
    });
    (url, seen)
}

/// A relay asking `url` 100 ms after a row is prepared, trusting the CA file `ca`, sending
/// the token.
fn relay_trusting(db: &TestDb, url: String, ca: &str) -> RunningRelay {
    let mut config = test_config(db);
    config.check_back.check_after = Duration::from_millis(100);
    config.check_back.interval = Duration::from_millis(50);
    config.check_back.producers.insert(
        "orders".into(),
        ProducerConfig {
            url: SecretUrl::new(url),
            token: Some(Secret::new(TOKEN)),
            tls_ca_pem: Some(std::fs::read_to_string(ca).unwrap()),
            ..ProducerConfig::default()
        },
    );
    start_relay(config)
}

async fn prepared(db: &TestDb) -> Uuid {
    sqlx::query_scalar("SELECT outbox.prepare('d', '{}', producer => 'orders', ttl => '1 hour')")
        .fetch_one(&db.writer)
        .await
        .unwrap()
}

#[tokio::test]
async fn the_relay_verifies_the_producer_and_sends_its_token() {
    let db = TestDb::new().await;
    require_tls_services(&db).await;
    let (url, seen) = producer().await;

    let relay = relay_trusting(&db, url, &ca());
    let id = prepared(&db).await;
    // Committed by check-back: committed_at is set then, whatever publishing it does after.
    wait_for(
        "check-back to commit the row",
        Duration::from_secs(30),
        || async {
            let committed_at: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
                "SELECT committed_at FROM outbox.messages WHERE message_id = $1",
            )
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
            committed_at
        },
    )
    .await;
    assert_eq!(seen.lock().unwrap()[0], format!("Bearer {TOKEN}"));
    relay.stop().await;
}

#[tokio::test]
async fn a_producer_certified_by_another_ca_is_not_believed() {
    let db = TestDb::new().await;
    require_tls_services(&db).await;
    let (url, seen) = producer().await;
    let relay = relay_trusting(&db, url, &other_ca());
    let id = prepared(&db).await;
    // The positive signal: the check was made and failed on the certificate.
    let reason = wait_for(
        "a failed check recorded on the row",
        Duration::from_secs(30),
        || async {
            let e: Option<String> =
                sqlx::query_scalar("SELECT last_error FROM outbox.messages WHERE message_id = $1")
                    .bind(id)
                    .fetch_one(&db.pool)
                    .await
                    .unwrap();
            e
        },
    )
    .await;
    assert!(reason.contains("cannot reach"), "{reason}");
    assert!(reason.to_lowercase().contains("certificate"), "{reason}");
    assert_eq!(db.status(id).await, "prepared");
    assert!(
        seen.lock().unwrap().is_empty(),
        "no request, and so no token, reached a producer the relay could not verify"
    );
    relay.stop().await;
}
