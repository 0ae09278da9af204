//! The `[database]` section.

use std::num::NonZeroU32;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{Checks, SecretUrl, DAY};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
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

pub const SCHEMES: &[&str] = &["postgres", "postgresql"];

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: SecretUrl::new("postgres://localhost:5432/postgres"),
            url_file: String::new(),
            max_connections: NonZeroU32::new(8).expect("non-zero"),
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
        }
    }
}

impl DatabaseConfig {
    /// How long the relay waits for one statement's answer before giving up on the connection:
    /// Postgres cancels it after `statement_timeout`, but a connection that died without a word
    /// (a failover, a dropped NAT entry) would otherwise be waited on forever.
    pub fn call_timeout(&self) -> Duration {
        self.connect_timeout + self.statement_timeout + Duration::from_secs(5)
    }

    pub(crate) fn check(&self, c: &mut Checks) {
        c.url("database.url", &self.url, SCHEMES);
        c.duration("database.connect_timeout", self.connect_timeout, DAY);
        c.duration("database.statement_timeout", self.statement_timeout, DAY);
        if !self.statement_timeout.is_zero() && self.statement_timeout < Duration::from_millis(1) {
            // Postgres takes milliseconds; less would round to 0, which means no timeout.
            c.issue("database.statement_timeout", "must be at least 1ms");
        }
    }
}
