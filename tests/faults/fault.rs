//! The fault catalogue, and how each fault is injected into a running rig.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use rand::Rng;

use crate::common::{self, Broker, Rabbit};
use crate::proxy::{Mode, Proxy};
use crate::rig::{declare_destination, retry_query, Rig, KAFKA_PARTITIONS};
use crate::verify::{self, FaultWindow};

#[derive(Debug, Clone, Copy)]
pub enum Side {
    Database,
    Broker,
}

#[derive(Debug, Clone, Copy)]
pub enum Fault {
    KillRelay,
    KillLeader,
    PauseLeader,
    BrokerRestart,
    PostgresRestart,
    TerminateBackends,
    Latency(Side),
    Stall(Side),
    Reset(Side),
    DeleteDestination,
}

pub const FAULTS: [Fault; 13] = [
    Fault::KillRelay,
    Fault::KillLeader,
    Fault::PauseLeader,
    Fault::BrokerRestart,
    Fault::PostgresRestart,
    Fault::TerminateBackends,
    Fault::Latency(Side::Database),
    Fault::Latency(Side::Broker),
    Fault::Stall(Side::Database),
    Fault::Stall(Side::Broker),
    Fault::Reset(Side::Database),
    Fault::Reset(Side::Broker),
    Fault::DeleteDestination,
];

impl Fault {
    /// Cutting the relay's broker connections while produce requests are in flight makes
    /// librdkafka bump the idempotent producer's epoch (InitProducerId with the current id),
    /// which tansu 0.6 does not implement: its storage task panics and the broker serves
    /// nothing but errors until restarted, and the producer's next request crashes it again.
    /// So against tansu those two faults are skipped; broker outages with Kafka are covered
    /// by librdkafka's mock cluster in tests/kafka_faults.rs.
    pub fn runs_on(self, broker: Broker) -> bool {
        broker == Broker::Amqp || !matches!(self, Fault::BrokerRestart | Fault::Reset(Side::Broker))
    }

    pub fn name(self) -> String {
        let side = |s: Side| match s {
            Side::Database => "relay-postgres",
            Side::Broker => "relay-broker",
        };
        match self {
            Fault::KillRelay => "kill -9 relay".into(),
            Fault::KillLeader => "kill -9 publishing replica".into(),
            Fault::PauseLeader => "SIGSTOP publishing replica".into(),
            Fault::BrokerRestart => "broker restart".into(),
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
    pub fn side(&self, side: Side) -> &Proxy {
        match side {
            Side::Database => &self.db_proxy,
            Side::Broker => &self.broker_proxy,
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
            Fault::BrokerRestart => {
                let start = Instant::now();
                let service = self.broker.id();
                self.services("stop", service).await;
                tokio::time::sleep(random_between(500, 2000)).await;
                self.services("start", service).await;
                (start, Instant::now())
            }
            Fault::PostgresRestart => {
                let start = Instant::now();
                self.services("stop", "postgres").await;
                tokio::time::sleep(random_between(500, 2000)).await;
                self.services("start", "postgres").await;
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
                self.side(side).set(Mode::Latency(random_between(50, 400)));
                tokio::time::sleep(random_between(2000, 4000)).await;
                self.side(side).set(Mode::Pass);
                (start, Instant::now())
            }
            Fault::Stall(side) => {
                let start = Instant::now();
                self.side(side).set(Mode::Stall);
                tokio::time::sleep(random_between(1500, 6000)).await;
                self.side(side).set(Mode::Pass);
                (start, Instant::now())
            }
            Fault::Reset(side) => {
                let start = Instant::now();
                self.side(side).reset();
                (start, start)
            }
            Fault::DeleteDestination => self.delete_destination().await,
        };
        let recovered = self.wait_recovered(end).await;
        FaultWindow {
            name: fault.name(),
            start,
            recovered,
            recovery: recovered.duration_since(end),
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
                // the relay, the relay is paused while the verifier reads the old topic to its
                // end. It resumes once the topic exists again, with metadata, producer state and
                // in-flight requests for the old one: tansu 0.6's SQLite engine panics on a
                // produce to a missing topic and stops serving, so the relay cannot be let
                // loose on the gap itself (the RabbitMQ run covers a missing destination).
                let bootstrap = self.broker_proxy.addr.to_string();
                for r in &self.relays {
                    r.signal(Signal::SIGSTOP);
                }
                let start = Instant::now();
                let base = self.incarnation_base;
                common::wait_for(
                    "the verifier to read the topic to its end",
                    Duration::from_secs(60),
                    || async {
                        let in_topic = common::kafka::record_count(
                            &bootstrap,
                            &self.destination,
                            KAFKA_PARTITIONS,
                        )
                        .await;
                        ((self.deliveries.len() - base) as i64 == in_topic).then_some(())
                    },
                )
                .await;
                if let Some(c) = self.consumer.take() {
                    c.stop().await;
                }
                common::kafka::delete_topic(&bootstrap, &self.destination)
                    .await
                    .expect("delete topic");
                tokio::time::sleep(random_between(200, 1000)).await;
                common::kafka::create_topic_retrying(
                    &bootstrap,
                    &self.destination,
                    KAFKA_PARTITIONS,
                )
                .await;
                for r in &self.relays {
                    r.signal(Signal::SIGCONT);
                }
                self.incarnation_base = self.deliveries.len();
                self.consumer = Some(verify::consume_kafka(
                    &bootstrap,
                    &self.destination,
                    KAFKA_PARTITIONS,
                    self.deliveries.clone(),
                ));
                (start, Instant::now())
            }
        }
    }
}
