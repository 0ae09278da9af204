//! Configuration: defaults, then a TOML file, then `OUTBOX_RELAY__SECTION__KEY` environment
//! variables. Each section is a serde struct owned by the module that uses it (the store owns
//! `[database]`, each publisher its `[broker.*]` table, and so on), with its defaults and its own
//! checks beside it. Loading extracts them all, reports every mistake at once, each with its
//! key and where the value came from, and nothing is validated later.
//!
//! Adding a key: a field (with its doc comment) in the owning section's struct, its default in
//! that struct's `Default`, any check in its `check`, and a line in `config.example.toml`.

use std::fmt;
use std::path::Path;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

pub use crate::check_back::{CheckBackConfig, ProducerConfig};
pub use crate::http::HttpConfig;
pub use crate::lease::HaConfig;
pub use crate::publish::amqp::AmqpConfig;
pub use crate::publish::kafka::{KafkaConfig, KafkaProperties};
pub use crate::publish::{BrokerConfig, BrokerKind};
pub use crate::relay::{RelayConfig, RetryConfig};
pub use crate::store::DatabaseConfig;
pub use crate::sweeper::SweeperConfig;
pub use crate::telemetry::instruments::MetricsConfig;
pub use crate::telemetry::{LogConfig, LogFormat};
pub use secret::{Secret, SecretUrl};
pub use validate::{Checks, DAY};

/// Prefix of environment overrides. The double underscore keeps Kubernetes' service-link
/// variables (`OUTBOX_RELAY_PORT=tcp://...`) out of the configuration.
pub const ENV_PREFIX: &str = "OUTBOX_RELAY__";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub database: DatabaseConfig,
    pub broker: BrokerConfig,
    pub relay: RelayConfig,
    pub retry: RetryConfig,
    pub sweeper: SweeperConfig,
    pub check_back: CheckBackConfig,
    pub ha: HaConfig,
    pub http: HttpConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
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
        let unreadable = read::unreadable_environment(std::env::vars_os());
        if !unreadable.is_empty() {
            return Err(ConfigError::Invalid(unreadable));
        }
        figment = figment.merge(Env::prefixed(ENV_PREFIX).split("__"));
        Self::from_figment(&figment)
    }

    /// Extracts every section, checks each and the relations between them, then reads the
    /// files that hold secrets and certificates: the only I/O, done once here so that a missing
    /// file is a configuration error at start (and in `check-config`), named by its key.
    pub fn from_figment(figment: &Figment) -> Result<Self, ConfigError> {
        let mut checks = Checks::new(figment);
        let mut config = read::extract(figment, &mut checks)?;
        config.check(&mut checks);
        checks.read_files(&mut config);
        checks.finish(config)
    }

    fn check(&self, c: &mut Checks) {
        self.database.check(c);
        self.broker.check(c);
        self.relay.check(c);
        self.retry.check(c);
        self.sweeper.check(c);
        self.check_back.check(c);
        self.ha.check(c);
        self.http.check(c);
        self.metrics.check(c);
        self.log.check(c);
        validate::relations(self, c);
    }

    /// The effective configuration as TOML, with secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// Every key the relay reads, dotted, in the order of the sections' fields (and of
/// `config.example.toml`). A table of free-form entries (`broker.kafka.properties`) is one key.
pub fn keys() -> Vec<String> {
    read::keys(&Config::default())
}

mod files;
mod read;
mod secret;
mod validate;

#[cfg(test)]
pub(crate) mod tests;
