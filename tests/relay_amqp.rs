//! The relay against real Postgres and RabbitMQ, running in-process.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{
    assert_first_deliveries_in_order, start_relay, start_relay_with, test_config, unique, wait_for,
    Rabbit, RunningRelay, TestDb,
};
use lapin::types::AMQPValue;
use outbox_relay::publish::amqp::AmqpPublisher;
use serde_json::json;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

/// A test database, a direct exchange with one queue bound by `routing_key`, and a relay.
async fn direct_exchange_with_relay(
    routing_key: &str,
) -> (TestDb, Rabbit, String, String, RunningRelay) {
    let db = TestDb::new().await;
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    rabbit.declare_exchange(&exchange).await;
    let queue = rabbit.bound_queue(&exchange, routing_key).await;
    // With the relay's own publisher, as `run` builds it, and its health at hand.
    let config = test_config(&db);
    let publisher = Arc::new(AmqpPublisher::new(
        config.broker.amqp.clone(),
        config.relay.publish_timeout,
    ));
    let relay = start_relay_with(config, publisher).await;
    (db, rabbit, exchange, queue, relay)
}

#[tokio::test]
async fn committed_message_is_delivered_with_mapped_properties() {
    let db = TestDb::new().await;
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    rabbit.declare_exchange(&exchange).await;
    let by_routing_key = rabbit.bound_queue(&exchange, "orders.created").await;
    let by_message_key = rabbit.bound_queue(&exchange, "customer-7").await;
    let relay = start_relay(test_config(&db));

    let explicit: Uuid = sqlx::query_scalar(
        "SELECT outbox.enqueue($1, '{\"order\": 1}', message_key => 'customer-7',
                               routing_key => 'orders.created', headers => '{\"traceparent\": \"00-abc\"}')",
    )
    .bind(&exchange)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let keyed = db
        .enqueue(&exchange, Some("customer-7"), json!({"order": 2}))
        .await;

    let got = rabbit.collect(&by_routing_key, 1, WAIT).await;
    let m = &got[0];
    assert_eq!(m.message_id(), explicit);
    assert_eq!(m.routing_key, "orders.created");
    assert_eq!(m.json(), json!({"order": 1}));
    assert_eq!(m.properties.delivery_mode(), &Some(2), "persistent");
    assert_eq!(
        m.properties.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    let committed_at: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT committed_at FROM outbox.messages WHERE message_id = $1")
            .bind(explicit)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        m.properties.timestamp(),
        &Some(committed_at.timestamp() as u64)
    );
    let headers = m.properties.headers().as_ref().expect("headers");
    match headers.inner().get("traceparent") {
        Some(AMQPValue::LongString(v)) => assert_eq!(v.to_string(), "00-abc"),
        other => panic!("traceparent header: {other:?}"),
    }

    // Without a routing_key the message_key routes.
    let got = rabbit.collect(&by_message_key, 1, WAIT).await;
    assert_eq!(got[0].message_id(), keyed);
    assert_eq!(got[0].routing_key, "customer-7");

    db.wait_status(explicit, "published").await;
    db.wait_status(keyed, "published").await;
    let published_at_set: bool = sqlx::query_scalar(
        "SELECT bool_and(published_at IS NOT NULL AND attempts = 1) FROM outbox.messages",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(published_at_set);
    relay.stop().await;
}

#[tokio::test]
async fn prepared_rolled_back_and_expired_are_never_delivered() {
    let (db, rabbit, exchange, queue, relay) = direct_exchange_with_relay("k").await;

    let prepare = |ttl| db.prepare_with_ttl(&exchange, Some("k"), json!({"key": "k", "n": 0}), ttl);
    let undecided = prepare("1 hour").await;
    let rolled_back = prepare("1 hour").await;
    let expiring = prepare("100 milliseconds").await;
    assert!(db.rollback(rolled_back).await);
    // The sweeper (every 50 ms in tests) expires the short-lived one.
    db.wait_status(expiring, "rolled_back").await;
    assert!(
        !db.commit(expiring).await,
        "an expired message cannot be committed"
    );

    // A committed marker after all of them: once it is published, the relay has passed them.
    let marker = db
        .enqueue(&exchange, Some("k"), json!({"key": "k", "n": 1}))
        .await;
    db.wait_status(marker, "published").await;
    let got = rabbit.drain(&queue).await;
    let ids: Vec<Uuid> = got.iter().map(|r| r.message_id()).collect();
    assert_eq!(ids, vec![marker], "only the committed marker may arrive");
    assert_eq!(db.status(undecided).await, "prepared");
    assert_eq!(db.status(rolled_back).await, "rolled_back");
    relay.stop().await;
}

#[tokio::test]
async fn per_key_order_holds_while_the_exchange_is_missing_then_declared() {
    let db = TestDb::new().await;
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let relay = start_relay(test_config(&db));

    let keys = ["a", "b", "c"];
    let mut ids = Vec::new();
    for n in 0..30 {
        let key = keys[n % keys.len()];
        ids.push(
            db.enqueue(&exchange, Some(key), json!({"key": key, "n": n}))
                .await,
        );
    }
    // Let the relay fail on the missing exchange at least twice for the head of a key.
    wait_for("two failed attempts", WAIT, || async {
        let max: Option<i32> = sqlx::query_scalar("SELECT max(attempts) FROM outbox.messages")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        (max.unwrap_or(0) >= 2).then_some(())
    })
    .await;
    assert_eq!(db.count("published").await, 0);

    rabbit.declare_exchange(&exchange).await;
    let queue = unique("q");
    rabbit
        .channel
        .queue_declare(
            queue.as_str().into(),
            lapin::options::QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
    for key in keys {
        rabbit.bind(&queue, &exchange, key).await;
    }
    for id in &ids {
        db.wait_status(*id, "published").await;
    }
    let got = rabbit.drain(&queue).await;
    let duplicates = assert_first_deliveries_in_order(&got);
    assert_eq!(got.len() - duplicates, ids.len(), "every message arrived");
    relay.stop().await;
}

#[tokio::test]
async fn failing_destination_backs_off_then_goes_dead_while_others_flow() {
    let db = TestDb::new().await;
    let rabbit = Rabbit::connect().await;
    let good = unique("ex");
    let missing = unique("missing");
    rabbit.declare_exchange(&good).await;
    let queue = rabbit.bound_queue(&good, "k").await;
    let mut config = test_config(&db);
    config.retry.max_attempts = 3.try_into().unwrap();
    config.retry.initial_backoff = Duration::from_millis(200);
    config.retry.max_backoff = Duration::from_millis(400);
    let relay = start_relay(config);

    let poison = db
        .enqueue(&missing, Some("p"), json!({"key": "p", "n": 0}))
        .await;
    let behind = db
        .enqueue(&missing, Some("p"), json!({"key": "p", "n": 1}))
        .await;
    let mut good_ids = Vec::new();
    for n in 0..50 {
        good_ids.push(
            db.enqueue(&good, Some("k"), json!({"key": "k", "n": n}))
                .await,
        );
    }
    // The good destination flows while the poison one is still retrying.
    let got = rabbit.collect(&queue, good_ids.len(), WAIT).await;
    assert_eq!(got.len(), 50);
    assert_first_deliveries_in_order(&got);

    db.wait_status(poison, "dead").await;
    let (attempts, last_error, spent_ms): (i32, Option<String>, f64) = sqlx::query_as(
        "SELECT attempts, last_error, (extract(epoch FROM finished_at - committed_at) * 1000)::float8
           FROM outbox.messages WHERE message_id = $1",
    )
    .bind(poison)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(attempts, 3);
    let last_error = last_error.expect("last_error");
    assert!(
        last_error.contains("NOT_FOUND") || last_error.contains("404"),
        "{last_error}"
    );
    // Equal jitter: at least half of 200 ms and of 400 ms passed between the three attempts.
    assert!(
        spent_ms >= 300.0,
        "backoff was applied: only {spent_ms} ms between first and last attempt"
    );
    // The dead message no longer holds its key back: the next one is tried (and fails too).
    wait_for(
        "the message behind the dead one to be attempted",
        WAIT,
        || async {
            let a: i32 =
                sqlx::query_scalar("SELECT attempts FROM outbox.messages WHERE message_id = $1")
                    .bind(behind)
                    .fetch_one(&db.pool)
                    .await
                    .unwrap();
            (a >= 1).then_some(())
        },
    )
    .await;
    relay.stop().await;
}

#[tokio::test]
async fn unroutable_message_is_not_marked_published() {
    let db = TestDb::new().await;
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    rabbit.declare_exchange(&exchange).await; // no queue bound: mandatory publish is returned
    let mut config = test_config(&db);
    config.retry.max_attempts = 1000.try_into().unwrap();
    let relay = start_relay(config);
    let id = db.enqueue(&exchange, Some("nobody"), json!({})).await;
    wait_for("two returned attempts", WAIT, || async {
        let (attempts, err): (i32, Option<String>) = sqlx::query_as(
            "SELECT attempts, last_error FROM outbox.messages WHERE message_id = $1",
        )
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        (attempts >= 2).then_some(err)
    })
    .await
    .filter(|e| e.contains("NO_ROUTE"))
    .expect("last_error names NO_ROUTE");
    assert_eq!(
        db.status(id).await,
        "committed",
        "a returned message is not published"
    );

    // Once a queue is bound, the retry succeeds.
    let queue = rabbit.bound_queue(&exchange, "nobody").await;
    db.wait_status(id, "published").await;
    assert_eq!(rabbit.drain(&queue).await.len(), 1);
    relay.stop().await;
}

/// The next batch is claimed while the current one is published, so it can hold later rows
/// of a key whose row in the current batch then fails. Those rows must wait for it. Batches of
/// two rows, the first of key `k` returned as unroutable until its routing key is bound.
#[tokio::test]
async fn rows_claimed_while_an_earlier_row_of_their_key_fails_wait_for_it() {
    let db = TestDb::new().await;
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    rabbit.declare_exchange(&exchange).await;
    let queue = rabbit.bound_queue(&exchange, "bound").await;
    for n in 1..=8 {
        for key in ["k", "other"] {
            let routing_key = if key == "k" && n == 1 {
                "later"
            } else {
                "bound"
            };
            sqlx::query(
                "SELECT outbox.enqueue($1, jsonb_build_object('key', $2::text, 'n', $3::int),
                                       message_key => $2, routing_key => $4)",
            )
            .bind(&exchange)
            .bind(key)
            .bind(n)
            .bind(routing_key)
            .execute(&db.pool)
            .await
            .unwrap();
        }
    }
    let mut config = test_config(&db);
    config.relay.batch_size = 2.try_into().unwrap();
    config.retry.max_attempts = 1000.try_into().unwrap();
    let relay = start_relay(config);
    let pending_of = |key: &'static str| {
        let pool = db.pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM outbox.messages WHERE message_key = $1 AND status = 'committed'",
            )
            .bind(key)
            .fetch_one(&pool)
            .await
            .unwrap();
            n
        }
    };
    wait_for(
        "key `other` published, the head of `k` tried twice",
        WAIT,
        || async {
            let head_attempts: i32 = sqlx::query_scalar(
                "SELECT attempts FROM outbox.messages WHERE routing_key = 'later'",
            )
            .fetch_one(&db.pool)
            .await
            .unwrap();
            (head_attempts >= 2 && pending_of("other").await == 0).then_some(())
        },
    )
    .await;
    assert_eq!(
        pending_of("k").await,
        8,
        "no row of `k` went ahead of its head"
    );
    let early = rabbit.drain(&queue).await;
    assert!(
        early.iter().all(|m| m.json()["key"] == "other"),
        "{early:?}"
    );

    rabbit.bind(&queue, &exchange, "later").await;
    wait_for("key `k` published", WAIT, || async {
        (pending_of("k").await == 0).then_some(())
    })
    .await;
    let late = rabbit.drain(&queue).await;
    let duplicates = assert_first_deliveries_in_order(&late);
    assert_eq!(late.len() - duplicates, 8);
    relay.stop().await;
}

#[tokio::test]
async fn a_key_never_overtakes_a_row_whose_transaction_commits_late() {
    let (db, rabbit, exchange, queue, relay) = direct_exchange_with_relay("k").await;

    // A row goes out first: the relay holds the lease and reaches the broker.
    let sentinel = db
        .enqueue(&exchange, Some("k"), json!({"key": "k", "n": 0}))
        .await;
    db.wait_status(sentinel, "published").await;
    // The first row draws its commit_seq, but its transaction stays open...
    let mut slow = db.pool.begin().await.unwrap();
    let first: Uuid = sqlx::query_scalar(
        "SELECT outbox.enqueue($1, '{\"key\":\"k\",\"n\":1}', message_key => 'k')",
    )
    .bind(&exchange)
    .fetch_one(&mut *slow)
    .await
    .unwrap();
    // ...while a later row of the same key commits at once.
    let second = db
        .enqueue(&exchange, Some("k"), json!({"key": "k", "n": 2}))
        .await;
    // The relay turns many times in which it could wrongly publish the second row: while the
    // fence waits for the open writer it claims again every millisecond, a turn for starting
    // each claim and one for its answer.
    let beat = relay.health.as_ref().unwrap().task("relay").unwrap();
    let start = beat.turns();
    wait_for("fifty turns of the relay loop", WAIT, || {
        let turned = beat.turns() >= start + 50;
        async move { turned.then_some(()) }
    })
    .await;
    assert_eq!(
        db.status(second).await,
        "committed",
        "published before an earlier commit_seq"
    );
    slow.commit().await.unwrap();

    let got = rabbit.collect(&queue, 3, WAIT).await;
    let ids: Vec<Uuid> = got.iter().map(|r| r.message_id()).collect();
    assert_eq!(ids, vec![sentinel, first, second]);
    relay.stop().await;
}

#[tokio::test]
async fn message_over_the_broker_size_limit_goes_dead_at_once_and_others_flow() {
    // scripts/services.sh runs RabbitMQ with max_message_size = 1 MiB.
    let (db, rabbit, exchange, queue, relay) = direct_exchange_with_relay("k").await;
    let huge = db
        .enqueue(
            &exchange,
            Some("k"),
            json!({"key": "k", "n": 1, "pad": "x".repeat(2 << 20)}),
        )
        .await;
    let after = db
        .enqueue(&exchange, Some("k"), json!({"key": "k", "n": 2}))
        .await;
    db.wait_status(huge, "dead").await;
    db.wait_status(after, "published").await;
    let (attempts, last_error) = db.attempts_and_error(huge).await;
    assert_eq!(
        attempts, 1,
        "a permanent error is not retried: {last_error}"
    );
    assert!(last_error.contains("max size"), "{last_error}");
    let got = rabbit.drain(&queue).await;
    assert_eq!(
        got.iter().map(|r| r.message_id()).collect::<Vec<_>>(),
        vec![after]
    );
    relay.stop().await;
}

/// With `sweeper.published_retention = "0s"` the relay deletes each row once the broker
/// confirmed it, and nothing else: a row the broker refused stays, committed, for its retry,
/// and is deleted only after its own confirm.
#[tokio::test]
async fn delete_on_publish_removes_confirmed_rows_only() {
    let db = TestDb::new().await;
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    rabbit.declare_exchange(&exchange).await;
    let queue = rabbit.bound_queue(&exchange, "k").await;
    let mut config = test_config(&db);
    config.sweeper.published_retention = Duration::ZERO;
    config.retry.max_attempts = 1000.try_into().unwrap();
    let relay = start_relay(config);

    let refused = db.enqueue(&exchange, Some("nobody"), json!({})).await;
    let mut sent = Vec::new();
    for n in 0..3 {
        sent.push(db.enqueue(&exchange, Some("k"), json!({ "n": n })).await);
    }
    let got = rabbit.collect(&queue, 3, WAIT).await;
    assert_eq!(
        got.iter().map(|m| m.message_id()).collect::<Vec<_>>(),
        sent,
        "delivered once each, in commit order"
    );
    wait_for("the confirmed rows deleted", WAIT, || async {
        (rows_left(&db, &sent).await == 0).then_some(())
    })
    .await;
    wait_for("two returned attempts", WAIT, || async {
        (db.attempts(refused).await >= 2).then_some(())
    })
    .await;
    assert_eq!(db.status(refused).await, "committed");

    let nobody = rabbit.bound_queue(&exchange, "nobody").await;
    wait_for(
        "the retried row deleted after its confirm",
        WAIT,
        || async { (rows_left(&db, &[refused]).await == 0).then_some(()) },
    )
    .await;
    let got = rabbit.drain(&nobody).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message_id(), refused);
    assert_eq!(
        db.count("published").await,
        0,
        "nothing is kept as published"
    );
    relay.stop().await;
}

/// The claims look only past the pending floor, which only rises. Should a committed row ever
/// end up below it (a wrong commit fence did that once), the backlog check finds it and the
/// next claim searches from the start (`metrics.backlog_interval` is 200 ms in tests).
#[tokio::test]
async fn a_committed_row_the_claims_passed_is_found_and_published() {
    let db = TestDb::new().await;
    let rabbit = Rabbit::connect().await;
    let (exchange, queue) = rabbit.fanout_with_queue().await;
    let relay = start_relay(test_config(&db));

    // Once a claim has seen this row, the floor is at least its commit_seq, 1 or more.
    let first = db.enqueue(&exchange, Some("first"), json!({})).await;
    assert_eq!(rabbit.collect(&queue, 1, WAIT).await[0].message_id(), first);

    // A row committed with a commit_seq below the floor, as a fence that moved too early would
    // leave it: the update does not touch status, so the trigger keeps out of it.
    let mut tx = db.pool.begin().await.unwrap();
    let passed: Uuid =
        sqlx::query_scalar("SELECT outbox.enqueue($1, '{}', message_key => 'passed')")
            .bind(&exchange)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    sqlx::query("UPDATE outbox.messages SET commit_seq = 0 WHERE message_id = $1")
        .bind(passed)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let got = rabbit.collect(&queue, 1, WAIT).await;
    assert_eq!(got[0].message_id(), passed);
    db.wait_status(passed, "published").await;
    relay.stop().await;
}

/// How many of these messages still have a row.
async fn rows_left(db: &TestDb, ids: &[Uuid]) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox.messages WHERE message_id = ANY($1)")
        .bind(ids)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}
