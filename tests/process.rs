//! The relay binary as users run it: crashes, signals, bad configuration.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{assert_first_deliveries_in_order, wait_for, Rabbit, RelayProcess, TestDb};
use nix::sys::signal::Signal;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn kill_9_mid_stream_then_restart_loses_nothing() {
    let db = TestDb::new().await;
    let rabbit = Rabbit::connect().await;
    let (exchange, queue) = rabbit.fanout_with_queue().await;
    let ids = db.enqueue_many(&exchange, 1, 3000, 20).await;
    let env = [("OUTBOX_RELAY__RELAY__BATCH_SIZE", "50")];

    let relay = RelayProcess::spawn(&db.relay_url, &env);
    wait_for("some messages published", WAIT, || async {
        (db.count("published").await >= 200).then_some(())
    })
    .await;
    relay.signal(Signal::SIGKILL);
    drop(relay);
    let published_at_kill = db.count("published").await;
    assert!(published_at_kill < 3000, "the kill must land mid-stream");

    let _relay = RelayProcess::spawn(&db.relay_url, &env);
    wait_for("every message published after restart", WAIT, || async {
        (db.count("published").await == 3000).then_some(())
    })
    .await;
    let got = rabbit.drain(&queue).await;
    let arrived: HashSet<Uuid> = got.iter().map(|r| r.message_id()).collect();
    let missing = ids.iter().filter(|id| !arrived.contains(id)).count();
    assert_eq!(missing, 0, "messages lost across kill -9");
    let duplicates = assert_first_deliveries_in_order(&got);
    println!("kill -9 at {published_at_kill} published: {duplicates} duplicates re-sent");
}

#[tokio::test]
async fn sigterm_drains_records_confirms_and_exits_zero() {
    let db = TestDb::new().await;
    let rabbit = Rabbit::connect().await;
    let (exchange, queue) = rabbit.fanout_with_queue().await;
    db.enqueue_many(&exchange, 1, 3000, 20).await;

    let mut relay =
        RelayProcess::spawn(&db.relay_url, &[("OUTBOX_RELAY__RELAY__BATCH_SIZE", "200")]);
    wait_for("some messages published", WAIT, || async {
        (db.count("published").await >= 200).then_some(())
    })
    .await;
    relay.signal(Signal::SIGTERM);
    let status = relay.wait_exit(WAIT).await;
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        relay.logs()
    );
    assert!(
        relay.logs().contains("relay stopped"),
        "log:\n{}",
        relay.logs()
    );

    // Everything the broker confirmed was recorded: nothing received is still pending.
    let got = rabbit.drain(&queue).await;
    let received: Vec<Uuid> = got.iter().map(|r| r.message_id()).collect();
    let unrecorded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox.messages WHERE message_id = ANY($1) AND status <> 'published'",
    )
    .bind(&received)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        unrecorded, 0,
        "confirmed messages left unrecorded at shutdown"
    );
    assert_eq!(received.len() as i64, db.count("published").await);
}

#[tokio::test]
async fn unreachable_database_is_retried_not_fatal() {
    // Nothing listens on port 1 of loopback.
    let mut relay = RelayProcess::spawn("postgres://postgres@127.0.0.1:1/postgres", &[]);
    relay
        .wait_logged_while_running("database not ready", 2, WAIT)
        .await;
    relay.terminate(WAIT).await;
}

#[tokio::test]
async fn unreachable_broker_is_retried_then_publishing_starts() {
    let db = TestDb::new().await;
    let id = db.enqueue("nowhere", None, serde_json::json!({})).await;
    let mut relay = RelayProcess::spawn(
        &db.relay_url,
        &[(
            "OUTBOX_RELAY__BROKER__AMQP__URL",
            "amqp://guest:guest@127.0.0.1:1/%2f",
        )],
    );
    wait_for("two logged broker retries", WAIT, || async {
        (relay.logs().matches("broker not ready").count() >= 2).then_some(())
    })
    .await;
    let attempts: i32 =
        sqlx::query_scalar("SELECT attempts FROM outbox.messages WHERE message_id = $1")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        attempts, 0,
        "a broker outage must not use up a message's attempts"
    );
    relay.signal(Signal::SIGTERM);
    assert!(relay.wait_exit(WAIT).await.success());
}

fn check_config(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_outbox-relay"));
    cmd.args(args).env_remove("OUTBOX_RELAY_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run outbox-relay")
}

#[test]
fn config_errors_name_every_key_and_where_it_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("relay.toml");
    std::fs::write(
        &file,
        "[relay]\nbatch_size = 0\npoll_interval = \"soon\"\n[retry]\nmax_atempts = 3\n[broker]\nkind = \"nats\"\n",
    )
    .unwrap();
    let out = check_config(
        &["check-config", "--config", file.to_str().unwrap()],
        &[("OUTBOX_RELAY__DATABASE__URL", "mysql://x@localhost/db")],
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let path = file.display().to_string();
    for expected in [
        format!("relay.batch_size (from {path})"),
        format!("relay.poll_interval (from {path})"),
        format!("retry.max_atempts (from {path}): unknown key"),
        format!("broker.kind (from {path})"),
        "database.url (from OUTBOX_RELAY__DATABASE__URL)".to_string(),
    ] {
        assert!(
            stderr.contains(&expected),
            "missing `{expected}` in:\n{stderr}"
        );
    }

    // `run` refuses the same configuration before connecting anywhere.
    let out = check_config(&["run", "--config", file.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2));

    let out = check_config(
        &["check-config", "--config", "/nonexistent/relay.toml"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/relay.toml"));
}

#[test]
fn check_config_prints_effective_config_with_passwords_redacted() {
    let out = check_config(
        &["check-config"],
        &[
            (
                "OUTBOX_RELAY__DATABASE__URL",
                "postgres://relay:db-secret-1@127.0.0.1:5432/app",
            ),
            (
                "OUTBOX_RELAY__BROKER__AMQP__URL",
                "amqp://relay:amqp-secret-2@127.0.0.1:5672/%2f",
            ),
            ("OUTBOX_RELAY__RELAY__BATCH_SIZE", "64"),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("db-secret-1") && !stdout.contains("amqp-secret-2"),
        "{stdout}"
    );
    assert!(
        stdout.contains("postgres://relay:REDACTED@127.0.0.1:5432/app"),
        "{stdout}"
    );
    assert!(stdout.contains("batch_size = 64"), "{stdout}");
    // The printed configuration is itself a valid configuration file.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("printed.toml");
    std::fs::write(&file, stdout.as_bytes()).unwrap();
    let again = check_config(&["check-config", "--config", file.to_str().unwrap()], &[]);
    assert!(again.status.success(), "{again:?}");
}

#[test]
fn unknown_librdkafka_property_is_a_config_error() {
    let out = check_config(
        &["check-config"],
        &[
            ("OUTBOX_RELAY__BROKER__KIND", "kafka"),
            (
                "OUTBOX_RELAY__BROKER__KAFKA__PROPERTIES__NO.SUCH.PROPERTY",
                "1",
            ),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("broker.kafka.properties") && stderr.contains("no.such.property"),
        "{stderr}"
    );
}
