//! The suite's settings, from FAULTS_* variables and the services' addresses.

use std::path::PathBuf;
use std::time::Duration;

use crate::common;
use crate::common::Broker;

pub struct Settings {
    pub rounds: usize,
    /// Only the faults whose name contains this (FAULTS_ONLY), for reproducing one.
    pub only: String,
    /// Also the Kafka faults that tansu 0.6 cannot survive (FAULTS_KAFKA_ALL=1).
    pub kafka_all: bool,
    pub rate: f64,
    pub writers: usize,
    pub keys_per_writer: usize,
    pub recovery_bound: Duration,
    pub brokers: Vec<Broker>,
    pub services: PathBuf,
    pub amqp_url: String,
    pub amqp_port: u16,
    pub kafka_port: u16,
    pub kafka_proxy_port: u16,
    pub pg_port: u16,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a valid value")),
        Err(_) => default,
    }
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
        let kafka_port = port_of(&common::kafka::bootstrap());
        // Restarting the shared services would break everyone else's tests.
        assert!(
            ![54329, 56729, 59092].contains(&pg_port)
                && ![54329, 56729, 59092].contains(&amqp_port)
                && ![54329, 56729, 59092].contains(&kafka_port),
            "the fault suite restarts its services: run it with its own (scripts/faults.sh)"
        );
        let brokers = env_or("FAULTS_BROKERS", "rabbitmq,kafka".to_string())
            .split(',')
            .map(|b| match b.trim() {
                "rabbitmq" | "amqp" => Broker::Amqp,
                "kafka" => Broker::Kafka,
                other => panic!("FAULTS_BROKERS: unknown broker {other}"),
            })
            .collect();
        Self {
            rounds: env_or("FAULTS_ROUNDS", 3),
            only: env_or("FAULTS_ONLY", String::new()),
            kafka_all: env_or("FAULTS_KAFKA_ALL", 0) == 1,
            rate: env_or("FAULTS_RATE", 200.0),
            writers: env_or("FAULTS_WRITERS", 4),
            keys_per_writer: env_or("FAULTS_KEYS_PER_WRITER", 25),
            recovery_bound: Duration::from_secs(env_or("FAULTS_RECOVERY_BOUND_SECS", 30)),
            brokers,
            services: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/services.sh"),
            amqp_url,
            amqp_port,
            kafka_port,
            kafka_proxy_port: env_or("OUTBOX_KAFKA_ADVERTISED_PORT", kafka_port + 1),
            pg_port,
        }
    }
}
