//! The Kafka cluster's faults: brokers killed, stopped and started through scripts/services.sh
//! (the leader of a partition found in the cluster's metadata), the whole cluster down, the
//! relay-broker proxies stalled past the publish timeout; waiting until every replica is in sync
//! again; the idempotent producer's epoch bumps, read off the relays' logs.

use std::time::{Duration, Instant};

use rand::Rng;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::ClientConfig;

use crate::common;
use crate::fault::{random_between, Fault, Side};
use crate::proxy::Mode;
use crate::rig::{Rig, KAFKA_PARTITIONS, KAFKA_PUBLISH_TIMEOUT, KAFKA_REPLICAS};

/// One partition as the cluster's metadata has it.
#[derive(Debug)]
pub struct PartitionState {
    pub id: i32,
    /// The leader's node id; -1 while it has none.
    pub leader: i32,
    pub in_sync: usize,
}

/// The topic's partitions from the cluster's metadata (fetched off the runtime): `Err` with
/// the reason when no broker answered or the topic has an error (such as unknown).
pub async fn partitions(bootstrap: &str, topic: &str) -> Result<Vec<PartitionState>, String> {
    let bootstrap = bootstrap.to_string();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let client: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .map_err(|e| e.to_string())?;
        let metadata = client
            .client()
            .fetch_metadata(Some(&topic), Duration::from_secs(5))
            .map_err(|e| e.to_string())?;
        let t = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .ok_or("topic missing from the metadata")?;
        if let Some(e) = t.error() {
            return Err(format!("{:?}", RDKafkaErrorCode::from(e)));
        }
        Ok(t.partitions()
            .iter()
            .map(|p| PartitionState {
                id: p.id(),
                leader: p.leader(),
                in_sync: p.isr().len(),
            })
            .collect())
    })
    .await
    .expect("metadata task")
}

/// The node id of the partition's leader, once it has one (up to 30 s).
pub async fn leader_of(bootstrap: &str, topic: &str, partition: i32) -> u8 {
    common::wait_for(
        &format!("the leader of {topic} partition {partition}"),
        Duration::from_secs(30),
        || async {
            let partitions = partitions(bootstrap, topic).await.ok()?;
            let p = partitions.iter().find(|p| p.id == partition)?;
            (p.leader > 0).then_some(p.leader as u8)
        },
    )
    .await
}

/// A replica assignment for the topic recreated under its name, with every partition's
/// preferred leader the broker after its current one: a producer that kept the old topic's
/// leaders then sends to the wrong broker (librdkafka#4898, `Replace::StaleMetadata` in src/publish/kafka/mod.rs).
pub async fn leaders_moved(bootstrap: &str, topic: &str) -> Vec<Vec<i32>> {
    let nodes = KAFKA_REPLICAS;
    let leaders = common::wait_for(
        &format!("leaders of {topic}"),
        Duration::from_secs(30),
        || async {
            let partitions = partitions(bootstrap, topic).await.ok()?;
            partitions.iter().all(|p| p.leader > 0).then(|| {
                partitions
                    .iter()
                    .map(|p| (p.id, p.leader))
                    .collect::<Vec<_>>()
            })
        },
    )
    .await;
    let mut assignment = vec![Vec::new(); KAFKA_PARTITIONS as usize];
    for (id, leader) in leaders {
        // Node ids run 1..=nodes (scripts/kafka.sh).
        assignment[id as usize] = (0..nodes).map(|i| (leader + i) % nodes + 1).collect();
    }
    assignment
}

/// The client ports the cluster's brokers advertise, as its metadata lists them.
pub async fn advertised_ports(bootstrap: &str) -> Vec<u16> {
    let bootstrap = bootstrap.to_string();
    tokio::task::spawn_blocking(move || {
        let client: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .expect("kafka client");
        let metadata = client
            .client()
            .fetch_metadata(None, Duration::from_secs(10))
            .expect("the cluster's metadata");
        let mut ports: Vec<u16> = metadata.brokers().iter().map(|b| b.port() as u16).collect();
        ports.sort_unstable();
        ports
    })
    .await
    .expect("metadata task")
}

/// The records in the topic (the sum of its partitions' high watermarks); `None` while the
/// cluster cannot tell (a partition between leaders).
pub async fn record_count(bootstrap: &str, topic: &str) -> Option<i64> {
    partition_ends(bootstrap, topic)
        .await
        .into_iter()
        .map(|(_, high, _)| high)
        .sum()
}

/// Each partition's high watermark and last stable offset (as a read_committed consumer sees
/// the end), for a report: a stable offset left behind the watermark is an open transaction
/// that read_committed consumers wait for.
pub async fn partition_ends(bootstrap: &str, topic: &str) -> Vec<(i32, Option<i64>, Option<i64>)> {
    let bootstrap = bootstrap.to_string();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let client = |isolation: &str| -> Option<BaseConsumer> {
            ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("isolation.level", isolation)
                .create()
                .ok()
        };
        let (uncommitted, committed) = (client("read_uncommitted"), client("read_committed"));
        let end = |c: &Option<BaseConsumer>, p: i32| {
            c.as_ref()?
                .fetch_watermarks(&topic, p, Duration::from_secs(5))
                .ok()
                .map(|(_, high)| high)
        };
        (0..KAFKA_PARTITIONS)
            .map(|p| (p, end(&uncommitted, p), end(&committed, p)))
            .collect()
    })
    .await
    .expect("watermarks task")
}

/// Deletes the topic, retrying (up to 30 s) while the cluster refuses for a while, such as
/// while the controller moves.
pub async fn delete_topic(bootstrap: &str, topic: &str) {
    common::wait_for(
        &format!("topic {topic} deleted"),
        Duration::from_secs(30),
        || async {
            match common::kafka::delete_topic(bootstrap, topic).await {
                // Gone already: an earlier attempt went through without its answer.
                Ok(()) | Err(KafkaError::AdminOp(RDKafkaErrorCode::UnknownTopicOrPartition)) => {
                    Some(())
                }
                Err(e) => {
                    println!("   delete topic {topic}: {e}");
                    None
                }
            }
        },
    )
    .await
}

/// Waits until the cluster's metadata no longer has the (deleted) topic.
pub async fn wait_topic_gone(bootstrap: &str, topic: &str) {
    common::wait_for(
        &format!("topic {topic} gone from the metadata"),
        Duration::from_secs(30),
        || async {
            match partitions(bootstrap, topic).await {
                Err(e) if e.contains("UnknownTopicOrPartition") => Some(()),
                _ => None,
            }
        },
    )
    .await
}

/// What the relays' librdkafka logged of its producer ids after the first (debug=eos): epoch
/// bumps (after message timeouts it bumps the epoch itself, "All partitions drained, bumped
/// epoch to PID{Id:0,Epoch:1}") and ids acquired from a broker in place of an earlier one.
#[derive(Debug, Default)]
pub struct ProducerIds {
    pub bumps: usize,
    pub new_ids: usize,
}

impl ProducerIds {
    fn read(&mut self, log: &str) {
        for line in log.lines() {
            if line.contains("bumped epoch to PID{") {
                self.bumps += 1;
            } else if line.contains("Acquired PID{") && line.contains("(previous PID{") {
                self.new_ids += 1;
            }
        }
    }
}

impl Rig<'_> {
    /// Injects a Kafka cluster fault: its start and end, what it hit in `detail`, and in
    /// `failure` why it did not do what it is there for.
    pub async fn inject_kafka(
        &mut self,
        fault: Fault,
        detail: &mut String,
        failure: &mut Option<String>,
    ) -> (Instant, Instant) {
        match fault {
            Fault::KafkaKill(node) => self.broker_down("kill", node, 500, 2000).await,
            Fault::KafkaRestart(node) => self.broker_down("stop", node, 500, 2000).await,
            Fault::KillPartitionLeader => {
                let partition = rand::rng().random_range(0..KAFKA_PARTITIONS);
                let leader = leader_of(&self.kafka_bootstrap, &self.destination, partition).await;
                *detail = format!("broker {leader}, partition {partition}");
                self.broker_down("kill", leader, 500, 2000).await
            }
            Fault::ClusterDown => {
                let start = Instant::now();
                // All at once, as an orchestrator stops a cluster: SIGTERM, and SIGKILL after
                // 10 s. The broker that shuts down last may wait for a controller quorum that
                // is gone (it did for 90 s).
                self.every_broker("stop").await;
                let down = Instant::now();
                // The brokers serve again past the publish timeout: they are started that long
                // after the stop less most of what their last start took (none the first time).
                let outage = KAFKA_PUBLISH_TIMEOUT + random_between(500, 1500);
                let head_start = self.cluster_start.mul_f64(0.8);
                tokio::time::sleep(outage.saturating_sub(head_start)).await;
                // Together: a broker serves once a majority of the controller quorum runs.
                let starting = Instant::now();
                self.every_broker("start").await;
                self.cluster_start = starting.elapsed();
                let outage = down.elapsed();
                *detail = format!("no broker for {outage:.1?}");
                if outage <= KAFKA_PUBLISH_TIMEOUT {
                    *failure = Some(format!(
                        "the cluster was down for {outage:.1?} only, not past the publish timeout"
                    ));
                }
                (start, Instant::now())
            }
            Fault::EpochBump => {
                // Messages time out in librdkafka with produce requests in flight behind the
                // stalled proxies; the requests reach the brokers once the stall ends. 2 s and
                // more past the timeout: librdkafka looks for timed-out messages once a second.
                let start = Instant::now();
                self.set_mode(Side::Broker, Mode::Stall);
                let stall = KAFKA_PUBLISH_TIMEOUT + random_between(2000, 3000);
                tokio::time::sleep(stall).await;
                self.set_mode(Side::Broker, Mode::Pass);
                *detail = format!("stalled {stall:.1?}");
                (start, Instant::now())
            }
            other => unreachable!("{} is not a Kafka cluster fault", other.name()),
        }
    }

    /// One broker stopped (`stop`: cleanly, `kill`: kill -9), started again after a pause
    /// between `from_ms` and `to_ms`; returns once it serves again.
    async fn broker_down(
        &self,
        action: &str,
        node: u8,
        from_ms: u64,
        to_ms: u64,
    ) -> (Instant, Instant) {
        let node = node.to_string();
        let start = Instant::now();
        self.services(&[action, "kafka", &node]).await;
        tokio::time::sleep(random_between(from_ms, to_ms)).await;
        self.services(&["start", "kafka", &node]).await;
        (start, Instant::now())
    }

    /// `action` on every broker at once; a stop sends SIGKILL to a broker still running 10 s
    /// after its SIGTERM (scripts/kafka.sh's deadline, OUTBOX_KAFKA_READY_SECS).
    async fn every_broker(&self, action: &str) {
        let nodes: Vec<String> = (1..=self.settings.kafka_ports.len())
            .map(|n| n.to_string())
            .collect();
        let env: &[(&str, &str)] = match action {
            "stop" => &[("OUTBOX_KAFKA_READY_SECS", "10")],
            _ => &[],
        };
        futures::future::join_all(nodes.iter().map(|n| async move {
            self.services_with(env, &[action, "kafka", n.as_str()])
                .await
        }))
        .await;
    }

    /// Waits (up to a minute) until every partition has a leader and all its replicas in
    /// sync, so that the next fault starts from a whole cluster: with a replica still catching
    /// up, a kill -9 of another broker would leave partitions below min.insync.replicas, or
    /// without a leader, until the first one is back. Returns how long it waited.
    pub async fn wait_in_sync(&self) -> Duration {
        let started = Instant::now();
        let deadline = started + Duration::from_secs(60);
        loop {
            let state = partitions(&self.kafka_bootstrap, &self.destination).await;
            let behind = match &state {
                Ok(ps) => ps
                    .iter()
                    .filter(|p| p.leader < 0 || p.in_sync < KAFKA_REPLICAS as usize)
                    .count(),
                Err(_) => KAFKA_PARTITIONS as usize,
            };
            if behind == 0 {
                return started.elapsed();
            }
            if Instant::now() > deadline {
                println!("   replicas still out of sync after 60 s: {state:?}");
                return started.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The producer id changes so far of every relay of the run, from their logs.
    pub fn producer_ids(&self) -> ProducerIds {
        let mut ids = ProducerIds::default();
        for log in &self.relay_logs {
            ids.read(&std::fs::read_to_string(log).unwrap_or_default());
        }
        ids
    }

    /// Epoch bumps since `before` (a count of [`Self::producer_ids`]). After the epoch bump
    /// fault, up to 10 s more for one (librdkafka bumps once no request is in flight).
    pub async fn epoch_bumps_since(&self, before: usize, fault: Fault) -> usize {
        let deadline = Instant::now()
            + if fault == Fault::EpochBump {
                Duration::from_secs(10)
            } else {
                Duration::ZERO
            };
        loop {
            let bumps = self.producer_ids().bumps.saturating_sub(before);
            if bumps > 0 || Instant::now() >= deadline {
                return bumps;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
