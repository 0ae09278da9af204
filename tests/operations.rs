//! Operating the relay: two replicas, health endpoints, the admin commands (metrics:
//! tests/monitoring.rs).

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{
    assert_first_deliveries_in_order, free_port, http_request, leader_of, unique, wait_for, Rabbit,
    RelayProcess, TestDb,
};
use lapin::ExchangeKind;
use nix::sys::signal::Signal;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

async fn assert_delivered_in_order(rabbit: &Rabbit, queue: &str, ids: &[Uuid]) -> usize {
    let got = rabbit.drain(queue).await;
    let arrived: HashSet<Uuid> = got.iter().map(|r| r.message_id()).collect();
    assert_eq!(
        ids.iter().filter(|id| !arrived.contains(id)).count(),
        0,
        "messages lost"
    );
    assert_first_deliveries_in_order(&got)
}

#[tokio::test]
async fn standby_takes_over_after_kill_9_of_the_publisher() {
    let db = TestDb::new().await;
    let rabbit = Rabbit::connect().await;
    let (exchange, queue) = rabbit.fanout_with_queue().await;
    let env = [("OUTBOX_RELAY__RELAY__BATCH_SIZE", "50")];
    let mut replicas = vec![
        RelayProcess::spawn(&db.relay_url, &env),
        RelayProcess::spawn(&db.relay_url, &env),
    ];
    let leader = leader_of(&[&replicas[0], &replicas[1]]).await;
    let ids = db.enqueue_many(&exchange, 1, 3000, 20).await;
    wait_for("some published", WAIT, || async {
        (db.count("published").await >= 300).then_some(())
    })
    .await;

    replicas[leader].signal(Signal::SIGKILL);
    let killed_at = Instant::now();
    let standby = replicas.remove(1 - leader);
    drop(replicas);
    assert!(
        db.count("published").await < 3000,
        "the kill must land mid-stream"
    );
    wait_for("the standby to lead", WAIT, || async {
        standby.is_leader().await.then_some(())
    })
    .await;
    let takeover = killed_at.elapsed();
    wait_for("everything published", WAIT, || async {
        (db.count("published").await == 3000).then_some(())
    })
    .await;
    let duplicates = assert_delivered_in_order(&rabbit, &queue, &ids).await;
    println!(
        "takeover after kill -9: {takeover:?} (lease ttl 1s); {duplicates} duplicates re-sent"
    );
    assert!(
        takeover < Duration::from_secs(5),
        "takeover took {takeover:?}"
    );
}

#[tokio::test]
async fn a_paused_publisher_does_not_publish_once_another_holds_the_lease() {
    let db = TestDb::new().await;
    let rabbit = Rabbit::connect().await;
    let (exchange, queue) = rabbit.fanout_with_queue().await;
    let env = [("OUTBOX_RELAY__RELAY__BATCH_SIZE", "50")];
    let replicas = [
        RelayProcess::spawn(&db.relay_url, &env),
        RelayProcess::spawn(&db.relay_url, &env),
    ];
    let leader = leader_of(&[&replicas[0], &replicas[1]]).await;
    let (paused, standby) = (&replicas[leader], &replicas[1 - leader]);
    let mut ids = db.enqueue_many(&exchange, 1, 3000, 20).await;
    wait_for("some published", WAIT, || async {
        (db.count("published").await >= 300).then_some(())
    })
    .await;

    paused.signal(Signal::SIGSTOP);
    wait_for("the standby to lead", WAIT, || async {
        standby.is_leader().await.then_some(())
    })
    .await;
    // The new leader works in commit order, so once it has published more, the rows the paused
    // replica had in flight are recorded: its late outcome updates cannot count them again.
    let at_takeover = db.count("published").await;
    wait_for("the new leader to make progress", WAIT, || async {
        (db.count("published").await >= at_takeover + 200).then_some(())
    })
    .await;
    paused.signal(Signal::SIGCONT);
    // The resumed replica notices it lost the lease...
    wait_for("the resumed replica to stand by", WAIT, || async {
        (!paused.is_leader().await).then_some(())
    })
    .await;
    let sample = format!("outbox_relay_messages_published_total{{destination=\"{exchange}\"}}");
    let before = paused.metric(&sample).await.unwrap_or(0.0);
    // ...and publishes nothing more while the new leader drains the rest and more.
    ids.extend(db.enqueue_many(&exchange, 3001, 4000, 20).await);
    wait_for("everything published", WAIT, || async {
        (db.count("published").await == 4000).then_some(())
    })
    .await;
    assert_eq!(
        paused.metric(&sample).await.unwrap_or(0.0),
        before,
        "the paused replica published after losing the lease"
    );
    assert!(standby.is_leader().await);
    let duplicates = assert_delivered_in_order(&rabbit, &queue, &ids).await;
    println!("SIGSTOP/SIGCONT: {duplicates} duplicates re-sent");
}

#[tokio::test]
async fn readiness_follows_the_broker_on_the_publisher_and_liveness_does_not() {
    let db = TestDb::new().await;
    let relay = RelayProcess::spawn(
        &db.url,
        &[(
            "OUTBOX_RELAY__BROKER__AMQP__URL",
            "amqp://guest:guest@127.0.0.1:1/%2f",
        )],
    );
    wait_for("the relay to lead", WAIT, || async {
        relay.is_leader().await.then_some(())
    })
    .await;
    let (status, body) = wait_for("readyz to report the broker", WAIT, || async {
        let r = relay.get("/readyz").await?;
        r.1.contains("broker").then_some(r)
    })
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        relay.get("/livez").await.map(|r| r.0),
        Some(200),
        "a broker outage is not a liveness failure"
    );

    // A standby needs only the database.
    let healthy = RelayProcess::spawn(&db.relay_url, &[]);
    wait_for("the standby to be ready", WAIT, || async {
        (healthy.get("/readyz").await?.0 == 200).then_some(())
    })
    .await;
    assert!(!healthy.is_leader().await);

    // With the database unreachable nothing is ready, and the process stays alive.
    let no_db = RelayProcess::spawn("postgres://postgres@127.0.0.1:1/postgres", &[]);
    wait_for("livez", WAIT, || async {
        (no_db.get("/livez").await?.0 == 200).then_some(())
    })
    .await;
    assert_eq!(no_db.get("/readyz").await.map(|r| r.0), Some(503));
}

fn admin(db: &TestDb, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_outbox-relay"))
        .args(args)
        .env_remove("OUTBOX_RELAY_CONFIG")
        .env("OUTBOX_RELAY__DATABASE__URL", &db.url)
        .env("OUTBOX_RELAY__LOG__LEVEL", "warn")
        .output()
        .expect("run outbox-relay");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test]
async fn admin_commands_inspect_requeue_and_discard_dead_messages_while_the_relay_runs() {
    let db = TestDb::new().await;
    let rabbit = Rabbit::connect().await;
    let late_exchange = unique("late");
    let relay = RelayProcess::spawn(&db.relay_url, &[("OUTBOX_RELAY__RETRY__MAX_ATTEMPTS", "1")]);
    let first = db
        .enqueue(
            &late_exchange,
            Some("k"),
            serde_json::json!({"key": "k", "n": 1}),
        )
        .await;
    let second = db
        .enqueue(
            &late_exchange,
            Some("k"),
            serde_json::json!({"key": "k", "n": 2}),
        )
        .await;
    let other = db
        .enqueue(&unique("gone"), None, serde_json::json!({}))
        .await;
    for id in [first, second, other] {
        db.wait_status(id, "dead").await;
    }
    wait_for("a lease holder", WAIT, || async {
        relay.is_leader().await.then_some(())
    })
    .await;

    let (ok, out) = admin(&db, &["status", "--json"]);
    assert!(ok, "{out}");
    let status: serde_json::Value = serde_json::from_str(&out).expect(&out);
    assert_eq!(status["counts"]["dead"], 3);
    assert_eq!(status["pending"], 0);
    let dead = status["dead_by_destination"].as_array().unwrap();
    assert_eq!(dead.len(), 2);
    assert!(
        dead.iter()
            .any(|d| d["destination"] == late_exchange.as_str()
                && d["count"] == 2
                && d["last_error"].as_str().unwrap().contains("NOT_FOUND")),
        "{out}"
    );
    assert_eq!(status["leases"][0]["held"], true, "{out}");

    let (ok, table) = admin(&db, &["status"]);
    assert!(
        ok && table.contains("dead") && table.contains(&late_exchange) && table.contains("held by"),
        "{table}"
    );

    let (ok, out) = admin(
        &db,
        &["dead", "list", "--destination", &late_exchange, "--json"],
    );
    assert!(ok, "{out}");
    let listed: Vec<serde_json::Value> = serde_json::from_str(&out).expect(&out);
    let listed: Vec<&str> = listed
        .iter()
        .map(|m| m["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, vec![first.to_string(), second.to_string()]);

    // Fix the cause, then requeue: the relay publishes them, in their original order.
    rabbit
        .declare_exchange_of(&late_exchange, ExchangeKind::Fanout)
        .await;
    let queue = rabbit.bound_queue(&late_exchange, "").await;
    let (ok, out) = admin(
        &db,
        &["dead", "requeue", "--all", "--destination", &late_exchange],
    );
    assert!(ok && out.contains("requeued 2"), "{out}");
    db.wait_status(second, "published").await;
    let got = rabbit.drain(&queue).await;
    assert_eq!(
        got.iter().map(|r| r.message_id()).collect::<Vec<_>>(),
        vec![first, second]
    );

    let (ok, out) = admin(&db, &["dead", "discard", "--id", &other.to_string()]);
    assert!(ok && out.contains("discarded 1"), "{out}");
    let remaining: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox.messages WHERE message_id = $1")
            .bind(other)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(remaining, 0);

    let (ok, out) = admin(&db, &["dead", "requeue"]);
    assert!(!ok, "a selection is required: {out}");
    drop(relay);
}

/// The HTTP listener is for probes and scraping only: bound where `http.listen` says, nothing
/// but the three GET endpoints, no way to change anything over HTTP.
#[tokio::test]
async fn http_listener_serves_only_health_and_metrics_on_the_chosen_address() {
    let db = TestDb::new().await;
    let port = free_port();
    // Another loopback address than the default's 127.0.0.1, so that binding to it is observable.
    let chosen: std::net::SocketAddr = ([127, 0, 0, 2], port).into();
    let relay = RelayProcess::spawn(
        &db.relay_url,
        &[("OUTBOX_RELAY__HTTP__LISTEN", &chosen.to_string())],
    );
    wait_for(
        "the relay to serve /livez on the chosen address",
        WAIT,
        || async { (http_request(chosen, "GET", "/livez").await?.0 == 200).then_some(()) },
    )
    .await;
    assert_eq!(
        http_request(([127, 0, 0, 1], port).into(), "GET", "/livez").await,
        None,
        "nothing may listen on another address"
    );
    for path in ["/readyz", "/metrics"] {
        let (status, _) = http_request(chosen, "GET", path).await.unwrap();
        assert!(status == 200 || status == 503, "{path}: {status}");
    }
    for path in [
        "/",
        "/admin",
        "/dead",
        "/metrics/../admin",
        "/livez/x",
        "/debug/pprof",
    ] {
        let (status, _) = http_request(chosen, "GET", path).await.unwrap();
        assert_eq!(status, 404, "GET {path}");
    }
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        for path in ["/livez", "/readyz", "/metrics"] {
            let (status, _) = http_request(chosen, method, path).await.unwrap();
            assert_eq!(status, 405, "{method} {path}");
        }
    }
    relay.terminate(WAIT).await;
}
