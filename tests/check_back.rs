//! Check-back end to end: the Go library's example writer (clients/go/examples/writer) writes
//! two-phase messages and serves check-back from its barrier; the relay runs in-process and
//! publishes to RabbitMQ. The writer is stopped at chosen steps, as a crash would.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::{
    start_relay, test_config, unique, wait_for, Rabbit, RunningRelay, TestDb, WRITER_LOGIN,
};
use outbox_relay::config::{ProducerConfig, SecretUrl};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);
const PRODUCER: &str = "orders";

/// Builds the example writer into a path of this test's own (tests run in parallel
/// processes); Go's build cache makes every build after the first a link.
async fn writer_binary() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("clients/go");
    let out = std::env::temp_dir().join(unique("outbox-writer"));
    let status = Command::new("go")
        .args(["build", "-o"])
        .arg(&out)
        .arg("./examples/writer")
        .current_dir(&dir)
        .status()
        .await
        .expect("run go build (Go must be installed: scripts/install.sh go)");
    assert!(status.success(), "go build ./examples/writer");
    out
}

/// The writer's service: serves check-back from the barrier in `local`.
struct Service {
    _child: Child,
    url: String,
}

async fn serve(bin: &PathBuf, local: &TestDb, addr: &str) -> Service {
    let mut child = Command::new(bin)
        .args(["serve", "-local", &local.url, "-addr", addr])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the writer's service");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("the service to listen")
        .unwrap()
        .expect("a line");
    let url = line
        .strip_prefix("listening ")
        .expect("listening URL")
        .to_string();
    Service { _child: child, url }
}

/// The outbox's URL as the tests' member of `outbox_writer`, as an application writes.
fn writer_url(db: &TestDb) -> String {
    let mut u = url::Url::parse(&db.url).unwrap();
    u.set_username(WRITER_LOGIN).unwrap();
    u.to_string()
}

/// One two-phase write, driven step by step.
struct Write {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    id: Uuid,
}

impl Write {
    /// Prepares a message for `exchange` with key `key` (payload `{"order": order}`), naming
    /// `producer` for check-back.
    async fn prepare(
        bin: &PathBuf,
        db: &TestDb,
        local: &TestDb,
        exchange: &str,
        order: i64,
        ttl: &str,
    ) -> Self {
        let mut child = Command::new(bin)
            .args(["write", "-outbox", &writer_url(db), "-local", &local.url])
            .args(["-producer", PRODUCER, "-destination", exchange, "-key", "k"])
            .args(["-order", &order.to_string(), "-ttl", ttl])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the writer");
        let stdin = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = next_line(&mut lines).await;
        let id = line
            .strip_prefix("prepared ")
            .expect("prepared ID")
            .parse()
            .unwrap();
        Self {
            child,
            stdin,
            lines,
            id,
        }
    }

    /// Runs `step` and returns what the writer printed.
    async fn step(&mut self, step: &str) -> String {
        self.stdin
            .write_all(format!("{step}\n").as_bytes())
            .await
            .unwrap();
        next_line(&mut self.lines).await
    }

    /// kill -9 of the writer, wherever it is.
    async fn die(mut self) {
        self.stdin.write_all(b"die\n").await.unwrap();
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("the writer to die")
            .unwrap();
        assert!(!status.success());
    }
}

async fn next_line(lines: &mut Lines<BufReader<ChildStdout>>) -> String {
    tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("the writer to answer")
        .unwrap()
        .expect("the writer exited early")
}

struct Setup {
    db: TestDb,
    local: TestDb,
    rabbit: Rabbit,
    exchange: String,
    queue: String,
    bin: PathBuf,
}

async fn setup() -> Setup {
    let (db, local, rabbit, bin) = tokio::join!(
        TestDb::new(),
        TestDb::new(),
        Rabbit::connect(),
        writer_binary()
    );
    let exchange = unique("ex");
    rabbit.declare_exchange(&exchange).await;
    let queue = rabbit.bound_queue(&exchange, "k").await;
    Setup {
        db,
        local,
        rabbit,
        exchange,
        queue,
        bin,
    }
}

/// A relay that asks about prepared rows 200 ms after they were prepared, at `producer_url`.
fn relay(s: &Setup, producer_url: &str) -> RunningRelay {
    let mut config = test_config(&s.db);
    config.check_back.check_after = Duration::from_millis(200);
    config.check_back.interval = Duration::from_millis(50);
    config.check_back.initial_backoff = Duration::from_millis(100);
    config.check_back.max_backoff = Duration::from_millis(200);
    config.check_back.producers.insert(
        PRODUCER.into(),
        ProducerConfig {
            url: SecretUrl::new(producer_url),
            ..ProducerConfig::default()
        },
    );
    start_relay(config)
}

/// A setup, the writer's service up, and a relay that asks it.
async fn with_service() -> (Setup, Service, RunningRelay) {
    let s = setup().await;
    let service = serve(&s.bin, &s.local, "127.0.0.1:0").await;
    let relay = relay(&s, &service.url);
    (s, service, relay)
}

impl Setup {
    /// Everything in the queue once a committed marker, written last, is published: the
    /// relay has passed every row before it.
    async fn delivered_up_to_a_marker(&self) -> Vec<Uuid> {
        let marker = self
            .db
            .enqueue(&self.exchange, Some("k"), json!({"marker": true}))
            .await;
        self.db.wait_status(marker, "published").await;
        let ids: Vec<Uuid> = self
            .rabbit
            .drain(&self.queue)
            .await
            .iter()
            .map(|m| m.message_id())
            .collect();
        assert_eq!(ids.last(), Some(&marker), "{ids:?}");
        ids[..ids.len() - 1].to_vec()
    }

    /// A writer that prepares message `order`, runs its local transaction to `end` ("commit"
    /// or "abort") and dies before confirm or cancel: only check-back can decide the message.
    async fn write_then_die(&self, order: i64, ttl: &str, end: &str) -> Uuid {
        let mut w =
            Write::prepare(&self.bin, &self.db, &self.local, &self.exchange, order, ttl).await;
        assert_eq!(w.step("begin").await, "in-local-tx");
        w.step(end).await;
        let id = w.id;
        w.die().await;
        id
    }

    /// Waits until message `id` is dead and returns why.
    async fn parked(&self, id: Uuid) -> String {
        self.db.wait_status(id, "dead").await;
        sqlx::query_scalar("SELECT last_error FROM outbox.messages WHERE message_id = $1")
            .bind(id)
            .fetch_one(&self.db.pool)
            .await
            .unwrap()
    }

    async fn orders(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM orders")
            .fetch_one(&self.local.pool)
            .await
            .unwrap()
    }

    /// The positive signal that the relay's check is blocked by the open local transaction.
    async fn check_waits_on_the_local_transaction(&self) {
        wait_for(
            "the check to wait on the local transaction's barrier row",
            WAIT,
            || async {
                let waiting: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity
                      WHERE datname = current_database() AND wait_event_type = 'Lock'
                        AND query LIKE '%outbox_barrier%'",
                )
                .fetch_one(&self.local.pool)
                .await
                .unwrap();
                (waiting == 1).then_some(())
            },
        )
        .await;
    }
}

#[tokio::test]
async fn a_writer_killed_after_its_local_transaction_ends_is_decided_by_check_back() {
    let (s, _service, relay) = with_service().await;

    let committed = s.write_then_die(1, "1m", "commit").await;
    let aborted = s.write_then_die(2, "1m", "abort").await;

    s.db.wait_status(committed, "published").await;
    s.db.wait_status(aborted, "rolled_back").await;
    assert_eq!(
        s.delivered_up_to_a_marker().await,
        vec![committed],
        "the committed one once, the aborted one never"
    );
    assert_eq!(s.orders().await, 1);
    relay.stop().await;
}

#[tokio::test]
async fn a_check_during_the_local_transaction_waits_for_it_and_answers_right_both_ways() {
    let (s, _service, relay) = with_service().await;

    for (order, end, status) in [(3, "commit", "published"), (4, "abort", "rolled_back")] {
        let mut w = Write::prepare(&s.bin, &s.db, &s.local, &s.exchange, order, "1m").await;
        let id = w.id;
        assert_eq!(w.step("begin").await, "in-local-tx");
        s.check_waits_on_the_local_transaction().await;
        assert_eq!(
            s.db.status(id).await,
            "prepared",
            "decided while the local transaction was open"
        );
        w.step(end).await;
        // The writer dies before confirm or cancel: only the check's answer decides.
        w.die().await;
        s.db.wait_status(id, status).await;
    }
    let delivered = s.delivered_up_to_a_marker().await;
    assert_eq!(delivered.len(), 1, "only the committed one: {delivered:?}");
    assert_eq!(s.orders().await, 1);
    relay.stop().await;
}

#[tokio::test]
async fn a_check_before_the_local_transaction_makes_that_transaction_fail() {
    let (s, _service, relay) = with_service().await;

    let mut w = Write::prepare(&s.bin, &s.db, &s.local, &s.exchange, 5, "1m").await;
    let id = w.id;
    // Slow local work: check-back asks first, and the barrier answers rolled_back.
    s.db.wait_status(id, "rolled_back").await;
    assert_eq!(w.step("begin").await, "checked-first");
    let status = w.child.wait().await.unwrap();
    assert_eq!(status.code(), Some(3));
    assert_eq!(s.orders().await, 0, "the local transaction rolled back");
    assert_eq!(s.delivered_up_to_a_marker().await, Vec::<Uuid>::new());
    relay.stop().await;
}

#[tokio::test]
async fn a_producer_down_until_after_expires_at_leaves_the_message_dead_never_rolled_back() {
    let s = setup().await;
    // An address nothing listens on until the service starts there, after the expiry.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let relay = relay(&s, &format!("http://{addr}/check"));

    let id = s.write_then_die(6, "2s", "commit").await;
    let reason = s.parked(id).await;
    assert!(
        reason.contains("never decided") && reason.contains("cannot reach"),
        "{reason}"
    );

    // The producer is back. A later message is decided by check-back, which shows checks run
    // again; the dead one stays dead.
    let _service = serve(&s.bin, &s.local, &addr).await;
    let later_id = s.write_then_die(7, "1m", "commit").await;
    s.db.wait_status(later_id, "published").await;
    assert_eq!(s.db.status(id).await, "dead");

    // The operator's decision: requeue commits it.
    let requeued: i32 = sqlx::query_scalar("SELECT outbox.requeue_dead(ARRAY[$1::uuid])")
        .bind(id)
        .fetch_one(&s.db.pool)
        .await
        .unwrap();
    assert_eq!(requeued, 1);
    s.db.wait_status(id, "published").await;
    assert_eq!(
        s.delivered_up_to_a_marker().await,
        vec![later_id, id],
        "each once, in the order they were committed"
    );
    relay.stop().await;
}

#[tokio::test]
async fn a_producer_not_in_the_configuration_is_never_called_and_its_message_is_parked() {
    let (s, _service, relay) = with_service().await;

    let id: Uuid = sqlx::query_scalar(
        "SELECT outbox.prepare($1, '{}', message_key => 'k', ttl => '2 seconds', producer => 'ghost')",
    )
    .bind(&s.exchange)
    .fetch_one(&s.db.pool)
    .await
    .unwrap();
    let reason = s.parked(id).await;
    assert!(
        reason.contains("producer ghost is not in check_back.producers"),
        "{reason}"
    );
    let barrier_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox_barrier")
        .fetch_one(&s.local.pool)
        .await
        .unwrap();
    assert_eq!(
        barrier_rows, 0,
        "the configured producer was not asked either"
    );
    relay.stop().await;
}
