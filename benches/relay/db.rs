//! Bench databases: fresh ones, filled, drained in process.

use super::*;

/// Each part of a run leaves a few hundred MB in its database; drop them (before each part and
/// at the end), and any an interrupted run left behind. Runs of the bench never overlap.
pub(crate) async fn drop_bench_databases(admin: &PgPool) {
    let names: Vec<String> = sqlx::query_scalar(
        r"SELECT datname FROM pg_catalog.pg_database WHERE datname LIKE 'bench\_%'",
    )
    .fetch_all(admin)
    .await
    .expect("list bench databases");
    for name in names {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(admin)
        .await
        .expect("drop a bench database");
    }
}

pub(crate) async fn admin_pool() -> PgPool {
    PgPoolOptions::new()
        .max_connections(1)
        .connect(&admin_database_url())
        .await
        .expect("admin connection")
}

/// A new database for the next part of the run: its pool (with the relay's own session
/// settings, so that the database ceiling measures its path) and its URL. The databases of the
/// parts before are dropped first: their autovacuum work would otherwise land in this part's
/// figures.
pub(crate) async fn fresh_db() -> (PgPool, String) {
    let admin = admin_pool().await;
    drop_bench_databases(&admin).await;
    admin.close().await;
    let db = TestDb::create(&DbOptions {
        prefix: "bench",
        max_connections: 4,
        relay_session: true,
    })
    .await;
    (db.pool, db.url)
}

pub(crate) async fn fill(pool: &PgPool, destination: &str, rows: i64) {
    // Batches of 10,000 rows per transaction, like a busy application would write them.
    fill_by(pool, destination, rows, 10_000).await;
}

/// `rows` rows in transactions of `per_transaction` rows, then analysed and checkpointed.
pub(crate) async fn fill_by(pool: &PgPool, destination: &str, rows: i64, per_transaction: i64) {
    let mut done = 0;
    while done < rows {
        let n = (rows - done).min(per_transaction);
        sqlx::query(
            "INSERT INTO outbox.messages (destination, message_key, payload)
             SELECT $1, 'k' || (g % $2), $3 FROM generate_series(1, $4) g",
        )
        .bind(destination)
        .bind(KEYS)
        .bind(payload())
        .bind(n)
        .execute(pool)
        .await
        .unwrap();
        done += n;
    }
    sqlx::query("ANALYZE outbox.messages")
        .execute(pool)
        .await
        .unwrap();
    // Writes the fill's dirty pages out now, so that the checkpoint does not land in the
    // measurement that follows.
    sqlx::query("CHECKPOINT").execute(pool).await.unwrap();
}

/// Runs the relay in-process until `rows` rows are published; returns messages per second.
/// Only for the database ceiling, whose publisher cannot be configured in the product.
/// `drained` is cancelled once the drain is seen done (within [`wait_drained`]'s 50 ms), before
/// the relay stops.
pub(crate) async fn drain_in_process<P: Publisher>(
    pool: &PgPool,
    config: Config,
    publisher: P,
    rows: i64,
    drained: &CancellationToken,
) -> f64 {
    let token = CancellationToken::new();
    let started = Instant::now();
    let relay = tokio::spawn(app::run_with(
        pool.clone(),
        Arc::new(publisher),
        config,
        Arc::new(Health::new(std::time::Duration::from_secs(300))),
        token.clone(),
    ));
    wait_drained(pool).await;
    let rate = rows as f64 / started.elapsed().as_secs_f64();
    drained.cancel();
    token.cancel();
    let _ = relay.await;
    rate
}

/// Waits until no committed row is left (a row stays committed until its confirm is recorded).
///
/// Polls the status of the newest row, a primary-key lookup, and counts the committed rows
/// only once that one is done: a count every 50 ms walks the pending index, which costs the
/// database more the bigger the backlog, and under an open snapshot it visits every row
/// published so far. That work would be charged to the drain.
pub(crate) async fn wait_drained(pool: &PgPool) {
    // Generous: the slowest drain here takes under a minute; a stuck relay must not hang the run.
    let deadline = Instant::now() + Duration::from_secs(600);
    let newest: Option<i64> = sqlx::query_scalar("SELECT max(id) FROM outbox.messages")
        .fetch_one(pool)
        .await
        .unwrap();
    let mut newest_done = newest.is_none();
    loop {
        if !newest_done {
            // Gone counts as done: with delete on publish the relay deletes confirmed rows.
            newest_done = sqlx::query_scalar(
                "SELECT status <> 'committed' FROM outbox.messages WHERE id = $1",
            )
            .bind(newest)
            .fetch_optional(pool)
            .await
            .unwrap()
            .unwrap_or(true);
        }
        if newest_done {
            let left: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM outbox.messages WHERE status = 'committed'",
            )
            .fetch_one(pool)
            .await
            .unwrap();
            if left == 0 {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "rows still committed after 10 minutes; see target/bench-relay-*.log"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
