//! Publishers: one per broker, behind the [`Publisher`] trait. Each classifies its own errors
//! into retryable and permanent, next to the client code that knows what they mean.

pub mod amqp;
pub mod kafka;

use std::future::Future;

use crate::store::OutboxMessage;

/// Why a publish failed, as a small fixed set (the `reason` label of
/// `outbox_relay_publish_failures_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureReason {
    /// Broker or connection not available.
    Unavailable,
    /// No confirm or delivery report in time.
    Timeout,
    /// Returned by the broker: nothing bound for the routing key.
    Unroutable,
    /// Negatively acknowledged or refused by the broker.
    Rejected,
    /// The exchange or topic does not exist.
    NotFound,
    /// Over the broker's size limit.
    TooLarge,
    /// Malformed row: headers, names or topic the protocol cannot carry.
    Invalid,
    /// Not allowed by the broker's access control.
    Unauthorized,
    Other,
}

impl FailureReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unavailable => "unavailable",
            Self::Timeout => "timeout",
            Self::Unroutable => "unroutable",
            Self::Rejected => "rejected",
            Self::NotFound => "not_found",
            Self::TooLarge => "too_large",
            Self::Invalid => "invalid",
            Self::Unauthorized => "unauthorized",
            Self::Other => "other",
        }
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{message}")]
pub struct PublishError {
    /// Permanent: can never succeed as written, the row goes `dead` at once. Otherwise it may
    /// succeed later and is retried with backoff until `retry.max_attempts`.
    pub permanent: bool,
    pub reason: FailureReason,
    pub message: String,
}

impl PublishError {
    pub fn retryable(reason: FailureReason, message: impl Into<String>) -> Self {
        Self {
            permanent: false,
            reason,
            message: message.into(),
        }
    }

    pub fn permanent(reason: FailureReason, message: impl Into<String>) -> Self {
        Self {
            permanent: true,
            reason,
            message: message.into(),
        }
    }

    pub fn is_permanent(&self) -> bool {
        self.permanent
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
}
