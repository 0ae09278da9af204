//! The `[check_back]` section: when prepared rows are asked about, and the producers that may
//! be asked. Only a producer named here is ever called; a row names one by its key.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{Checks, Secret, SecretUrl, DAY};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckBackConfig {
    /// A prepared row with a producer is first asked about this long after it was prepared.
    #[serde(with = "humantime_serde")]
    pub check_after: Duration,
    /// How often the lease holder looks for rows due to be asked.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Rows asked about per look; the next look follows at once while looks come back full.
    pub batch_size: NonZeroU32,
    /// Checks in flight at once, over all producers.
    pub concurrency: NonZeroU32,
    /// Delay before asking again after an undecided answer, doubling per answer up to
    /// `max_backoff`.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// The producers the relay may call, by the name rows give in `outbox.prepare(producer =>)`.
    pub producers: BTreeMap<String, ProducerConfig>,
}

impl Default for CheckBackConfig {
    fn default() -> Self {
        Self {
            check_after: Duration::from_secs(10),
            interval: Duration::from_secs(1),
            batch_size: NonZeroU32::new(100).expect("non-zero"),
            concurrency: NonZeroU32::new(16).expect("non-zero"),
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            producers: BTreeMap::new(),
        }
    }
}

/// `[check_back.producers.<name>]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProducerConfig {
    /// Where the check is POSTed: `https://` (verified TLS) or `http://`.
    pub url: SecretUrl,
    /// One check's bound: connect, request and answer.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// A file holding a bearer token sent as `Authorization: Bearer …`; read once at start.
    pub token_file: String,
    #[serde(skip)]
    pub token: Option<Secret>,
    /// PEM file of the CA certificates trusted for this producer, instead of the system's.
    pub tls_ca_file: String,
    #[serde(skip)]
    pub tls_ca_pem: Option<String>,
    /// PEM files of a client certificate (chain) and its key, for producers that require mTLS.
    pub tls_client_cert_file: String,
    pub tls_client_key_file: String,
    #[serde(skip)]
    pub tls_client_pem: Option<(String, Secret)>,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            url: SecretUrl::new(""),
            timeout: Duration::from_secs(5),
            token_file: String::new(),
            token: None,
            tls_ca_file: String::new(),
            tls_ca_pem: None,
            tls_client_cert_file: String::new(),
            tls_client_key_file: String::new(),
            tls_client_pem: None,
        }
    }
}

/// Producer names as `outbox.prepare` accepts them (migration 0009).
pub fn valid_producer_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl CheckBackConfig {
    pub(crate) fn check(&self, c: &mut Checks) {
        c.duration("check_back.check_after", self.check_after, DAY);
        c.duration("check_back.interval", self.interval, DAY);
        c.duration("check_back.initial_backoff", self.initial_backoff, DAY);
        c.duration("check_back.max_backoff", self.max_backoff, DAY);
        c.ordered(
            "check_back.initial_backoff",
            self.initial_backoff,
            "check_back.max_backoff",
            self.max_backoff,
        );
        for (name, p) in &self.producers {
            let key = format!("check_back.producers.{name}");
            if !valid_producer_name(name) {
                c.issue(
                    &key,
                    "a producer's name is 1 to 64 letters, digits, _ or -, as outbox.prepare accepts",
                );
            }
            if p.url.expose().is_empty() {
                c.issue(&format!("{key}.url"), "must be set");
            } else if c.url(&format!("{key}.url"), &p.url, &["https", "http"]) {
                let u = url::Url::parse(p.url.expose()).expect("checked");
                if u.host_str().is_none_or(str::is_empty) {
                    c.issue(&format!("{key}.url"), "names no host");
                }
            }
            c.duration(
                &format!("{key}.timeout"),
                p.timeout,
                Duration::from_secs(600),
            );
            if p.tls_client_cert_file.is_empty() != p.tls_client_key_file.is_empty() {
                c.issue(
                    &format!("{key}.tls_client_key_file"),
                    "set both tls_client_cert_file and tls_client_key_file, or neither",
                );
            }
        }
    }

    /// A check is bounded by its producer's timeout and beats the check-back task's heartbeat
    /// when it ends; a timeout past the stall bound would restart a relay that only waits.
    pub(crate) fn check_against_stall(&self, stall: Duration, c: &mut Checks) {
        for (name, p) in &self.producers {
            if p.timeout >= stall {
                c.issue(
                    &format!("check_back.producers.{name}.timeout"),
                    format!(
                        "must be less than http.livez_stall_timeout ({})",
                        humantime::format_duration(stall)
                    ),
                );
            }
        }
    }

    /// Reads each producer's token, CA and client identity files once, at start.
    pub(crate) fn read_files(&mut self, c: &mut Checks) {
        for (name, p) in &mut self.producers {
            let key = format!("check_back.producers.{name}");
            p.token = c
                .file_unless(&format!("{key}.token_file"), None, &p.token_file)
                .map(Secret::new);
            p.tls_ca_pem = c.ca_file(
                &format!("{key}.tls_ca_file"),
                &p.tls_ca_file,
                &p.url,
                "https",
                &format!("an https:// {key}.url"),
            );
            if !p.tls_client_cert_file.is_empty() && !p.tls_client_key_file.is_empty() {
                let cert = c.ca_file(
                    &format!("{key}.tls_client_cert_file"),
                    &p.tls_client_cert_file,
                    &p.url,
                    "https",
                    &format!("an https:// {key}.url"),
                );
                let key_pem = c.file_unless(
                    &format!("{key}.tls_client_key_file"),
                    None,
                    &p.tls_client_key_file,
                );
                if let (Some(cert), Some(k)) = (cert, key_pem) {
                    p.tls_client_pem = Some((cert, Secret::new(k)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::issues_of;

    #[test]
    fn producers_are_checked_by_their_full_keys() {
        let issues = issues_of(
            "[check_back.producers.\"bad name\"]\nurl = \"https://a.example\"\n\
             [check_back.producers.nourl]\n\
             [check_back.producers.ftp]\nurl = \"ftp://a.example\"\ntimeout = \"0s\"\n\
             [check_back.producers.slow]\nurl = \"http://127.0.0.1:1\"\ntimeout = \"10m\"\n\
             [check_back.producers.half]\nurl = \"https://a.example\"\ntls_client_cert_file = \"/c.pem\"\n\
             [check_back.producers.plain]\nurl = \"http://127.0.0.1:1\"\ntls_ca_file = \"/etc/hostname\"\n",
        );
        let keys: Vec<&str> = issues
            .iter()
            .map(|i| i.split(' ').next().unwrap())
            .collect();
        assert_eq!(
            keys,
            [
                "check_back.producers.bad",
                "check_back.producers.ftp.url",
                "check_back.producers.ftp.timeout",
                "check_back.producers.half.tls_client_key_file",
                "check_back.producers.nourl.url",
                "check_back.producers.slow.timeout",
                "check_back.producers.plain.tls_ca_file",
            ],
            "{issues:#?}"
        );
        assert!(
            issues[5].contains("http.livez_stall_timeout"),
            "{}",
            issues[5]
        );
        assert!(issues[6].contains("https://"), "{}", issues[6]);
    }

    #[test]
    fn the_token_comes_from_its_file_and_is_never_shown() {
        let token = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(token.path(), "s3cret-token\n").unwrap();
        let toml = format!(
            "[check_back.producers.orders]\nurl = \"https://orders.example/check\"\ntoken_file = {:?}\n",
            token.path()
        );
        let config = crate::config::Config::from_figment(&figment::Figment::from(
            <figment::providers::Toml as figment::providers::Format>::string(&toml),
        ))
        .expect("valid");
        let orders = &config.check_back.producers["orders"];
        assert_eq!(orders.token.as_ref().unwrap().expose(), "s3cret-token");
        assert!(!config.to_redacted_toml().contains("s3cret"));
        assert!(!format!("{config:?}").contains("s3cret"));
    }

    #[test]
    fn backoff_bounds_are_ordered_and_the_key_set_is_blamed() {
        // Both set: the maximum is what contradicts the minimum.
        let issues = issues_of("[check_back]\ninitial_backoff = \"2m\"\nmax_backoff = \"1m\"\n");
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert!(
            issues[0].starts_with("check_back.max_backoff"),
            "{issues:?}"
        );
        // Only the maximum set, below the default minimum (1 s): the maximum, never a default.
        let issues = issues_of("[check_back]\nmax_backoff = \"500ms\"\n");
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert!(
            issues[0].starts_with("check_back.max_backoff"),
            "{issues:?}"
        );
        // Only the minimum set, above the default maximum.
        let issues = issues_of("[check_back]\ninitial_backoff = \"2h\"\n");
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert!(
            issues[0].starts_with("check_back.initial_backoff"),
            "{issues:?}"
        );
    }
}
