//! What a running relay exposes on `/metrics`, checked against what operators build on it:
//! promtool's lint, the gauges alerts need, and every metric the chart's alert rules and
//! Grafana dashboard name.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{unique, wait_for, Rabbit, RelayProcess, TestDb};

const WAIT: Duration = Duration::from_secs(60);

/// Files of the chart that query the relay's metrics.
const CONSUMERS: &[&str] = &[
    "charts/outbox-relay/templates/prometheusrule.yaml",
    "charts/outbox-relay/dashboards/outbox-relay.json",
];

/// Whether `/metrics` has a sample of `name` (a histogram's `_bucket`, `_sum`, `_count` too).
fn exposes(body: &str, name: &str) -> bool {
    body.lines().any(|l| {
        l.strip_prefix(name)
            .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
    })
}

/// Every relay or process metric named in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for prefix in ["outbox_relay_", "process_"] {
        for (at, _) in text.match_indices(prefix) {
            // A name starts the match, not the middle of a longer identifier.
            let before = text[..at].chars().next_back();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            let name: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            names.insert(name);
        }
    }
    names
}

#[tokio::test]
async fn metrics_pass_promtool_and_cover_every_metric_the_alerts_and_dashboard_use() {
    let db = TestDb::new().await;
    let rabbit = Rabbit::connect().await;
    let (exchange, _queue) = rabbit.fanout_with_queue().await;
    let relay = RelayProcess::spawn(&db.relay_url, &[("OUTBOX_RELAY__RETRY__MAX_ATTEMPTS", "1")]);
    let ok = db.enqueue_many(&exchange, 1, 20, 2).await;
    let dead = db
        .enqueue(&unique("missing"), None, serde_json::json!({}))
        .await;
    db.wait_status(*ok.last().unwrap(), "published").await;
    db.wait_status(dead, "dead").await;
    // A committed message that waits (delayed) shows in the backlog gauges.
    sqlx::query("SELECT outbox.enqueue($1, '{}', deliver_at => now() + interval '1 hour')")
        .bind(&exchange)
        .execute(&db.pool)
        .await
        .unwrap();
    // The vacuum gauges: one vacuum of the table, and a transaction that holds vacuum back
    // (it has a transaction id, and others are drawn after it).
    sqlx::raw_sql("VACUUM outbox.messages")
        .execute(&db.pool)
        .await
        .unwrap();
    let mut holder = db.pool.begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *holder)
        .await
        .unwrap();
    for _ in 0..3 {
        sqlx::query("SELECT pg_current_xact_id()")
            .execute(&db.pool)
            .await
            .unwrap();
    }

    let body = wait_for(
        "the gauges to show the backlog and the held horizon",
        WAIT,
        || async {
            let (status, body) = relay.get("/metrics").await?;
            let held = body.lines().any(|l| {
                l.strip_prefix("outbox_relay_vacuum_horizon_age_xids ")
                    .and_then(|v| v.parse::<f64>().ok())
                    .is_some_and(|v| v >= 3.0)
            });
            (status == 200 && held && body.contains("outbox_relay_pending_messages 1"))
                .then_some(body)
        },
    )
    .await;
    holder.rollback().await.unwrap();
    let dead_destination = body
        .lines()
        .find_map(|l| l.strip_prefix("outbox_relay_dead_messages{destination=\""))
        .expect("the dead gauge")
        .to_string();
    assert!(dead_destination.starts_with("missing_") && dead_destination.ends_with("\"} 1"));
    for expected in [
        format!("outbox_relay_messages_published_total{{destination=\"{exchange}\"}} 20"),
        "outbox_relay_messages_dead_total{destination=\"missing_".to_string(),
        "outbox_relay_publish_failures_total{destination=\"missing_".to_string(),
        "reason=\"not_found\"".to_string(),
        "outbox_relay_oldest_pending_age_seconds".to_string(),
        "outbox_relay_commit_to_publish_seconds_bucket".to_string(),
        "outbox_relay_publish_batch_seconds_bucket".to_string(),
        "outbox_relay_broker_ack_seconds_bucket".to_string(),
        "outbox_relay_batch_messages_bucket".to_string(),
        "outbox_relay_leader 1".to_string(),
        "outbox_relay_up{dependency=\"database\"} 1".to_string(),
        "outbox_relay_up{dependency=\"broker\"} 1".to_string(),
        format!(
            "outbox_relay_build_info{{version=\"{}\",revision=\"",
            env!("CARGO_PKG_VERSION")
        ),
        // Visible from the start, so that alerts see their first increment.
        "outbox_relay_messages_expired_total{outcome=\"dead\"} 0".to_string(),
        "outbox_relay_messages_expired_total{outcome=\"rolled_back\"} 0".to_string(),
        "outbox_relay_passed_rows_found_total 0".to_string(),
        "outbox_relay_messages_purged_total{status=\"dead\"} 0".to_string(),
        "outbox_relay_table_size_bytes ".to_string(),
        "outbox_relay_index_size_bytes ".to_string(),
        "outbox_relay_table_dead_tuples ".to_string(),
        "outbox_relay_last_autovacuum_age_seconds ".to_string(),
        "outbox_relay_vacuum_horizon_age_seconds ".to_string(),
        "process_resident_memory_bytes ".to_string(),
        "process_cpu_seconds_total ".to_string(),
    ] {
        assert!(body.contains(&expected), "missing `{expected}` in:\n{body}");
    }
    assert!(
        !body.contains(&dead.to_string()),
        "metrics must not carry message ids"
    );
    assert!(
        !body.contains(&format!(
            "outbox_relay_build_info{{version=\"{}\",revision=\"unknown\"}}",
            env!("CARGO_PKG_VERSION")
        )),
        "a build from a git checkout names its revision"
    );

    promtool_check(&body).await;

    let root = env!("CARGO_MANIFEST_DIR");
    for file in CONSUMERS {
        let text = std::fs::read_to_string(format!("{root}/{file}"))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let names = metric_names(&text);
        assert!(!names.is_empty(), "{file} names no metric");
        let missing: Vec<&String> = names.iter().filter(|n| !exposes(&body, n)).collect();
        assert!(
            missing.is_empty(),
            "{file} queries metrics the relay does not expose: {missing:?}"
        );
    }
}

async fn promtool_check(body: &str) {
    use tokio::io::AsyncWriteExt;
    let mut promtool = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (scripts/services.sh installs Debian's prometheus package)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .await
        .unwrap();
    let out = promtool.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn metric_names_are_found_whole_and_only_at_their_start() {
    let names = metric_names(
        "sum(rate(outbox_relay_messages_published_total{x=\"y\"}[5m])) / my_process_cpu + process_threads",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        vec![
            "outbox_relay_messages_published_total".to_string(),
            "process_threads".to_string()
        ]
    );
    assert!(exposes("a_bucket{le=\"1\"} 3\na 1\n", "a_bucket"));
    assert!(!exposes("a_bucket_x 3\n", "a_bucket"));
}
