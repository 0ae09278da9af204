//! The `[broker.amqp]` section.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{Checks, SecretUrl, DAY};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
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

impl Default for AmqpConfig {
    fn default() -> Self {
        Self {
            url: SecretUrl::new("amqp://guest:guest@localhost:5672/%2f"),
            url_file: String::new(),
            connect_timeout: Duration::from_secs(10),
            tls_ca_file: String::new(),
            tls_ca_pem: None,
        }
    }
}

impl AmqpConfig {
    pub(crate) fn check(&self, c: &mut Checks) {
        check_url(c, "broker.amqp.url", &self.url);
        c.duration("broker.amqp.connect_timeout", self.connect_timeout, DAY);
    }

    /// Reads `tls_ca_file`, once the URL is final (it may come from `url_file`): the file must
    /// hold at least one PEM certificate, and only makes sense with an `amqps://` URL (a CA
    /// given for a plain URL would protect nothing).
    pub(crate) fn read_ca(&mut self, c: &mut Checks) {
        self.tls_ca_pem = c.ca_file(
            "broker.amqp.tls_ca_file",
            &self.tls_ca_file,
            &self.url,
            "amqps",
            "an amqps:// broker.amqp.url",
        );
    }
}

/// An AMQP URL as the client reads it: a vhost the protocol cannot carry (over 255 bytes) or a
/// malformed query parameter would otherwise only fail, or panic, at connect.
pub(crate) fn check_url(c: &mut Checks, key: &str, url: &SecretUrl) -> bool {
    if !c.url(key, url, &["amqp", "amqps"]) {
        return false;
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
            c.issue(key, message);
            false
        }
        None => true,
    }
}
