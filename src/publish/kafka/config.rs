//! The `[broker.kafka]` section: its keys, the librdkafka properties passed through (shown
//! redacted), and the properties the relay owns or requires.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{Checks, DAY};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list.
    pub bootstrap_servers: String,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// A file holding `sasl.password`; read once at start into the properties.
    pub sasl_password_file: String,
    /// Passed through to librdkafka, except the keys the relay owns.
    pub properties: KafkaProperties,
    /// At least once (the default) or exactly once for `read_committed` consumers.
    pub delivery: Delivery,
    /// Exactly once: the producer's `transactional.id`, shared by the replicas of one relay
    /// group. Empty: derived from the database's address and name (see [`transactional_id`]).
    pub transactional_id: String,
    /// Exactly once: the compacted topic holding each transaction's progress record.
    pub progress_topic: String,
    /// Exactly once: the longest a transaction gathers claimed rows before it commits. Longer
    /// means fewer, larger transactions (each commit writes a marker to every partition it
    /// touched) and later visibility for read_committed consumers.
    #[serde(with = "humantime_serde")]
    pub transaction_interval: Duration,
}

/// How the Kafka publisher delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// Idempotent producer; a crash between the broker's acknowledgement and the mark re-sends.
    #[default]
    AtLeastOnce,
    /// Kafka transactions fenced by the lease, with a progress record in each: read_committed
    /// consumers see every row once.
    ExactlyOnce,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: "localhost:9092".to_string(),
            connect_timeout: Duration::from_secs(10),
            sasl_password_file: String::new(),
            properties: KafkaProperties::default(),
            delivery: Delivery::AtLeastOnce,
            transactional_id: String::new(),
            progress_topic: "outbox-relay-progress".to_string(),
            transaction_interval: Duration::from_millis(20),
        }
    }
}

impl KafkaConfig {
    pub(crate) fn check(&self, c: &mut Checks) {
        if self.bootstrap_servers.trim().is_empty() {
            c.issue("broker.kafka.bootstrap_servers", "must not be empty");
        }
        c.duration("broker.kafka.connect_timeout", self.connect_timeout, DAY);
        c.duration(
            "broker.kafka.transaction_interval",
            self.transaction_interval,
            Duration::from_secs(60),
        );
        if !valid_topic_name(&self.progress_topic) {
            c.issue(
                "broker.kafka.progress_topic",
                "must be 1 to 249 characters of ASCII letters, digits, '.', '_' and '-'",
            );
        }
        if self.transactional_id.len() > 255 {
            c.issue("broker.kafka.transactional_id", "must be at most 255 bytes");
        }
        for (name, value) in &self.properties.0 {
            let key = format!("broker.kafka.properties.{name}");
            if let Some((_, instead)) = OWNED.iter().find(|(k, _)| k == name) {
                c.issue(&key, format!("owned by the relay: {instead}"));
            }
            if let Some((_, allowed)) = REQUIRED.iter().find(|(k, _)| k == name) {
                if !allowed.contains(&value.as_str()) {
                    c.issue(
                        &key,
                        format!(
                            "the relay always uses {}; `{value}` would weaken delivery",
                            allowed[0]
                        ),
                    );
                }
            }
        }
    }
}

/// librdkafka properties. Values whose key suggests a secret are redacted when shown. Dotted
/// names may arrive nested (`linger.ms = 5` in TOML is a table `linger` with a key `ms`, as is
/// `..._PROPERTIES__LINGER.MS` in the environment); they are flattened back.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KafkaProperties(pub BTreeMap<String, String>);

impl<'de> Deserialize<'de> for KafkaProperties {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        fn flatten(
            prefix: &str,
            table: BTreeMap<String, Property>,
            out: &mut BTreeMap<String, String>,
        ) {
            for (name, value) in table {
                let name = if prefix.is_empty() {
                    name
                } else {
                    format!("{prefix}.{name}")
                };
                match value {
                    Property::Value(text) => {
                        out.insert(name, text);
                    }
                    Property::Table(inner) => flatten(&name, inner, out),
                }
            }
        }
        let table = BTreeMap::<String, Property>::deserialize(d)?;
        let mut out = BTreeMap::new();
        flatten("", table, &mut out);
        Ok(Self(out))
    }
}

/// One entry of the properties table: a value as text, or a table of a dotted name's parts.
enum Property {
    Value(String),
    Table(BTreeMap<String, Property>),
}

impl<'de> Deserialize<'de> for Property {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Property;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Property, E> {
                Ok(Property::Value(v.to_string()))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Property, E> {
                Ok(Property::Value(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Property, E> {
                Ok(Property::Value(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Property, E> {
                Ok(Property::Value(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Property, E> {
                Ok(Property::Value(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Property, A::Error> {
                let mut table = BTreeMap::new();
                while let Some((name, value)) = map.next_entry::<String, Property>()? {
                    table.insert(name, value);
                }
                Ok(Property::Table(table))
            }
        }
        d.deserialize_any(Visitor)
    }
}

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
pub(crate) const OWNED: &[(&str, &str)] = &[
    ("bootstrap.servers", "set broker.kafka.bootstrap_servers"),
    ("metadata.broker.list", "set broker.kafka.bootstrap_servers"),
    ("message.timeout.ms", "set relay.publish_timeout"),
    ("delivery.timeout.ms", "set relay.publish_timeout"),
    (
        "transactional.id",
        "set broker.kafka.transactional_id (used with delivery = \"exactly_once\")",
    ),
    (
        "transaction.timeout.ms",
        "the relay derives it from relay.publish_timeout",
    ),
    (
        "enable.gapless.guarantee",
        "the relay keeps per-key order itself",
    ),
];
pub(crate) const REQUIRED: &[(&str, &[&str])] = &[
    ("acks", &["all", "-1"]),
    ("request.required.acks", &["all", "-1"]),
    ("enable.idempotence", &["true"]),
];

/// Kafka's rule for topic names (`Topic.validate` in the broker).
fn valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The `transactional.id` of exactly-once delivery: the configured one, or one derived from
/// the outbox's database (host, port and name as the relay connects to them) and schema, which
/// every replica of a relay group shares and no other outbox has.
pub fn transactional_id(config: &KafkaConfig, host: &str, port: u16, database: &str) -> String {
    if config.transactional_id.is_empty() {
        format!("outbox-relay.{host}:{port}.{database}.outbox")
    } else {
        config.transactional_id.clone()
    }
}
