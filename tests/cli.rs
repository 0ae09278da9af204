//! The admin command line as an operator uses it: output formats that parse, exit codes that
//! hold, dry runs that change nothing, filters, completions, man pages, and commands that need
//! only a database URL.

mod common;

use std::process::Output;

use common::TestDb;
use serde_json::{json, Value};
use uuid::Uuid;

use common::run_binary as relay;

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `relay` with `--database-url` of `db` (the owner's, as an operator's would be).
fn admin(db: &TestDb, args: &[&str]) -> Output {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--database-url", &db.url]);
    relay(&all, &[])
}

/// Parks the messages as dead, as the relay does with a permanent error; `age_secs` ago.
async fn make_dead(db: &TestDb, ids: &[Uuid], age_secs: i64) {
    sqlx::query(
        "UPDATE outbox.messages SET status = 'dead', attempts = 1,
                finished_at = now() - $2 * interval '1 second',
                last_error = 'broker said no: NOT_FOUND - no exchange'
          WHERE message_id = ANY ($1)",
    )
    .bind(ids)
    .bind(age_secs)
    .execute(&db.pool)
    .await
    .unwrap();
}

async fn count(db: &TestDb, status: &str) -> i64 {
    db.count(status).await
}

#[tokio::test]
async fn status_prints_the_same_fields_as_json_and_yaml_and_fails_on_conditions() {
    let db = TestDb::new().await;
    let dead = db.enqueue("orders", Some("k"), json!({"n": 1})).await;
    make_dead(&db, &[dead], 0).await;
    db.enqueue("orders", Some("k"), json!({"n": 2})).await;
    sqlx::query("UPDATE outbox.messages SET committed_at = now() - interval '2 hours' WHERE status = 'committed'")
        .execute(&db.pool)
        .await
        .unwrap();

    let out = admin(&db, &["status", "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let from_json: Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    let out = admin(&db, &["status", "-o", "yaml"]);
    let from_yaml: Value = serde_yaml_ng::from_str(&stdout(&out)).expect("YAML");
    for v in [&from_json, &from_yaml] {
        assert_eq!(v["counts"]["dead"], 1, "{v}");
        assert_eq!(v["pending"], 1, "{v}");
        assert!(
            v["oldest_pending_age_seconds"].as_f64().unwrap() > 7000.0,
            "{v}"
        );
        assert!(v["leases"].is_array() && v["partitions"].is_array(), "{v}");
    }
    let table = stdout(&admin(&db, &["status"]));
    assert!(
        table.contains("dead") && table.contains("backlog: 1 pending"),
        "{table}"
    );

    let out = admin(&db, &["status", "--fail-on", "dead"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("1 dead message"), "{}", stderr(&out));
    let out = admin(&db, &["status", "--fail-on", "stale=3h"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "younger than 3h: {}",
        stderr(&out)
    );
    let out = admin(&db, &["status", "--fail-on", "stale=1h", "-o", "json"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("oldest pending"), "{}", stderr(&out));
    serde_json::from_str::<Value>(&stdout(&out)).expect("the report is still printed");
    let out = admin(&db, &["status", "--fail-on", "late"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a bad condition is a usage error"
    );
}

#[tokio::test]
async fn dead_show_prints_one_message_and_its_payload_only_when_asked() {
    let db = TestDb::new().await;
    let id = db
        .enqueue("orders", Some("k-7"), json!({"card": "secret-ish"}))
        .await;
    make_dead(&db, &[id], 0).await;
    let id = id.to_string();

    let out = admin(&db, &["dead", "show", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("k-7") && text.contains("NOT_FOUND - no exchange"),
        "{text}"
    );
    assert!(
        !text.contains("secret-ish"),
        "no payload unless asked: {text}"
    );

    let out = admin(&db, &["dead", "show", &id, "--payload", "-o", "json"]);
    let v: Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    assert_eq!(v["status"], "dead");
    assert_eq!(v["attempts"], 1);
    assert_eq!(v["message_key"], "k-7");
    assert!(v["payload"].as_str().unwrap().contains("secret-ish"), "{v}");
    let out = admin(&db, &["dead", "show", &id, "-o", "yaml"]);
    let v: Value = serde_yaml_ng::from_str(&stdout(&out)).expect("YAML");
    assert!(v.get("payload").is_none(), "{v}");

    let out = admin(&db, &["dead", "show", &Uuid::new_v4().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no message with id"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn dry_runs_change_nothing_and_filters_narrow_what_changes() {
    let db = TestDb::new().await;
    let mut keyed = Vec::new();
    for n in 0..3 {
        keyed.push(db.enqueue("orders", Some("a"), json!({ "n": n })).await);
    }
    let other = db.enqueue("orders", Some("b"), json!({})).await;
    let old = db.enqueue("orders", Some("c"), json!({})).await;
    make_dead(&db, &keyed, 0).await;
    make_dead(&db, &[other], 0).await;
    make_dead(&db, &[old], 3 * 86400).await;

    let listed = |args: &'static [&'static str]| {
        let out = admin(&db, args);
        assert!(out.status.success(), "{}", stderr(&out));
        let rows: Vec<Value> = serde_json::from_str(&stdout(&out)).expect("JSON");
        rows.len()
    };
    assert_eq!(listed(&["dead", "list", "-o", "json"]), 5);
    assert_eq!(listed(&["dead", "list", "--key", "a", "-o", "json"]), 3);
    assert_eq!(listed(&["dead", "list", "--since", "1d", "-o", "json"]), 4);

    let out = admin(
        &db,
        &["dead", "requeue", "--all", "--key", "a", "--dry-run"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("would have requeued 3"),
        "{}",
        stdout(&out)
    );
    let out = admin(&db, &["dead", "discard", "--all", "--dry-run"]);
    assert!(
        stdout(&out).contains("would have discarded 5"),
        "{}",
        stdout(&out)
    );
    assert_eq!(count(&db, "dead").await, 5, "dry runs change nothing");

    let out = admin(&db, &["dead", "requeue", "--all", "--key", "a"]);
    assert!(stdout(&out).contains("requeued 3"), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("requeued 3 of 3"),
        "progress: {}",
        stderr(&out)
    );
    assert_eq!(count(&db, "committed").await, 3);
    let out = admin(&db, &["dead", "discard", "--all", "--since", "1d"]);
    assert!(stdout(&out).contains("discarded 1"), "{}", stdout(&out));
    assert_eq!(count(&db, "dead").await, 1, "the old one stays");
    let out = admin(&db, &["dead", "requeue"]);
    assert_eq!(out.status.code(), Some(2), "--id or --all is required");
}

#[test]
fn completions_and_man_pages_come_from_the_definitions() {
    let out = relay(&["completions", "bash"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let script = stdout(&out);
    assert!(
        script.contains("outbox-relay") && script.contains("requeue"),
        "{script}"
    );
    let dir = tempfile::tempdir().unwrap();
    let out = relay(&["man", "--out-dir", dir.path().to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let page = std::fs::read_to_string(dir.path().join("outbox-relay.1")).expect("man page");
    assert!(
        page.contains(".TH") && page.contains("outbox\\-relay"),
        "{page}"
    );
    assert!(dir.path().join("outbox-relay-dead-requeue.1").exists());
}

#[test]
fn version_names_the_build_revision() {
    let out = relay(&["--version"], &[]);
    let text = stdout(&out);
    assert!(
        text.contains(env!("CARGO_PKG_VERSION")) && text.contains(env!("OUTBOX_RELAY_REVISION")),
        "{text}"
    );
}

#[tokio::test]
async fn admin_commands_need_only_a_database_url() {
    let db = TestDb::new().await;
    let id = db.enqueue("orders", None, json!({})).await;
    make_dead(&db, &[id], 0).await;
    let out = relay(
        &["dead", "list", "-o", "json"],
        &[("DATABASE_URL", &db.url)],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: Vec<Value> = serde_json::from_str(&stdout(&out)).expect("JSON");
    assert_eq!(rows.len(), 1);
    let out = relay(&["migrate", "--database-url", &db.url], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains(&db.url) && !stdout(&out).contains(&db.url),
        "the URL is never printed"
    );
    let out = relay(&["check-config", "-o", "json"], &[]);
    let config: Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    assert_eq!(config["relay"]["partitions"], 1);
}

/// An empty database of its own (no schema).
async fn empty_database() -> String {
    common::create_database("t").await.1
}

fn pending(url: &str) -> Vec<Value> {
    let out = relay(
        &["migrate", "--status", "-o", "json", "--database-url", url],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let states: Vec<Value> = serde_json::from_str(&stdout(&out)).expect("JSON");
    assert!(!states.is_empty());
    states
        .into_iter()
        .filter(|s| s["applied"] == false)
        .collect()
}

#[tokio::test]
async fn migrate_lists_what_it_applies_and_what_is_pending_with_its_locks() {
    let url = empty_database().await;
    let before = pending(&url);
    assert!(
        before
            .iter()
            .all(|s| !s["locks"].as_str().unwrap().is_empty()),
        "{before:?}"
    );
    let table = stdout(&relay(
        &["migrate", "--status", "--database-url", &url],
        &[],
    ));
    assert!(
        table.contains("pending") && table.contains("CREATE INDEX"),
        "{table}"
    );

    let out = relay(&["migrate", "--database-url", &url], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(
        text.lines().filter(|l| l.starts_with("applied ")).count(),
        before.len(),
        "one line per migration applied: {text}"
    );
    assert!(
        text.contains("ms)") && text.contains("up to date"),
        "{text}"
    );
    assert!(pending(&url).is_empty());
    let again = stdout(&relay(&["migrate", "--database-url", &url], &[]));
    assert!(
        !again.contains("applied "),
        "nothing left to apply: {again}"
    );
}

/// `--print-sql` is the contract for schemas applied with Flyway, Liquibase or by a DBA: its
/// script leaves a schema the relay accepts and a later `migrate` continues from.
#[tokio::test]
async fn a_schema_applied_from_print_sql_is_accepted_and_migrate_continues_from_it() {
    let url = empty_database().await;
    let out = relay(&["migrate", "--print-sql", "--database-url", &url], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let script = stdout(&out);
    assert!(pending(&url).len() > 1, "printing applies nothing");
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(script))
        .execute(&pool)
        .await
        .expect("the printed script applies");
    assert!(
        pending(&url).is_empty(),
        "every migration counts as applied"
    );
    outbox_relay::store::check_schema(&pool)
        .await
        .expect("the relay's start-up check accepts it");
    let out = relay(&["migrate", "--database-url", &url], &[]);
    assert!(
        out.status.success(),
        "migrate agrees with it: {}",
        stderr(&out)
    );
    assert!(!stdout(&out).contains("applied "), "{}", stdout(&out));
    let all = stdout(&relay(
        &["migrate", "--print-sql", "--all", "--database-url", &url],
        &[],
    ));
    assert!(
        all.contains("-- 0001 ") && all.contains("-- 0011 "),
        "--all prints every one"
    );
    pool.close().await;
}
