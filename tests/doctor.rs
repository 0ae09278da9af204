//! `doctor` as an operator runs it: each check passes on a healthy setup, and each problem
//! is named with its fix, at every broker.

mod common;

use std::process::Output;

use common::TestDb;
use serde_json::{json, Value};

use common::run_binary as relay;

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn empty_database() -> String {
    common::create_database("t").await.1
}

/// `doctor -o json` against `db` with the relay's login, under `env`, and its findings.
fn doctor(db: &TestDb, env: &[(&str, &str)]) -> (Option<i32>, Vec<Value>) {
    let out = relay(
        &["doctor", "-o", "json", "--database-url", &db.relay_url],
        env,
    );
    (out.status.code(), findings(&out))
}

fn findings(out: &Output) -> Vec<Value> {
    serde_json::from_str(&stdout(out)).unwrap_or_else(|e| panic!("{e}: {}", stdout(out)))
}

fn verdict<'a>(all: &'a [Value], check: &str) -> &'a Value {
    all.iter()
        .find(|f| f["check"] == check)
        .unwrap_or_else(|| panic!("no {check} in {all:?}"))
}

#[tokio::test]
async fn doctor_passes_a_healthy_setup_and_names_the_fix_for_what_is_not() {
    let db = TestDb::new().await;
    let amqp = common::amqp_url();
    let broker = [("OUTBOX_RELAY__BROKER__AMQP__URL", amqp.as_str())];
    let out = relay(
        &["doctor", "-o", "json", "--database-url", &db.relay_url],
        &broker,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let all = findings(&out);
    for check in [
        "database",
        "schema",
        "grants",
        "broker",
        "commit fence",
        "stuck keys",
    ] {
        assert_eq!(verdict(&all, check)["verdict"], "ok", "{check}: {all:?}");
    }
    assert_eq!(verdict(&all, "lease")["verdict"], "warn", "no relay runs");

    // A key held back by a failing row, and a broker that does not answer.
    for n in 0..3 {
        db.enqueue("orders", Some("k-9"), json!({ "n": n })).await;
    }
    sqlx::query(
        "UPDATE outbox.messages SET attempts = 1, last_error = 'NOT_FOUND - no exchange',
                available_at = now() + interval '1 hour'
          WHERE id = (SELECT min(id) FROM outbox.messages)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let dead_port = format!("amqp://guest:guest@127.0.0.1:{}/%2f", common::free_port());
    let broker = [("OUTBOX_RELAY__BROKER__AMQP__URL", dead_port.as_str())];
    let out = relay(
        &["doctor", "-o", "json", "--database-url", &db.relay_url],
        &broker,
    );
    assert_eq!(out.status.code(), Some(3), "a failed check exits 3");
    let all = findings(&out);
    let b = verdict(&all, "broker");
    assert_eq!(b["verdict"], "fail");
    assert!(b["fix"].as_str().unwrap().contains("broker"), "{b}");
    let stuck = verdict(&all, "stuck keys");
    assert_eq!(stuck["verdict"], "warn");
    let detail = stuck["detail"].as_str().unwrap();
    assert!(
        detail.contains("k-9") && detail.contains("2 row(s) behind"),
        "{detail}"
    );
    let table = stdout(&relay(
        &["doctor", "--database-url", &db.relay_url],
        &broker,
    ));
    assert!(table.contains("FAIL") && table.contains("fix:"), "{table}");

    let out = relay(
        &[
            "doctor",
            "-o",
            "json",
            "--database-url",
            &empty_database().await,
        ],
        &broker,
    );
    assert_eq!(verdict(&findings(&out), "schema")["verdict"], "fail");
}

fn destinations(all: &[Value]) -> (String, String) {
    let d = verdict(all, "destinations");
    (
        d["verdict"].as_str().unwrap().to_string(),
        d["detail"].as_str().unwrap().to_string(),
    )
}

#[tokio::test]
async fn doctor_names_an_exchange_missing_at_rabbitmq() {
    let db = TestDb::new().await;
    let amqp = common::amqp_url();
    let env = [("OUTBOX_RELAY__BROKER__AMQP__URL", amqp.as_str())];
    let (code, all) = doctor(&db, &env);
    assert_eq!(code, Some(0));
    assert_eq!(destinations(&all), ("ok".into(), "no rows yet".into()));

    db.enqueue("amq.topic", Some("k"), json!({})).await;
    let (code, all) = doctor(&db, &env);
    assert_eq!(code, Some(0), "{all:?}");
    assert_eq!(destinations(&all).0, "ok");

    let missing = common::unique("doctor_missing");
    db.enqueue(&missing, Some("k"), json!({})).await;
    let (code, all) = doctor(&db, &env);
    assert_eq!(code, Some(3), "a missing exchange fails the check");
    let (verdict_of, detail) = destinations(&all);
    assert_eq!(verdict_of, "fail");
    assert!(
        detail.contains(&missing) && !detail.contains("amq.topic"),
        "{detail}"
    );
    assert_eq!(
        verdict(&all, "broker")["verdict"],
        "ok",
        "the publishing channels are not the lookup's"
    );
}

#[tokio::test]
async fn doctor_names_a_topic_missing_at_kafka() {
    let db = TestDb::new().await;
    let bootstrap = common::kafka::bootstrap();
    let env = [
        ("OUTBOX_RELAY__BROKER__KIND", "kafka"),
        (
            "OUTBOX_RELAY__BROKER__KAFKA__BOOTSTRAP_SERVERS",
            bootstrap.as_str(),
        ),
    ];
    let present = common::unique("doctor_topic");
    common::kafka::create_topic(&bootstrap, &present, 1).await;
    db.enqueue(&present, Some("k"), json!({})).await;
    let (code, all) = doctor(&db, &env);
    assert_eq!(code, Some(0), "{all:?}");
    assert_eq!(destinations(&all).0, "ok");

    let missing = common::unique("doctor_no_topic");
    db.enqueue(&missing, Some("k"), json!({})).await;
    let (code, all) = doctor(&db, &env);
    assert_eq!(code, Some(3));
    let (verdict_of, detail) = destinations(&all);
    assert_eq!(verdict_of, "fail");
    assert!(
        detail.contains(&missing) && !detail.contains(&present),
        "{detail}"
    );
    let (code, _) = doctor(&db, &env);
    assert_eq!(code, Some(3), "looking the topic up did not create it");
    let _ = common::kafka::delete_topic(&bootstrap, &present).await;
}

#[tokio::test]
async fn doctor_names_a_redis_key_of_another_type() {
    let db = TestDb::new().await;
    let url = common::redis::url();
    let env = [
        ("OUTBOX_RELAY__BROKER__KIND", "redis"),
        ("OUTBOX_RELAY__BROKER__REDIS__URL", url.as_str()),
    ];
    let stream = common::unique("doctor_stream");
    let string = common::unique("doctor_string");
    let fresh = common::unique("doctor_fresh");
    let mut redis = common::redis::connect(&url).await;
    let _: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("f")
        .arg("v")
        .query_async(&mut redis)
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(&string)
        .arg("v")
        .query_async(&mut redis)
        .await
        .unwrap();
    for d in [&stream, &string, &fresh] {
        db.enqueue(d, Some("k"), json!({})).await;
    }
    let (code, all) = doctor(&db, &env);
    assert_eq!(code, Some(3));
    let (verdict_of, detail) = destinations(&all);
    assert_eq!(verdict_of, "fail");
    assert!(
        detail.contains(&string) && detail.contains("holds a string"),
        "{detail}"
    );
    assert!(
        !detail.contains(&stream) && !detail.contains(&fresh),
        "{detail}"
    );

    let _: () = redis::cmd("DEL")
        .arg(&string)
        .query_async(&mut redis)
        .await
        .unwrap();
    let (code, all) = doctor(&db, &env);
    assert_eq!(code, Some(0), "{all:?}");
    let (verdict_of, detail) = destinations(&all);
    assert_eq!(verdict_of, "ok");
    assert!(
        detail.contains("creates") && detail.contains(&fresh) && !detail.contains(&stream),
        "{detail}"
    );
    let _: () = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut redis)
        .await
        .unwrap();
}

#[tokio::test]
async fn doctor_says_nsqd_creates_topics_on_publish() {
    let db = TestDb::new().await;
    let address = common::nsq::address();
    let env = [
        ("OUTBOX_RELAY__BROKER__KIND", "nsq"),
        (
            "OUTBOX_RELAY__BROKER__NSQ__NSQD_TCP_ADDRESS",
            address.as_str(),
        ),
    ];
    let topic = common::unique("doctor_topic");
    db.enqueue(&topic, Some("k"), json!({})).await;
    let (code, all) = doctor(&db, &env);
    assert_eq!(code, Some(0), "{all:?}");
    let (verdict_of, detail) = destinations(&all);
    assert_eq!(verdict_of, "ok");
    assert!(
        detail.contains("creates") && detail.contains(&topic),
        "{detail}"
    );
}
