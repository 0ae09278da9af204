//! Redis Streams publisher: one `XADD` per row on a multiplexed connection (requests of
//! different keys pipelined on it), acknowledged by its reply, and with `wait_replicas` by a
//! `WAIT` sent right behind it.
//!
//! Per-key order comes from the relay (one message of a key in flight at a time): Redis
//! executes one connection's commands in the order they were sent.

mod config;

pub(crate) use config::check_url;
pub use config::RedisConfig;

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Cmd, RedisError};

use super::slot::Slot;
use super::{header_pairs, FailureReason, Presence, PublishError, Publisher};
use crate::store::OutboxMessage;

#[derive(Debug, thiserror::Error)]
#[error("cannot set up the Redis client: {0}")]
pub struct RedisSetupError(String);

pub struct RedisPublisher {
    config: RedisConfig,
    publish_timeout: Duration,
    client: Client,
    connection: Slot<Connected>,
}

#[derive(Clone)]
struct Connected {
    connection: MultiplexedConnection,
    /// The server takes `XADD ... IDMP` (Redis 8.6 and later).
    idempotent: bool,
}

impl RedisPublisher {
    /// Builds the client (URL and CA certificates). Connects lazily.
    pub fn new(config: RedisConfig, publish_timeout: Duration) -> Result<Self, RedisSetupError> {
        let url = config.url.expose();
        let client = match &config.tls_ca_pem {
            Some(pem) => Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.clone().into_bytes()),
                },
            ),
            None => Client::open(url),
        }
        // The client's message may quote the URL, password included; its detail (a TLS
        // certificate problem, for one) does not.
        .map_err(|e| {
            RedisSetupError(format!(
                "{:?} ({}): {}",
                e.kind(),
                e.detail().unwrap_or("no detail"),
                config.url
            ))
        })?;
        Ok(Self {
            config,
            publish_timeout,
            client,
            connection: Slot::new(),
        })
    }

    async fn connect(&self) -> Result<Connected, PublishError> {
        let unavailable =
            |message: String| PublishError::retryable(FailureReason::Unavailable, message);
        let settings = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.config.connect_timeout))
            .set_response_timeout(Some(self.publish_timeout));
        let connect = self
            .client
            .get_multiplexed_async_connection_with_config(&settings);
        let mut connection = tokio::time::timeout(self.config.connect_timeout, connect)
            .await
            .map_err(|_| {
                unavailable(format!(
                    "cannot connect to Redis at {}: no answer within {:?}",
                    self.config.url, self.config.connect_timeout
                ))
            })?
            .map_err(|e| {
                // As text: a RedisError names itself again as its own source.
                unavailable(format!("cannot connect to Redis at {}", self.config.url))
                    .caused_by(e.to_string())
            })?;
        // The default sections: the version (server), whether it still loads its data
        // (persistence) and whether it is a primary (replication).
        let info = redis::cmd("INFO");
        let info: String = tokio::time::timeout(
            self.config.connect_timeout,
            info.query_async(&mut connection),
        )
        .await
        .map_err(|_| {
            unavailable(format!(
                "no answer to INFO from Redis at {}",
                self.config.url
            ))
        })?
        .map_err(|e| retryable(classify(e)))?;
        if info_field(&info, "loading") == Some("1") {
            return Err(unavailable(format!(
                "Redis at {} is still loading its data",
                self.config.url
            )));
        }
        if info_field(&info, "role").is_some_and(|r| r != "master") {
            return Err(unavailable(format!(
                "Redis at {} is a replica, which takes no writes",
                self.config.url
            )));
        }
        let version = server_version(&info);
        let idempotent =
            !self.config.idempotent_producer_id.is_empty() && version.is_some_and(|v| v >= (8, 6));
        tracing::info!(
            url = %self.config.url,
            version = ?version,
            idempotent,
            "connected to Redis"
        );
        Ok(Connected {
            connection,
            idempotent,
        })
    }

    fn xadd(&self, message: &OutboxMessage, idempotent: bool) -> Result<Cmd, PublishError> {
        let headers: serde_json::Map<String, serde_json::Value> = header_pairs(&message.headers)?
            .into_iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
            .collect();
        let headers = serde_json::Value::Object(headers).to_string();
        let id = message.message_id.to_string();
        let size = id.len()
            + message.message_key.as_ref().map_or(0, String::len)
            + message.payload.len()
            + message.content_type.len()
            + headers.len();
        if size as u64 > self.config.max_entry_bytes {
            return Err(PublishError::permanent(
                FailureReason::TooLarge,
                format!(
                    "the entry is {size} bytes, over broker.redis.max_entry_bytes ({})",
                    self.config.max_entry_bytes
                ),
            ));
        }
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&message.destination);
        if idempotent {
            cmd.arg("IDMP")
                .arg(&self.config.idempotent_producer_id)
                .arg(&id);
        }
        if self.config.maxlen > 0 {
            cmd.arg("MAXLEN").arg("~").arg(self.config.maxlen);
        }
        cmd.arg("*").arg("message_id").arg(&id);
        if let Some(key) = &message.message_key {
            cmd.arg("key").arg(key);
        }
        cmd.arg("payload")
            .arg(&message.payload[..])
            .arg("content_type")
            .arg(&message.content_type)
            .arg("headers")
            .arg(headers);
        Ok(cmd)
    }

    async fn send(
        &self,
        connection: &mut MultiplexedConnection,
        xadd: Cmd,
    ) -> Result<(), SendError> {
        let _id: redis::Value = xadd.query_async(connection).await?;
        if self.config.wait_replicas == 0 {
            return Ok(());
        }
        // WAIT after the XADD's reply (so that an XADD error keeps its server code) and on the
        // same connection: it returns once the replicas have everything this connection wrote
        // before it, this entry included. Redis serves nothing else of the connection while it
        // waits, which is the price of `wait_replicas` (docs/BROKERS.md).
        let acked: u32 = redis::cmd("WAIT")
            .arg(self.config.wait_replicas)
            .arg(self.config.wait_timeout.as_millis() as u64)
            .query_async(connection)
            .await?;
        if acked < self.config.wait_replicas {
            // The connection is fine; the replicas are late.
            return Err(SendError {
                error: PublishError::retryable(
                    FailureReason::Timeout,
                    format!(
                        "{acked} of {} replicas acknowledged the entry within {:?}",
                        self.config.wait_replicas, self.config.wait_timeout
                    ),
                ),
                connection_lost: false,
            });
        }
        Ok(())
    }
}

/// One `name:value` line of `INFO`.
fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(str::trim)
    })
}

/// A failed send, and whether the connection went with it (then only `ready` connects again).
struct SendError {
    error: PublishError,
    connection_lost: bool,
}

impl From<RedisError> for SendError {
    fn from(e: RedisError) -> Self {
        let connection_lost = e.is_io_error() || e.is_connection_dropped() || e.is_timeout();
        Self {
            error: classify(e),
            connection_lost,
        }
    }
}

/// `redis_version` from `INFO`, as (major, minor).
fn server_version(info: &str) -> Option<(u32, u32)> {
    let version = info_field(info, "redis_version")?;
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??))
}

/// Retryable or permanent, by the server's error code or the client's error kind: the
/// publisher's one table.
pub fn classify(cause: RedisError) -> PublishError {
    use FailureReason as R;
    let (permanent, reason, message) = match cause.code() {
        // An operator may delete or rename the key: retried, then dead, as a missing topic.
        Some("WRONGTYPE") => (false, R::Rejected, "the stream key holds another type"),
        Some("NOPERM" | "NOAUTH" | "WRONGPASS") => {
            (true, R::Unauthorized, "Redis refused the command")
        }
        Some("LOADING" | "BUSY" | "READONLY" | "MASTERDOWN" | "TRYAGAIN" | "CLUSTERDOWN") => {
            (false, R::Unavailable, "Redis cannot take writes now")
        }
        Some("OOM") => (false, R::Rejected, "Redis is out of memory"),
        Some(_) => (false, R::Other, "Redis refused the command"),
        None if cause.is_timeout() => (false, R::Timeout, "no reply from Redis in time"),
        None if cause.is_io_error() || cause.is_connection_dropped() => {
            (false, R::Unavailable, "the connection to Redis failed")
        }
        None => (false, R::Other, "Redis client error"),
    };
    // The server's code as it sent it (WRONGTYPE, NOPERM), which is what operators search for.
    let message = match cause.code() {
        Some(code) => format!("{message} ({code})"),
        None => message.to_string(),
    };
    let error = if permanent {
        PublishError::permanent(reason, message)
    } else {
        PublishError::retryable(reason, message)
    };
    error.caused_by(cause.to_string())
}

/// At connect every failure is retried: credentials may be fixed, the server may finish
/// loading; the relay claims nothing meanwhile.
fn retryable(error: PublishError) -> PublishError {
    match error {
        PublishError::Permanent(f) => PublishError::Retryable(f),
        retryable => retryable,
    }
}

impl Publisher for RedisPublisher {
    async fn ready(&self) -> Result<(), PublishError> {
        if self.connection.get().is_none() {
            self.connection.set(self.connect().await?);
        }
        Ok(())
    }

    async fn publish(&self, message: &OutboxMessage) -> Result<(), PublishError> {
        let (
            Connected {
                mut connection,
                idempotent,
            },
            generation,
        ) = self.connection.get().ok_or_else(|| {
            PublishError::retryable(FailureReason::Unavailable, "not connected to Redis")
        })?;
        let xadd = self.xadd(message, idempotent)?;
        let outcome = tokio::time::timeout(self.publish_timeout, self.send(&mut connection, xadd))
            .await
            .unwrap_or_else(|_| {
                // No reply at all: the connection may be dead without a reset.
                Err(SendError {
                    error: PublishError::retryable(
                        FailureReason::Timeout,
                        format!("no reply from Redis within {:?}", self.publish_timeout),
                    ),
                    connection_lost: true,
                })
            });
        outcome.map_err(|e| {
            if e.connection_lost {
                self.connection.forget(generation);
            }
            e.error
        })
    }

    async fn close(&self) {
        // Every reply has been awaited by then; dropping the last clone closes the socket.
        self.connection.clear();
    }

    async fn presence(&self, destination: &str) -> Result<Presence, PublishError> {
        let (Connected { mut connection, .. }, _) = self.connection.get().ok_or_else(|| {
            PublishError::retryable(FailureReason::Unavailable, "not connected to Redis")
        })?;
        let kind: String = tokio::time::timeout(
            self.publish_timeout,
            redis::cmd("TYPE")
                .arg(destination)
                .query_async(&mut connection),
        )
        .await
        .map_err(|_| {
            PublishError::retryable(
                FailureReason::Timeout,
                format!("no reply from Redis within {:?}", self.publish_timeout),
            )
        })?
        .map_err(classify)?;
        Ok(match kind.as_str() {
            "stream" => Presence::Exists,
            "none" => Presence::CreatedOnPublish,
            other => Presence::Unusable(format!("the key holds a {other}, not a stream")),
        })
    }
}

#[cfg(test)]
mod tests;
