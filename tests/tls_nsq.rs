//! TLS to nsqd (its tls_v1 upgrade after IDENTIFY) against the local nsqd, whose certificate
//! the local CA signed: the right CA works, another CA is refused before anything is sent.

mod common;

use std::time::Duration;

use common::nsq::{address, collect, nsq_test_config};
use common::tls::{ca, other_ca};
use common::{start_relay, unique, TestDb};
use outbox_relay::config::Config;
use outbox_relay::publish::nsq::NsqPublisher;
use outbox_relay::publish::Publisher;

const WAIT: Duration = Duration::from_secs(30);

/// TLS to the test nsqd, trusting the CA file `ca` (as `broker.nsq.tls_ca_file` is read).
fn with_tls(mut config: Config, ca: &str) -> Config {
    config.broker.nsq.tls_v1 = true;
    config.broker.nsq.tls_ca_file = ca.to_string();
    config.broker.nsq.tls_ca_pem = Some(std::fs::read_to_string(ca).expect("CA file"));
    config
}

#[tokio::test]
async fn tls_with_the_local_ca_publishes() {
    let db = TestDb::new().await;
    let topic = unique("t");
    let relay = start_relay(with_tls(nsq_test_config(&db, &address()), &ca()));
    let id = db.enqueue(&topic, None, serde_json::json!({})).await;
    db.wait_status(id, "published").await;
    assert_eq!(collect(&topic, 1, WAIT).await[0].message_id(), id);
    relay.stop().await;
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_at_connect() {
    let db = TestDb::new().await;
    let config = with_tls(nsq_test_config(&db, &address()), &other_ca());
    let publisher = NsqPublisher::new(config.broker.nsq, Duration::from_secs(5)).unwrap();
    let e = publisher.ready().await.unwrap_err();
    assert!(!e.is_permanent(), "retried: the CA may be fixed");
    assert!(e.chain().contains("UnknownIssuer"), "{}", e.chain());
}
