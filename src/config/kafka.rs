//! The `[broker.kafka]` section: its keys, the librdkafka properties passed through (shown
//! redacted), and the properties the relay owns or requires.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

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
pub(super) const KAFKA_OWNED: &[(&str, &str)] = &[
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
pub(super) const KAFKA_REQUIRED: &[(&str, &[&str])] = &[
    ("acks", &["all", "-1"]),
    ("request.required.acks", &["all", "-1"]),
    ("enable.idempotence", &["true"]),
];
