//! TLS to Postgres (verify-full), RabbitMQ (amqps) and Kafka (librdkafka ssl), against local
//! servers whose certificate a local CA signed: the right CA works, another CA is refused.

mod common;

use std::time::Duration;

use common::kafka::{consume_with, create_topic_with};
use common::tls::{amqps_url, ca, other_ca, require_tls_services, verify_full, TlsKafka, TlsProxy};
use common::{Rabbit, RelayProcess, TestDb};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn postgres_verify_full_with_the_local_ca_publishes() {
    let db = TestDb::new().await;
    require_tls_services(&db).await;
    let rabbit = Rabbit::connect().await;
    let (exchange, queue) = rabbit.fanout_with_queue().await;
    let relay = RelayProcess::spawn(&verify_full(&db.relay_url, &ca()), &[]);
    let id = db.enqueue(&exchange, None, serde_json::json!({})).await;
    assert_eq!(rabbit.collect(&queue, 1, WAIT).await[0].message_id(), id);
    db.wait_status(id, "published").await;
    let tls: Vec<bool> = sqlx::query_scalar(
        "SELECT DISTINCT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
          WHERE a.datname = $1 AND a.application_name = 'outbox-relay'",
    )
    .bind(&db.name)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(tls, vec![true], "every relay connection uses TLS");
    relay.terminate(WAIT).await;
}

#[tokio::test]
async fn postgres_certificate_from_another_ca_is_refused_and_retried() {
    let db = TestDb::new().await;
    require_tls_services(&db).await;
    let id = db.enqueue("never", None, serde_json::json!({})).await;
    let mut relay = RelayProcess::spawn(&verify_full(&db.relay_url, &other_ca()), &[]);
    let refusal = relay
        .wait_logged_while_running("database not ready", 2, WAIT)
        .await;
    assert!(
        refusal.contains("TLS") && refusal.contains("certificate"),
        "the error must say the TLS certificate was refused: {refusal}"
    );
    assert_eq!(db.status(id).await, "committed");
    // A connection that was wrongly accepted would have tried, and failed, to publish it.
    assert_eq!(db.attempts(id).await, 0, "nothing may be published");
    relay.terminate(WAIT).await;
}

/// The relay publishing through RabbitMQ at the amqps `url`, trusting the CA file `ca`.
fn amqps_relay(db: &TestDb, url: &str, ca: &str) -> RelayProcess {
    RelayProcess::spawn(
        &db.relay_url,
        &[
            ("OUTBOX_RELAY__BROKER__AMQP__URL", url),
            ("OUTBOX_RELAY__BROKER__AMQP__TLS_CA_FILE", ca),
        ],
    )
}

#[tokio::test]
async fn amqps_with_the_local_ca_publishes() {
    let db = TestDb::new().await;
    require_tls_services(&db).await;
    let rabbit = Rabbit::connect().await;
    let (exchange, queue) = rabbit.fanout_with_queue().await;
    let relay = amqps_relay(&db, &amqps_url(), &ca());
    let id = db.enqueue(&exchange, None, serde_json::json!({})).await;
    assert_eq!(rabbit.collect(&queue, 1, WAIT).await[0].message_id(), id);
    db.wait_status(id, "published").await;
    // The relay's connection went to the TLS listener.
    assert!(relay
        .logs()
        .lines()
        .any(|l| l.contains("connected to RabbitMQ") && l.contains("url=amqps://")));
    relay.terminate(WAIT).await;
}

/// The relay connecting to `url` and trusting `ca` keeps retrying, says why (`reason`),
/// publishes nothing.
async fn assert_amqps_refused(url: &str, ca: &str, reason: &str) {
    let db = TestDb::new().await;
    require_tls_services(&db).await;
    let rabbit = Rabbit::connect().await;
    let (exchange, _queue) = rabbit.fanout_with_queue().await;
    let id = db.enqueue(&exchange, None, serde_json::json!({})).await;
    let mut relay = amqps_relay(&db, url, ca);
    let refusal = relay
        .wait_logged_while_running("cannot connect to RabbitMQ", 2, WAIT)
        .await;
    assert!(
        refusal.contains("invalid peer certificate") && refusal.contains(reason),
        "the error must say why the certificate was refused: {refusal}"
    );
    assert!(!refusal.contains("guest:guest"), "no password in logs");
    assert_eq!(db.status(id).await, "committed");
    // A connection that was wrongly accepted would have tried, and failed, to publish it.
    assert_eq!(db.attempts(id).await, 0, "nothing may be published");
    relay.terminate(WAIT).await;
}

#[tokio::test]
async fn amqps_certificate_from_another_ca_is_refused_and_retried() {
    assert_amqps_refused(&amqps_url(), &other_ca(), "UnknownIssuer").await;
}

#[tokio::test]
async fn amqps_certificate_for_another_host_is_refused() {
    // Signed by the trusted CA, but for elsewhere.invalid, in front of the plain AMQP port.
    let upstream = url::Url::parse(&common::amqp_url()).unwrap();
    let proxy = TlsProxy::start("wrong-host", upstream.port().unwrap()).await;
    let url = format!("amqps://guest:guest@127.0.0.1:{}/%2f", proxy.port);
    assert_amqps_refused(&url, &ca(), "not valid for name").await;
}

#[test]
fn amqps_ca_file_that_cannot_be_read_is_a_config_error() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_outbox-relay"))
        .arg("check-config")
        .env_remove("OUTBOX_RELAY_CONFIG")
        .env("OUTBOX_RELAY__BROKER__AMQP__URL", amqps_url())
        .env(
            "OUTBOX_RELAY__BROKER__AMQP__TLS_CA_FILE",
            "/nonexistent/ca.pem",
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "broker.amqp.tls_ca_file (from OUTBOX_RELAY__BROKER__AMQP__TLS_CA_FILE): cannot read /nonexistent/ca.pem"
        ),
        "{stderr}"
    );
}

/// The relay publishing to `kafka` over TLS, trusting the CA file `ca`.
fn kafka_relay(db: &TestDb, kafka: &TlsKafka, ca: &str) -> RelayProcess {
    let props = TlsKafka::properties(ca).map(|(k, v)| {
        (
            format!(
                "OUTBOX_RELAY__BROKER__KAFKA__PROPERTIES__{}",
                k.to_uppercase()
            ),
            v,
        )
    });
    let mut env: Vec<(&str, &str)> = props
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    env.extend([
        ("OUTBOX_RELAY__BROKER__KIND", "kafka"),
        (
            "OUTBOX_RELAY__BROKER__KAFKA__BOOTSTRAP_SERVERS",
            kafka.bootstrap.as_str(),
        ),
        ("OUTBOX_RELAY__BROKER__KAFKA__CONNECT_TIMEOUT", "2s"),
        ("OUTBOX_RELAY__RELAY__PUBLISH_TIMEOUT", "5s"),
    ]);
    RelayProcess::spawn(&db.relay_url, &env)
}

/// The Kafka TLS listener presenting `cert`, a topic of the test's own, and a test database.
async fn tls_kafka_with_topic(cert: &str) -> (TlsKafka, String, TestDb) {
    let kafka = TlsKafka::listener(cert);
    let topic = common::unique("t");
    create_topic_with(&kafka.client(), &topic, 1).await;
    (kafka, topic, TestDb::new().await)
}

#[tokio::test]
async fn kafka_over_tls_with_the_local_ca_delivers() {
    let (kafka, topic, db) = tls_kafka_with_topic("server").await;
    let relay = kafka_relay(&db, &kafka, &ca());
    let id = db
        .enqueue(&topic, Some("k"), serde_json::json!({"n": 1}))
        .await;
    db.wait_status(id, "published").await;
    let got = consume_with(&kafka.client(), &topic, 1, 1, WAIT).await;
    assert_eq!(got[0].message_id(), id);
    relay.terminate(WAIT).await;
}

/// The relay publishing to a TLS broker presenting `cert`, trusting `ca`: it reports the
/// refused certificate and publishes nothing.
async fn assert_kafka_refused(cert: &str, ca: &str) {
    let kafka = TlsKafka::listener(cert);
    let db = TestDb::new().await;
    let id = db
        .enqueue(&common::unique("t"), None, serde_json::json!({}))
        .await;
    let mut relay = kafka_relay(&db, &kafka, ca);
    relay
        .wait_logged_while_running("broker not ready", 2, WAIT)
        .await;
    let logs = relay.logs();
    assert!(
        logs.contains("certificate verify failed"),
        "the relay must report the refused certificate:\n{logs}"
    );
    assert_eq!(db.status(id).await, "committed");
    // A connection that was wrongly accepted would have tried, and failed, to publish it.
    assert_eq!(db.attempts(id).await, 0, "nothing may be published");
    relay.terminate(WAIT).await;
}

#[tokio::test]
async fn kafka_certificate_from_another_ca_is_refused() {
    assert_kafka_refused("server", &other_ca()).await;
}

#[tokio::test]
async fn kafka_certificate_for_another_host_is_refused() {
    assert_kafka_refused("wrong-host", &ca()).await;
}
