//! The SQL API and schema contract, against a real Postgres.

#[path = "../common/mod.rs"]
mod common;

mod api;
mod claims;
mod fence;
mod outcomes;
mod partitions;
mod writer;

use common::TestDb;
use serde_json::json;
use sqlx::Row;
use std::time::Duration;
use uuid::Uuid;

/// One connection with the relay's own session settings (`store::connect_options`).
async fn relay_session(db: &TestDb) -> sqlx::PgPool {
    let options = outbox_relay::store::connect_options(&db.relay_url).unwrap();
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .unwrap()
}

/// `EXPLAIN (options)` of a statement of the store, with literal arguments for its `$n`.
async fn explain(
    pool: &sqlx::PgPool,
    options: &str,
    sql: &str,
    args: &[&str],
) -> serde_json::Value {
    let mut sql = sql.to_string();
    // Highest first, so that `$1` does not match the start of `$10`.
    for (i, arg) in args.iter().enumerate().rev() {
        sql = sql.replace(&format!("${}", i + 1), arg);
    }
    assert!(!sql.contains('$'), "a parameter is left: {sql}");
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN ({options}) {sql}")))
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The plan (`EXPLAIN (FORMAT JSON)`, as text) of a statement prepared on `conn` as `name`
/// (`types`: its parameter types in parentheses, or empty), executed with literal `args`: the
/// plan the session's plan_cache_mode gives a prepared statement of the relay.
async fn explain_prepared(
    conn: &mut sqlx::PgConnection,
    name: &str,
    types: &str,
    sql: &str,
    args: &str,
) -> String {
    explain_prepared_with(conn, "FORMAT JSON", name, types, sql, args)
        .await
        .to_string()
}

/// [`explain_prepared`] with `EXPLAIN (options)`, as JSON (`options` must ask for it).
async fn explain_prepared_with(
    conn: &mut sqlx::PgConnection,
    options: &str,
    name: &str,
    types: &str,
    sql: &str,
    args: &str,
) -> serde_json::Value {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "PREPARE {name}{types} AS {sql}"
    )))
    .execute(&mut *conn)
    .await
    .unwrap();
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "EXPLAIN ({options}) EXECUTE {name}({args})"
    )))
    .fetch_one(&mut *conn)
    .await
    .unwrap()
}

/// `n` rows of one key claimed, and the last of them discarded by an operator while in flight.
async fn claimed_with_the_last_discarded(
    db: &TestDb,
    n: usize,
) -> Vec<outbox_relay::store::OutboxMessage> {
    for i in 0..n {
        db.enqueue("d", Some("k"), json!({ "n": i })).await;
    }
    let token = take_lease(db).await;
    let batch = outbox_relay::store::claim(&db.pool, &claim_args(i64::MAX, 10, token))
        .await
        .unwrap();
    assert_eq!(batch.len(), n);
    sqlx::query("UPDATE outbox.messages SET status = 'dead' WHERE id = $1")
        .bind(batch[n - 1].id.0)
        .execute(&db.pool)
        .await
        .unwrap();
    batch
}

/// A publish failure as the relay records it.
fn failed(permanent: bool) -> outbox_relay::store::Outcome {
    outbox_relay::store::Outcome::Failed {
        error: "broker said no".into(),
        permanent,
        backoff: Duration::from_secs(1),
    }
}

/// Takes the lease `l` as holder `me`, for tests that call the claim statements directly.
async fn take_lease(db: &TestDb) -> i64 {
    outbox_relay::store::acquire_lease(&db.pool, "l", "me", Duration::from_secs(10))
        .await
        .unwrap()
        .expect("the lease is free")
        .token
}

/// `me`'s lease `l` under `token`, as outcome updates name it.
fn me(token: i64) -> outbox_relay::store::LeaseRef<'static> {
    outbox_relay::store::LeaseRef {
        name: "l",
        holder: "me",
        token,
    }
}

/// Claim arguments under `me`'s lease `token`, excluding nothing and holding nothing back.
fn claim_args(fence_seq: i64, limit: u32, token: i64) -> outbox_relay::store::ClaimArgs<'static> {
    outbox_relay::store::ClaimArgs {
        fence_seq,
        limit,
        lease: outbox_relay::store::LeaseRef {
            name: "l",
            holder: "me",
            token,
        },
        exclude: &[],
        held_back: &[],
        floor: 0,
        partition: outbox_relay::store::PartitionRef::WHOLE,
    }
}
