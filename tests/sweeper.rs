//! Expiry and purge against a real Postgres.

mod common;

use std::time::Duration;

use common::{test_config, wait_for, TestDb};
use outbox_relay::store::{self, MessageStatus};
use outbox_relay::sweeper::Sweeper;
use tokio_util::sync::CancellationToken;

const DB_TIMEOUT: Duration = Duration::from_secs(30);
const WAIT: Duration = Duration::from_secs(30);

/// Inserts `n` rows with `status`, finished `age` ago.
async fn rows(db: &TestDb, status: &str, n: i64, age: &str) {
    sqlx::query(
        "INSERT INTO outbox.messages (status, destination, payload, finished_at)
         SELECT $1::text::outbox.message_status, 'd', '\\x00', now() - $3::interval FROM generate_series(1, $2)",
    )
    .bind(status)
    .bind(n)
    .bind(age)
    .execute(&db.pool)
    .await
    .unwrap();
}

async fn counts(db: &TestDb) -> Vec<(String, i64)> {
    sqlx::query_as("SELECT status::text, count(*) FROM outbox.messages GROUP BY 1 ORDER BY 1")
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn purge_deletes_only_rows_past_their_retention_in_batches() {
    let db = TestDb::new().await;
    rows(&db, "published", 5, "2 days").await;
    rows(&db, "published", 2, "1 hour").await;
    rows(&db, "rolled_back", 3, "3 days").await;
    rows(&db, "rolled_back", 1, "1 minute").await;
    rows(&db, "dead", 2, "3 days").await; // dead retention is longer
    rows(&db, "dead", 1, "30 days").await;
    rows(&db, "committed", 2, "30 days").await; // pending rows are never purged
    rows(&db, "prepared", 1, "30 days").await;

    // One call deletes at most one batch.
    assert_eq!(
        store::purge(
            &db.pool,
            MessageStatus::Published,
            Duration::from_secs(86400),
            2
        )
        .await
        .unwrap(),
        2
    );

    let mut config = test_config(&db).sweeper;
    config.batch_size = 2.try_into().unwrap();
    config.published_retention = Duration::from_secs(24 * 3600);
    config.rolled_back_retention = Duration::from_secs(24 * 3600);
    config.dead_retention = Duration::from_secs(14 * 24 * 3600);
    let sweeper = Sweeper::new(db.relay_pool().await, config, None, DB_TIMEOUT);
    let purged = sweeper
        .purge_once(&CancellationToken::new(), None)
        .await
        .unwrap();
    assert_eq!(purged, 3 + 3 + 1);
    assert_eq!(
        counts(&db).await,
        vec![
            ("committed".into(), 2),
            ("dead".into(), 2),
            ("prepared".into(), 1),
            ("published".into(), 2),
            ("rolled_back".into(), 1),
        ]
    );
}

#[tokio::test]
async fn expiry_rolls_back_every_expired_prepared_row_and_nothing_else() {
    let db = TestDb::new().await;
    for ttl in ["1 millisecond"; 5].into_iter().chain(["1 hour"]) {
        db.prepare_with_ttl("d", None, serde_json::json!({}), ttl)
            .await;
    }
    db.enqueue("d", None, serde_json::json!({})).await;
    sqlx::query("SELECT pg_sleep(0.01)")
        .execute(&db.pool)
        .await
        .unwrap();

    let mut config = test_config(&db).sweeper;
    config.batch_size = 2.try_into().unwrap();
    let sweeper = Sweeper::new(db.relay_pool().await, config, None, DB_TIMEOUT);
    assert_eq!(
        sweeper
            .expire_once(&CancellationToken::new(), None)
            .await
            .unwrap(),
        5
    );
    assert_eq!(
        counts(&db).await,
        vec![
            ("committed".into(), 1),
            ("prepared".into(), 1),
            ("rolled_back".into(), 5)
        ]
    );
    let stamped: bool = sqlx::query_scalar(
        "SELECT bool_and(finished_at IS NOT NULL AND commit_seq IS NULL) FROM outbox.messages WHERE status = 'rolled_back'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(stamped);
}

#[tokio::test]
async fn sweeper_runs_only_on_the_lease_holder() {
    use outbox_relay::health::Health;
    use outbox_relay::lease::Lease;
    use std::sync::Arc;

    let db = TestDb::new().await;
    let id = db
        .prepare_with_ttl("d", None, serde_json::json!({}), "1 millisecond")
        .await;
    let config = test_config(&db);
    // Another replica holds the lease.
    store::acquire_lease(
        &db.pool,
        &config.ha.lease_name,
        "other-replica",
        Duration::from_secs(30),
    )
    .await
    .unwrap()
    .expect("lease for the other replica");
    let relay_pool = db.relay_pool().await;
    let health = Arc::new(Health::new(Duration::from_secs(300)));
    let lease = Arc::new(Lease::new(
        relay_pool.clone(),
        config.ha.clone(),
        health.clone(),
        DB_TIMEOUT,
    ));
    lease.tick().await;
    assert!(
        lease.current().is_none(),
        "the lease belongs to the other replica"
    );

    let sweeper = Arc::new(Sweeper::new(
        relay_pool,
        config.sweeper.clone(),
        Some(lease.clone()),
        DB_TIMEOUT,
    ));
    let token = CancellationToken::new();
    let beat = health.heartbeat("sweeper-expire");
    let task = tokio::spawn({
        let (s, t, b) = (sweeper.clone(), token.clone(), beat.clone());
        async move { s.run_expiry(t, &b).await }
    });
    // The sweeper turns several times (every 50 ms) without the lease: nothing is expired.
    let start = beat.turns();
    wait_for("five sweeper turns", WAIT, || {
        let turned = beat.turns() >= start + 5;
        async move { turned.then_some(()) }
    })
    .await;
    assert_eq!(db.status(id).await, "prepared", "a standby must not sweep");

    store::release_lease(&db.pool, &config.ha.lease_name, "other-replica")
        .await
        .unwrap();
    lease.tick().await;
    assert!(lease.current().is_some());
    db.wait_status(id, "rolled_back").await;
    token.cancel();
    task.await.unwrap();
}
