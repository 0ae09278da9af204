//! Configuration: defaults, then a TOML file, then `OUTBOX_RELAY__SECTION__KEY` environment
//! variables. Every key is read on its own so that all mistakes are reported at once, each with
//! its key and where the value came from; nothing is validated later.

use std::fmt;
use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::value::{Dict, Value};
use figment::Figment;
use serde::de::DeserializeOwned;
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
pub struct KafkaConfig {
    /// Comma-separated `host:port` list.
    pub bootstrap_servers: String,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// A file holding `sasl.password`; read once at start into the properties.
    pub sasl_password_file: String,
    /// Passed through to librdkafka, except the keys the relay owns.
    pub properties: KafkaProperties,
}

/// librdkafka properties. Values whose key suggests a secret are redacted when shown.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KafkaProperties(pub std::collections::BTreeMap<String, String>);

impl KafkaProperties {
    pub fn is_secret(key: &str) -> bool {
        [
            "password",
            "secret",
            "sasl.oauthbearer.config",
            "key.pem",
            "certificate.pem",
        ]
        .iter()
        .any(|s| key.contains(s))
    }

    fn redacted(&self) -> std::collections::BTreeMap<&str, &str> {
        self.0
            .iter()
            .map(|(k, v)| {
                let shown = if Self::is_secret(k) {
                    "REDACTED"
                } else {
                    v.as_str()
                };
                (k.as_str(), shown)
            })
            .collect()
    }
}

impl fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.redacted()).finish()
    }
}

impl Serialize for KafkaProperties {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.redacted().serialize(s)
    }
}

/// librdkafka keys the relay sets itself, and where to configure them instead. `acks` and
/// `enable.idempotence` are accepted only with the values the relay uses anyway.
const KAFKA_OWNED: &[(&str, &str)] = &[
    ("bootstrap.servers", "set broker.kafka.bootstrap_servers"),
    ("metadata.broker.list", "set broker.kafka.bootstrap_servers"),
    ("message.timeout.ms", "set relay.publish_timeout"),
    ("delivery.timeout.ms", "set relay.publish_timeout"),
    (
        "transactional.id",
        "the relay does not use Kafka transactions",
    ),
    (
        "enable.gapless.guarantee",
        "the relay keeps per-key order itself",
    ),
];
const KAFKA_REQUIRED: &[(&str, &[&str])] = &[
    ("acks", &["all", "-1"]),
    ("request.required.acks", &["all", "-1"]),
    ("enable.idempotence", &["true"]),
];

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

#[derive(Deserialize)]
struct HumanDuration(#[serde(with = "humantime_serde")] Duration);

struct Reader<'a> {
    figment: &'a Figment,
    issues: Vec<ConfigIssue>,
}

impl Reader<'_> {
    fn read<T: DeserializeOwned>(&mut self, key: &str, default: T) -> T {
        debug_assert!(KEYS.contains(&key), "{key} missing from KEYS");
        if !self.figment.contains(key) {
            return default;
        }
        match self.figment.extract_inner::<T>(key) {
            Ok(value) => value,
            Err(e) => {
                self.issue(key, e.kind.to_string());
                default
            }
        }
    }

    fn duration(&mut self, key: &str, default: Duration) -> Duration {
        self.read(key, HumanDuration(default)).0
    }

    fn url(&mut self, key: &str, default: SecretUrl, schemes: &[&str]) -> SecretUrl {
        let raw: String = self.read(key, default.expose().to_string());
        self.checked_url(key, raw, default, schemes)
    }

    /// `raw` if it parses with one of `schemes`, else an issue of `key` and `default`.
    fn checked_url(
        &mut self,
        key: &str,
        raw: String,
        default: SecretUrl,
        schemes: &[&str],
    ) -> SecretUrl {
        match url::Url::parse(&raw) {
            Ok(u) if schemes.contains(&u.scheme()) => SecretUrl(raw),
            Ok(u) => {
                self.issue(
                    key,
                    format!(
                        "scheme `{}` is not one of {}",
                        u.scheme(),
                        schemes.join(", ")
                    ),
                );
                default
            }
            // The parse error never includes the URL itself, so no secret leaks here.
            Err(e) => {
                self.issue(key, format!("not a valid URL: {e}"));
                default
            }
        }
    }

    /// An AMQP URL as the client reads it: a vhost the protocol cannot carry (over 255
    /// bytes) or a malformed query parameter would otherwise only fail, or panic, at connect.
    fn amqp_url(&mut self, key: &str, default: SecretUrl) -> SecretUrl {
        let raw: String = self.read(key, default.expose().to_string());
        self.checked_amqp_url(key, raw, default)
    }

    fn checked_amqp_url(&mut self, key: &str, raw: String, default: SecretUrl) -> SecretUrl {
        let url = self.checked_url(key, raw, default.clone(), &["amqp", "amqps"]);
        if url == default {
            return url;
        }
        let problem = match url.expose().parse::<lapin::uri::AMQPUri>() {
            // The client's message for a URL that cannot be a base quotes the URL itself,
            // password included.
            Err(_) if url::Url::parse(url.expose()).is_ok_and(|u| u.cannot_be_a_base()) => {
                Some("not a valid AMQP URL: expected amqp://user:password@host:port/vhost".into())
            }
            Err(e) => Some(format!("not a valid AMQP URL: {e}")),
            Ok(uri) if uri.vhost.len() > 255 => Some(format!(
                "the vhost is {} bytes long; AMQP allows at most 255",
                uri.vhost.len()
            )),
            Ok(_) => None,
        };
        match problem {
            Some(message) => {
                self.issue(key, message);
                default
            }
            None => url,
        }
    }

    /// A table of librdkafka properties. Dotted names may arrive nested (`linger.ms = 5` in
    /// TOML, or `..._PROPERTIES__LINGER.MS` in the environment); they are flattened back.
    fn kafka_properties(&mut self, key: &str) -> KafkaProperties {
        let table: toml::Table = self.read(key, toml::Table::new());
        let mut out = std::collections::BTreeMap::new();
        self.flatten_properties(key, "", &table, &mut out);
        KafkaProperties(out)
    }

    fn flatten_properties(
        &mut self,
        key: &str,
        prefix: &str,
        table: &toml::Table,
        out: &mut std::collections::BTreeMap<String, String>,
    ) {
        for (name, value) in table {
            let name = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}.{name}")
            };
            let text = match value {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Table(t) => {
                    self.flatten_properties(key, &name, t, out);
                    continue;
                }
                _ => {
                    // The origin of the whole table: a property name with its own dots (or
                    // ending in one) cannot be looked up as a figment path.
                    self.issue_at(
                        &format!("{key}.{name}"),
                        key,
                        "must be a string, number or boolean".into(),
                    );
                    continue;
                }
            };
            out.insert(name, text);
        }
    }

    fn issue(&mut self, key: &str, message: String) {
        let origin = self.origin(key);
        self.issues.push(ConfigIssue {
            key: key.to_string(),
            origin,
            message,
        });
    }

    /// An issue about `key` whose origin is looked up under `origin_key` (a nested name that
    /// figment may not resolve, such as a dotted librdkafka property).
    fn issue_at(&mut self, key: &str, origin_key: &str, message: String) {
        let origin = self.origin(origin_key);
        self.issues.push(ConfigIssue {
            key: key.to_string(),
            origin,
            message,
        });
    }

    fn origin(&self, key: &str) -> String {
        let Some(meta) = self.figment.find_metadata(key) else {
            return "default".to_string();
        };
        match &meta.source {
            Some(figment::Source::File(path)) => path.display().to_string(),
            _ if meta.name.contains("environment") => {
                let parts: Vec<&str> = key.split('.').collect();
                let name = meta
                    .interpolate(&figment::Profile::Default, &parts)
                    .to_uppercase()
                    .replace('.', "__");
                if name.starts_with(ENV_PREFIX) {
                    name
                } else {
                    format!("{ENV_PREFIX}{name}")
                }
            }
            _ => meta.name.to_string(),
        }
    }

    fn check_unknown(&mut self, dict: &Dict, prefix: &str) {
        for (name, value) in dict {
            let key = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}.{name}")
            };
            if KEYS.contains(&key.as_str()) {
                continue;
            }
            match value {
                Value::Dict(_, inner) if KEYS.iter().any(|k| k.starts_with(&format!("{key}."))) => {
                    self.check_unknown(inner, &key)
                }
                _ => self.issue(&key, "unknown key".to_string()),
            }
        }
    }

    /// Reads `broker.amqp.tls_ca_file`: it must hold at least one PEM certificate and only
    /// makes sense with an `amqps://` URL (a CA given for a plain URL would protect nothing).
    fn amqp_tls_ca(&mut self, c: &AmqpConfig) -> Option<String> {
        const KEY: &str = "broker.amqp.tls_ca_file";
        if c.tls_ca_file.is_empty() {
            return None;
        }
        if !url::Url::parse(c.url.expose()).is_ok_and(|u| u.scheme() == "amqps") {
            self.issue(KEY, "is only used with an amqps:// broker.amqp.url".into());
            return None;
        }
        match std::fs::read_to_string(&c.tls_ca_file) {
            Ok(pem) if pem.contains("-----BEGIN CERTIFICATE-----") => Some(pem),
            Ok(_) => {
                self.issue(KEY, format!("{} holds no PEM certificate", c.tls_ca_file));
                None
            }
            Err(e) => {
                self.issue(KEY, format!("cannot read {}: {e}", c.tls_ca_file));
                None
            }
        }
    }

    fn check_relations(&mut self, c: &Config) {
        if c.retry.initial_backoff.is_zero() {
            self.issue("retry.initial_backoff", "must be greater than zero".into());
        }
        if c.retry.initial_backoff > c.retry.max_backoff {
            // Blame the key the user set: with max_backoff left at its default, pointing at it
            // would send them to a key that is not in their configuration.
            if self.origin("retry.max_backoff") == "default" {
                self.issue(
                    "retry.initial_backoff",
                    format!(
                        "must not be larger than retry.max_backoff ({})",
                        humantime::format_duration(c.retry.max_backoff)
                    ),
                );
            } else {
                self.issue(
                    "retry.max_backoff",
                    "must not be smaller than retry.initial_backoff".into(),
                );
            }
        }
        for (key, value) in [
            ("relay.poll_interval", c.relay.poll_interval),
            ("relay.publish_timeout", c.relay.publish_timeout),
            ("sweeper.interval", c.sweeper.interval),
            ("sweeper.purge_interval", c.sweeper.purge_interval),
            ("database.connect_timeout", c.database.connect_timeout),
            ("database.statement_timeout", c.database.statement_timeout),
            ("http.livez_stall_timeout", c.http.livez_stall_timeout),
            ("metrics.idle_timeout", c.metrics.idle_timeout),
            ("broker.amqp.connect_timeout", c.broker.amqp.connect_timeout),
            (
                "broker.kafka.connect_timeout",
                c.broker.kafka.connect_timeout,
            ),
        ] {
            if value.is_zero() {
                self.issue(key, "must be greater than zero".into());
            }
        }
        // Upper bounds keep every duration inside what Postgres intervals and Instant
        // arithmetic can hold, and catch unit mistakes ("10000d" for "10000ms").
        const DAY: Duration = Duration::from_secs(24 * 3600);
        for (key, value, max) in [
            ("database.connect_timeout", c.database.connect_timeout, DAY),
            (
                "database.statement_timeout",
                c.database.statement_timeout,
                DAY,
            ),
            ("http.livez_stall_timeout", c.http.livez_stall_timeout, DAY),
            ("metrics.idle_timeout", c.metrics.idle_timeout, 30 * DAY),
            (
                "broker.amqp.connect_timeout",
                c.broker.amqp.connect_timeout,
                DAY,
            ),
            (
                "broker.kafka.connect_timeout",
                c.broker.kafka.connect_timeout,
                DAY,
            ),
            ("relay.poll_interval", c.relay.poll_interval, DAY),
            ("relay.publish_timeout", c.relay.publish_timeout, DAY),
            ("relay.shutdown_grace", c.relay.shutdown_grace, DAY),
            ("retry.initial_backoff", c.retry.initial_backoff, 30 * DAY),
            ("retry.max_backoff", c.retry.max_backoff, 30 * DAY),
            ("sweeper.interval", c.sweeper.interval, DAY),
            ("sweeper.purge_interval", c.sweeper.purge_interval, DAY),
            (
                "sweeper.published_retention",
                c.sweeper.published_retention,
                3650 * DAY,
            ),
            (
                "sweeper.rolled_back_retention",
                c.sweeper.rolled_back_retention,
                3650 * DAY,
            ),
            (
                "sweeper.dead_retention",
                c.sweeper.dead_retention,
                3650 * DAY,
            ),
            ("ha.lease_ttl", c.ha.lease_ttl, DAY),
            ("metrics.backlog_interval", c.metrics.backlog_interval, DAY),
        ] {
            if value > max {
                self.issue(
                    key,
                    format!("must be at most {}", humantime::format_duration(max)),
                );
            }
        }
        // A task is not late while it waits on calls that are bounded anyway: a publish, or a
        // claim (the broker's connect, then up to three statements). A stall timeout below that
        // would restart a relay that only waits out an outage.
        let broker_connect = c
            .broker
            .amqp
            .connect_timeout
            .max(c.broker.kafka.connect_timeout);
        let claim = broker_connect + 3 * c.database.call_timeout();
        let longest = c.relay.publish_timeout.max(claim);
        if c.http.livez_stall_timeout <= longest {
            let message = format!(
                "http.livez_stall_timeout ({}) must be more than {}, the longest a task may wait on bounded calls: relay.publish_timeout, or a claim (the broker's connect_timeout and three times database.connect_timeout + statement_timeout + 5s)",
                humantime::format_duration(c.http.livez_stall_timeout),
                humantime::format_duration(longest)
            );
            // Blame a key the user set, as for the backoffs: the stall timeout if they set it,
            // else the largest of the timeouts that made the bound.
            let contributors = [
                ("relay.publish_timeout", c.relay.publish_timeout),
                ("database.statement_timeout", c.database.statement_timeout),
                ("database.connect_timeout", c.database.connect_timeout),
                ("broker.amqp.connect_timeout", c.broker.amqp.connect_timeout),
                (
                    "broker.kafka.connect_timeout",
                    c.broker.kafka.connect_timeout,
                ),
            ];
            let key = if self.origin("http.livez_stall_timeout") != "default" {
                "http.livez_stall_timeout"
            } else {
                contributors
                    .iter()
                    .filter(|(k, _)| self.origin(k) != "default")
                    .max_by_key(|(_, d)| *d)
                    .map_or("http.livez_stall_timeout", |(k, _)| k)
            };
            self.issue(key, message);
        }
        if c.database.statement_timeout < Duration::from_millis(1) {
            // Postgres takes milliseconds; less would round to 0, which means no timeout.
            self.issue("database.statement_timeout", "must be at least 1ms".into());
        }
        if c.metrics.idle_timeout < 2 * c.metrics.backlog_interval {
            self.issue(
                "metrics.idle_timeout",
                "must be at least twice metrics.backlog_interval, which rewrites the counters that must stay".into(),
            );
        }
        if c.ha.lease_ttl < Duration::from_millis(300) {
            self.issue("ha.lease_ttl", "must be at least 300ms".into());
        }
        if c.ha.lease_name.is_empty() {
            self.issue("ha.lease_name", "must not be empty".into());
        }
        if c.broker.kafka.bootstrap_servers.trim().is_empty() {
            self.issue("broker.kafka.bootstrap_servers", "must not be empty".into());
        }
        for (name, value) in &c.broker.kafka.properties.0 {
            let key = format!("broker.kafka.properties.{name}");
            if let Some((_, instead)) = KAFKA_OWNED.iter().find(|(k, _)| k == name) {
                self.issue_at(
                    &key,
                    "broker.kafka.properties",
                    format!("owned by the relay: {instead}"),
                );
            }
            if let Some((_, allowed)) = KAFKA_REQUIRED.iter().find(|(k, _)| k == name) {
                if !allowed.contains(&value.as_str()) {
                    self.issue_at(
                        &key,
                        "broker.kafka.properties",
                        format!(
                            "the relay always uses {}; `{value}` would weaken delivery",
                            allowed[0]
                        ),
                    );
                }
            }
        }
        // Checked first: tracing-subscriber 0.3 indexes filters by char count as byte offsets
        // and panics on some non-ASCII input; targets and levels are ASCII anyway.
        if !c.log.level.is_ascii() {
            self.issue("log.level", "must be ASCII, e.g. `info,sqlx=warn`".into());
        } else if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&c.log.level) {
            self.issue("log.level", format!("not a valid filter: {e}"));
        }
    }
}

mod files;

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../config.example.toml");

    fn example_keys() -> Vec<String> {
        let table: toml::Table = EXAMPLE.parse().expect("config.example.toml is TOML");
        fn walk(prefix: &str, table: &toml::Table, out: &mut Vec<String>) {
            for (k, v) in table {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                if let toml::Value::Table(t) = v {
                    walk(&key, t, out);
                }
                out.push(key);
            }
        }
        let mut out = Vec::new();
        walk("", &table, &mut out);
        out
    }

    #[test]
    fn example_documents_every_key_with_its_default() {
        let keys = example_keys();
        for key in KEYS {
            assert!(
                keys.contains(&key.to_string()),
                "{key} is not in config.example.toml"
            );
        }
        let figment = Figment::from(Toml::string(EXAMPLE));
        let from_example = Config::from_figment(&figment).expect("example is valid");
        assert_eq!(
            from_example.to_redacted_toml(),
            Config::default().to_redacted_toml(),
            "config.example.toml must show the defaults"
        );
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let figment = Figment::from(Toml::string(
            "[relay]\nbatch_size = -1\nmax_in_flight = 0\n[retry]\ninitial_backoff = \"10s\"\nmax_backoff = \"1s\"\n[log]\nformat = \"xml\"\n[extra]\na = 1\n",
        ));
        let Err(ConfigError::Invalid(issues)) = Config::from_figment(&figment) else {
            panic!("expected invalid configuration");
        };
        let keys: Vec<&str> = issues.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "relay.batch_size",
                "relay.max_in_flight",
                "log.format",
                "extra",
                "retry.max_backoff"
            ]
        );
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's signature, not ours
    fn environment_overrides_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "relay.toml",
                "[relay]\nbatch_size = 10\npoll_interval = \"1s\"\n",
            )?;
            jail.set_env("OUTBOX_RELAY__RELAY__BATCH_SIZE", "20");
            jail.set_env("OUTBOX_RELAY_PORT", "tcp://10.0.0.1:9090"); // Kubernetes service link
            let c = Config::load(Some(Path::new("relay.toml"))).expect("valid");
            assert_eq!(c.relay.batch_size.get(), 20);
            assert_eq!(c.relay.poll_interval, Duration::from_secs(1));
            Ok(())
        });
    }

    #[test]
    fn environment_values_figment_would_mangle_are_refused_with_their_variable() {
        assert!(mangled_by_figment("\"\u{800}\u{800}00#\\ \""));
        assert!(mangled_by_figment(r#"["a", "é\n"]"#));
        assert!(!mangled_by_figment(r#""a\né""#));
        assert!(!mangled_by_figment(r#"é\n"#));
        assert!(!mangled_by_figment("postgres://u:pässword@h/db"));
        let vars = [
            ("OUTBOX_RELAY__DATABASE__URL", "\"é\\n\""),
            ("OTHER", "\"é\\n\""),
        ]
        .map(|(k, v)| (k.into(), v.into()));
        let issues = unreadable_environment(vars.into_iter());
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert_eq!(issues[0].key, "database.url");
        assert_eq!(issues[0].origin, "OUTBOX_RELAY__DATABASE__URL");
    }

    fn invalid_keys(toml: &str) -> Vec<String> {
        match Config::from_figment(&Figment::from(Toml::string(toml))) {
            Err(ConfigError::Invalid(issues)) => issues.into_iter().map(|i| i.key).collect(),
            other => panic!("expected invalid configuration, got {other:?}"),
        }
    }

    #[test]
    fn a_stall_timeout_within_the_longest_bounded_wait_blames_the_key_that_was_set() {
        // Default claim bound: 10s + 3 x (5s + 30s + 5s) = 130s.
        assert_eq!(
            invalid_keys("[http]\nlivez_stall_timeout = \"2m\"\n"),
            vec!["http.livez_stall_timeout"]
        );
        let just_above = "[http]\nlivez_stall_timeout = \"131s\"\n";
        assert!(Config::from_figment(&Figment::from(Toml::string(just_above))).is_ok());
        assert_eq!(
            invalid_keys("[relay]\npublish_timeout = \"10m\"\n"),
            vec!["relay.publish_timeout"]
        );
        assert_eq!(
            invalid_keys("[database]\nstatement_timeout = \"500us\"\n"),
            vec!["database.statement_timeout"]
        );
    }

    #[test]
    fn non_ascii_log_filter_is_an_issue_not_a_panic() {
        assert_eq!(
            invalid_keys("[log]\nlevel = \"[\u{feff}{\"\n"),
            ["log.level"]
        );
    }

    #[test]
    fn backoff_order_blames_the_key_that_was_set() {
        assert_eq!(
            invalid_keys("[retry]\ninitial_backoff = \"1h\"\n"),
            ["retry.initial_backoff"]
        );
    }

    #[test]
    fn durations_have_upper_bounds() {
        let figment = Figment::from(Toml::string(
            "[retry]\nmax_backoff = \"10000years\"\n[relay]\nshutdown_grace = \"3days\"\n",
        ));
        let Err(ConfigError::Invalid(issues)) = Config::from_figment(&figment) else {
            panic!("expected invalid configuration");
        };
        let keys: Vec<&str> = issues.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(keys, vec!["relay.shutdown_grace", "retry.max_backoff"]);
    }

    #[test]
    fn secrets_are_redacted() {
        let u = SecretUrl::new("amqps://user:s3cret@host:5671/vh?password=p2&x=1");
        let shown = format!("{u} {u:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("p2"),
            "{shown}"
        );
        assert!(shown.contains("user:REDACTED@host"), "{shown}");
    }
}

#[cfg(test)]
mod kafka_tests {
    use super::*;

    fn load(toml: &str) -> Result<Config, ConfigError> {
        Config::from_figment(&Figment::from(Toml::string(toml)))
    }

    #[test]
    fn properties_pass_through_flattened() {
        let c = load(
            "[broker]\nkind = \"kafka\"\n[broker.kafka]\nbootstrap_servers = \"127.0.0.1:9092\"\n\
             [broker.kafka.properties]\n\"compression.type\" = \"zstd\"\nlinger.ms = 5\nacks = \"all\"\n",
        )
        .expect("valid");
        assert_eq!(c.broker.kind, BrokerKind::Kafka);
        let p = &c.broker.kafka.properties.0;
        assert_eq!(p["compression.type"], "zstd");
        assert_eq!(p["linger.ms"], "5");
        assert_eq!(p["acks"], "all");
    }

    #[test]
    fn weakening_or_owned_properties_are_rejected_with_their_key() {
        let Err(ConfigError::Invalid(issues)) = load(
            "[broker.kafka.properties]\nacks = 1\n\"enable.idempotence\" = false\n\
             \"bootstrap.servers\" = \"x:1\"\n\"message.timeout.ms\" = 5\n",
        ) else {
            panic!("expected invalid configuration");
        };
        let text = issues
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        for key in [
            "acks",
            "enable.idempotence",
            "bootstrap.servers",
            "message.timeout.ms",
        ] {
            assert!(
                text.contains(&format!("broker.kafka.properties.{key}")),
                "{key} not named:\n{text}"
            );
        }
        assert!(text.contains("relay.publish_timeout"), "{text}");
    }

    #[test]
    fn secret_properties_are_redacted() {
        let c = load("[broker.kafka.properties]\n\"sasl.password\" = \"hunter2\"\n\"sasl.username\" = \"me\"\n")
            .expect("valid");
        let shown = format!("{} {:?}", c.to_redacted_toml(), c);
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("me"), "{shown}");
    }
}

#[cfg(test)]
mod fuzz_tests {
    use super::*;
    use proptest::prelude::*;

    /// A value of the kinds a user might write for any key: right and wrong types, durations
    /// good and bad, empty, huge and negative numbers, nested tables.
    fn any_value() -> impl Strategy<Value = toml::Value> {
        let leaf = prop_oneof![
            any::<i64>().prop_map(toml::Value::Integer),
            any::<bool>().prop_map(toml::Value::Boolean),
            any::<f64>().prop_map(toml::Value::Float),
            "[0-9]{0,6}(ms|s|m|h|d|years|)".prop_map(toml::Value::String),
            ".{0,30}".prop_map(toml::Value::String),
        ];
        leaf.prop_recursive(2, 12, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(toml::Value::Array),
                prop::collection::btree_map("[a-z._]{1,12}", inner, 0..4)
                    .prop_map(|m| toml::Value::Table(m.into_iter().collect())),
            ]
        })
    }

    /// A known key or a made-up one.
    fn any_key() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => prop::sample::select(KEYS).prop_map(str::to_string),
            1 => "[a-z]{1,8}(\\.[a-z_]{1,8}){0,2}",
        ]
    }

    fn document(entries: &[(String, toml::Value)]) -> String {
        let mut root = toml::Table::new();
        for (key, value) in entries {
            let mut table = &mut root;
            let parts: Vec<&str> = key.split('.').collect();
            for part in &parts[..parts.len() - 1] {
                let slot = table
                    .entry(part.to_string())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                if !slot.is_table() {
                    *slot = toml::Value::Table(toml::Table::new());
                }
                table = slot.as_table_mut().expect("made a table");
            }
            table.insert(parts[parts.len() - 1].to_string(), value.clone());
        }
        toml::to_string(&root).expect("serialisable")
    }

    /// The one contract of the reader: a Config, or issues that each name the key at fault (and
    /// where its value came from), never a panic.
    fn check(result: Result<Config, ConfigError>, syntax_may_fail: bool) {
        match result {
            Ok(_) => {}
            Err(ConfigError::Invalid(issues)) => {
                assert!(!issues.is_empty());
                for i in issues {
                    assert!(!i.key.is_empty(), "issue without a key: {i}");
                    assert!(!i.message.is_empty(), "issue without a message: {i}");
                    assert_ne!(i.origin, "default", "a default cannot be at fault: {i}");
                }
            }
            Err(ConfigError::Source(e)) => {
                assert!(
                    syntax_may_fail,
                    "well-formed input refused as unreadable: {e}"
                );
                assert!(!e.is_empty());
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Arbitrary text: mostly not TOML at all, so a readable error, never a panic.
        #[test]
        fn any_text_as_the_file(text in ".{0,200}") {
            check(Config::from_figment(&Figment::from(Toml::string(&text))), true);
        }

        /// Well-formed TOML with known and unknown keys and values of every kind.
        #[test]
        fn any_document_gives_a_config_or_keyed_issues(
            entries in prop::collection::vec((any_key(), any_value()), 0..8)
        ) {
            let text = document(&entries);
            check(Config::from_figment(&Figment::from(Toml::string(&text))), false);
        }

        /// Any value in any OUTBOX_RELAY__* variable, known key or not.
        #[test]
        #[allow(clippy::result_large_err)] // figment::Jail's signature, not ours
        fn any_environment_gives_a_config_or_keyed_issues(
            vars in prop::collection::vec((any_key(), "[^\0]{0,40}"), 0..6)
        ) {
            figment::Jail::expect_with(|jail| {
                for (key, value) in &vars {
                    let name = format!("{ENV_PREFIX}{}", key.to_uppercase().replace('.', "__"));
                    jail.set_env(name, value);
                }
                let result = Config::load(None);
                if let Err(ConfigError::Invalid(issues)) = &result {
                    for i in issues {
                        assert!(i.origin.starts_with(ENV_PREFIX), "{i}");
                    }
                }
                check(result, false);
                Ok(())
            });
        }
    }
}

#[cfg(test)]
mod amqp_tls_tests {
    use super::*;

    fn issues(toml: &str) -> Vec<String> {
        match Config::from_figment(&Figment::from(Toml::string(toml))) {
            Ok(_) => Vec::new(),
            Err(ConfigError::Invalid(issues)) => issues.iter().map(ToString::to_string).collect(),
            Err(e) => panic!("{e}"),
        }
    }

    fn amqp(url: &str, ca: &str) -> String {
        format!("[broker.amqp]\nurl = \"{url}\"\ntls_ca_file = \"{ca}\"\n")
    }

    #[test]
    fn ca_file_is_read_at_load_and_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("ca.pem");
        std::fs::write(
            &good,
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let url = "amqps://u:p@host/%2f";

        let c = Config::from_figment(&Figment::from(Toml::string(&amqp(
            url,
            good.to_str().unwrap(),
        ))))
        .expect("valid");
        assert!(c.broker.amqp.tls_ca_pem.unwrap().contains("MIIB"));

        let text = issues(&amqp(url, empty.to_str().unwrap())).join("\n");
        assert!(
            text.contains("broker.amqp.tls_ca_file") && text.contains("holds no PEM certificate"),
            "{text}"
        );
        let text = issues(&amqp(url, "/nonexistent/ca.pem")).join("\n");
        assert!(text.contains("cannot read /nonexistent/ca.pem"), "{text}");
        // A CA for a plain connection would protect nothing: refuse the mix-up.
        let text = issues(&amqp("amqp://u:p@host/%2f", good.to_str().unwrap())).join("\n");
        assert!(text.contains("only used with an amqps://"), "{text}");
    }
}

#[cfg(test)]
mod amqp_url_tests {
    use super::*;

    fn issues(url: &str) -> Vec<ConfigIssue> {
        let toml = format!("[broker.amqp]\nurl = \"{url}\"\n");
        match Config::from_figment(&Figment::from(Toml::string(&toml))) {
            Ok(_) => Vec::new(),
            Err(ConfigError::Invalid(issues)) => issues,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn a_url_the_amqp_client_cannot_use_is_an_issue_of_broker_amqp_url_without_its_password() {
        let long = "v".repeat(256);
        let cases = [
            (
                format!("amqp://u:s3cret@host/{long}"),
                "the vhost is 256 bytes long; AMQP allows at most 255",
            ),
            // Percent-encoded, the limit is on the decoded name.
            (
                format!("amqps://u:s3cret@host/{}", "%2f".repeat(256)),
                "the vhost is 256 bytes long",
            ),
            (
                "amqp://u:s3cret@host/%2f?frame_max=lots".into(),
                "not a valid AMQP URL: invalid digit",
            ),
            (
                "amqp://u:s3cret@host/%2f?auth_mechanism=KERBEROS".into(),
                "not a valid AMQP URL: Invalid SASL mechanism",
            ),
            (
                "amqp:u:s3cret@host".into(),
                "not a valid AMQP URL: expected",
            ),
        ];
        for (url, expected) in cases {
            let found = issues(&url);
            assert_eq!(found.len(), 1, "{url}: {found:?}");
            let text = found[0].to_string();
            assert_eq!(found[0].key, "broker.amqp.url", "{text}");
            assert!(text.contains(expected), "{url}: {text}");
            assert!(!text.contains("s3cret"), "{text}");
        }
    }

    #[test]
    fn a_vhost_of_255_bytes_and_the_usual_forms_are_accepted() {
        for url in [
            format!("amqp://u:p@host/{}", "v".repeat(255)),
            "amqp://u:p@host:5672/%2f?heartbeat=10&frame_max=8192".into(),
            "amqps://u:p@host/vh".into(),
            "amqp://host".into(),
        ] {
            assert!(issues(&url).is_empty(), "{url}: {:?}", issues(&url));
        }
    }
}
