//! Active-active (`relay.partitions > 1`): three replicas share the partitions under writer
//! load through kills, pauses, scaling and a broker one of them cannot reach. Each test checks
//! what users rely on: nothing lost, per-key first deliveries in commit order, duplicates only
//! where a fault left rows in flight.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{assert_first_deliveries_in_order, unique, wait_for, Rabbit, RelayProcess, TestDb};
use nix::sys::signal::Signal;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(90);
const PARTITIONS: &str = "6";
const KEYS: i64 = 24;

/// The replicas' settings: six partitions under a 1 s lease (the harness's), small batches.
fn env(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut env = vec![
        ("OUTBOX_RELAY__RELAY__PARTITIONS", PARTITIONS),
        ("OUTBOX_RELAY__RELAY__BATCH_SIZE", "50"),
    ];
    env.extend_from_slice(extra);
    env
}

fn spawn(db: &TestDb, lease: &str) -> RelayProcess {
    spawn_with(db, lease, &[])
}

fn spawn_with(db: &TestDb, lease: &str, extra: &[(&'static str, &'static str)]) -> RelayProcess {
    let mut env: Vec<(&str, &str)> = env(extra);
    env.push(("OUTBOX_RELAY__HA__LEASE_NAME", lease));
    RelayProcess::spawn(&db.relay_url, &env)
}

/// Each test's own database, exchange with a queue, and lease name.
struct Setup {
    db: TestDb,
    rabbit: Rabbit,
    exchange: String,
    queue: String,
    lease: String,
}

impl Setup {
    async fn new() -> Self {
        let db = TestDb::new().await;
        let rabbit = Rabbit::connect().await;
        let (exchange, queue) = rabbit.fanout_with_queue().await;
        Self {
            db,
            rabbit,
            exchange,
            queue,
            lease: unique("aa"),
        }
    }
}

async fn held(r: &RelayProcess) -> u32 {
    r.metric("outbox_relay_partitions_held")
        .await
        .unwrap_or(0.0) as u32
}

/// Waits until the replicas hold exactly `shares` partitions each (in any order of replicas);
/// returns how long that took.
async fn converged(replicas: &[&RelayProcess], shares: &[u32]) -> Duration {
    let started = Instant::now();
    let mut want = shares.to_vec();
    want.sort_unstable();
    wait_for(&format!("partitions held {want:?}"), WAIT, || async {
        let mut got = Vec::new();
        for r in replicas {
            got.push(held(r).await);
        }
        got.sort_unstable();
        (got == want).then_some(())
    })
    .await;
    started.elapsed()
}

/// Writes rows of `KEYS` keys in small batches until stopped: the writer load the faults run
/// under. Returns every id written.
struct Writer {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<Vec<Uuid>>,
    written: Arc<AtomicI64>,
}

impl Writer {
    fn start(db: &TestDb, exchange: &str) -> Self {
        let stop = tokio_util::sync::CancellationToken::new();
        let written = Arc::new(AtomicI64::new(0));
        let (writer, exchange, token, count) = (
            db.writer.clone(),
            exchange.to_string(),
            stop.clone(),
            written.clone(),
        );
        let task = tokio::spawn(async move {
            let mut ids = Vec::new();
            let mut next = 1;
            while !token.is_cancelled() {
                ids.extend(common::enqueue_range(&writer, &exchange, next, next + 39, KEYS).await);
                next += 40;
                count.store(next - 1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            ids
        });
        Self {
            stop,
            task,
            written,
        }
    }

    /// Waits until at least `n` rows were written.
    async fn past(&self, n: i64) {
        wait_for(&format!("{n} rows written"), WAIT, || async {
            (self.written.load(Ordering::Relaxed) >= n).then_some(())
        })
        .await;
    }

    async fn finish(self) -> Vec<Uuid> {
        self.stop.cancel();
        self.task.await.unwrap()
    }
}

/// Every row published and received, first deliveries in order per key; returns duplicates.
async fn all_delivered(db: &TestDb, rabbit: &Rabbit, queue: &str, ids: &[Uuid]) -> usize {
    let total = ids.len() as i64;
    wait_for("everything published", WAIT, || async {
        (db.count("published").await == total).then_some(())
    })
    .await;
    let got = rabbit.drain(queue).await;
    let arrived: HashSet<Uuid> = got.iter().map(|r| r.message_id()).collect();
    let lost = ids.iter().filter(|id| !arrived.contains(id)).count();
    assert_eq!(lost, 0, "messages lost");
    assert_first_deliveries_in_order(&got)
}

async fn published_by(r: &RelayProcess, exchange: &str) -> f64 {
    let sample = format!("outbox_relay_messages_published_total{{destination=\"{exchange}\"}}");
    r.metric(&sample).await.unwrap_or(0.0)
}

#[tokio::test]
async fn three_replicas_share_the_partitions_evenly_and_each_key_stays_in_order() {
    let Setup {
        db,
        rabbit,
        exchange,
        queue,
        lease,
    } = Setup::new().await;
    let replicas = [spawn(&db, &lease), spawn(&db, &lease), spawn(&db, &lease)];
    let all: Vec<&RelayProcess> = replicas.iter().collect();
    let took = converged(&all, &[2, 2, 2]).await;
    println!("three replicas converged to 2 partitions each in {took:?} (lease ttl 1s)");
    let writer = Writer::start(&db, &exchange);
    writer.past(3000).await;
    let ids = writer.finish().await;
    let duplicates = all_delivered(&db, &rabbit, &queue, &ids).await;
    assert_eq!(duplicates, 0, "no fault, no re-send");
    for r in &replicas {
        assert!(
            published_by(r, &exchange).await > 0.0,
            "every replica publishes its share"
        );
    }
    let out = common::run_binary(&["status", "--json", "--database-url", &db.url], &[]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    let owners: Vec<(String, u64, String)> = status["partitions"]
        .as_array()
        .expect("a partitions list")
        .iter()
        .filter(|p| p["held"] == true)
        .map(|p| {
            (
                p["group"].as_str().unwrap().to_string(),
                p["partition"].as_u64().unwrap(),
                p["holder"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        owners.len(),
        6,
        "status shows who holds each partition: {status}"
    );
    assert!(owners.iter().all(|(g, _, _)| *g == lease));
    let holders: HashSet<&str> = owners.iter().map(|(_, _, h)| h.as_str()).collect();
    assert_eq!(holders.len(), 3, "{status}");
}

#[tokio::test]
async fn kill_9_of_a_replica_moves_its_partitions_to_the_others_and_loses_nothing() {
    let Setup {
        db,
        rabbit,
        exchange,
        queue,
        lease,
    } = Setup::new().await;
    let mut replicas = vec![spawn(&db, &lease), spawn(&db, &lease), spawn(&db, &lease)];
    converged(&replicas.iter().collect::<Vec<_>>(), &[2, 2, 2]).await;
    let writer = Writer::start(&db, &exchange);
    writer.past(1000).await;
    replicas[0].signal(Signal::SIGKILL);
    let killed = replicas.remove(0);
    let took = converged(&replicas.iter().collect::<Vec<_>>(), &[3, 3]).await;
    println!("after kill -9 the two others hold all 6 partitions in {took:?} (lease ttl 1s)");
    assert!(
        took < Duration::from_secs(3),
        "a crashed replica's partitions are taken within a lease ttl and a renewal: {took:?}"
    );
    writer.past(3000).await;
    let ids = writer.finish().await;
    let duplicates = all_delivered(&db, &rabbit, &queue, &ids).await;
    println!("kill -9 of one of three: {duplicates} duplicates (rows in flight at the kill)");
    drop(killed);
}

/// Publishes a replica may have awaiting a confirm at once per partition in this test.
const IN_FLIGHT: &str = "1";

#[tokio::test]
async fn a_replica_paused_past_its_lease_loses_its_partitions_before_publishing_again() {
    let Setup {
        db,
        rabbit,
        exchange,
        queue,
        lease,
    } = Setup::new().await;
    let few = [("OUTBOX_RELAY__RELAY__MAX_IN_FLIGHT", IN_FLIGHT)];
    let replicas = [
        spawn_with(&db, &lease, &few),
        spawn_with(&db, &lease, &few),
        spawn_with(&db, &lease, &few),
    ];
    converged(&replicas.iter().collect::<Vec<_>>(), &[2, 2, 2]).await;
    let writer = Writer::start(&db, &exchange);
    writer.past(1000).await;
    let paused = &replicas[0];
    paused.signal(Signal::SIGSTOP);
    // The paused replica's gauge still says 2: the others hold the 6 between them.
    converged(&[&replicas[1], &replicas[2]], &[3, 3]).await;
    writer.past(2500).await;
    let ids = writer.finish().await;
    wait_for("everything published by the other two", WAIT, || async {
        (db.count("published").await == ids.len() as i64).then_some(())
    })
    .await;
    let before = rabbit.drain(&queue).await;

    paused.signal(Signal::SIGCONT);
    // Its first renewal finds both leases taken: it counts them lost and stops their loops.
    wait_for(
        "the resumed replica to count its partitions lost",
        WAIT,
        || async {
            let lost = paused
                .metric("outbox_relay_partition_handoffs_total{event=\"lost\"}")
                .await?;
            (lost >= 2.0).then_some(())
        },
    )
    .await;
    // It rejoins and the shares even out; there is nothing left to publish, so whatever
    // reaches the queue from now on came from the resumed replica's hands.
    converged(&replicas.iter().collect::<Vec<_>>(), &[2, 2, 2]).await;
    let after = rabbit.drain(&queue).await;
    let seen: HashSet<Uuid> = before.iter().map(|r| r.message_id()).collect();
    assert!(
        after.iter().all(|r| seen.contains(&r.message_id())),
        "only re-sends arrive after the resume"
    );
    // Sent before the pause and still in the client's buffers: at most the publishes awaiting
    // a confirm in its two partitions. A replica that went on with the chains it had claimed
    // would send each key's remaining rows in hand.
    let limit = 2 * IN_FLIGHT.parse::<usize>().unwrap();
    assert!(
        after.len() <= limit,
        "{} messages published by the resumed replica after losing its partitions",
        after.len()
    );
    let arrived: HashSet<Uuid> = seen
        .union(&after.iter().map(|r| r.message_id()).collect())
        .copied()
        .collect();
    assert!(ids.iter().all(|id| arrived.contains(id)), "messages lost");
    let all: Vec<_> = before.into_iter().chain(after).collect();
    let duplicates = assert_first_deliveries_in_order(&all);
    println!("SIGSTOP past the lease: {duplicates} duplicates (rows in hand at the pause)");
}

#[tokio::test]
async fn scaling_from_one_to_three_and_back_with_sigterm_re_sends_nothing() {
    let Setup {
        db,
        rabbit,
        exchange,
        queue,
        lease,
    } = Setup::new().await;
    let first = spawn(&db, &lease);
    converged(&[&first], &[6]).await;
    let writer = Writer::start(&db, &exchange);
    writer.past(800).await;
    let second = spawn(&db, &lease);
    let third = spawn(&db, &lease);
    let took = converged(&[&first, &second, &third], &[2, 2, 2]).await;
    println!("scale 1 -> 3 converged in {took:?} (lease ttl 1s)");
    writer.past(2000).await;
    let started = Instant::now();
    let (a, b) = tokio::join!(
        second.terminate(Duration::from_secs(30)),
        third.terminate(Duration::from_secs(30))
    );
    let _ = (a, b);
    converged(&[&first], &[6]).await;
    println!("scale 3 -> 1 converged in {:?}", started.elapsed());
    writer.past(3200).await;
    let ids = writer.finish().await;
    let duplicates = all_delivered(&db, &rabbit, &queue, &ids).await;
    assert_eq!(
        duplicates, 0,
        "a hand-off drains and records before releasing: nothing is sent twice"
    );
}

#[tokio::test]
async fn a_replica_that_cannot_reach_the_broker_hands_its_partitions_to_the_others() {
    let Setup {
        db,
        rabbit,
        exchange,
        queue,
        lease,
    } = Setup::new().await;
    let healthy = [spawn(&db, &lease), spawn(&db, &lease)];
    let dead_port = common::free_port().to_string();
    let url: &'static str =
        Box::leak(format!("amqp://guest:guest@127.0.0.1:{dead_port}/%2f").into_boxed_str());
    let cut_off = spawn_with(&db, &lease, &[("OUTBOX_RELAY__BROKER__AMQP__URL", url)]);
    let writer = Writer::start(&db, &exchange);
    // It joins and is dealt two partitions, finds the broker unreachable for a lease ttl and
    // steps back: its partitions go to the others and nothing of theirs stalls.
    wait_for(
        "the cut-off replica to hand its partitions off",
        WAIT,
        || async {
            let released = cut_off
                .metric("outbox_relay_partition_handoffs_total{event=\"released\"}")
                .await?;
            (released >= 1.0).then_some(())
        },
    )
    .await;
    converged(&[&healthy[0], &healthy[1], &cut_off], &[3, 3, 0]).await;
    writer.past(2000).await;
    let ids = writer.finish().await;
    all_delivered(&db, &rabbit, &queue, &ids).await;
    assert_eq!(
        held(&cut_off).await,
        0,
        "it stays out while its broker is away"
    );
}
