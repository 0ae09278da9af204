//! Every client library end to end: its example writer (clients/*/examples, or ExampleWriter
//! in the Java tests) writes a JSON message, a bytes message and a confirmed two-phase message
//! as a member of `outbox_writer`; the relay publishes them to RabbitMQ, where they arrive once
//! each, in commit order, with their payloads and content types. `scripts/clients.sh setup`
//! installs what the writers need (test.sh runs it first); the Go writer is covered by
//! tests/check_back.rs.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{start_relay, test_config, unique, Rabbit, TestDb, WRITER_LOGIN};
use tokio::process::Command;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

fn clients() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("clients")
}

fn as_writer(url: &str) -> url::Url {
    let mut u = url::Url::parse(url).unwrap();
    u.set_username(WRITER_LOGIN).unwrap();
    u
}

/// A `jdbc:postgresql:` URL of `url`.
fn jdbc(url: &url::Url) -> String {
    format!(
        "jdbc:postgresql://{}:{}{}?user={}",
        url.host_str().unwrap(),
        url.port().unwrap(),
        url.path(),
        url.username()
    )
}

fn ready(path: PathBuf) -> PathBuf {
    assert!(
        path.exists(),
        "{} is missing: run scripts/clients.sh setup first",
        path.display()
    );
    path
}

async fn writer_command(lang: &str, outbox: &url::Url, local: &str, exchange: &str) -> Command {
    let dir = clients().join(lang);
    let mut cmd = match lang {
        "python" => {
            let mut c = Command::new(ready(dir.join(".venv/bin/python")));
            c.env("PYTHONPATH", dir.join("src"))
                .arg("examples/writer.py")
                .args([outbox.as_str(), local, exchange]);
            c
        }
        "typescript" => {
            ready(dir.join("node_modules/tsx"));
            let mut c = Command::new("node");
            c.args(["--import", "tsx", "examples/writer.ts"]).args([
                outbox.as_str(),
                local,
                exchange,
            ]);
            c
        }
        "java" => {
            let classpath = std::fs::read_to_string(ready(dir.join("target/classpath.txt")))
                .expect("the Java classpath");
            let mut c = Command::new("java");
            c.arg("-cp")
                .arg(format!(
                    "target/classes:target/test-classes:{}",
                    classpath.trim()
                ))
                .arg("dev.outboxrelay.client.ExampleWriter")
                .args([
                    jdbc(outbox),
                    jdbc(&url::Url::parse(local).unwrap()),
                    exchange.to_string(),
                ]);
            c
        }
        other => panic!("no writer for {other}"),
    };
    cmd.current_dir(dir);
    cmd
}

async fn round_trip(lang: &str) {
    let (db, local, rabbit) = tokio::join!(TestDb::new(), TestDb::new(), Rabbit::connect());
    let exchange = unique("ex");
    rabbit.declare_exchange(&exchange).await;
    let queue = rabbit.bound_queue(&exchange, "k").await;
    let relay = start_relay(test_config(&db));

    let out = writer_command(lang, &as_writer(&db.url), &local.url, &exchange)
        .await
        .output()
        .await
        .expect("run the writer");
    assert!(
        out.status.success(),
        "{lang} writer: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ids: Vec<Uuid> = String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .map(|id| id.parse().expect("a message id"))
        .collect();
    assert_eq!(ids.len(), 3, "{lang} writer printed three ids");

    let got = rabbit.collect(&queue, 3, WAIT).await;
    let delivered: Vec<Uuid> = got.iter().map(|m| m.message_id()).collect();
    assert_eq!(delivered, ids, "each once, in commit order");
    assert_eq!(got[0].json()["lang"], lang);
    let content_type = |i: usize| {
        got[i]
            .properties
            .content_type()
            .as_ref()
            .map(|s| s.to_string())
    };
    assert_eq!(content_type(1).as_deref(), Some("application/x-bytes"));
    assert_eq!(&got[1].payload[..2], &[0, 255]);
    assert_eq!(content_type(2).as_deref(), Some("application/json"));
    assert_eq!(got[2].json()["two_phase"], true);
    db.wait_all(&ids, "published").await;
    relay.stop().await;
}

#[tokio::test]
async fn python_writes_reach_rabbitmq() {
    round_trip("python").await;
}

#[tokio::test]
async fn typescript_writes_reach_rabbitmq() {
    round_trip("typescript").await;
}

#[tokio::test]
async fn java_writes_reach_rabbitmq() {
    round_trip("java").await;
}
