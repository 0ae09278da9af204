//! The fault catalogue, and how each fault is injected into a running rig.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use rand::Rng;

use crate::cluster;
use crate::common::{self, Broker, Rabbit};
use crate::consume;
use crate::proxy::{Mode, Proxy};
use crate::replicas;
use crate::rig::{declare_destination, retry_query, Rig, KAFKA_PARTITIONS, KAFKA_TOPIC_CONFIG};
use crate::settings::Target;
use crate::verify::FaultWindow;

/// How long before a kill -9 nsqd may have acknowledged a message it then loses. nsqd writes
/// each message to its on-disk queues at once, but records how far it wrote and read only when
/// it syncs; restarted, it skips whatever lies past the recorded write position ("metadata
/// writePos < file size, skipping to new file" in its log), and mends positions it finds
/// inconsistent by skipping too ("readPos > writePos ... skipping to next writeFileNum"). With
/// nsqd's defaults (a sync every 2500 operations or 2 s) 3 kills lost 1 to 11 messages
/// acknowledged up to 0.76 s before; scripts/faults.sh has nsqd sync after every operation
/// (OUTBOX_NSQ_SYNC_EVERY=1), and then 6 kills lost 1, acknowledged 0.28 s before.
pub const NSQD_UNSYNCED: Duration = Duration::from_millis(1500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Database,
    Broker,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    KillRelay,
    KillLeader,
    PauseLeader,
    /// Active-active: kill -9 of one of the three replicas, a new one started in its place.
    KillReplica,
    /// Active-active: SIGSTOP of one replica until the others hold its partitions, then SIGCONT.
    PauseReplica,
    /// Active-active: SIGTERM of this many replicas, as many started once the others hold
    /// every partition (3 -> 2 -> 3, 3 -> 1 -> 3).
    Terminate(usize),
    /// RabbitMQ, Redis or nsqd stopped and started again.
    BrokerRestart,
    /// kill -9 of the Redis server or of nsqd, started again after a pause.
    BrokerKill,
    /// One Kafka broker (its node number) stopped cleanly and started again.
    KafkaRestart(u8),
    /// kill -9 of one Kafka broker (its node number), started again after a pause.
    KafkaKill(u8),
    /// kill -9 of the broker that leads one of the topic's partitions.
    KillPartitionLeader,
    /// Every Kafka broker stopped for longer than the publish timeout, then started again.
    ClusterDown,
    /// Every relay-broker proxy stalled for longer than the publish timeout: messages time out
    /// with produce requests in flight, and librdkafka bumps the producer's epoch.
    EpochBump,
    PostgresRestart,
    TerminateBackends,
    Latency(Side),
    Stall(Side),
    Reset(Side),
    DeleteDestination,
}

/// The faults of one round against `target`; Kafka's single-broker faults take node `round`
/// (kill -9) and the next one (clean restart) of its `nodes`, so that rounds go through them all.
pub fn catalogue(target: Target, round: usize, nodes: usize) -> Vec<Fault> {
    let broker = target.broker;
    if target.active_active {
        return replicas::catalogue(broker, round);
    }
    let mut faults = vec![
        Fault::KillRelay,
        Fault::KillLeader,
        Fault::PauseLeader,
        Fault::PostgresRestart,
        Fault::TerminateBackends,
        Fault::Latency(Side::Database),
        Fault::Latency(Side::Broker),
        Fault::Stall(Side::Database),
        Fault::Stall(Side::Broker),
        Fault::Reset(Side::Database),
        Fault::Reset(Side::Broker),
    ];
    match broker {
        Broker::Amqp => faults.extend([Fault::BrokerRestart, Fault::DeleteDestination]),
        // Not the stream or topic deleted: deleting it destroys what the verifier has not read
        // yet.
        Broker::Redis | Broker::Nsq => faults.extend([Fault::BrokerRestart, Fault::BrokerKill]),
        Broker::Kafka => {
            let node = |offset: usize| ((round - 1 + offset) % nodes + 1) as u8;
            faults.extend([
                Fault::KafkaKill(node(0)),
                Fault::KafkaRestart(node(1)),
                Fault::KillPartitionLeader,
                Fault::ClusterDown,
                Fault::EpochBump,
                // With leaders moved before, and each partition led by another broker after:
                // librdkafka then ignores the new topic's leaders as outdated and the relay
                // must replace its producer (`Replace::StaleMetadata` in src/publish/kafka/mod.rs).
                Fault::DeleteDestination,
            ]);
        }
    }
    // Deleting the topic destroys committed records, and the fault checks that the verifier
    // read it to the end by its offsets, which with transactions also count commit markers
    // and aborted records: it measures nothing about exactly-once.
    if target.exactly_once {
        faults.retain(|f| *f != Fault::DeleteDestination);
    }
    faults
}

impl Fault {
    pub fn name(self) -> String {
        let side = |s: Side| match s {
            Side::Database => "relay-postgres",
            Side::Broker => "relay-broker",
        };
        match self {
            Fault::KillRelay => "kill -9 relay".into(),
            Fault::KillLeader => "kill -9 publishing replica".into(),
            Fault::PauseLeader => "SIGSTOP publishing replica".into(),
            Fault::KillReplica => "kill -9 replica".into(),
            Fault::PauseReplica => "SIGSTOP replica past its lease".into(),
            Fault::Terminate(n) => {
                let plural = if n == 1 { "replica" } else { "replicas" };
                let left = replicas::REPLICAS - n;
                let all = replicas::REPLICAS;
                format!("SIGTERM {n} {plural} ({all} -> {left} -> {all})")
            }
            Fault::BrokerRestart => "broker restart".into(),
            Fault::BrokerKill => "kill -9 broker".into(),
            Fault::KafkaRestart(n) => format!("broker {n} restart"),
            Fault::KafkaKill(n) => format!("kill -9 broker {n}"),
            Fault::KillPartitionLeader => "kill -9 partition leader".into(),
            Fault::ClusterDown => "cluster down > publish timeout".into(),
            Fault::EpochBump => "epoch bump (publish timeouts mid-flight)".into(),
            Fault::PostgresRestart => "postgres restart".into(),
            Fault::TerminateBackends => "pg_terminate_backend".into(),
            Fault::Latency(s) => format!("latency {}", side(s)),
            Fault::Stall(s) => format!("stall {}", side(s)),
            Fault::Reset(s) => format!("reset {}", side(s)),
            Fault::DeleteDestination => "destination deleted".into(),
        }
    }
}

pub fn random_between(from_ms: u64, to_ms: u64) -> Duration {
    Duration::from_millis(rand::rng().random_range(from_ms..=to_ms))
}

/// How each fault is injected.
impl Rig<'_> {
    /// The proxies of a side. The broker side is every Kafka broker's proxy at once: the relay
    /// writes to the leaders of all partitions, spread over the brokers, so a fault on one proxy
    /// would reach some keys only; kill -9 and restarts of single brokers cover partial outages.
    pub fn side(&self, side: Side) -> &[Proxy] {
        match side {
            Side::Database => std::slice::from_ref(&self.db_proxy),
            Side::Broker => &self.broker_proxies,
        }
    }

    pub fn set_mode(&self, side: Side, mode: Mode) {
        for p in self.side(side) {
            p.set(mode);
        }
    }

    /// The index of the replica that holds the lease, waiting up to 30 s for one.
    pub async fn leader(&self) -> usize {
        let relays = &self.relays;
        common::wait_for(
            "a leader among the replicas",
            Duration::from_secs(30),
            || async {
                for (i, r) in relays.iter().enumerate() {
                    let metric = tokio::time::timeout(
                        Duration::from_millis(500),
                        r.metric("outbox_relay_leader"),
                    )
                    .await;
                    if metric == Ok(Some(1.0)) {
                        return Some(i);
                    }
                }
                None
            },
        )
        .await
    }

    /// A second replica, waited for until it answers on its HTTP listener.
    pub async fn add_standby(&mut self) {
        let standby = self.spawn_relay();
        common::wait_for("the standby to start", Duration::from_secs(30), || async {
            standby.get("/livez").await.map(|_| ())
        })
        .await;
        self.relays.push(standby);
    }

    /// Injects one fault; returns when the relay has recovered from it.
    pub async fn inject(&mut self, fault: Fault) -> FaultWindow {
        let ids_before = match self.broker {
            Broker::Kafka => self.producer_ids(),
            Broker::Amqp | Broker::Redis | Broker::Nsq => cluster::ProducerIds::default(),
        };
        let mut detail = String::new();
        let mut failure = None;
        let mut resumed = None;
        let step_backs = if self.active_active {
            self.step_backs()
        } else {
            0
        };
        let (start, end) = match fault {
            Fault::KillRelay => {
                let start = Instant::now();
                let victim = self.relays.remove(0);
                victim.signal(Signal::SIGKILL);
                drop(victim);
                tokio::time::sleep(random_between(100, 2000)).await;
                let relay = self.spawn_relay();
                self.relays.push(relay);
                (start, Instant::now())
            }
            Fault::KillLeader => {
                self.add_standby().await;
                let leader = self.leader().await;
                tokio::time::sleep(random_between(100, 1000)).await;
                let start = Instant::now();
                let victim = self.relays.remove(leader);
                victim.signal(Signal::SIGKILL);
                drop(victim);
                (start, start)
            }
            Fault::PauseLeader => {
                self.add_standby().await;
                let leader = self.leader().await;
                tokio::time::sleep(random_between(100, 1000)).await;
                let start = Instant::now();
                self.relays[leader].signal(Signal::SIGSTOP);
                let paused = self.relays.remove(leader);
                // Past the lease: the other replica has taken over.
                self.leader().await;
                tokio::time::sleep(random_between(0, 1500)).await;
                paused.signal(Signal::SIGCONT);
                let end = Instant::now();
                // Back to one replica: the resumed one leaves with a clean shutdown.
                paused.signal(Signal::SIGTERM);
                let mut paused = paused;
                paused.wait_exit(Duration::from_secs(30)).await;
                (start, end)
            }
            Fault::KillReplica | Fault::PauseReplica | Fault::Terminate(_) => {
                let (start, end, paused) =
                    self.inject_replicas(fault, &mut detail, &mut failure).await;
                resumed = paused;
                (start, end)
            }
            Fault::BrokerRestart | Fault::BrokerKill => {
                let service = match self.broker {
                    Broker::Redis => "redis",
                    Broker::Nsq => "nsq",
                    _ => "rabbitmq",
                };
                let action = if fault == Fault::BrokerKill {
                    "kill"
                } else {
                    "stop"
                };
                let start = Instant::now();
                self.services(&[action, service]).await;
                tokio::time::sleep(random_between(500, 2000)).await;
                self.services(&["start", service]).await;
                (start, Instant::now())
            }
            Fault::KafkaRestart(_)
            | Fault::KafkaKill(_)
            | Fault::KillPartitionLeader
            | Fault::ClusterDown
            | Fault::EpochBump => self.inject_kafka(fault, &mut detail, &mut failure).await,
            Fault::PostgresRestart => {
                let start = Instant::now();
                self.services(&["stop", "postgres"]).await;
                tokio::time::sleep(random_between(500, 2000)).await;
                self.services(&["start", "postgres"]).await;
                (start, Instant::now())
            }
            Fault::TerminateBackends => {
                let start = Instant::now();
                let pool = &self.db.pool;
                // Retried: the verifier's own pooled session may have died in an earlier fault.
                // The select list runs only for the rows the WHERE clause kept.
                let terminated = retry_query(Duration::from_secs(10), || async {
                    let killed: Vec<bool> = sqlx::query_scalar(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                          WHERE datname = current_database() AND application_name = 'outbox-relay'",
                    )
                    .fetch_all(pool)
                    .await?;
                    if killed.contains(&true) {
                        Ok(())
                    } else {
                        Err(sqlx::Error::RowNotFound)
                    }
                })
                .await;
                assert!(
                    terminated.is_some(),
                    "the relay had no session to terminate"
                );
                (start, Instant::now())
            }
            Fault::Latency(side) => {
                let start = Instant::now();
                self.set_mode(side, Mode::Latency(random_between(50, 400)));
                tokio::time::sleep(random_between(2000, 4000)).await;
                self.set_mode(side, Mode::Pass);
                (start, Instant::now())
            }
            Fault::Stall(side) => {
                // Shorter than the Kafka relay's publish timeout: nothing times out (the epoch
                // bump fault is the one that outlasts it).
                let start = Instant::now();
                self.set_mode(side, Mode::Stall);
                tokio::time::sleep(random_between(1500, 6000)).await;
                self.set_mode(side, Mode::Pass);
                (start, Instant::now())
            }
            Fault::Reset(side) => {
                let start = Instant::now();
                for p in self.side(side) {
                    p.reset();
                }
                (start, start)
            }
            Fault::DeleteDestination => self.delete_destination().await,
        };
        let recovered = self.wait_recovered(end).await;
        let stuck = match recovered {
            Some(_) => None,
            None => Some(self.stuck_report().await),
        };
        let recovered = recovered.unwrap_or_else(Instant::now);
        if self.active_active && stuck.is_none() {
            let seen = self
                .rebalanced(end, resumed, step_backs, &mut failure)
                .await;
            detail = [detail]
                .into_iter()
                .chain(seen)
                .filter(|d| !d.is_empty())
                .collect::<Vec<_>>()
                .join(", ");
        }
        if self.broker == Broker::Kafka {
            let bumps = self.epoch_bumps_since(ids_before.bumps, fault).await;
            let new_ids = self.producer_ids().new_ids - ids_before.new_ids;
            let mut caused = vec![format!("epoch bumps {bumps}")];
            if new_ids > 0 {
                caused.push(format!("new producer ids {new_ids}"));
            }
            if !detail.is_empty() {
                caused.insert(0, detail);
            }
            detail = caused.join(", ");
            // Faults start only once the relay has published, so the stall meets produce
            // requests in flight: a fault that forced no bump did not test what it names.
            // A transactional producer aborts instead: no bump is expected of it.
            if fault == Fault::EpochBump && bumps == 0 && !self.exactly_once {
                failure = Some("librdkafka did not bump the producer's epoch".to_string());
            }
        }
        FaultWindow {
            name: fault.name(),
            detail,
            start,
            recovered,
            recovery: recovered.duration_since(end),
            failure,
            stuck,
            loses_acknowledged: (fault == Fault::BrokerKill && self.broker == Broker::Nsq)
                .then_some(NSQD_UNSYNCED),
        }
    }

    pub async fn delete_destination(&mut self) -> (Instant, Instant) {
        match self.broker {
            Broker::Amqp => {
                // Messages already routed stay in the queue; the relay meets a missing
                // exchange (404), then an exchange without a binding (returned, unroutable).
                let rabbit = Rabbit::connect().await;
                let start = Instant::now();
                rabbit
                    .delete_exchange(&self.destination)
                    .await
                    .expect("delete exchange");
                tokio::time::sleep(random_between(500, 2000)).await;
                declare_destination(&rabbit, &self.destination).await;
                tokio::time::sleep(random_between(0, 1000)).await;
                rabbit.bind(&self.queue, &self.destination, "").await;
                (start, Instant::now())
            }
            Broker::Kafka => {
                // Deleting a topic destroys its records. So that "lost" keeps meaning lost by
                // the relay, the relay is paused, and its proxies hold its requests, while the
                // verifier reads the topic to its end and the topic is deleted. It resumes
                // before the topic exists again: it meets a missing topic with metadata,
                // producer state and requests for the old one.
                let bootstrap = self.kafka_bootstrap.clone();
                // First the leaders move (a clean restart of partition 0's leader), so that the
                // relay holds leader epochs above the new topic's 0 (librdkafka#4898).
                let start = Instant::now();
                let leader = cluster::leader_of(&bootstrap, &self.destination, 0).await;
                self.services(&["stop", "kafka", &leader.to_string()]).await;
                self.services(&["start", "kafka", &leader.to_string()])
                    .await;
                self.wait_in_sync().await;
                for r in &self.relays {
                    r.signal(Signal::SIGSTOP);
                }
                // Produce requests sent before the pause land, or wait in a proxy: once the
                // brokers answered all they were given, the topic's end no longer moves.
                for p in &self.broker_proxies {
                    p.hold_requests(Duration::from_secs(60)).await;
                }
                let base = self.incarnation_base;
                let moved = cluster::leaders_moved(&bootstrap, &self.destination).await;
                common::wait_for(
                    "the verifier to read the topic to its end",
                    Duration::from_secs(60),
                    || async {
                        let in_topic = cluster::record_count(&bootstrap, &self.destination).await;
                        (Some((self.deliveries.len() - base) as i64) == in_topic).then_some(())
                    },
                )
                .await;
                if let Some(c) = self.consumer.take() {
                    c.stop().await;
                }
                cluster::delete_topic(&bootstrap, &self.destination).await;
                // Gone from the brokers' metadata before the relay may write again: a record
                // appended to the old topic now would be destroyed with it.
                cluster::wait_topic_gone(&bootstrap, &self.destination).await;
                for p in &self.broker_proxies {
                    p.release_requests();
                }
                for r in &self.relays {
                    r.signal(Signal::SIGCONT);
                }
                tokio::time::sleep(random_between(500, 2000)).await;
                common::kafka::create_topic_retrying(
                    &bootstrap,
                    &self.destination,
                    KAFKA_PARTITIONS,
                    common::kafka::Replicas::Assigned(&moved),
                    KAFKA_TOPIC_CONFIG,
                )
                .await;
                self.incarnation_base = self.deliveries.len();
                self.consumer = Some(consume::consume_kafka(
                    &bootstrap,
                    &self.destination,
                    KAFKA_PARTITIONS,
                    self.exactly_once,
                    self.deliveries.clone(),
                ));
                (start, Instant::now())
            }
            Broker::Redis | Broker::Nsq => {
                unreachable!("the Redis and NSQ catalogues delete no stream or topic")
            }
        }
    }
}
