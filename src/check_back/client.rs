//! One producer's check-back endpoint: POST a prepared row's identity, read the producer's
//! answer. Every failure leaves the row undecided: by the safety rule nothing but an answer
//! of `rolled_back` rolls a row back, so there is no permanent failure of a check.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::config::ProducerConfig;
use crate::config::Secret;
use crate::store::check_back::CheckCandidate;

/// A longer answer is not an answer: the expected one is a few dozen bytes.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The client of one configured producer, built at start.
pub struct ProducerClient {
    url: reqwest::Url,
    token: Option<Secret>,
    http: reqwest::Client,
    timeout: Duration,
}

/// A producer's TLS settings cannot be used (found at start).
#[derive(Debug, thiserror::Error)]
#[error("check_back.producers.{producer}: {message}")]
pub struct SetupError {
    producer: String,
    message: String,
}

/// What a check came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Committed,
    RolledBack,
    /// `unknown`, or no usable answer; asked again after a backoff.
    Undecided(Undecided),
}

/// Why a check decided nothing. All of them are retried: a row is never rolled back for
/// lack of an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Undecided {
    #[error("the producer answered unknown")]
    Unknown,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot reach the producer: {0}")]
    Unreachable(String),
    #[error("the producer answered HTTP {0}")]
    Status(u16),
    #[error("the producer's answer is not {{\"status\": \"committed\" | \"rolled_back\" | \"unknown\"}}: {0}")]
    BadAnswer(String),
}

impl Undecided {
    /// The metric label.
    pub fn outcome(&self) -> &'static str {
        match self {
            Undecided::Unknown => "unknown",
            Undecided::Timeout(_) => "timeout",
            Undecided::Unreachable(_) => "unreachable",
            Undecided::Status(_) | Undecided::BadAnswer(_) => "bad_answer",
        }
    }
}

/// The request body: the row's identity, never its payload.
#[derive(Serialize)]
struct Check<'a> {
    message_id: Uuid,
    destination: &'a str,
    message_key: Option<&'a str>,
    prepared_at: DateTime<Utc>,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum Status {
    Committed,
    RolledBack,
    Unknown,
}

#[derive(Deserialize)]
struct Reply {
    status: Status,
}

impl ProducerClient {
    pub fn new(name: &str, config: &ProducerConfig) -> Result<Self, SetupError> {
        let fail = |message: String| SetupError {
            producer: name.to_string(),
            message,
        };
        let url = reqwest::Url::parse(config.url.expose()).map_err(|e| fail(e.to_string()))?;
        let tls = tls(config).map_err(fail)?;
        let http = reqwest::Client::builder()
            // Only the configured URL is ever dialled: no redirect is followed, no proxy from
            // the environment is used.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .use_preconfigured_tls(tls)
            .connect_timeout(config.timeout)
            .timeout(config.timeout)
            .user_agent(concat!("outbox-relay/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| fail(e.to_string()))?;
        Ok(Self {
            url,
            token: config.token.clone(),
            http,
            timeout: config.timeout,
        })
    }

    /// Asks whether `row` was committed. Bounded by the producer's `timeout`.
    pub async fn ask(&self, row: &CheckCandidate) -> Answer {
        match tokio::time::timeout(self.timeout, self.call(row)).await {
            Ok(Ok(status)) => match status {
                Status::Committed => Answer::Committed,
                Status::RolledBack => Answer::RolledBack,
                Status::Unknown => Answer::Undecided(Undecided::Unknown),
            },
            Ok(Err(e)) => Answer::Undecided(e),
            Err(_) => Answer::Undecided(Undecided::Timeout(self.timeout)),
        }
    }

    async fn call(&self, row: &CheckCandidate) -> Result<Status, Undecided> {
        let mut request = self.http.post(self.url.clone()).json(&Check {
            message_id: row.message_id,
            destination: &row.destination,
            message_key: row.message_key.as_deref(),
            prepared_at: row.created_at,
        });
        if let Some(token) = &self.token {
            request = request.bearer_auth(token.expose());
        }
        let mut response = request.send().await.map_err(|e| self.failure(e))?;
        if !response.status().is_success() {
            return Err(Undecided::Status(response.status().as_u16()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.failure(e))? {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(Undecided::BadAnswer(format!(
                    "longer than {MAX_ANSWER_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        let reply: Reply =
            serde_json::from_slice(&body).map_err(|e| Undecided::BadAnswer(e.to_string()))?;
        Ok(reply.status)
    }

    fn failure(&self, e: reqwest::Error) -> Undecided {
        if e.is_timeout() {
            return Undecided::Timeout(self.timeout);
        }
        // The URL may hold credentials; the error's own text would repeat it.
        Undecided::Unreachable(crate::publish::chain(&e.without_url()))
    }
}

/// The producer's TLS: the CAs of `tls_ca_file`, else the system's, and the client identity of
/// `tls_client_cert_file`/`tls_client_key_file` when set.
fn tls(config: &ProducerConfig) -> Result<rustls::ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    match &config.tls_ca_pem {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| format!("tls_ca_file: {e}"))?;
                roots.add(cert).map_err(|e| format!("tls_ca_file: {e}"))?;
            }
        }
        None => {
            // Certificates the parser cannot use are skipped, as the other clients do.
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    Ok(match &config.tls_client_pem {
        Some((chain, key)) => {
            let chain = CertificateDer::pem_slice_iter(chain.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("tls_client_cert_file: {e}"))?;
            let key = PrivateKeyDer::from_pem_slice(key.expose().as_bytes())
                .map_err(|e| format!("tls_client_key_file: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("tls_client_key_file: {e}"))?
        }
        None => builder.with_no_client_auth(),
    })
}
