//! Publishers: one per broker, behind the [`Publisher`] trait. Each classifies its own errors
//! into retryable and permanent, next to the client code that knows what they mean.

pub mod amqp;
mod error;
pub mod kafka;
pub mod nsq;
pub mod redis;
mod slot;

pub use error::{chain, Failure, FailureReason, PublishError, Source};

use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::Checks;
use crate::store::OutboxMessage;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerKind {
    Amqp,
    Kafka,
    Redis,
    Nsq,
}

/// The `[broker]` section: which publisher runs, and each publisher's own table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    pub kind: BrokerKind,
    pub amqp: amqp::AmqpConfig,
    pub kafka: kafka::KafkaConfig,
    pub redis: redis::RedisConfig,
    pub nsq: nsq::NsqConfig,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            kind: BrokerKind::Amqp,
            amqp: Default::default(),
            kafka: Default::default(),
            redis: Default::default(),
            nsq: Default::default(),
        }
    }
}

impl BrokerConfig {
    pub(crate) fn check(&self, c: &mut Checks) {
        self.amqp.check(c);
        self.kafka.check(c);
        self.redis.check(c);
        self.nsq.check(c);
    }

    /// Each publisher's connect timeout, by key: a claim waits on the broker's connect first.
    pub(crate) fn connect_timeouts(&self) -> impl Iterator<Item = (&'static str, Duration)> {
        [
            ("broker.amqp.connect_timeout", self.amqp.connect_timeout),
            ("broker.kafka.connect_timeout", self.kafka.connect_timeout),
            ("broker.redis.connect_timeout", self.redis.connect_timeout),
            ("broker.nsq.connect_timeout", self.nsq.connect_timeout),
        ]
        .into_iter()
    }
}

/// Sends one outbox row to a broker and resolves once the broker has taken responsibility for
/// it (a confirm or delivery report), or with the reason it did not.
pub trait Publisher: Send + Sync + 'static {
    /// Connects if needed. The relay claims no rows while this fails, so a broker outage does
    /// not use up the rows' attempts.
    fn ready(&self) -> impl Future<Output = Result<(), PublishError>> + Send;

    /// Publishes one message. Calls for different keys run concurrently; the relay never has
    /// two messages of the same key in flight.
    fn publish(
        &self,
        message: &OutboxMessage,
    ) -> impl Future<Output = Result<(), PublishError>> + Send;

    /// Closes connections after the last publish.
    fn close(&self) -> impl Future<Output = ()> + Send;

    /// Whether `destination` can take messages now, asked of the broker without publishing
    /// (`doctor`). Call after `ready`.
    fn presence(
        &self,
        _destination: &str,
    ) -> impl Future<Output = Result<Presence, PublishError>> + Send {
        async { Ok(Presence::Unchecked) }
    }
}

/// What a broker says of a destination before anything is published to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presence {
    Exists,
    /// Absent, and every publish to it fails until someone creates it.
    Missing,
    /// Absent or not looked up, and the broker creates it on the first publish.
    CreatedOnPublish,
    /// Present, but it cannot take messages, and why.
    Unusable(String),
    /// This publisher cannot look it up.
    Unchecked,
}

/// The row's `headers` column as string pairs. Anything but a JSON object of strings is a
/// permanent error: the row can never be published as written.
pub fn header_pairs(headers: &serde_json::Value) -> Result<Vec<(&str, &str)>, PublishError> {
    let object = headers.as_object().ok_or_else(|| {
        PublishError::permanent(
            FailureReason::Invalid,
            format!(
                "headers must be a JSON object of strings, got {}",
                json_kind(headers)
            ),
        )
    })?;
    object
        .iter()
        .map(|(k, v)| match v.as_str() {
            Some(s) => Ok((k.as_str(), s)),
            None => Err(PublishError::permanent(
                FailureReason::Invalid,
                format!("header `{k}` must be a string, got {}", json_kind(v)),
            )),
        })
        .collect()
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Shared by the publishers' property tests: arbitrary `headers` column values and a row to
/// carry them.
#[cfg(test)]
pub(crate) mod testing {
    use chrono::{TimeZone, Utc};
    use proptest::prelude::*;
    use serde_json::Value;

    use crate::store::{OutboxMessage, RowId};

    /// Any JSON value, nested a few levels, biased towards objects so the per-header checks
    /// get exercised.
    pub fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            ".{0,300}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 32, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::btree_map(".{0,300}", inner, 0..8)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    pub fn message(headers: Value) -> OutboxMessage {
        OutboxMessage {
            id: RowId(1),
            message_id: uuid::Uuid::nil(),
            destination: "d".into(),
            routing_key: None,
            message_key: Some("k".into()),
            payload: b"p".to_vec(),
            content_type: "application/json".into(),
            headers,
            commit_seq: 1,
            committed_at: Utc.timestamp_opt(0, 0).unwrap(),
            attempts: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn headers_must_be_an_object_of_strings() {
        assert_eq!(
            header_pairs(&json!({"a": "1", "b": "x"})).unwrap(),
            vec![("a", "1"), ("b", "x")]
        );
        assert!(header_pairs(&json!({})).unwrap().is_empty());
        let err = header_pairs(&json!({"a": 1})).unwrap_err();
        assert!(err.is_permanent());
        assert!(err.to_string().contains("header `a`"), "{err}");
        assert!(header_pairs(&json!(["a"])).unwrap_err().is_permanent());
        assert!(header_pairs(&json!("a")).unwrap_err().is_permanent());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Whatever an application put in the column, the conversion answers without panicking,
        /// and every refusal is permanent (retrying cannot fix the row) and says why.
        #[test]
        fn any_headers_give_pairs_or_a_permanent_error(v in testing::any_json()) {
            match header_pairs(&v) {
                Ok(pairs) => {
                    let object = v.as_object().expect("only objects convert");
                    proptest::prop_assert_eq!(pairs.len(), object.len());
                }
                Err(e) => {
                    proptest::prop_assert!(e.is_permanent());
                    proptest::prop_assert_eq!(e.reason(), FailureReason::Invalid);
                    proptest::prop_assert!(e.to_string().contains("must be"), "{}", e);
                }
            }
        }

        /// An object of strings always converts, pair for pair.
        #[test]
        fn string_objects_round_trip(
            m in proptest::collection::btree_map(".{0,40}", ".{0,200}", 0..16)
        ) {
            let v = serde_json::to_value(&m).unwrap();
            let pairs = header_pairs(&v).unwrap();
            let back: std::collections::BTreeMap<String, String> =
                pairs.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
            proptest::prop_assert_eq!(back, m);
        }
    }
}
