//! The rig of one broker's run: the database and broker behind proxies, the relay replicas,
//! the verifier's consumer; starting relays and services, waiting for recovery, draining.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::ExchangeKind;
use nix::sys::signal::Signal;

use crate::cluster;
use crate::common::{self, Broker, Rabbit, RelayProcess, TestDb};
use crate::consume::{self, ConsumerTask};
use crate::nsq_verify;
use crate::proxy::Proxy;
use crate::redis_verify;
use crate::replicas;
use crate::settings::{Settings, Target};
use crate::verify::{Deliveries, FaultWindow};

pub const KAFKA_PARTITIONS: i32 = 4;
/// Every partition on all three brokers (which allow writes with two in sync).
pub const KAFKA_REPLICAS: i32 = 3;
/// The topic's settings: the broker stamps each record with the time it appended it, which the
/// verifier takes as the time of its delivery (see consume::consume_kafka).
pub const KAFKA_TOPIC_CONFIG: &[(&str, &str)] = &[("message.timestamp.type", "LogAppendTime")];
/// The Kafka relay's `relay.publish_timeout`, librdkafka's `message.timeout.ms`. Longer than a
/// partition goes without a leader after a kill -9 of its broker (the brokers' 6 s session
/// timeout) and than the stalls of `stall relay-broker` (6 s at most), so that those faults
/// time nothing out; the cluster-down and epoch-bump faults outlast it on purpose.
pub const KAFKA_PUBLISH_TIMEOUT: Duration = Duration::from_secs(8);

/// Everything one broker's run needs.
pub struct Rig<'a> {
    pub settings: &'a Settings,
    pub broker: Broker,
    /// Kafka with exactly-once delivery (the `kafka-eos` run).
    pub exactly_once: bool,
    /// Three replicas sharing the partitions (the `-aa` runs).
    pub active_active: bool,
    pub db: TestDb,
    pub db_proxy: Proxy,
    /// Between the relay and the broker: RabbitMQ's one, or one in front of each Kafka broker
    /// (node 1 first), on the port that broker advertises.
    pub broker_proxies: Vec<Proxy>,
    /// Kafka: how the suite's own clients reach the cluster (around the proxies).
    pub kafka_bootstrap: String,
    pub relay_db_url: String,
    pub relay_env: Vec<(String, String)>,
    pub relays: Vec<RelayProcess>,
    /// The logs of every relay started in this run, the killed ones' too.
    pub relay_logs: Vec<PathBuf>,
    pub destination: String,
    pub queue: String,
    pub deliveries: Deliveries,
    pub consumer: Option<ConsumerTask>,
    /// Deliveries recorded before the current Kafka topic was created.
    pub incarnation_base: usize,
    /// How long the Kafka cluster's last start took (cluster down).
    pub cluster_start: Duration,
    pub faults: Vec<FaultWindow>,
}

impl<'a> Rig<'a> {
    /// The database proxy, the destination and the broker proxy, and the verifier's consumer;
    /// no relay yet.
    pub async fn set_up(settings: &'a Settings, target: Target) -> Rig<'a> {
        let broker = target.broker;
        println!("== {}: setting up", target.id());
        let db = TestDb::new().await;
        let db_proxy = Proxy::to_local(settings.pg_port).await;
        let mut relay_db_url = url::Url::parse(&db.url).unwrap();
        relay_db_url.set_port(Some(db_proxy.addr.port())).unwrap();
        let destination = common::unique("faults");
        let deliveries = Deliveries::default();
        let mut relay_env = Vec::new();
        set_env(
            &mut relay_env,
            &[
                ("OUTBOX_RELAY__HA__LEASE_NAME", destination.as_str()),
                ("OUTBOX_RELAY__HA__LEASE_TTL", "2s"),
                ("OUTBOX_RELAY__DATABASE__CONNECT_TIMEOUT", "2s"),
                ("OUTBOX_RELAY__RELAY__BATCH_SIZE", "50"),
                ("OUTBOX_RELAY__RELAY__PUBLISH_TIMEOUT", "3s"),
                ("OUTBOX_RELAY__RELAY__SHUTDOWN_GRACE", "5s"),
                ("OUTBOX_RELAY__RETRY__MAX_ATTEMPTS", "100000"),
                ("OUTBOX_RELAY__SWEEPER__INTERVAL", "250ms"),
            ],
        );
        if target.active_active {
            let partitions = replicas::PARTITIONS.to_string();
            set_env(
                &mut relay_env,
                &[("OUTBOX_RELAY__RELAY__PARTITIONS", partitions.as_str())],
            );
        }
        let mut kafka_bootstrap = String::new();
        let (broker_proxies, queue, consumer) = match broker {
            Broker::Amqp => {
                let proxy = Proxy::to_local(settings.amqp_port).await;
                let mut url = url::Url::parse(&settings.amqp_url).unwrap();
                url.set_port(Some(proxy.addr.port())).unwrap();
                set_env(
                    &mut relay_env,
                    &[
                        ("OUTBOX_RELAY__BROKER__AMQP__URL", url.as_str()),
                        ("OUTBOX_RELAY__BROKER__AMQP__CONNECT_TIMEOUT", "2s"),
                    ],
                );
                let queue = common::unique("faults_q");
                let rabbit = Rabbit::connect().await;
                declare_destination(&rabbit, &destination).await;
                rabbit
                    .declare_queue(
                        &queue,
                        QueueDeclareOptions {
                            durable: true,
                            ..Default::default()
                        },
                        FieldTable::default(),
                    )
                    .await;
                rabbit.bind(&queue, &destination, "").await;
                let consumer = consume::consume_rabbit(
                    settings.amqp_url.clone(),
                    queue.clone(),
                    deliveries.clone(),
                );
                (vec![proxy], queue, consumer)
            }
            Broker::Kafka => {
                // Each broker advertises its proxy's port (OUTBOX_KAFKA_ADVERTISED_PORTS), so
                // every client connection after the bootstrap passes through a proxy too.
                let mut proxies = Vec::new();
                for (&listen, &broker) in
                    settings.kafka_proxy_ports.iter().zip(&settings.kafka_ports)
                {
                    proxies.push(
                        Proxy::start_kafka(
                            ([127, 0, 0, 1], listen).into(),
                            ([127, 0, 0, 1], broker).into(),
                        )
                        .await,
                    );
                }
                let relay_bootstrap = proxies
                    .iter()
                    .map(|p| p.addr.to_string())
                    .collect::<Vec<_>>()
                    .join(",");
                // A cluster started with other advertised ports would be reached around the
                // proxies, and their faults would not reach the relay.
                let mut expected = settings.kafka_proxy_ports.clone();
                expected.sort_unstable();
                assert_eq!(
                    cluster::advertised_ports(&relay_bootstrap).await,
                    expected,
                    "the Kafka brokers must advertise the proxies' ports (restart them with \
                     OUTBOX_KAFKA_ADVERTISED_PORTS, as scripts/faults.sh sets it)"
                );
                let timeout = format!("{}ms", KAFKA_PUBLISH_TIMEOUT.as_millis());
                set_env(
                    &mut relay_env,
                    &[
                        ("OUTBOX_RELAY__BROKER__KIND", "kafka"),
                        (
                            "OUTBOX_RELAY__BROKER__KAFKA__BOOTSTRAP_SERVERS",
                            &relay_bootstrap,
                        ),
                        ("OUTBOX_RELAY__BROKER__KAFKA__CONNECT_TIMEOUT", "2s"),
                        ("OUTBOX_RELAY__RELAY__PUBLISH_TIMEOUT", &timeout),
                        // librdkafka's idempotence events (producer ids, epoch bumps) in the log,
                        // where the suite counts the epoch bumps.
                        (
                            "OUTBOX_RELAY__BROKER__KAFKA__PROPERTIES__DEBUG",
                            &settings.kafka_debug,
                        ),
                        ("OUTBOX_RELAY__LOG__LEVEL", "info,librdkafka=debug"),
                    ],
                );
                kafka_bootstrap = settings.kafka_direct_bootstrap.clone();
                if target.exactly_once {
                    let (progress, id) = (common::unique("progress"), common::unique("txn"));
                    set_env(
                        &mut relay_env,
                        &[
                            ("OUTBOX_RELAY__BROKER__KAFKA__DELIVERY", "exactly_once"),
                            ("OUTBOX_RELAY__BROKER__KAFKA__PROGRESS_TOPIC", &progress),
                            ("OUTBOX_RELAY__BROKER__KAFKA__TRANSACTIONAL_ID", &id),
                        ],
                    );
                }
                common::kafka::create_topic_retrying(
                    &kafka_bootstrap,
                    &destination,
                    KAFKA_PARTITIONS,
                    common::kafka::Replicas::Count(KAFKA_REPLICAS),
                    KAFKA_TOPIC_CONFIG,
                )
                .await;
                let consumer = consume::consume_kafka(
                    &kafka_bootstrap,
                    &destination,
                    KAFKA_PARTITIONS,
                    target.exactly_once,
                    deliveries.clone(),
                );
                (proxies, String::new(), consumer)
            }
            Broker::Redis => {
                let proxy = Proxy::to_local(settings.redis_port).await;
                let url = format!("redis://127.0.0.1:{}", proxy.addr.port());
                set_env(
                    &mut relay_env,
                    &[
                        ("OUTBOX_RELAY__BROKER__KIND", "redis"),
                        ("OUTBOX_RELAY__BROKER__REDIS__URL", url.as_str()),
                        ("OUTBOX_RELAY__BROKER__REDIS__CONNECT_TIMEOUT", "2s"),
                    ],
                );
                let consumer = redis_verify::consume_redis(
                    settings.redis_url.clone(),
                    destination.clone(),
                    deliveries.clone(),
                );
                (vec![proxy], String::new(), consumer)
            }
            Broker::Nsq => {
                let proxy = Proxy::to_local(settings.nsq_port).await;
                let address = proxy.addr.to_string();
                set_env(
                    &mut relay_env,
                    &[
                        ("OUTBOX_RELAY__BROKER__KIND", "nsq"),
                        (
                            "OUTBOX_RELAY__BROKER__NSQ__NSQD_TCP_ADDRESS",
                            address.as_str(),
                        ),
                        ("OUTBOX_RELAY__BROKER__NSQ__CONNECT_TIMEOUT", "2s"),
                    ],
                );
                let consumer = nsq_verify::consume_nsq(
                    settings.nsq_address.clone(),
                    destination.clone(),
                    deliveries.clone(),
                );
                // Both channels exist before the relay starts: nsqd gives a channel added later
                // only what comes after it.
                nsq_verify::open_hold(&settings.nsq_address, &destination)
                    .await
                    .expect("the second channel on nsqd");
                common::wait_for(
                    "the verifier's channel and the second one on nsqd",
                    Duration::from_secs(30),
                    || async {
                        (common::nsq::has_channel(&destination, nsq_verify::CHANNEL).await
                            && common::nsq::has_channel(&destination, nsq_verify::HOLD).await)
                            .then_some(())
                    },
                )
                .await;
                (vec![proxy], String::new(), consumer)
            }
        };
        Rig {
            settings,
            broker,
            exactly_once: target.exactly_once,
            active_active: target.active_active,
            db,
            db_proxy,
            broker_proxies,
            kafka_bootstrap,
            relay_db_url: relay_db_url.to_string(),
            relay_env,
            relays: Vec::new(),
            relay_logs: Vec::new(),
            destination,
            queue,
            deliveries,
            consumer: Some(consumer),
            incarnation_base: 0,
            cluster_start: Duration::ZERO,
            faults: Vec::new(),
        }
    }

    pub fn spawn_relay(&mut self) -> RelayProcess {
        let env: Vec<(&str, &str)> = self
            .relay_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let relay = RelayProcess::spawn(&self.relay_db_url, &env);
        self.relay_logs.push(relay.log.clone());
        relay
    }

    /// `scripts/services.sh` with `args` (such as `stop kafka 2`); fails the run if it fails.
    pub async fn services(&self, args: &[&str]) {
        self.services_with(&[], args).await
    }

    /// [`Self::services`] with more environment variables.
    pub async fn services_with(&self, env: &[(&str, &str)], args: &[&str]) {
        let status = tokio::process::Command::new(&self.settings.services)
            .args(args)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .status()
            .await
            .expect("run services.sh");
        assert!(status.success(), "services.sh {}: {status}", args.join(" "));
    }

    /// The relay has recovered when the backlog that existed at `end` is published: no row
    /// committed by then (commit_seq at most the highest one then) is still waiting. Waits up
    /// to twice the recovery bound; `None` if the backlog was still there then.
    pub async fn wait_recovered(&self, end: Instant) -> Option<Instant> {
        let bound = self.settings.recovery_bound * 2;
        let pool = &self.db.pool;
        let high: i64 = retry_query(bound, || async {
            sqlx::query_scalar::<_, Option<i64>>(
                "SELECT max(commit_seq) FROM outbox.messages WHERE status <> 'prepared'",
            )
            .fetch_one(pool)
            .await
            .map(|v| v.unwrap_or(0))
        })
        .await
        .unwrap_or(i64::MAX);
        let drained = retry_query(bound.saturating_sub(end.elapsed()), || async {
            let waiting: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM outbox.messages
                                 WHERE status = 'committed' AND commit_seq <= $1)",
            )
            .bind(high)
            .fetch_one(pool)
            .await?;
            if waiting {
                Err(sqlx::Error::RowNotFound)
            } else {
                Ok(())
            }
        })
        .await;
        if drained.is_none() {
            println!("   the relay did not recover within {bound:?}");
        }
        drained.map(|()| Instant::now())
    }

    /// After the load: every prepared row resolved, every committed row published and
    /// delivered; then the relays stop.
    pub async fn finish(&mut self) {
        let pool = &self.db.pool;
        let settled = retry_query(Duration::from_secs(90), || async {
            let open: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM outbox.messages WHERE status IN ('prepared', 'committed')",
            )
            .fetch_one(pool)
            .await?;
            if open == 0 {
                Ok(())
            } else {
                Err(sqlx::Error::RowNotFound)
            }
        })
        .await;
        if settled.is_none() {
            println!("   prepared or committed rows remain after 90 s");
        }
        let published: Vec<uuid::Uuid> =
            sqlx::query_scalar("SELECT message_id FROM outbox.messages WHERE status = 'published'")
                .fetch_all(pool)
                .await
                .expect("published rows");
        let mut all_arrived = self.all_arrived(&published, Duration::from_secs(20)).await;
        if !all_arrived && self.broker == Broker::Amqp {
            // What the broker holds is what the relay delivered: a verifier consumer that went
            // silent (it happened once, after 39 faults) must not count its backlog as lost.
            let waiting = self.queue_depth().await;
            println!(
                "   the verifier is missing published messages after 20 s ({waiting:?} in the \
                 queue, {} consumer sessions ended): reading on with a new consumer",
                self.deliveries.sessions_ended()
            );
            if let Some(c) = self.consumer.take() {
                c.stop().await;
            }
            self.consumer = Some(consume::consume_rabbit(
                self.settings.amqp_url.clone(),
                self.queue.clone(),
                self.deliveries.clone(),
            ));
            all_arrived = self.all_arrived(&published, Duration::from_secs(40)).await;
        }
        if !all_arrived && self.broker == Broker::Nsq {
            let seen = self.deliveries.distinct();
            let missing: std::collections::HashSet<uuid::Uuid> = published
                .iter()
                .filter(|id| !seen.contains(id))
                .copied()
                .collect();
            let held = nsq_verify::read_held(
                &self.settings.nsq_address,
                &self.destination,
                &missing,
                Duration::from_secs(60),
            )
            .await;
            println!(
                "   the verifier's channel never delivered {} published messages; nsqd's second \
                 channel holds {} of them",
                missing.len(),
                held.len()
            );
            all_arrived = held.len() == missing.len();
            self.deliveries.record_held(held);
        }
        if !all_arrived {
            println!("   not every published message arrived at the verifier");
            if self.broker == Broker::Kafka {
                for (p, high, stable) in
                    cluster::partition_ends(&self.kafka_bootstrap, &self.destination).await
                {
                    println!(
                        "   partition {p}: high watermark {high:?}, last stable offset {stable:?}"
                    );
                }
            }
        }
        for mut r in self.relays.drain(..) {
            r.signal(Signal::SIGTERM);
            r.wait_exit(Duration::from_secs(30)).await;
        }
        if let Some(c) = self.consumer.take() {
            c.stop().await;
        }
    }

    pub async fn all_arrived(&self, published: &[uuid::Uuid], within: Duration) -> bool {
        let deliveries = &self.deliveries;
        retry_query(within, || async {
            let seen = deliveries.distinct();
            if published.iter().all(|id| seen.contains(id)) {
                Ok(())
            } else {
                Err(sqlx::Error::RowNotFound)
            }
        })
        .await
        .is_some()
    }

    /// Messages ready in the verifier's queue, as the broker counts them.
    pub async fn queue_depth(&self) -> Option<u32> {
        Rabbit::connect().await.queue_depth(&self.queue).await
    }

    pub async fn cleanup(&self) {
        match self.broker {
            Broker::Amqp => {
                let rabbit = Rabbit::connect().await;
                let _ = rabbit.delete_queue(&self.queue).await;
                let _ = rabbit.delete_exchange(&self.destination).await;
            }
            Broker::Kafka => {
                let _ = common::kafka::delete_topic(&self.kafka_bootstrap, &self.destination).await;
            }
            Broker::Redis => {
                let mut con = common::redis::connect(&self.settings.redis_url).await;
                let _: Result<(), _> = redis::cmd("DEL")
                    .arg(&self.destination)
                    .query_async(&mut con)
                    .await;
            }
            Broker::Nsq => common::nsq::delete_topic(&self.destination).await,
        }
    }
}

/// Appends OUTBOX_RELAY__* settings to a relay's environment.
fn set_env(env: &mut Vec<(String, String)>, vars: &[(&str, &str)]) {
    env.extend(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
}

/// The destination exchange: a durable fanout, as it must survive broker restarts.
pub async fn declare_destination(rabbit: &Rabbit, exchange: &str) {
    rabbit
        .declare_exchange_with(
            exchange,
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
        )
        .await
}

/// Runs `attempt` every 50 ms until it succeeds or `timeout` passes; errors (the database
/// restarting, a condition not met yet) are retried.
pub async fn retry_query<T, F, Fut>(timeout: Duration, mut attempt: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    poll_until(Instant::now() + timeout, || {
        let attempt = attempt();
        async move { attempt.await.ok() }
    })
    .await
}

/// Runs `check` every 50 ms until it answers or `deadline` passes.
pub async fn poll_until<T, F, Fut>(deadline: Instant, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
