//! The relay binary publishing to Redis Streams, killed or stopped mid-stream, and started
//! before Redis answers.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::redis::{entries, url};
use common::{assert_in_order, unique, wait_for, RelayProcess, TestDb};
use nix::sys::signal::Signal;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

fn redis_env<'a>(url: &'a str, batch: &'a str) -> [(&'a str, &'a str); 3] {
    [
        ("OUTBOX_RELAY__BROKER__KIND", "redis"),
        ("OUTBOX_RELAY__BROKER__REDIS__URL", url),
        ("OUTBOX_RELAY__RELAY__BATCH_SIZE", batch),
    ]
}

#[tokio::test]
async fn kill_9_mid_stream_then_restart_loses_nothing() {
    let db = TestDb::new().await;
    let stream = unique("s");
    let ids = db.enqueue_many(&stream, 1, 3000, 20).await;
    let url = url();
    let env = redis_env(&url, "50");

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
    let got = entries(&url, &stream).await;
    let arrived: HashSet<Uuid> = got.iter().map(|e| e.message_id()).collect();
    let missing = ids.iter().filter(|id| !arrived.contains(id)).count();
    assert_eq!(missing, 0, "messages lost across kill -9");
    let duplicates = assert_in_order(got.iter().map(|e| (e.message_id(), e.json())));
    println!("kill -9 at {published_at_kill} published: {duplicates} duplicates re-sent");
}

#[tokio::test]
async fn sigterm_drains_records_acknowledged_entries_and_exits_zero() {
    let db = TestDb::new().await;
    let stream = unique("s");
    db.enqueue_many(&stream, 1, 3000, 20).await;
    let url = url();
    let mut relay = RelayProcess::spawn(&db.relay_url, &redis_env(&url, "200"));
    wait_for("some messages published", WAIT, || async {
        (db.count("published").await >= 200).then_some(())
    })
    .await;
    relay.signal(Signal::SIGTERM);
    let status = relay.wait_exit(WAIT).await;
    assert!(status.success(), "exit {status:?}; log:\n{}", relay.logs());
    // Every entry in the stream was recorded: nothing Redis acknowledged is still pending.
    let received: Vec<Uuid> = entries(&url, &stream)
        .await
        .iter()
        .map(|e| e.message_id())
        .collect();
    let unrecorded = db.not_published(&received).await;
    assert_eq!(
        unrecorded, 0,
        "acknowledged entries left unrecorded at shutdown"
    );
    assert_eq!(received.len() as i64, db.count("published").await);
}

#[tokio::test]
async fn unreachable_redis_is_retried_without_using_attempts_then_publishing_starts() {
    let db = TestDb::new().await;
    let stream = unique("s");
    let id = db.enqueue(&stream, None, serde_json::json!({})).await;
    // Nobody listens there: the relay is not ready and claims nothing.
    let down = "redis://relay:s3cret-pw@127.0.0.1:9";
    let mut relay = RelayProcess::spawn(&db.relay_url, &redis_env(down, "50"));
    let refusal = relay
        .wait_logged_while_running("cannot connect to Redis", 2, WAIT)
        .await;
    assert!(refusal.contains("127.0.0.1:9"), "{refusal}");
    assert_eq!(db.attempts(id).await, 0, "an outage uses up no attempts");
    assert!(
        !relay.logs().contains("s3cret-pw"),
        "the URL's password appears in the log"
    );
    relay.terminate(WAIT).await;

    let url = url();
    let relay = RelayProcess::spawn(&db.relay_url, &redis_env(&url, "50"));
    db.wait_status(id, "published").await;
    assert_eq!(entries(&url, &stream).await[0].message_id(), id);
    relay.terminate(WAIT).await;
}

#[tokio::test]
async fn a_replica_is_not_written_to_and_uses_up_no_attempts() {
    let db = TestDb::new().await;
    let stream = unique("s");
    let id = db.enqueue(&stream, None, serde_json::json!({})).await;
    let replica = common::redis::replica_url();
    let mut relay = RelayProcess::spawn(&db.relay_url, &redis_env(&replica, "50"));
    let refusal = relay
        .wait_logged_while_running("is a replica, which takes no writes", 2, WAIT)
        .await;
    assert!(refusal.contains("not ready"), "{refusal}");
    assert_eq!(
        db.attempts(id).await,
        0,
        "nothing is claimed while not ready"
    );
    relay.terminate(WAIT).await;
}
