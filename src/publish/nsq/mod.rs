//! NSQ publisher: one `PUB` per row on one TCP connection to nsqd, acknowledged by its `OK`.
//! The row travels as a CloudEvents envelope (`envelope.rs`); the protocol is spoken directly
//! (`protocol.rs`, `connection.rs`), since no maintained Rust client answers each publish
//! with its own acknowledgement and waits for room when busy.
//!
//! Per-key order comes from the relay (one message of a key in flight at a time): nsqd
//! executes one connection's commands in the order they were sent. Publishes of different
//! keys are pipelined on the connection.

mod config;
mod connection;
mod envelope;
mod protocol;

pub use config::NsqConfig;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use super::slot::Slot;
use super::{FailureReason, Presence, PublishError, Publisher};
use crate::store::OutboxMessage;
use connection::{Connection, Lost, Reply, Tls};
use protocol::{error_code, valid_topic, Command};

#[derive(Debug, thiserror::Error)]
#[error("cannot set up TLS to nsqd: {0}")]
pub struct NsqSetupError(String);

pub struct NsqPublisher {
    config: NsqConfig,
    publish_timeout: Duration,
    tls: Option<Tls>,
    connection: Slot<Connection>,
}

impl NsqPublisher {
    /// Sets up TLS when asked (CA certificates, the name to verify). Connects lazily, in
    /// `ready`.
    pub fn new(config: NsqConfig, publish_timeout: Duration) -> Result<Self, NsqSetupError> {
        Ok(Self {
            tls: tls(&config)?,
            config,
            publish_timeout,
            connection: Slot::new(),
        })
    }

    fn current(&self) -> Option<(Connection, u64)> {
        self.connection.get().filter(|(c, _)| c.is_open())
    }

    async fn connect(&self) -> Result<Connection, PublishError> {
        let address = &self.config.nsqd_tcp_address;
        let (connection, info) = Connection::open(
            address,
            self.tls.as_ref(),
            self.config.auth_secret.expose(),
            self.config.connect_timeout,
            self.publish_timeout,
        )
        .await
        .map_err(|e| {
            PublishError::retryable(
                FailureReason::Unavailable,
                format!("cannot connect to nsqd at {address}"),
            )
            .caused_by(e)
        })?;
        tracing::info!(
            address = %address,
            version = %info.version,
            tls = self.tls.is_some(),
            "connected to nsqd"
        );
        Ok(connection)
    }

    /// The `PUB` for a row, or why nsqd could never take it. Both refusals are decided here,
    /// not by nsqd: it answers either with a fatal error that closes the connection, which
    /// would fail every other publish in flight on it.
    fn command(&self, message: &OutboxMessage) -> Result<Command, PublishError> {
        if !valid_topic(&message.destination) {
            return Err(PublishError::permanent(
                FailureReason::Invalid,
                format!(
                    "`{}` is not an NSQ topic name: 1 to 64 characters of [.a-zA-Z0-9_-], optionally ending in #ephemeral",
                    message.destination
                ),
            ));
        }
        let body = envelope::envelope(
            message,
            &self.config.cloudevents_source,
            &self.config.cloudevents_type,
        )?;
        if body.len() as u64 > self.config.max_message_bytes {
            return Err(PublishError::permanent(
                FailureReason::TooLarge,
                format!(
                    "the message is {} bytes with its envelope, over broker.nsq.max_message_bytes ({})",
                    body.len(),
                    self.config.max_message_bytes
                ),
            ));
        }
        Ok(Command::Pub {
            topic: message.destination.clone(),
            body: Bytes::from(body),
        })
    }
}

/// The TLS settings of `tls_v1`: the CAs of `tls_ca_file`, else the system's, and the host of
/// `nsqd_tcp_address` as the name the certificate must carry.
fn tls(config: &NsqConfig) -> Result<Option<Tls>, NsqSetupError> {
    if !config.tls_v1 {
        return Ok(None);
    }
    let mut roots = RootCertStore::empty();
    match &config.tls_ca_pem {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| {
                    NsqSetupError(format!(
                        "broker.nsq.tls_ca_file {}: {e}",
                        config.tls_ca_file
                    ))
                })?;
                roots.add(cert).map_err(|e| {
                    NsqSetupError(format!(
                        "broker.nsq.tls_ca_file {}: {e}",
                        config.tls_ca_file
                    ))
                })?;
            }
        }
        None => {
            // Certificates the parser cannot use are skipped, as the other clients do.
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    if roots.is_empty() {
        return Err(NsqSetupError("no CA certificate to trust".into()));
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| NsqSetupError(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let (host, _) = config::split_address(&config.nsqd_tcp_address).map_err(NsqSetupError)?;
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| NsqSetupError(format!("broker.nsq.nsqd_tcp_address: {e}")))?;
    Ok(Some(Tls {
        connector: TlsConnector::from(Arc::new(client)),
        name,
    }))
}

/// Retryable or permanent, by the code of nsqd's error frame: the publisher's one table.
pub fn classify(error: &str) -> PublishError {
    use FailureReason as R;
    let code = error_code(error.as_bytes());
    let (permanent, reason, message) = match code {
        "E_BAD_TOPIC" => (true, R::Invalid, "nsqd refused the topic name"),
        "E_BAD_MESSAGE" if error.contains("too big") => (
            true,
            R::TooLarge,
            "the message is over nsqd's --max-msg-size",
        ),
        "E_BAD_MESSAGE" | "E_BAD_BODY" => (true, R::Invalid, "nsqd refused the message body"),
        "E_UNAUTHORIZED" => (
            true,
            R::Unauthorized,
            "nsqd's authorization does not allow publishing to the topic",
        ),
        // Credentials may be fixed or renewed while the row waits.
        "E_AUTH_FIRST" | "E_AUTH_FAILED" => (false, R::Unauthorized, "nsqd requires AUTH"),
        // The topic is being deleted or nsqd is stopping, or its disk queue failed.
        "E_PUB_FAILED" | "E_MPUB_FAILED" | "E_DPUB_FAILED" => {
            (false, R::Rejected, "nsqd could not store the message")
        }
        // The command nsqd did not understand is the relay's own, not the row's: another
        // connection (or another nsqd version) may take it.
        "E_INVALID" => (false, R::Other, "nsqd refused the command as invalid"),
        _ => (false, R::Other, "nsqd answered with an error"),
    };
    let message = if code.starts_with("E_") {
        format!("{message} ({code})")
    } else {
        message.to_string()
    };
    let error_text = error.to_string();
    let error = if permanent {
        PublishError::permanent(reason, message)
    } else {
        PublishError::retryable(reason, message)
    };
    error.caused_by(error_text)
}

/// A command without an answer: always retryable.
fn lost(cause: Lost) -> PublishError {
    let reason = match cause {
        Lost::Timeout(_) => FailureReason::Timeout,
        _ => FailureReason::Unavailable,
    };
    PublishError::retryable(reason, "no answer from nsqd to the publish").caused_by(cause)
}

impl Publisher for NsqPublisher {
    async fn ready(&self) -> Result<(), PublishError> {
        if self.current().is_none() {
            self.connection.set(self.connect().await?);
        }
        Ok(())
    }

    async fn publish(&self, message: &OutboxMessage) -> Result<(), PublishError> {
        let command = self.command(message)?;
        let (connection, generation) = self.current().ok_or_else(|| {
            PublishError::retryable(FailureReason::Unavailable, "not connected to nsqd")
        })?;
        let outcome = match connection.call(command, self.publish_timeout).await {
            Ok(Reply::Ok) => return Ok(()),
            Ok(Reply::Error(text)) => classify(&text),
            Err(cause) => lost(cause),
        };
        // nsqd closes the connection after an error to a PUB, and a connection without an
        // answer in time may be half-open: either way the next `ready` connects again.
        self.connection.forget(generation);
        Err(outcome)
    }

    async fn close(&self) {
        // Every answer has been awaited by then; dropping the last handle ends the task,
        // which closes the socket.
        self.connection.clear();
    }

    async fn presence(&self, _destination: &str) -> Result<Presence, PublishError> {
        // The TCP protocol has no topic lookup, and nsqd creates a topic on its first PUB.
        Ok(Presence::CreatedOnPublish)
    }
}

#[cfg(test)]
mod tests;
