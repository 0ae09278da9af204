//! The relay runs as a login role that is only a member of `outbox_relay` (created by the
//! migrations): it publishes, and it can neither touch the application's tables nor write
//! messages of its own.

mod common;

use std::time::Duration;

use common::{wait_for, Rabbit, RelayProcess, TestDb, RELAY_LOGIN};

const WAIT: Duration = Duration::from_secs(30);
const INSUFFICIENT_PRIVILEGE: &str = "42501";

#[tokio::test]
async fn relay_publishes_end_to_end_as_the_relay_role() {
    let db = TestDb::new().await;
    let rabbit = Rabbit::connect().await;
    let (exchange, queue) = rabbit.fanout_with_queue().await;
    let relay = RelayProcess::spawn(&db.relay_url, &[]);
    let id = db
        .enqueue(&exchange, Some("k"), serde_json::json!({"n": 1}))
        .await;
    let got = rabbit.collect(&queue, 1, WAIT).await;
    assert_eq!(got[0].message_id(), id);
    db.wait_status(id, "published").await;

    // Every session the relay opened is the restricted login, not the owner.
    let users: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT usename::text FROM pg_stat_activity
          WHERE datname = $1 AND application_name = 'outbox-relay'",
    )
    .bind(&db.name)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(users, vec![RELAY_LOGIN.to_string()]);
    wait_for("the relay to report ready", WAIT, || async {
        (relay.get("/readyz").await?.0 == 200).then_some(())
    })
    .await;

    // The read-only admin command works under the same role.
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_outbox-relay"))
        .args(["status", "--json"])
        .env_remove("OUTBOX_RELAY_CONFIG")
        .env("OUTBOX_RELAY__DATABASE__URL", &db.relay_url)
        .output()
        .expect("run outbox-relay status");
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("status json");
    assert_eq!(json["counts"]["published"], 1);
}

/// Runs `sql` as the relay's role and returns its SQLSTATE, or None if it succeeded.
async fn sqlstate_as_relay(db: &TestDb, sql: &'static str) -> Option<String> {
    let pool = db.relay_pool().await;
    let result = sqlx::raw_sql(sql).execute(&pool).await;
    pool.close().await;
    match result {
        Ok(_) => None,
        Err(sqlx::Error::Database(e)) => e.code().map(|c| c.into_owned()),
        Err(other) => panic!("{sql}: {other}"),
    }
}

#[tokio::test]
async fn relay_role_cannot_touch_application_tables_nor_write_messages() {
    let db = TestDb::new().await;
    sqlx::raw_sql(
        "CREATE TABLE public.orders (id int PRIMARY KEY, state text);
         INSERT INTO public.orders VALUES (1, 'new');",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let dead = db.enqueue("d", None, serde_json::json!({})).await;
    sqlx::query("UPDATE outbox.messages SET status = 'dead' WHERE message_id = $1")
        .bind(dead)
        .execute(&db.pool)
        .await
        .unwrap();

    for denied in [
        "SELECT * FROM public.orders",
        "INSERT INTO public.orders VALUES (2, 'x')",
        "UPDATE public.orders SET state = 'paid'",
        "DELETE FROM public.orders",
        "CREATE TABLE public.relay_was_here (id int)",
        "INSERT INTO outbox.messages (destination, payload) VALUES ('d', '\\x00')",
        "SELECT outbox.enqueue('d', '{}')",
        "UPDATE outbox.messages SET payload = '\\x00'",
        "UPDATE outbox.messages SET destination = 'elsewhere'",
        "SELECT outbox.requeue_dead(NULL)",
        "SELECT nextval('outbox.commit_seq')",
    ] {
        assert_eq!(
            sqlstate_as_relay(&db, denied).await.as_deref(),
            Some(INSUFFICIENT_PRIVILEGE),
            "the relay role must not be able to run: {denied}"
        );
    }
    let orders: Vec<(i32, String)> = sqlx::query_as("SELECT id, state FROM public.orders")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(orders, vec![(1, "new".to_string())]);
    assert_eq!(db.count("committed").await, 0, "nothing was inserted");
    assert_eq!(db.status(dead).await, "dead", "nothing was requeued");

    // What the relay does need still works under the role.
    for allowed in [
        "SELECT count(*) FROM outbox.messages",
        "SELECT * FROM outbox.claim_window(0, NULL, NULL, 0)",
        "UPDATE outbox.messages SET last_error = last_error WHERE false",
        "DELETE FROM outbox.messages WHERE false",
    ] {
        assert_eq!(sqlstate_as_relay(&db, allowed).await, None, "{allowed}");
    }
}
