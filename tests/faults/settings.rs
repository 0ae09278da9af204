//! The suite's settings, from FAULTS_* variables and the services' addresses.

use std::path::PathBuf;
use std::time::Duration;

use crate::common;
use crate::common::Broker;

/// One run of the suite: a broker, for Kafka the delivery mode, and how the relays share
/// the outbox.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub broker: Broker,
    /// `broker.kafka.delivery = "exactly_once"`: the verifier reads with read_committed and
    /// every duplicate is a failure.
    pub exactly_once: bool,
    /// Active-active: three replicas with `relay.partitions` (tests/faults/replicas.rs) in
    /// place of one relay and a standby.
    pub active_active: bool,
}

impl Target {
    /// As FAULTS_BROKERS names it.
    pub fn id(self) -> &'static str {
        match (self.broker, self.exactly_once, self.active_active) {
            (Broker::Kafka, true, _) => "kafka-eos",
            (Broker::Amqp, _, true) => "rabbitmq-aa",
            (Broker::Kafka, _, true) => "kafka-aa",
            (broker, _, _) => broker.id(),
        }
    }

    /// The target FAULTS_BROKERS names `id`.
    fn parse(id: &str) -> Self {
        let (broker, exactly_once, active_active) = match id {
            "rabbitmq" | "amqp" => (Broker::Amqp, false, false),
            "rabbitmq-aa" => (Broker::Amqp, false, true),
            "kafka" => (Broker::Kafka, false, false),
            "kafka-eos" => (Broker::Kafka, true, false),
            "kafka-aa" => (Broker::Kafka, false, true),
            "redis" => (Broker::Redis, false, false),
            "nsq" => (Broker::Nsq, false, false),
            other => panic!("FAULTS_BROKERS: unknown broker {other}"),
        };
        Self {
            broker,
            exactly_once,
            active_active,
        }
    }
}

pub struct Settings {
    pub rounds: usize,
    /// Only the faults whose name contains one of these (FAULTS_ONLY, comma-separated), for
    /// reproducing one.
    pub only: Vec<String>,
    /// Not the faults whose name contains one of these (FAULTS_SKIP, comma-separated).
    pub skip: Vec<String>,
    /// librdkafka's debug contexts in the Kafka relays' logs (FAULTS_KAFKA_DEBUG); "eos" at
    /// least, from which the suite counts the producer's epoch bumps.
    pub kafka_debug: String,
    pub rate: f64,
    pub writers: usize,
    pub keys_per_writer: usize,
    pub recovery_bound: Duration,
    pub brokers: Vec<Target>,
    pub services: PathBuf,
    pub amqp_url: String,
    pub amqp_port: u16,
    /// The Kafka brokers' own client ports, node 1 first.
    pub kafka_ports: Vec<u16>,
    /// The client port each Kafka broker advertises, node 1 first: the suite's proxy in front
    /// of it listens there (OUTBOX_KAFKA_ADVERTISED_PORTS, as scripts/faults.sh sets it).
    pub kafka_proxy_ports: Vec<u16>,
    /// The brokers' inter-broker listeners, which advertise themselves: the suite's own clients
    /// (verifier, admin) bootstrap there and never pass the proxies, whose faults and holds are
    /// meant for the relay alone.
    pub kafka_direct_bootstrap: String,
    pub pg_port: u16,
    pub redis_url: String,
    pub redis_port: u16,
    /// nsqd's TCP listener, host:port.
    pub nsq_address: String,
    pub nsq_port: u16,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a valid value")),
        Err(_) => default,
    }
}

fn list(name: &str) -> Vec<String> {
    env_or(name, String::new())
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn port_of(url: &str) -> u16 {
    url::Url::parse(&format!("tcp://{url}"))
        .ok()
        .and_then(|u| u.port())
        .or_else(|| url::Url::parse(url).ok().and_then(|u| u.port()))
        .unwrap_or_else(|| panic!("no port in {url}"))
}

impl Settings {
    pub fn from_env() -> Self {
        let pg_port = port_of(&common::admin_database_url());
        let amqp_url = common::amqp_url();
        let amqp_port = port_of(&amqp_url);
        let kafka_ports: Vec<u16> = common::kafka::bootstrap().split(',').map(port_of).collect();
        let kafka_proxy_ports: Vec<u16> = match std::env::var("OUTBOX_KAFKA_ADVERTISED_PORTS") {
            Ok(ports) => ports
                .split(',')
                .map(|p| p.trim().parse().expect("OUTBOX_KAFKA_ADVERTISED_PORTS"))
                .collect(),
            Err(_) => kafka_ports.iter().map(|p| p + 1).collect(),
        };
        // scripts/kafka.sh puts a broker's inter-broker listener 2000 above its client port.
        let kafka_direct_bootstrap = std::env::var("OUTBOX_TEST_KAFKA_INTERNAL_BOOTSTRAP")
            .unwrap_or_else(|_| {
                kafka_ports
                    .iter()
                    .map(|p| format!("127.0.0.1:{}", p + 2000))
                    .collect::<Vec<_>>()
                    .join(",")
            });
        assert_eq!(
            kafka_ports.len(),
            kafka_proxy_ports.len(),
            "one advertised port per Kafka broker"
        );
        // Restarting the shared services would break everyone else's tests.
        let redis_url = common::redis::url();
        let redis_port = port_of(&redis_url);
        let nsq_address = common::nsq::address();
        let nsq_port = port_of(&nsq_address);
        let shared = [54329, 56729, 59092, 59094, 59096, 56379, 56380, 54150];
        assert!(
            ![pg_port, amqp_port, redis_port, nsq_port]
                .iter()
                .chain(&kafka_ports)
                .any(|p| shared.contains(p)),
            "the fault suite restarts its services: run it with its own (scripts/faults.sh)"
        );
        let brokers = env_or(
            "FAULTS_BROKERS",
            "rabbitmq,rabbitmq-aa,kafka,kafka-eos,kafka-aa,redis,nsq".to_string(),
        )
        .split(',')
        .map(|b| Target::parse(b.trim()))
        .collect();
        Self {
            rounds: env_or("FAULTS_ROUNDS", 3),
            only: list("FAULTS_ONLY"),
            skip: list("FAULTS_SKIP"),
            kafka_debug: env_or("FAULTS_KAFKA_DEBUG", "eos".to_string()),
            rate: env_or("FAULTS_RATE", 200.0),
            writers: env_or("FAULTS_WRITERS", 4),
            keys_per_writer: env_or("FAULTS_KEYS_PER_WRITER", 25),
            recovery_bound: Duration::from_secs(env_or("FAULTS_RECOVERY_BOUND_SECS", 30)),
            brokers,
            services: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/services.sh"),
            amqp_url,
            amqp_port,
            kafka_ports,
            kafka_proxy_ports,
            kafka_direct_bootstrap,
            pg_port,
            redis_url,
            redis_port,
            nsq_address,
            nsq_port,
        }
    }

    /// Whether FAULTS_ONLY and FAULTS_SKIP let the fault of this name run.
    pub fn selects(&self, fault: &str) -> bool {
        (self.only.is_empty() || self.only.iter().any(|o| fault.contains(o.as_str())))
            && !self.skip.iter().any(|s| fault.contains(s.as_str()))
    }
}
