//! The `[broker.redis]` section.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{Checks, SecretUrl, DAY};

/// Redis' own limit on one bulk string (`proto-max-bulk-len`, 512 MiB by default): a bigger
/// field makes the server close the connection, failing every publish in flight on it.
pub const DEFAULT_MAX_ENTRY_BYTES: u64 = 512 * 1024 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]` or `rediss://` (TLS, verified).
    pub url: SecretUrl,
    /// A file holding the URL (a mounted Secret); read once at start, replaces `url`.
    pub url_file: String,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// PEM file of the CA certificates trusted for `rediss://`, instead of the system's.
    pub tls_ca_file: String,
    #[serde(skip)]
    pub tls_ca_pem: Option<String>,
    /// Replicas that must hold an entry before it counts as acknowledged (`WAIT`); 0 takes
    /// the primary's reply alone.
    pub wait_replicas: u32,
    /// How long `WAIT` waits for them; fewer replicas by then is a retryable failure.
    #[serde(with = "humantime_serde")]
    pub wait_timeout: Duration,
    /// Trim each stream to about this many entries (`MAXLEN ~`); 0 never trims.
    pub maxlen: u64,
    /// Entries whose fields add up to more bytes are refused (permanently) before they are
    /// sent: keep it at or below the server's `proto-max-bulk-len`.
    pub max_entry_bytes: u64,
    /// The producer id of idempotent production (`XADD ... IDMP`, Redis 8.6 and later):
    /// replicas that publish to the same streams share it. Empty turns idempotence off.
    pub idempotent_producer_id: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: SecretUrl::new("redis://localhost:6379"),
            url_file: String::new(),
            connect_timeout: Duration::from_secs(10),
            tls_ca_file: String::new(),
            tls_ca_pem: None,
            wait_replicas: 0,
            wait_timeout: Duration::from_secs(5),
            maxlen: 0,
            max_entry_bytes: DEFAULT_MAX_ENTRY_BYTES,
            idempotent_producer_id: "outbox-relay".into(),
        }
    }
}

pub(crate) const SCHEMES: &[&str] = &["redis", "rediss"];

impl RedisConfig {
    pub(crate) fn check(&self, c: &mut Checks) {
        check_url(c, "broker.redis.url", &self.url);
        c.duration("broker.redis.connect_timeout", self.connect_timeout, DAY);
        c.duration("broker.redis.wait_timeout", self.wait_timeout, DAY);
        // WAIT with a timeout of 0 waits for ever.
        if self.wait_replicas > 0 && self.wait_timeout < Duration::from_millis(1) {
            c.issue("broker.redis.wait_timeout", "must be at least 1ms");
        }
        if self.max_entry_bytes == 0 {
            c.issue("broker.redis.max_entry_bytes", "must be more than 0");
        }
        if self.idempotent_producer_id.chars().any(char::is_whitespace) {
            c.issue(
                "broker.redis.idempotent_producer_id",
                "must not contain whitespace",
            );
        }
    }

    /// Reads `tls_ca_file` once the URL is final (it may come from `url_file`).
    pub(crate) fn read_ca(&mut self, c: &mut Checks) {
        self.tls_ca_pem = c.ca_file(
            "broker.redis.tls_ca_file",
            &self.tls_ca_file,
            &self.url,
            "rediss",
            "a rediss:// broker.redis.url",
        );
    }
}

/// A Redis URL as the client reads it. redis-rs skips certificate checks for a URL ending
/// in `#insecure`: the relay verifies TLS always, so that is refused.
pub(crate) fn check_url(c: &mut Checks, key: &str, url: &SecretUrl) -> bool {
    if !c.url(key, url, SCHEMES) {
        return false;
    }
    let problem = match url::Url::parse(url.expose()) {
        Ok(u) if u.fragment().is_some_and(|f| f.contains("insecure")) => {
            Some("`#insecure` turns off certificate checks, which the relay never does".into())
        }
        Ok(_) => match redis::IntoConnectionInfo::into_connection_info(url.expose()) {
            Ok(_) => None,
            // The client's message may quote the URL, password included.
            Err(e) => Some(format!("not a valid Redis URL ({:?})", e.kind())),
        },
        Err(_) => Some("not a valid Redis URL".into()),
    };
    match problem {
        Some(message) => {
            c.issue(key, message);
            false
        }
        None => true,
    }
}
