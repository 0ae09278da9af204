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
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: "localhost:9092".to_string(),
            connect_timeout: Duration::from_secs(10),
            sasl_password_file: String::new(),
            properties: KafkaProperties::default(),
        }
    }
}

impl KafkaConfig {
    pub(crate) fn check(&self, c: &mut Checks) {
        if self.bootstrap_servers.trim().is_empty() {
            c.issue("broker.kafka.bootstrap_servers", "must not be empty");
        }
        c.duration("broker.kafka.connect_timeout", self.connect_timeout, DAY);
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
        "the relay does not use Kafka transactions",
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
