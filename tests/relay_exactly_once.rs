//! Exactly-once delivery into Kafka, end to end: the relay binary, the real broker and a
//! read_committed consumer, across crashes at the two points that matter.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::kafka::{bootstrap, client_config, create_topic, record_count};
use common::{leader_of, unique, wait_for, Broker, RelayOptions, RelayProcess, TestDb};
use nix::sys::signal::Signal;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(90);
const PARTITIONS: i32 = 3;

fn exactly_once(progress: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "OUTBOX_RELAY__BROKER__KAFKA__DELIVERY",
            "exactly_once".into(),
        ),
        (
            "OUTBOX_RELAY__BROKER__KAFKA__PROGRESS_TOPIC",
            progress.into(),
        ),
        (
            "OUTBOX_RELAY__BROKER__KAFKA__TRANSACTIONAL_ID",
            unique("txn"),
        ),
        ("OUTBOX_RELAY__RELAY__BATCH_SIZE", "50".into()),
    ]
}

fn spawn(
    db: &TestDb,
    env: &[(&'static str, String)],
    extra: &[(&'static str, &str)],
) -> RelayProcess {
    let env: Vec<(&str, &str)> = env
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .chain(extra.iter().copied())
        .collect();
    let options = RelayOptions {
        broker: Some(Broker::Kafka),
        ..RelayOptions::default()
    };
    RelayProcess::spawn_with(&db.relay_url, &options, &env)
}

/// Every record a read_committed consumer sees in `topic` up to the end of each partition,
/// as (message id, payload) in arrival order: the end, not a count, so a duplicate shows.
async fn read_committed(topic: &str) -> Vec<(Uuid, serde_json::Value)> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::error::KafkaError;
    use rdkafka::message::{Headers, Message};
    let consumer: StreamConsumer = client_config(&bootstrap())
        .set("group.id", unique("g"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .create()
        .expect("consumer");
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).expect("assign");
    let mut ended = std::collections::HashSet::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while ended.len() < PARTITIONS as usize {
        match tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .expect("every partition's end within the deadline")
        {
            Err(KafkaError::PartitionEOF(p)) => {
                ended.insert(p);
            }
            Err(e) => panic!("consume: {e}"),
            Ok(m) => {
                let id = m
                    .headers()
                    .and_then(|h| h.iter().find(|h| h.key == "message_id"))
                    .and_then(|h| std::str::from_utf8(h.value?).ok()?.parse().ok())
                    .expect("message_id header");
                let json = serde_json::from_slice(m.payload().unwrap_or_default()).expect("json");
                out.push((id, json));
            }
        }
    }
    out
}

/// Sends 600 rows over 12 keys through a relay that aborts at `point` once, then through a
/// fresh one: a read_committed consumer must see each row once, in commit order per key.
async fn crash_at(point: &str) {
    let db = TestDb::new().await;
    let topic = unique("eos");
    create_topic(&bootstrap(), &topic, PARTITIONS).await;
    let env = exactly_once(&unique("progress"));
    let ids = db.enqueue_many(&topic, 1, 600, 12).await;
    let mut crashed = spawn(&db, &env, &[("OUTBOX_RELAY_CRASH_AT", point)]);
    let status = crashed.wait_exit(WAIT).await;
    assert!(!status.success(), "the relay must abort at {point}");
    let relay = spawn(&db, &env, &[]);
    wait_for("every row published", WAIT, || async {
        (db.count("published").await == 600).then_some(())
    })
    .await;
    // Its start read the progress topic to its end, which librdkafka also reports as an error
    // event: not an error of the relay's.
    let errors: Vec<String> = relay
        .logs()
        .lines()
        .filter(|l| l.contains(" ERROR "))
        .map(str::to_string)
        .collect();
    assert!(
        errors.is_empty(),
        "a clean take-over logged errors: {errors:#?}"
    );
    let got = read_committed(&topic).await;
    let mut seen: HashMap<Uuid, usize> = HashMap::new();
    for (id, _) in &got {
        *seen.entry(*id).or_default() += 1;
    }
    assert_eq!(
        got.len(),
        600,
        "read_committed sees each row once and nothing else"
    );
    assert!(
        ids.iter().all(|id| seen.get(id) == Some(&1)),
        "each row exactly once"
    );
    assert_eq!(common::assert_in_order(got), 0, "no duplicates");
    let offsets = record_count(&bootstrap(), &topic, PARTITIONS).await;
    println!("{point}: {offsets} offsets in the topic (aborted records and markers included)");
}

#[tokio::test]
async fn a_crash_after_the_commit_sends_nothing_again() {
    crash_at("after_commit").await;
}

#[tokio::test]
async fn a_crash_before_the_commit_loses_nothing() {
    crash_at("before_commit").await;
}

/// A publisher paused past its lease while a standby takes over: the standby's start fences it,
/// so after SIGCONT it commits nothing a read_committed consumer sees, and stands by.
#[tokio::test]
async fn a_paused_publisher_commits_nothing_once_a_standby_took_over() {
    let db = TestDb::new().await;
    let topic = unique("eos");
    create_topic(&bootstrap(), &topic, PARTITIONS).await;
    let env = exactly_once(&unique("progress"));
    let replicas = [spawn(&db, &env, &[]), spawn(&db, &env, &[])];
    let leader = leader_of(&[&replicas[0], &replicas[1]]).await;
    let (paused, standby) = (&replicas[leader], &replicas[1 - leader]);
    let mut ids = db.enqueue_many(&topic, 1, 3000, 12).await;
    wait_for("some published", WAIT, || async {
        (db.count("published").await >= 300).then_some(())
    })
    .await;
    paused.signal(Signal::SIGSTOP);
    wait_for("the standby to lead", WAIT, || async {
        standby.is_leader().await.then_some(())
    })
    .await;
    let at_takeover = db.count("published").await;
    wait_for("the new leader to make progress", WAIT, || async {
        (db.count("published").await >= at_takeover + 200).then_some(())
    })
    .await;
    paused.signal(Signal::SIGCONT);
    wait_for("the resumed replica to stand by", WAIT, || async {
        (!paused.is_leader().await).then_some(())
    })
    .await;
    ids.extend(db.enqueue_many(&topic, 3001, 4000, 12).await);
    wait_for("everything published", WAIT, || async {
        (db.count("published").await == 4000).then_some(())
    })
    .await;
    assert!(standby.is_leader().await);
    let got = read_committed(&topic).await;
    assert_eq!(
        got.len(),
        4000,
        "read_committed sees each row once and nothing else"
    );
    let seen: std::collections::HashSet<Uuid> = got.iter().map(|(id, _)| *id).collect();
    assert!(ids.iter().all(|id| seen.contains(id)), "nothing lost");
    assert_eq!(common::assert_in_order(got), 0, "no duplicates");
}
