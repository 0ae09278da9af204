//! `outbox-relay top` against a running relay under load: the plain-text view (what
//! `kubectl exec` without a terminal gets) shows the backlog, the publish rate per
//! destination, dead rows, and which relay publishes.

mod common;

use std::time::Duration;

use common::{wait_for, Rabbit, RelayProcess, TestDb};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread")]
async fn top_once_shows_rates_dead_rows_and_the_publishing_relay() {
    let db = TestDb::new().await;
    let rabbit = Rabbit::connect().await;
    let (exchange, queue) = rabbit.fanout_with_queue().await;
    let relay = RelayProcess::spawn(&db.relay_url, &[]);
    let first = db.enqueue(&exchange, Some("k"), json!({"n": 0})).await;
    db.wait_status(first, "published").await;
    wait_for("the relay to report ready", WAIT, || async {
        (relay.get("/readyz").await?.0 == 200).then_some(())
    })
    .await;
    let parked = common::unique("parked");
    let dead = db.enqueue(&parked, Some("k"), json!({})).await;
    sqlx::query("UPDATE outbox.messages SET status = 'dead', last_error = 'NOT_FOUND - no exchange' WHERE message_id = $1")
        .bind(dead)
        .execute(&db.pool)
        .await
        .unwrap();

    // Rows keep coming while top takes its two samples, so the rate between them is not 0.
    let writer = {
        let pool = db.writer.clone();
        let exchange = exchange.clone();
        tokio::spawn(async move {
            for n in 1.. {
                common::enqueue_range(&pool, &exchange, n * 10, n * 10 + 10, 4).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let address = relay.http.to_string();
    let url = db.relay_url.clone();
    let out = tokio::task::spawn_blocking(move || {
        common::run_binary(
            &[
                "top",
                "--once",
                "--interval",
                "1s",
                "--relay",
                &address,
                "--database-url",
                &url,
            ],
            &[],
        )
    })
    .await
    .unwrap();
    writer.abort();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let line = |needle: &str| {
        text.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in\n{text}"))
            .to_string()
    };
    let fields = |l: String| {
        l.split(['│', ' '])
            .filter(|f| !f.is_empty())
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    // Long names are cut to the column.
    let orders = fields(line(&exchange[..24]));
    let rate: f64 = orders[1].parse().unwrap_or_else(|_| panic!("{orders:?}"));
    assert!(
        rate > 0.0,
        "a destination being written shows its rate: {orders:?}"
    );
    let parked_row = fields(line(&parked[..20]));
    assert_eq!(parked_row[4], "1", "one dead row: {parked_row:?}");
    assert!(line(&parked[..20]).contains("NOT_FOUND"));
    let relay_row = fields(line(&relay.http.to_string()));
    assert_eq!(&relay_row[1..2], ["yes"], "the leader: {relay_row:?}");
    assert_eq!(relay_row.last().map(String::as_str), Some("up"));
    assert!(
        line(": held by").starts_with("│default: held by relay-"),
        "{text}"
    );
    rabbit.delete_queue(&queue).await.unwrap();
}

#[tokio::test]
async fn top_shows_a_relay_that_does_not_answer_and_still_exits_0() {
    let db = TestDb::new().await;
    let address = format!("127.0.0.1:{}", common::free_port());
    let out = common::run_binary(
        &[
            "top",
            "--once",
            "--interval",
            "100ms",
            "--relay",
            &address,
            "--database-url",
            &db.relay_url,
        ],
        &[],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    let row = text
        .lines()
        .find(|l| l.contains(&address))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(row.contains("cannot ask"), "{row}");
    assert!(text.contains("no relay has taken a lease yet"), "{text}");
}

/// In a terminal (as `kubectl exec -it` gives one) it draws full screen, and `q`
/// quits and gives the terminal back. `script` provides the pseudo-terminal.
#[tokio::test]
async fn top_in_a_terminal_draws_until_q_and_restores_the_screen() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let db = TestDb::new().await;
    let command = format!(
        "stty rows 30 cols 120; exec {} top --interval 200ms --relay 127.0.0.1:{} --database-url '{}'",
        env!("CARGO_BIN_EXE_outbox-relay"),
        common::free_port(),
        db.relay_url
    );
    let mut child = tokio::process::Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("script(1) from util-linux");
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let drawn = tokio::time::timeout(WAIT, async {
        let mut chunk = [0u8; 4096];
        // The footer is drawn last.
        while !String::from_utf8_lossy(&seen).contains("quit") {
            let n = stdout.read(&mut chunk).await.unwrap();
            assert!(n > 0, "top ended before drawing");
            seen.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    assert!(
        drawn.is_ok(),
        "no frame within {WAIT:?}: {}",
        String::from_utf8_lossy(&seen)
    );
    let screen = String::from_utf8_lossy(&seen).into_owned();
    assert!(
        screen.contains("\x1b[?1049h"),
        "the alternate screen is used"
    );
    assert!(screen.contains("pending"), "{screen}");

    child.stdin.as_mut().unwrap().write_all(b"q").await.unwrap();
    let mut rest = Vec::new();
    let status = tokio::time::timeout(WAIT, async {
        stdout.read_to_end(&mut rest).await.unwrap();
        child.wait().await.unwrap()
    })
    .await
    .expect("q quits");
    assert!(status.success(), "{status:?}");
    assert!(
        String::from_utf8_lossy(&rest).contains("\x1b[?1049l"),
        "the terminal is given back"
    );
}
