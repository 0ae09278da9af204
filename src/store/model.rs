//! The rows and statuses the store reads and writes.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::FromRow;
use uuid::Uuid;

/// Lifecycle of a row: the Postgres enum `outbox.message_status`, read and bound as itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, sqlx::Type, serde::Serialize)]
#[sqlx(type_name = "outbox.message_status", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum MessageStatus {
    Prepared,
    Committed,
    RolledBack,
    Published,
    Dead,
}

impl MessageStatus {
    pub const ALL: [MessageStatus; 5] = [
        Self::Prepared,
        Self::Committed,
        Self::RolledBack,
        Self::Published,
        Self::Dead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Prepared => "prepared",
            Self::Committed => "committed",
            Self::RolledBack => "rolled_back",
            Self::Published => "published",
            Self::Dead => "dead",
        }
    }
}

impl fmt::Display for MessageStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Row id in `outbox.messages` (internal; consumers see [`OutboxMessage::message_id`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, sqlx::Type)]
#[sqlx(transparent)]
pub struct RowId(pub i64);

/// A committed row, as the relay hands it to a publisher.
#[derive(Debug, Clone, FromRow)]
pub struct OutboxMessage {
    pub id: RowId,
    pub message_id: Uuid,
    pub destination: String,
    pub routing_key: Option<String>,
    pub message_key: Option<String>,
    pub payload: Vec<u8>,
    pub content_type: String,
    pub headers: serde_json::Value,
    pub commit_seq: i64,
    pub committed_at: DateTime<Utc>,
    pub attempts: i32,
}

/// What happened to one publish.
#[derive(Debug, Clone)]
pub enum Outcome {
    Published,
    Failed {
        error: String,
        permanent: bool,
        backoff: Duration,
    },
}

/// The row after its outcome was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    pub id: RowId,
    pub status: MessageStatus,
}

/// The commit fence: every committed row with `commit_seq <= fence_seq` is visible once none
/// of `writers` (virtual transaction ids) is still running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub fence_seq: i64,
    pub writers: Vec<String>,
}
