//! The `[broker.nsq]` section.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{Checks, Secret, DAY};

/// nsqd's own default `--max-msg-size`.
pub const DEFAULT_MAX_MESSAGE_BYTES: u64 = 1024 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NsqConfig {
    /// `host:port` of one nsqd's TCP listener.
    pub nsqd_tcp_address: String,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Envelopes over this many bytes are refused (permanently) before they are sent: nsqd
    /// answers a bigger one with a fatal error that closes the connection, failing every
    /// publish in flight on it. Keep it at nsqd's `--max-msg-size`.
    pub max_message_bytes: u64,
    /// The CloudEvents `source` attribute of every envelope.
    pub cloudevents_source: String,
    /// The CloudEvents `type` attribute of every envelope.
    pub cloudevents_type: String,
    /// Upgrade the connection to TLS after `IDENTIFY` (nsqd's `tls_v1` feature), verifying
    /// nsqd's certificate and its name against the host of `nsqd_tcp_address`.
    pub tls_v1: bool,
    /// PEM file of the CA certificates trusted for TLS instead of the system's.
    pub tls_ca_file: String,
    #[serde(skip)]
    pub tls_ca_pem: Option<String>,
    /// Sent with `AUTH` when nsqd requires it (`--auth-http-address`); nsqd asks its auth
    /// server what the secret may do.
    pub auth_secret: Secret,
    /// A file holding the secret (a mounted Secret); read once at start, replaces
    /// `auth_secret`.
    pub auth_secret_file: String,
}

impl Default for NsqConfig {
    fn default() -> Self {
        Self {
            nsqd_tcp_address: "localhost:4150".into(),
            connect_timeout: Duration::from_secs(10),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            cloudevents_source: "outbox-relay".into(),
            cloudevents_type: "outbox.message".into(),
            tls_v1: false,
            tls_ca_file: String::new(),
            tls_ca_pem: None,
            auth_secret: Secret::default(),
            auth_secret_file: String::new(),
        }
    }
}

impl NsqConfig {
    pub(crate) fn check(&self, c: &mut Checks) {
        if let Err(problem) = split_address(&self.nsqd_tcp_address) {
            c.issue("broker.nsq.nsqd_tcp_address", problem);
        }
        c.duration("broker.nsq.connect_timeout", self.connect_timeout, DAY);
        // nsqd reads the body size as a signed 32-bit number.
        if self.max_message_bytes == 0 || self.max_message_bytes > i32::MAX as u64 {
            c.issue(
                "broker.nsq.max_message_bytes",
                format!("must be between 1 and {}", i32::MAX),
            );
        }
        // CloudEvents requires both to be non-empty.
        if self.cloudevents_source.trim().is_empty() {
            c.issue("broker.nsq.cloudevents_source", "must not be empty");
        }
        if self.cloudevents_type.trim().is_empty() {
            c.issue("broker.nsq.cloudevents_type", "must not be empty");
        }
    }
}

impl NsqConfig {
    /// Reads `tls_ca_file` once at start: it must hold a PEM certificate, and only makes sense
    /// with `tls_v1` (a CA for a plain connection would protect nothing).
    pub(crate) fn read_ca(&mut self, c: &mut Checks) {
        const KEY: &str = "broker.nsq.tls_ca_file";
        if self.tls_ca_file.is_empty() {
            return;
        }
        if !self.tls_v1 {
            c.issue(KEY, "is only used with broker.nsq.tls_v1 = true");
            return;
        }
        match std::fs::read_to_string(&self.tls_ca_file) {
            Ok(pem) if pem.contains("-----BEGIN CERTIFICATE-----") => self.tls_ca_pem = Some(pem),
            Ok(_) => c.issue(
                KEY,
                format!("{} holds no PEM certificate", self.tls_ca_file),
            ),
            Err(e) => c.issue(KEY, format!("cannot read {}: {e}", self.tls_ca_file)),
        }
    }
}

/// `host:port` (an IPv6 host in brackets) as host and port.
pub(crate) fn split_address(address: &str) -> Result<(&str, u16), String> {
    let problem = || format!("must be host:port, got `{address}`");
    let (host, port) = address.rsplit_once(':').ok_or_else(problem)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(problem());
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok((host, p)),
        _ => Err(problem()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_host_and_port() {
        assert_eq!(split_address("localhost:4150"), Ok(("localhost", 4150)));
        assert_eq!(split_address("[::1]:4150"), Ok(("::1", 4150)));
        assert_eq!(split_address("10.0.0.1:1"), Ok(("10.0.0.1", 1)));
        for bad in [
            "localhost",
            ":4150",
            "host:0",
            "host:x",
            "host:70000",
            "a b:1",
        ] {
            assert!(split_address(bad).is_err(), "{bad}");
        }
    }
}
