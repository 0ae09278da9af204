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
    let unrecorded = db.not_published(&received).await;
    assert_eq!(
        unrecorded, 0,
        "confirmed messages left unrecorded at shutdown"
    );
    assert_eq!(received.len() as i64, db.count("published").await);
}

#[tokio::test]
async fn a_returned_message_is_logged_without_its_payload_and_a_clean_stop_logs_no_error() {
    let db = TestDb::new().await;
    let rabbit = Rabbit::connect().await;
    let exchange = common::unique("ex");
    rabbit.declare_exchange(&exchange).await; // no queue bound: the broker returns the message
    let secret = "payload-secret-7f3a9c";
    let id = db
        .enqueue(&exchange, Some("k"), serde_json::json!({ "card": secret }))
        .await;
    let mut relay = RelayProcess::spawn(&db.url, &[]);
    wait_for("a returned attempt recorded", WAIT, || async {
        (db.attempts(id).await >= 1).then_some(())
    })
    .await;
    relay.signal(Signal::SIGTERM);
    assert!(relay.wait_exit(WAIT).await.success());
    let logs = relay.logs();
    assert!(
        logs.contains("NO_ROUTE"),
        "the return is logged:
{logs}"
    );
    // The broker client's own report of a returned message carries the body (as bytes).
    let body_bytes = format!("{:?}", &secret.as_bytes()[..8]);
    let body_bytes = body_bytes.trim_matches(['[', ']']);
    assert!(
        !logs.contains(secret) && !logs.contains(body_bytes),
        "payload in the log:\n{logs}"
    );
    assert!(
        !logs.contains("ERROR"),
        "a clean stop logs no error:\n{logs}"
    );
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
    relay
        .wait_logged_while_running("broker not ready", 2, WAIT)
        .await;
    assert_eq!(
        db.attempts(id).await,
        0,
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

/// Asserts that no secret appears in any of the texts a user or a log collector could see.
fn assert_no_secret(secrets: &[&str], texts: &[(&str, String)]) {
    for (what, text) in texts {
        for secret in secrets {
            assert!(!text.contains(secret), "`{secret}` in {what}:\n{text}");
        }
    }
}

/// Everything a failing relay shows: `check-config`'s output, then the log of `run` after
/// `retries` retries of `retrying` (a log message), and `/metrics` and `/readyz` meanwhile.
async fn outputs_while_failing(
    db_url: &str,
    env: &[(&str, &str)],
    retrying: &str,
    retries: usize,
) -> Vec<(&'static str, String)> {
    let mut all_env = vec![("OUTBOX_RELAY__DATABASE__URL", db_url)];
    all_env.extend_from_slice(env);
    let checked = check_config(&["check-config"], &all_env);
    assert!(checked.status.success(), "{checked:?}");

    let mut relay = RelayProcess::spawn(db_url, env);
    relay
        .wait_logged_while_running(retrying, retries, WAIT)
        .await;
    let (_, metrics) = relay.get("/metrics").await.expect("/metrics served");
    let (ready, readyz) = relay.get("/readyz").await.expect("/readyz served");
    assert_eq!(ready, 503, "not ready while {retrying}: {readyz}");
    relay.signal(Signal::SIGTERM);
    assert!(relay.wait_exit(WAIT).await.success());
    vec![
        (
            "check-config stdout",
            String::from_utf8_lossy(&checked.stdout).into(),
        ),
        (
            "check-config stderr",
            String::from_utf8_lossy(&checked.stderr).into(),
        ),
        ("the relay's stdout and stderr", relay.logs()),
        ("/metrics", metrics),
        ("/readyz", readyz),
    ]
}

#[tokio::test]
async fn wrong_amqp_credentials_are_retried_and_no_password_is_shown() {
    let db = TestDb::new().await;
    // The test Postgres trusts loopback, so this password is accepted and ignored; it must
    // still never be shown.
    let db_secret = "db-pw-5b1e0c77";
    let db_url = db
        .url
        .replacen("postgres@", &format!("postgres:{db_secret}@"), 1);
    assert!(db_url.contains(db_secret), "{db_url}");
    let amqp_secret = "amqp-pw-91d2f6aa";
    let amqp = common::amqp_url().replacen("guest:guest@", &format!("guest:{amqp_secret}@"), 1);
    assert!(amqp.contains(amqp_secret), "{amqp}");

    let outputs = outputs_while_failing(
        &db_url,
        &[("OUTBOX_RELAY__BROKER__AMQP__URL", &amqp)],
        "broker not ready",
        4,
    )
    .await;
    assert_no_secret(&[db_secret, amqp_secret], &outputs);
    let logs = &outputs[2].1;
    let refusals: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("broker not ready"))
        .collect();
    for line in &refusals {
        assert!(
            line.contains("cannot connect to RabbitMQ at amqp://guest:REDACTED@127.0.0.1")
                && line.contains("ACCESS_REFUSED"),
            "the broker and the cause are logged: {line}"
        );
    }
    // Backoff with equal jitter: the 4th delay is in [200ms, 400ms], the 1st in [25ms, 50ms].
    let delays: Vec<Duration> = refusals.iter().map(|l| retry_in(l)).collect();
    assert!(delays[3] > delays[0], "{delays:?}");
}

/// The `retry_in` field of a text log line (a Debug-formatted Duration).
fn retry_in(line: &str) -> Duration {
    let value = line
        .split("retry_in=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no retry_in in {line}"));
    let unit_at = value
        .find(|c: char| c.is_alphabetic())
        .unwrap_or_else(|| panic!("no unit in {value}"));
    let (number, unit) = value.split_at(unit_at);
    let number: f64 = number.parse().unwrap();
    let seconds = match unit {
        "s" => number,
        "ms" => number / 1e3,
        "µs" => number / 1e6,
        "ns" => number / 1e9,
        _ => panic!("unit of {value}"),
    };
    Duration::from_secs_f64(seconds)
}

#[tokio::test]
async fn unreachable_database_with_password_is_retried_and_no_password_is_shown() {
    let db_secret = "db-pw-0c4d9a21";
    // Nothing listens on port 1 of loopback.
    let db_url = format!("postgres://relay:{db_secret}@127.0.0.1:1/postgres");
    let outputs = outputs_while_failing(
        &db_url,
        &[("OUTBOX_RELAY__DATABASE__CONNECT_TIMEOUT", "1s")],
        "database not ready",
        2,
    )
    .await;
    assert_no_secret(&[db_secret], &outputs);
    let logs = &outputs[2].1;
    assert!(logs.contains("relay:REDACTED@127.0.0.1:1"), "{logs}");
}

#[tokio::test]
async fn failing_kafka_sasl_login_is_retried_and_no_password_is_shown() {
    let db = TestDb::new().await;
    let sasl_secret = "sasl-pw-77e3b4c0";
    let bootstrap = common::kafka::bootstrap();
    let outputs = outputs_while_failing(
        &db.url,
        &[
            ("OUTBOX_RELAY__BROKER__KIND", "kafka"),
            ("OUTBOX_RELAY__BROKER__KAFKA__BOOTSTRAP_SERVERS", &bootstrap),
            ("OUTBOX_RELAY__BROKER__KAFKA__CONNECT_TIMEOUT", "1s"),
            (
                "OUTBOX_RELAY__BROKER__KAFKA__PROPERTIES__SECURITY.PROTOCOL",
                "sasl_plaintext",
            ),
            (
                "OUTBOX_RELAY__BROKER__KAFKA__PROPERTIES__SASL.MECHANISM",
                "PLAIN",
            ),
            (
                "OUTBOX_RELAY__BROKER__KAFKA__PROPERTIES__SASL.USERNAME",
                "relay",
            ),
            (
                "OUTBOX_RELAY__BROKER__KAFKA__PROPERTIES__SASL.PASSWORD",
                sasl_secret,
            ),
        ],
        "broker not ready",
        2,
    )
    .await;
    assert_no_secret(&[sasl_secret], &outputs);
    let logs = &outputs[2].1;
    assert!(
        logs.contains("Authentication failure"),
        "the SASL login was tried:\n{logs}"
    );
}

#[test]
fn environment_errors_exit_2_naming_each_variable_and_key() {
    let out = check_config(
        &["check-config"],
        &[
            ("OUTBOX_RELAY__RELAY__PUBLISH_TIMEOUT", "10 parsecs"),
            ("OUTBOX_RELAY__RELAY__MAX_IN_FLIGHT", "-5"),
            ("OUTBOX_RELAY__SWEEPER__BATCH_SIZE", "0"),
            ("OUTBOX_RELAY__BROKER__KIND", "nats"),
            ("OUTBOX_RELAY__BROKER__AMQP__URL", "amqp://[::1"),
            ("OUTBOX_RELAY__DATABASE__URL", "not a url"),
            ("OUTBOX_RELAY__RELAY__BATCH_SIZ", "5"),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "relay.publish_timeout (from OUTBOX_RELAY__RELAY__PUBLISH_TIMEOUT): invalid value string \"10 parsecs\", expected a duration",
        "relay.max_in_flight (from OUTBOX_RELAY__RELAY__MAX_IN_FLIGHT): invalid value signed int `-5`",
        "sweeper.batch_size (from OUTBOX_RELAY__SWEEPER__BATCH_SIZE): invalid value unsigned int `0`, expected a nonzero",
        "broker.kind (from OUTBOX_RELAY__BROKER__KIND): unknown variant: found `nats`",
        "broker.amqp.url (from OUTBOX_RELAY__BROKER__AMQP__URL): not a valid URL",
        "database.url (from OUTBOX_RELAY__DATABASE__URL): not a valid URL",
        "relay.batch_siz (from OUTBOX_RELAY__RELAY__BATCH_SIZ): unknown key",
    ] {
        assert!(stderr.contains(expected), "missing `{expected}` in:\n{stderr}");
    }
}

#[test]
fn an_unreadable_config_path_exits_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    // A directory: unreadable as a file even for root, which these tests may run as (root
    // reads a chmod 000 file, so that case is only checked when it really is unreadable).
    let out = check_config(
        &["check-config", "--config", dir.path().to_str().unwrap()],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&dir.path().display().to_string()) && stderr.contains("Is a directory"),
        "{stderr}"
    );

    let file = dir.path().join("relay.toml");
    std::fs::write(&file, "[relay]\nbatch_size = 5\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o000)).unwrap();
    if std::fs::read(&file).is_err() {
        let out = check_config(&["check-config", "--config", file.to_str().unwrap()], &[]);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&file.display().to_string()) && stderr.contains("ermission denied"),
            "{stderr}"
        );
    }
}
