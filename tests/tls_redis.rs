//! TLS to Redis (rediss://) against the local server, whose certificate the local CA signed:
//! the right CA works, another CA or a certificate for another host is refused.

mod common;

use std::time::Duration;

use common::redis::{entries, tls_url, url};
use common::tls::{ca, other_ca, TlsProxy};
use common::{unique, RelayProcess, TestDb};

const WAIT: Duration = Duration::from_secs(30);

/// The relay publishing to Redis at the rediss `url`, trusting the CA file `ca`.
fn rediss_relay(db: &TestDb, url: &str, ca: &str) -> RelayProcess {
    RelayProcess::spawn(
        &db.relay_url,
        &[
            ("OUTBOX_RELAY__BROKER__KIND", "redis"),
            ("OUTBOX_RELAY__BROKER__REDIS__URL", url),
            ("OUTBOX_RELAY__BROKER__REDIS__TLS_CA_FILE", ca),
        ],
    )
}

#[tokio::test]
async fn rediss_with_the_local_ca_publishes() {
    let db = TestDb::new().await;
    let stream = unique("s");
    let relay = rediss_relay(&db, &tls_url(), &ca());
    let id = db.enqueue(&stream, None, serde_json::json!({})).await;
    db.wait_status(id, "published").await;
    assert_eq!(entries(&url(), &stream).await[0].message_id(), id);
    assert!(relay
        .logs()
        .lines()
        .any(|l| l.contains("connected to Redis") && l.contains("url=rediss://")));
    relay.terminate(WAIT).await;
}

/// The relay connecting to `url` and trusting `ca` keeps retrying, says why (`reason`),
/// publishes nothing.
async fn assert_rediss_refused(url: &str, ca: &str, reason: &str) {
    let db = TestDb::new().await;
    let stream = unique("s");
    let id = db.enqueue(&stream, None, serde_json::json!({})).await;
    let mut relay = rediss_relay(&db, url, ca);
    let refusal = relay
        .wait_logged_while_running("cannot connect to Redis", 2, WAIT)
        .await;
    assert!(
        refusal.contains(reason),
        "the error must say why the certificate was refused: {refusal}"
    );
    assert_eq!(db.status(id).await, "committed");
    assert_eq!(db.attempts(id).await, 0, "nothing may be published");
    assert!(entries(&common::redis::url(), &stream).await.is_empty());
    relay.terminate(WAIT).await;
}

#[tokio::test]
async fn rediss_certificate_from_another_ca_is_refused_and_retried() {
    assert_rediss_refused(&tls_url(), &other_ca(), "UnknownIssuer").await;
}

#[tokio::test]
async fn rediss_certificate_for_another_host_is_refused() {
    // Signed by the trusted CA, but for elsewhere.invalid, in front of the plain Redis port.
    let upstream = url::Url::parse(&url()).unwrap();
    let proxy = TlsProxy::start("wrong-host", upstream.port().unwrap()).await;
    let url = format!("rediss://127.0.0.1:{}", proxy.port);
    assert_rediss_refused(&url, &ca(), "not valid for name").await;
}
