//! Why a publish failed: retryable or permanent, a reason from a small fixed set (a metric
//! label), a message, and the client's own error as the source.

use std::fmt::Write as _;

/// The client error underneath, if there is one.
pub type Source = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// May succeed later (the broker is away, a destination may be created, a timeout): retried
    /// with backoff until `retry.max_attempts`, then dead.
    #[error(transparent)]
    Retryable(Failure),
    /// Can never succeed as written (too large, malformed, not permitted): the row goes `dead`
    /// at once; `dead requeue` sends it again after the cause is fixed.
    #[error(transparent)]
    Permanent(Failure),
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub reason: FailureReason,
    pub message: String,
    #[source]
    pub source: Option<Source>,
}

impl PublishError {
    pub fn retryable(reason: FailureReason, message: impl Into<String>) -> Self {
        Self::Retryable(Failure {
            reason,
            message: message.into(),
            source: None,
        })
    }

    pub fn permanent(reason: FailureReason, message: impl Into<String>) -> Self {
        Self::Permanent(Failure {
            reason,
            message: message.into(),
            source: None,
        })
    }

    /// Keeps the client's error as the source.
    pub fn caused_by(mut self, source: impl Into<Source>) -> Self {
        self.failure_mut().source = Some(source.into());
        self
    }

    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Permanent(_))
    }

    pub fn reason(&self) -> FailureReason {
        self.failure().reason
    }

    pub fn failure(&self) -> &Failure {
        match self {
            Self::Retryable(f) | Self::Permanent(f) => f,
        }
    }

    fn failure_mut(&mut self) -> &mut Failure {
        match self {
            Self::Retryable(f) | Self::Permanent(f) => f,
        }
    }

    /// The message and every source below it, `: `-separated: what the row's `last_error` and
    /// the log show.
    pub fn chain(&self) -> String {
        chain(self)
    }
}

/// An error and every source below it, `: `-separated.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let _ = write!(text, ": {e}");
        source = e.source();
    }
    text
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_carries_the_client_error_under_the_message() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let e = PublishError::retryable(FailureReason::Unavailable, "publish failed").caused_by(io);
        assert_eq!(e.to_string(), "publish failed");
        assert_eq!(e.chain(), "publish failed: reset by peer");
        assert!(std::error::Error::source(&e).is_some());
        assert!(!e.is_permanent());
        assert_eq!(e.reason(), FailureReason::Unavailable);
        let p = PublishError::permanent(FailureReason::TooLarge, "too large");
        assert!(p.is_permanent());
        assert_eq!(p.chain(), "too large");
    }
}
