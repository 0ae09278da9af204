//! Kafka publisher: librdkafka's idempotent producer with `acks=all`.
//!
//! Per-key order comes from the relay (one message of a key in flight at a time, the next sent
//! only after the previous one's delivery report succeeded) together with the producer: a
//! keyed record always goes to the same partition, and the idempotent producer never
//! duplicates or reorders within a partition while it retries internally.

mod config;
mod transactions;

pub use config::{transactional_id, Delivery, KafkaConfig, KafkaProperties};
pub use transactions::{Delivered, Progress, ReportPoller, TransactionError, Transactions};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

use super::{header_pairs, FailureReason, Presence, PublishError, Publisher};
use crate::store::OutboxMessage;

#[derive(Debug, thiserror::Error)]
#[error("cannot create the Kafka producer: {0}")]
pub struct KafkaSetupError(String);

pub struct KafkaPublisher {
    client_config: ClientConfig,
    publish_timeout: Duration,
    /// [`answer_bound`] of the publish timeout.
    answer_bound: Duration,
    connect_timeout: Duration,
    /// `None` once closed: the last handle is destroyed off the runtime.
    producer: RwLock<Option<Current>>,
    /// False after a failure: the next `ready` checks the cluster before more rows are claimed.
    healthy: AtomicBool,
    /// The last topic whose record timed out, with the producer's generation: the next
    /// `ready` (which asks the cluster for its metadata after any failure anyway) checks
    /// whether the cluster names its leaders. Not the failed publish itself: it would report
    /// the timeout late, and when the cluster is down every record in flight times out at
    /// once (hundreds of metadata requests on one producer left it unable to reconnect).
    suspect: Mutex<Option<(u64, String)>>,
    /// A topic the cluster named leaders for once while it was suspect; replaced on the second
    /// time. One round of timeouts with leaders in place is also what a slow but live leader
    /// gives, and a new producer does not help there.
    struck: Mutex<Option<Strike>>,
    /// Since when the current producer has had no answer from the cluster (key "").
    unreachable: Mutex<Option<Strike>>,
}

/// The first strike against a producer: its generation, what it was about, and when.
type Strike = (u64, String, Instant);

/// The producer in use and how many replaced it, so that of the publishes failing on one
/// producer only the first replaces it: a new producer per failure would start dozens at once,
/// each fetching a producer id before it can send.
#[derive(Clone)]
struct Current {
    producer: FutureProducer,
    generation: u64,
}

/// Why a producer is replaced.
#[derive(Debug)]
enum Replace {
    /// An idempotent producer that hit a fatal error (for example an out-of-order sequence)
    /// refuses all further sends; only a new producer can continue.
    Fatal(RDKafkaErrorCode, String),
    /// Records of a topic timed out twice, each time followed by the cluster naming a leader
    /// for every partition of it.
    ///
    /// When a topic is deleted and created again under the same name, its partitions' leader
    /// epochs start again at 0. librdkafka (up to at least 2.12, confluentinc/librdkafka#4898)
    /// keeps the higher epochs it cached for the old topic and ignores every newer answer as
    /// outdated, so where a leader moved it sends to the old one for ever. Only a producer
    /// with an empty cache recovers. Otherwise a new producer costs a producer id and a
    /// connection, and the old one's records in flight still get their answer; it comes at
    /// most once per publish timeout, since only the current producer's timeouts count.
    StaleMetadata,
    /// The cluster has not answered this producer for a publish timeout. Replacing it costs
    /// little while the cluster is down, and it is the way out if the producer itself stopped
    /// reconnecting: one did after the whole cluster went down (its records in flight had
    /// each asked for metadata), and nothing else in the relay would ever replace it.
    Unreachable,
}

/// How long a record may go without its delivery report: librdkafka's queue wait and its
/// message.timeout.ms (each `relay.publish_timeout`), and its once-a-second timeout scan.
pub fn answer_bound(publish_timeout: Duration) -> Duration {
    2 * publish_timeout + Duration::from_secs(2)
}

/// The producer configuration: user properties first, then the settings the relay owns.
pub fn client_config(config: &KafkaConfig, publish_timeout: Duration) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("client.id", "outbox-relay");
    // Java's partitioner, so keys land where Java producers would put them.
    c.set("partitioner", "murmur2_random");
    // A key's next message is produced only after the previous one's delivery report, so the
    // linger is paid once per message of a key and every turn of the in-flight window waits
    // for it: 1 ms keeps batching, drains faster than librdkafka's 5 ms or than 0 (smaller,
    // more requests) and cuts commit-to-confirm latency (docs/performance.md).
    c.set("linger.ms", "1");
    for (k, v) in &config.properties.0 {
        c.set(k, v);
    }
    c.set("bootstrap.servers", &config.bootstrap_servers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set(
            "message.timeout.ms",
            publish_timeout.as_millis().max(1).to_string(),
        );
    c
}

impl KafkaPublisher {
    /// Builds the producer. Fails on invalid librdkafka properties; connects lazily.
    pub fn new(config: &KafkaConfig, publish_timeout: Duration) -> Result<Self, KafkaSetupError> {
        let client_config = client_config(config, publish_timeout);
        let producer = create(&client_config)?;
        Ok(Self {
            client_config,
            publish_timeout,
            answer_bound: answer_bound(publish_timeout),
            connect_timeout: config.connect_timeout,
            producer: RwLock::new(Some(Current {
                producer,
                generation: 0,
            })),
            healthy: AtomicBool::new(false),
            suspect: Mutex::new(None),
            struck: Mutex::new(None),
            unreachable: Mutex::new(None),
        })
    }

    fn current(&self) -> Result<Current, PublishError> {
        self.producer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| {
                PublishError::retryable(FailureReason::Unavailable, "publisher is closed")
            })
    }

    fn is_current(&self, generation: u64) -> bool {
        self.producer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|c| c.generation == generation)
    }

    /// Called after a record failed on `failed`: replaces that producer if it hit a fatal
    /// error, and remembers a timed-out topic for the next `ready`.
    fn after_failure(&self, failed: &Current, error: &PublishError, topic: &str) {
        if let Some((code, reason)) = failed.producer.client().fatal_error() {
            self.replace(failed.generation, Replace::Fatal(code, reason), topic);
        } else if error.reason() == FailureReason::Timeout && self.is_current(failed.generation) {
            *self.suspect.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((failed.generation, topic.to_string()));
        }
    }

    /// A strike against the producer of `generation` about `key`: the first is remembered with
    /// its time `at`; one a publish timeout or more after it, on the same producer and key,
    /// replaces the producer. A strike about a producer already replaced says nothing of the
    /// new one.
    fn strike(
        &self,
        strikes: &Mutex<Option<Strike>>,
        generation: u64,
        key: &str,
        at: Instant,
        why: Replace,
    ) {
        if !self.is_current(generation) {
            return;
        }
        let mut last = strikes.lock().unwrap_or_else(|p| p.into_inner());
        match last.as_ref() {
            Some((g, k, first)) if *g == generation && k == key => {
                if first.elapsed() >= self.publish_timeout {
                    *last = None;
                    drop(last);
                    self.replace(generation, why, key);
                }
            }
            _ => *last = Some((generation, key.to_string(), at)),
        }
    }

    /// Lets go of a handle; off the runtime if its producer was replaced meanwhile: this may be
    /// its last handle, and destroying a producer blocks while librdkafka stops its threads.
    fn release(&self, current: Current) {
        if !self.is_current(current.generation) {
            tokio::task::spawn_blocking(move || drop(current));
        }
    }

    fn replace(&self, generation: u64, why: Replace, topic: &str) {
        if !self.is_current(generation) {
            return;
        }
        let fresh = match create(&self.client_config) {
            Ok(fresh) => fresh,
            Err(e) => {
                tracing::error!(error = %e, "cannot create a new Kafka producer");
                return;
            }
        };
        let old = {
            let mut slot = self.producer.write().unwrap_or_else(|p| p.into_inner());
            match slot.as_mut() {
                Some(current) if current.generation == generation => std::mem::replace(
                    current,
                    Current {
                        producer: fresh,
                        generation: generation + 1,
                    },
                ),
                // Another failed publish replaced it meanwhile, or the publisher closed.
                _ => {
                    // Destroying a producer blocks while librdkafka stops its threads.
                    tokio::task::spawn_blocking(move || drop(fresh));
                    return;
                }
            }
        };
        match why {
            Replace::Fatal(code, reason) => {
                tracing::error!(?code, reason, "Kafka producer hit a fatal error; using a new one");
            }
            Replace::StaleMetadata => tracing::warn!(
                topic,
                "a record to this topic timed out although the cluster names a leader for each of its partitions (a topic recreated under the same name?); using a new Kafka producer"
            ),
            Replace::Unreachable => tracing::warn!(
                after = ?self.publish_timeout,
                "the Kafka cluster has not answered this producer for a publish timeout; using a new one"
            ),
        }
        let grace = self.publish_timeout;
        // Records still in flight on the old producer get their answer (a fatal one fails them
        // at once); flushing and destroying it block, so off the runtime, and nobody waits.
        tokio::task::spawn_blocking(move || {
            let _ = old.producer.flush(Timeout::After(grace));
            drop(old);
        });
    }
}

fn create(config: &ClientConfig) -> Result<FutureProducer, KafkaSetupError> {
    config.create().map_err(|e| KafkaSetupError(e.to_string()))
}

/// Whether the cluster's answer names a leader for every partition of `topic`.
fn has_leaders(metadata: &rdkafka::metadata::Metadata, topic: &str) -> bool {
    metadata.topics().iter().any(|t| {
        t.name() == topic
            && t.error().is_none()
            && !t.partitions().is_empty()
            && t.partitions()
                .iter()
                .all(|p| p.error().is_none() && p.leader() >= 0)
    })
}

/// Retryable or permanent, by librdkafka's error code: the publisher's one table. An unknown
/// topic is retryable: it may be created later, and `retry.max_attempts` still ends in `dead`.
pub fn classify(cause: KafkaError) -> PublishError {
    use FailureReason as R;
    use RDKafkaErrorCode as C;
    let Some(code) = cause.rdkafka_error_code() else {
        return PublishError::retryable(R::Other, "Kafka client error").caused_by(cause);
    };
    // Permanent: no retry can fix the record as written.
    let (permanent, reason) = match code {
        C::MessageSizeTooLarge | C::InvalidMessageSize | C::MessageBatchTooLarge => {
            (true, R::TooLarge)
        }
        C::InvalidMessage
        | C::InvalidRecord
        | C::InvalidTopic
        | C::InvalidArgument
        | C::UnsupportedForMessageFormat => (true, R::Invalid),
        C::TopicAuthorizationFailed | C::ClusterAuthorizationFailed => (true, R::Unauthorized),
        C::UnknownTopic | C::UnknownTopicOrPartition | C::UnknownPartition => (false, R::NotFound),
        C::MessageTimedOut | C::RequestTimedOut | C::OperationTimedOut => (false, R::Timeout),
        C::AllBrokersDown | C::BrokerTransportFailure => (false, R::Unavailable),
        _ => (false, R::Other),
    };
    let message = format!("Kafka refused the record ({code:?})");
    let error = if permanent {
        PublishError::permanent(reason, message)
    } else {
        PublishError::retryable(reason, message)
    };
    error.caused_by(cause)
}

/// The record a row becomes: topic = destination, key = message key, the payload as
/// written, the row's headers plus `message_id` and `content-type`, the commit time as its
/// timestamp. Public for the bench, whose Kafka ceiling sends what the relay sends.
pub fn record(message: &OutboxMessage) -> Result<FutureRecord<'_, str, [u8]>, PublishError> {
    if message.destination.is_empty() {
        return Err(PublishError::permanent(
            FailureReason::Invalid,
            "empty topic name",
        ));
    }
    let mut record = FutureRecord::to(&message.destination)
        .payload(message.payload.as_slice())
        .headers(headers(message)?)
        .timestamp(message.committed_at.timestamp_millis());
    if let Some(key) = &message.message_key {
        record = record.key(key.as_str());
    }
    Ok(record)
}

fn headers(message: &OutboxMessage) -> Result<OwnedHeaders, PublishError> {
    let id = message.message_id.to_string();
    let mut headers = OwnedHeaders::new();
    for (k, v) in header_pairs(&message.headers)? {
        headers = headers.insert(Header {
            key: k,
            value: Some(v),
        });
    }
    Ok(headers
        .insert(Header {
            key: "message_id",
            value: Some(&id),
        })
        .insert(Header {
            key: "content-type",
            value: Some(&message.content_type),
        }))
}

impl Publisher for KafkaPublisher {
    async fn ready(&self) -> Result<(), PublishError> {
        if self.healthy.load(Ordering::Relaxed) {
            return Ok(());
        }
        let current = self.current()?;
        let producer = current.producer.clone();
        let timeout = self.connect_timeout;
        let suspect = self
            .suspect
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .filter(|(generation, _)| *generation == current.generation)
            .map(|(_, topic)| topic);
        let topic = suspect.clone();
        // fetch_metadata blocks until the cluster answers: keep it off the runtime. It returns
        // the brokers' answer, not the producer's cache.
        let asked = Instant::now();
        let answer = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, Timeout::After(timeout))
                .map(|metadata| topic.is_some_and(|t| has_leaders(&metadata, &t)))
        })
        .await
        .map_err(|e| {
            PublishError::retryable(FailureReason::Other, "metadata request panicked").caused_by(e)
        })?;
        let outcome = match answer {
            Ok(stale) => {
                *self.unreachable.lock().unwrap_or_else(|p| p.into_inner()) = None;
                if let (true, Some(topic)) = (stale, suspect) {
                    // The second strike must come from a later round of records: the timeouts
                    // of one round may reach two `ready` calls.
                    self.strike(
                        &self.struck,
                        current.generation,
                        &topic,
                        Instant::now(),
                        Replace::StaleMetadata,
                    );
                }
                self.healthy.store(true, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                self.strike(
                    &self.unreachable,
                    current.generation,
                    "",
                    asked,
                    Replace::Unreachable,
                );
                Err(PublishError::retryable(
                    FailureReason::Unavailable,
                    "Kafka cluster not reachable",
                )
                .caused_by(e))
            }
        };
        self.release(current);
        outcome
    }

    async fn publish(&self, message: &OutboxMessage) -> Result<(), PublishError> {
        let record = record(message)?;
        let current = self.current()?;
        // The queue timeout is backpressure: while librdkafka's queue is full, wait for room.
        let send = current
            .producer
            .send(record, Timeout::After(self.publish_timeout));
        // librdkafka answers every record within its queue wait and message.timeout.ms; the
        // bound beyond that keeps a chain from waiting for ever on a producer that stopped
        // answering. Given up on, a record may still arrive later as a duplicate; the key's
        // next record is sent only once the retry is confirmed.
        let outcome = match tokio::time::timeout(self.answer_bound, send).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((error, _))) => Err(classify(error)),
            Err(_) => Err(PublishError::retryable(
                FailureReason::Timeout,
                format!("no delivery report within {:?}", self.answer_bound),
            )),
        }
        .inspect_err(|e| {
            if !e.is_permanent() {
                self.healthy.store(false, Ordering::Relaxed);
            }
            self.after_failure(&current, e, &message.destination);
        });
        self.release(current);
        outcome
    }

    async fn close(&self) {
        let Some(Current { producer, .. }) = self
            .producer
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return;
        };
        let grace = self.publish_timeout;
        // flush blocks until outstanding deliveries are reported or the timeout passes, and
        // destroying the producer blocks while librdkafka stops its threads.
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = producer.flush(Timeout::After(grace)) {
                tracing::warn!(error = %e, "Kafka flush at shutdown");
            }
            drop(producer);
        })
        .await;
    }

    async fn presence(&self, destination: &str) -> Result<Presence, PublishError> {
        let producer = self.current()?.producer.clone();
        let timeout = self.connect_timeout;
        // The whole cluster's metadata: asking for one topic by name may create it on a
        // broker with auto.create.topics.enable.
        let metadata = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, Timeout::After(timeout))
        })
        .await
        .map_err(|e| {
            PublishError::retryable(FailureReason::Other, "metadata request panicked").caused_by(e)
        })?
        .map_err(|e| {
            PublishError::retryable(FailureReason::Unavailable, "Kafka cluster not reachable")
                .caused_by(e)
        })?;
        Ok(
            match metadata.topics().iter().find(|t| t.name() == destination) {
                None => Presence::Missing,
                Some(_) if has_leaders(&metadata, destination) => Presence::Exists,
                Some(t) => Presence::Unusable(match t.error() {
                    Some(code) => format!("the cluster reports {:?}", RDKafkaErrorCode::from(code)),
                    None => "a partition has no leader".to_string(),
                }),
            },
        )
    }
}

#[cfg(test)]
mod tests;
