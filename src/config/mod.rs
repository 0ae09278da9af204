//! Configuration: defaults, then a TOML file, then `OUTBOX_RELAY__SECTION__KEY` environment
//! variables. Every key is read on its own so that all mistakes are reported at once, each with
//! its key and where the value came from; nothing is validated later.

use std::fmt;
use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::value::Dict;
use figment::Figment;
use serde::{Deserialize, Serialize};

/// Prefix of environment overrides. The double underscore keeps Kubernetes' service-link
/// variables (`OUTBOX_RELAY_PORT=tcp://...`) out of the configuration.
pub const ENV_PREFIX: &str = "OUTBOX_RELAY__";

#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub database: DatabaseConfig,
    pub broker: BrokerConfig,
    pub relay: RelayConfig,
    pub retry: RetryConfig,
    pub sweeper: SweeperConfig,
    pub ha: HaConfig,
    pub http: HttpConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Serialize)]
pub struct HaConfig {
    /// Replicas sharing this name compete for one lease; one publishes.
    pub lease_name: String,
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// This replica's name in the lease; empty means `$HOSTNAME` plus a random suffix.
    pub replica_id: String,
}

impl HaConfig {
    /// The replica id to use: the configured one, or one derived for this process.
    pub fn effective_replica_id(&self) -> String {
        if !self.replica_id.is_empty() {
            return self.replica_id.clone();
        }
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "relay".into());
        format!("{host}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct HttpConfig {
    pub listen: std::net::SocketAddr,
    /// `/livez` fails once a task is this much later than the turn it announced.
    #[serde(with = "humantime_serde")]
    pub livez_stall_timeout: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct MetricsConfig {
    #[serde(with = "humantime_serde")]
    pub backlog_interval: Duration,
    /// Per-destination series not written for this long leave `/metrics`.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct DatabaseConfig {
    pub url: SecretUrl,
    /// A file holding the URL (a mounted Secret); read once at start, replaces `url`.
    pub url_file: String,
    pub max_connections: NonZeroU32,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Server-side bound of every statement, so a stuck one fails and is retried.
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
}

impl DatabaseConfig {
    /// How long the relay waits for one statement's answer before giving up on the connection:
    /// Postgres cancels it after `statement_timeout`, but a connection that died without a word
    /// (a failover, a dropped NAT entry) would otherwise be waited on forever.
    pub fn call_timeout(&self) -> Duration {
        self.connect_timeout + self.statement_timeout + Duration::from_secs(5)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerKind {
    Amqp,
    Kafka,
}

#[derive(Debug, Clone, Serialize)]
pub struct BrokerConfig {
    pub kind: BrokerKind,
    pub amqp: AmqpConfig,
    pub kafka: KafkaConfig,
}

#[derive(Debug, Clone, Serialize)]
pub struct AmqpConfig {
    pub url: SecretUrl,
    /// A file holding the URL (a mounted Secret); read once at start, replaces `url`.
    pub url_file: String,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// PEM file of extra CA certificates trusted for `amqps://` (besides the system's); empty
    /// for none. The URL has no standard way to name one.
    pub tls_ca_file: String,
    /// The certificates of `tls_ca_file`, read and checked when the configuration is loaded, so
    /// that a missing or unreadable file is a configuration error at start.
    #[serde(skip)]
    pub tls_ca_pem: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RelayConfig {
    pub batch_size: NonZeroU32,
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    pub max_in_flight: NonZeroU32,
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct RetryConfig {
    pub max_attempts: NonZeroU32,
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct SweeperConfig {
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    #[serde(with = "humantime_serde")]
    pub purge_interval: Duration,
    pub batch_size: NonZeroU32,
    #[serde(with = "humantime_serde")]
    pub published_retention: Duration,
    #[serde(with = "humantime_serde")]
    pub rolled_back_retention: Duration,
    #[serde(with = "humantime_serde")]
    pub dead_retention: Duration,
}

impl SweeperConfig {
    /// A retention of zero keeps no published history: the relay deletes each row as soon as
    /// the broker confirmed it, which costs the database far less than marking it.
    pub fn on_published(&self) -> crate::store::OnPublished {
        if self.published_retention.is_zero() {
            crate::store::OnPublished::Delete
        } else {
            crate::store::OnPublished::Mark
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone, Serialize)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
}

/// A connection URL that may carry a password. `Debug`, `Display` and serialization show it
/// redacted; only [`SecretUrl::expose`] gives the real value, for the client that connects.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn redacted(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(mut parsed) => {
                if parsed.password().is_some() {
                    let _ = parsed.set_password(Some("REDACTED"));
                }
                let pairs: Vec<(String, String)> = parsed
                    .query_pairs()
                    .map(|(k, v)| {
                        let secret = k.contains("password") || k.contains("secret");
                        (
                            k.into_owned(),
                            if secret {
                                "REDACTED".into()
                            } else {
                                v.into_owned()
                            },
                        )
                    })
                    .collect();
                if !pairs.is_empty() {
                    parsed.query_pairs_mut().clear().extend_pairs(pairs);
                }
                parsed.to_string()
            }
            Err(_) => "<unparseable url>".to_string(),
        }
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for SecretUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            database: DatabaseConfig {
                url: SecretUrl::new("postgres://localhost:5432/postgres"),
                url_file: String::new(),
                max_connections: nz(8),
                connect_timeout: Duration::from_secs(5),
                statement_timeout: Duration::from_secs(30),
            },
            broker: BrokerConfig {
                kind: BrokerKind::Amqp,
                amqp: AmqpConfig {
                    url: SecretUrl::new("amqp://guest:guest@localhost:5672/%2f"),
                    url_file: String::new(),
                    connect_timeout: Duration::from_secs(10),
                    tls_ca_file: String::new(),
                    tls_ca_pem: None,
                },
                kafka: KafkaConfig {
                    bootstrap_servers: "localhost:9092".to_string(),
                    connect_timeout: Duration::from_secs(10),
                    sasl_password_file: String::new(),
                    properties: KafkaProperties::default(),
                },
            },
            relay: RelayConfig {
                batch_size: nz(500),
                poll_interval: Duration::from_millis(100),
                max_in_flight: nz(256),
                publish_timeout: Duration::from_secs(30),
                shutdown_grace: Duration::from_secs(10),
            },
            retry: RetryConfig {
                max_attempts: nz(10),
                initial_backoff: Duration::from_secs(1),
                max_backoff: Duration::from_secs(300),
            },
            sweeper: SweeperConfig {
                interval: Duration::from_secs(5),
                purge_interval: Duration::from_secs(60),
                batch_size: nz(1000),
                published_retention: Duration::from_secs(24 * 3600),
                rolled_back_retention: Duration::from_secs(24 * 3600),
                dead_retention: Duration::from_secs(14 * 24 * 3600),
            },
            ha: HaConfig {
                lease_name: "default".to_string(),
                lease_ttl: Duration::from_secs(10),
                replica_id: String::new(),
            },
            http: HttpConfig {
                listen: std::net::SocketAddr::from(([0, 0, 0, 0], 9464)),
                livez_stall_timeout: Duration::from_secs(300),
            },
            metrics: MetricsConfig {
                backlog_interval: Duration::from_secs(5),
                idle_timeout: Duration::from_secs(3600),
            },
            log: LogConfig {
                level: "info".to_string(),
                format: LogFormat::Json,
            },
        }
    }
}

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).expect("default is non-zero")
}

/// One problem with one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Dotted key, e.g. `relay.batch_size`.
    pub key: String,
    /// Where the offending value came from: a file path or an environment variable.
    pub origin: String,
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (from {}): {}", self.key, self.origin, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration: {0}")]
    Source(String),
    #[error("invalid configuration:\n{}", list(.0))]
    Invalid(Vec<ConfigIssue>),
}

/// OUTBOX_RELAY__* values that figment 0.10 would mangle or panic on: in a quoted string it
/// slices at the first backslash escape by character count as if it were a byte offset, so any
/// non-ASCII character before that backslash truncates the value or panics the process.
fn unreadable_environment(
    vars: impl Iterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> Vec<ConfigIssue> {
    let mut issues = Vec::new();
    for (name, value) in vars {
        let (Some(name), Some(value)) = (name.to_str(), value.to_str()) else {
            continue;
        };
        let Some(key) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if mangled_by_figment(value) {
            issues.push(ConfigIssue {
                key: key.to_lowercase().replace("__", "."),
                origin: name.to_string(),
                message: "a quoted string with non-ASCII characters before its first \\ escape \
                          cannot be read; leave the value unquoted or write them as \\u escapes"
                    .into(),
            });
        }
    }
    issues
}

fn mangled_by_figment(value: &str) -> bool {
    let (mut in_string, mut escaped, mut seen_escape, mut non_ascii) = (false, false, false, false);
    for c in value.chars() {
        if !in_string {
            if c == '"' {
                (in_string, seen_escape, non_ascii) = (true, false, false);
            }
            continue;
        }
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            // Only the first escape slices; after it the string is copied char by char.
            '\\' if non_ascii && !seen_escape => return true,
            '\\' => (seen_escape, escaped) = (true, true),
            '"' => in_string = false,
            c if !c.is_ascii() => non_ascii = true,
            _ => {}
        }
    }
    false
}

fn list(issues: &[ConfigIssue]) -> String {
    issues
        .iter()
        .map(|i| format!("  - {i}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Config {
    /// Loads from an optional TOML file and the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = file {
            // figment names an unreadable file by a path relative to the working directory;
            // name it as the user gave it.
            if let Err(e) = std::fs::read(path) {
                return Err(ConfigError::Source(format!("{}: {e}", path.display())));
            }
            // file_exact: a missing file is an error, not an empty configuration.
            figment = figment.merge(Toml::file_exact(path));
        }
        let unreadable = unreadable_environment(std::env::vars_os());
        if !unreadable.is_empty() {
            return Err(ConfigError::Invalid(unreadable));
        }
        figment = figment.merge(Env::prefixed(ENV_PREFIX).split("__"));
        Self::from_figment(&figment)
    }

    pub fn from_figment(figment: &Figment) -> Result<Self, ConfigError> {
        let root: Dict = figment
            .extract()
            .map_err(|e| ConfigError::Source(e.to_string()))?;
        let mut r = Reader {
            figment,
            issues: Vec::new(),
        };
        let d = Config::default();
        let config = Config {
            database: DatabaseConfig {
                url: r.url("database.url", d.database.url, &["postgres", "postgresql"]),
                url_file: r.read("database.url_file", d.database.url_file),
                max_connections: r.read("database.max_connections", d.database.max_connections),
                connect_timeout: r.duration("database.connect_timeout", d.database.connect_timeout),
                statement_timeout: r
                    .duration("database.statement_timeout", d.database.statement_timeout),
            },
            broker: BrokerConfig {
                kind: r.read("broker.kind", d.broker.kind),
                amqp: AmqpConfig {
                    url: r.amqp_url("broker.amqp.url", d.broker.amqp.url),
                    url_file: r.read("broker.amqp.url_file", d.broker.amqp.url_file),
                    connect_timeout: r
                        .duration("broker.amqp.connect_timeout", d.broker.amqp.connect_timeout),
                    tls_ca_file: r.read("broker.amqp.tls_ca_file", d.broker.amqp.tls_ca_file),
                    tls_ca_pem: None,
                },
                kafka: KafkaConfig {
                    bootstrap_servers: r.read(
                        "broker.kafka.bootstrap_servers",
                        d.broker.kafka.bootstrap_servers,
                    ),
                    connect_timeout: r.duration(
                        "broker.kafka.connect_timeout",
                        d.broker.kafka.connect_timeout,
                    ),
                    sasl_password_file: r.read(
                        "broker.kafka.sasl_password_file",
                        d.broker.kafka.sasl_password_file,
                    ),
                    properties: r.kafka_properties("broker.kafka.properties"),
                },
            },
            relay: RelayConfig {
                batch_size: r.read("relay.batch_size", d.relay.batch_size),
                poll_interval: r.duration("relay.poll_interval", d.relay.poll_interval),
                max_in_flight: r.read("relay.max_in_flight", d.relay.max_in_flight),
                publish_timeout: r.duration("relay.publish_timeout", d.relay.publish_timeout),
                shutdown_grace: r.duration("relay.shutdown_grace", d.relay.shutdown_grace),
            },
            retry: RetryConfig {
                max_attempts: r.read("retry.max_attempts", d.retry.max_attempts),
                initial_backoff: r.duration("retry.initial_backoff", d.retry.initial_backoff),
                max_backoff: r.duration("retry.max_backoff", d.retry.max_backoff),
            },
            sweeper: SweeperConfig {
                interval: r.duration("sweeper.interval", d.sweeper.interval),
                purge_interval: r.duration("sweeper.purge_interval", d.sweeper.purge_interval),
                batch_size: r.read("sweeper.batch_size", d.sweeper.batch_size),
                published_retention: r
                    .duration("sweeper.published_retention", d.sweeper.published_retention),
                rolled_back_retention: r.duration(
                    "sweeper.rolled_back_retention",
                    d.sweeper.rolled_back_retention,
                ),
                dead_retention: r.duration("sweeper.dead_retention", d.sweeper.dead_retention),
            },
            ha: HaConfig {
                lease_name: r.read("ha.lease_name", d.ha.lease_name),
                lease_ttl: r.duration("ha.lease_ttl", d.ha.lease_ttl),
                replica_id: r.read("ha.replica_id", d.ha.replica_id),
            },
            http: HttpConfig {
                listen: r.read("http.listen", d.http.listen),
                livez_stall_timeout: r
                    .duration("http.livez_stall_timeout", d.http.livez_stall_timeout),
            },
            metrics: MetricsConfig {
                backlog_interval: r
                    .duration("metrics.backlog_interval", d.metrics.backlog_interval),
                idle_timeout: r.duration("metrics.idle_timeout", d.metrics.idle_timeout),
            },
            log: LogConfig {
                level: r.read("log.level", d.log.level),
                format: r.read("log.format", d.log.format),
            },
        };
        r.check_unknown(&root, "");
        r.check_relations(&config);
        let mut config = config;
        r.secret_files(&mut config);
        config.broker.amqp.tls_ca_pem = r.amqp_tls_ca(&config.broker.amqp);
        if r.issues.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(r.issues))
        }
    }

    /// The effective configuration as TOML, with secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// Every key the relay reads, in the order of `config.example.toml`.
pub const KEYS: &[&str] = &[
    "database.url",
    "database.url_file",
    "database.max_connections",
    "database.connect_timeout",
    "database.statement_timeout",
    "broker.kind",
    "broker.amqp.url",
    "broker.amqp.url_file",
    "broker.amqp.connect_timeout",
    "broker.amqp.tls_ca_file",
    "broker.kafka.bootstrap_servers",
    "broker.kafka.connect_timeout",
    "broker.kafka.sasl_password_file",
    "broker.kafka.properties",
    "relay.batch_size",
    "relay.poll_interval",
    "relay.max_in_flight",
    "relay.publish_timeout",
    "relay.shutdown_grace",
    "retry.max_attempts",
    "retry.initial_backoff",
    "retry.max_backoff",
    "sweeper.interval",
    "sweeper.purge_interval",
    "sweeper.batch_size",
    "sweeper.published_retention",
    "sweeper.rolled_back_retention",
    "sweeper.dead_retention",
    "ha.lease_name",
    "ha.lease_ttl",
    "ha.replica_id",
    "http.listen",
    "http.livez_stall_timeout",
    "metrics.backlog_interval",
    "metrics.idle_timeout",
    "log.level",
    "log.format",
];

mod files;
mod kafka;
mod read;
mod validate;

pub use kafka::{KafkaConfig, KafkaProperties};
use kafka::{KAFKA_OWNED, KAFKA_REQUIRED};
use read::Reader;

#[cfg(test)]
mod tests;
