//! Exactly-once delivery: a transactional producer that the lease holder initialises (which
//! fences every earlier holder), transactions that carry a batch of rows plus a progress
//! record naming them, and the read of the last progress record that lets a new holder mark
//! the rows of transactions committed before a crash (docs/ARCHITECTURE.md, "Exactly-once
//! into Kafka").

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use super::{classify, client_config, record, KafkaConfig, KafkaSetupError};
use crate::publish::PublishError;
use crate::store::{OutboxMessage, RowId};

/// Offsets read back from the end of the progress topic at first; grown eightfold until a
/// record of this `transactional.id` turns up or the topic's start is reached. Each transaction
/// writes one record and one commit marker, so the last record is usually within the last two
/// (unless other relay groups share the topic).
const FIRST_LOOK_BACK: i64 = 64;

/// Why a transaction (or the producer's start) failed, as the loop must act on it.
#[derive(Debug, thiserror::Error)]
pub enum TransactionError {
    /// A newer holder initialised the same `transactional.id`: stop publishing until the lease
    /// is won again.
    #[error("fenced by a newer holder of transactional.id {id}: {cause}")]
    Fenced { id: String, cause: String },
    /// The producer cannot continue (or the commit's outcome is unknown): a new producer must
    /// be initialised, and the progress topic read, before the next transaction.
    #[error("the transactional producer must start again: {0}")]
    Restart(String),
    /// Nothing of the transaction is visible to read_committed consumers; try again.
    #[error("the transaction did not commit: {0}")]
    Retryable(String),
}

impl TransactionError {
    fn of(id: &str, e: KafkaError) -> Self {
        let code = e.rdkafka_error_code();
        if matches!(
            code,
            Some(RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced)
        ) {
            return Self::Fenced {
                id: id.to_string(),
                cause: e.to_string(),
            };
        }
        match &e {
            KafkaError::Transaction(t) if t.txn_requires_abort() || t.is_retriable() => {
                Self::Retryable(e.to_string())
            }
            _ => Self::Restart(e.to_string()),
        }
    }
}

/// What became of one transaction.
#[derive(Debug)]
pub enum Delivered {
    /// Committed: every row is visible to read_committed consumers, once.
    Committed,
    /// Aborted because these rows' records failed; no row of the transaction is visible.
    Aborted(Vec<(RowId, PublishError)>),
}

/// The value of a progress record: the rows a committed transaction makes visible, and the
/// rows of earlier ones whose mark was not yet written when it began.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub rows: Vec<i64>,
}

pub struct Transactions {
    config: ClientConfig,
    producer: Option<FutureProducer>,
    reader: ClientConfig,
    id: String,
    progress_topic: String,
    timeout: Duration,
}

impl Transactions {
    /// `id` is the `transactional.id` (see [`super::config::transactional_id`]). Connects
    /// lazily: [`Self::take_over`] starts the producer.
    pub fn new(
        config: &KafkaConfig,
        id: String,
        publish_timeout: Duration,
    ) -> Result<Self, KafkaSetupError> {
        let mut producer = client_config(config, publish_timeout);
        // A commit ends the producer's transaction before the next one may add partitions;
        // librdkafka answers the coordinator's "still completing" with its retry backoff,
        // 100 ms by default, which every transaction would pay.
        producer
            .set("transactional.id", &id)
            .set("retry.backoff.ms", "5")
            .set(
                "transaction.timeout.ms",
                (2 * publish_timeout)
                    .clamp(Duration::from_secs(10), Duration::from_secs(900))
                    .as_millis()
                    .to_string(),
            );
        // Only the user's properties (TLS, SASL): the producer's own settings mean nothing to
        // a consumer and librdkafka warns about each.
        let mut reader = ClientConfig::new();
        for (k, v) in &config.properties.0 {
            reader.set(k, v);
        }
        reader
            .set("bootstrap.servers", &config.bootstrap_servers)
            .set("group.id", format!("{id}.progress"))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            // The end of the partition is reported when a fetch comes back empty, and the
            // broker holds an empty fetch this long: each step back through the topic waited
            // for it (500 ms by default; ten steps over a topic 20,000 records long).
            .set("fetch.wait.max.ms", "10")
            .set("isolation.level", "read_committed");
        Ok(Self {
            config: producer,
            producer: None,
            reader,
            id,
            progress_topic: config.progress_topic.clone(),
            timeout: publish_timeout,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Starts a new producer and initialises its transactions, which fences every earlier
    /// holder of the id and settles its open transaction; then returns the rows the last
    /// committed transaction named, for the caller to mark before it claims anything.
    pub async fn take_over(&mut self) -> Result<Vec<RowId>, TransactionError> {
        self.stop().await;
        let producer: FutureProducer = self
            .config
            .create()
            .map_err(|e| TransactionError::Restart(e.to_string()))?;
        let (init, timeout) = (producer.clone(), self.timeout);
        blocking(move || init.init_transactions(Timeout::After(timeout)))
            .await
            .map_err(|e| TransactionError::of(&self.id, e))?;
        self.producer = Some(producer);
        self.ensure_progress_topic().await?;
        let progress = self.last_progress().await?;
        Ok(progress.rows.into_iter().map(RowId).collect())
    }

    /// Sends `rows` (in their order: a key's records keep it within its partition) and a
    /// progress record naming them and `unmarked` in one transaction, and commits it unless a
    /// record failed.
    pub async fn deliver(
        &mut self,
        rows: &[OutboxMessage],
        unmarked: &[RowId],
    ) -> Result<Delivered, TransactionError> {
        let producer = self
            .producer
            .clone()
            .ok_or_else(|| TransactionError::Restart("no producer yet".to_string()))?;
        producer
            .begin_transaction()
            .map_err(|e| TransactionError::of(&self.id, e))?;
        let mut failed = Vec::new();
        let mut pending = Vec::with_capacity(rows.len());
        for row in rows {
            match record(row) {
                Ok(r) => pending.push((row.id, enqueue(&producer, r, self.timeout).await)),
                Err(e) => failed.push((row.id, e)),
            }
        }
        let progress = Progress {
            rows: rows
                .iter()
                .map(|r| r.id.0)
                .chain(unmarked.iter().map(|r| r.0))
                .collect(),
        };
        let value = serde_json::to_vec(&progress).expect("a list of numbers serialises");
        let progress_record = FutureRecord::to(&self.progress_topic)
            .key(self.id.as_str())
            .payload(value.as_slice());
        let progress_sent = enqueue(&producer, progress_record, self.timeout).await;
        let reports = ReportPoller::start(&producer);
        for (id, sent) in pending {
            if let Err(e) = sent.await {
                failed.push((id, e));
            }
        }
        let progress_failed = progress_sent.await.err();
        reports.stop().await;
        if failed.is_empty() && progress_failed.is_none() {
            crate::crash::point("before_commit");
            let (commit, timeout) = (producer.clone(), self.timeout);
            return match blocking(move || commit.commit_transaction(Timeout::After(timeout))).await
            {
                Ok(()) => Ok(Delivered::Committed),
                Err(e) => {
                    let error = TransactionError::of(&self.id, e);
                    if let TransactionError::Retryable(_) = error {
                        self.abort(&producer).await?;
                    }
                    Err(error)
                }
            };
        }
        self.abort(&producer).await?;
        match progress_failed {
            // The progress topic failed, not a row: every row goes back unchanged.
            Some(e) if failed.is_empty() => Err(TransactionError::Retryable(format!(
                "the progress record to {}: {}",
                self.progress_topic,
                e.chain()
            ))),
            _ => Ok(Delivered::Aborted(failed)),
        }
    }

    async fn abort(&self, producer: &FutureProducer) -> Result<(), TransactionError> {
        let (abort, timeout) = (producer.clone(), self.timeout);
        blocking(move || abort.abort_transaction(Timeout::After(timeout)))
            .await
            .map_err(|e| match TransactionError::of(&self.id, e) {
                // An abort that cannot finish leaves the producer unusable.
                TransactionError::Retryable(e) => TransactionError::Restart(e),
                other => other,
            })
    }

    /// Creates the progress topic if it is missing: one partition, compacted, the cluster's
    /// replication factor.
    async fn ensure_progress_topic(&self) -> Result<(), TransactionError> {
        let admin: AdminClient<DefaultClientContext> = self
            .reader
            .create()
            .map_err(|e| TransactionError::Restart(e.to_string()))?;
        let topic = NewTopic::new(&self.progress_topic, 1, TopicReplication::Fixed(-1))
            .set("cleanup.policy", "compact");
        let options = AdminOptions::new().operation_timeout(Some(self.timeout));
        let results = tokio::time::timeout(self.timeout, admin.create_topics([&topic], &options))
            .await
            .map_err(|_| {
                TransactionError::Retryable("creating the progress topic timed out".into())
            })?
            .map_err(|e| TransactionError::Retryable(e.to_string()))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => {
                    return Err(TransactionError::Retryable(format!(
                        "cannot create the progress topic {}: {code:?}",
                        self.progress_topic
                    )));
                }
            }
        }
        Ok(())
    }

    /// The last committed progress record of this `transactional.id`, or none.
    async fn last_progress(&self) -> Result<Progress, TransactionError> {
        let (reader, topic, id, timeout) = (
            self.reader.clone(),
            self.progress_topic.clone(),
            self.id.clone(),
            self.timeout,
        );
        blocking(move || read_last(&reader, &topic, &id, timeout))
            .await
            .map_err(|e| TransactionError::Retryable(format!("reading the progress topic: {e}")))
    }

    /// Drops the producer, off the runtime: destroying one blocks while librdkafka stops.
    pub async fn stop(&mut self) {
        if let Some(producer) = self.producer.take() {
            let _ = tokio::task::spawn_blocking(move || drop(producer)).await;
        }
    }
}

/// Hands `record` to the producer now, waiting for room in its queue (backpressure) up to
/// `timeout`, and returns its delivery report. Records are enqueued one after another, so a
/// key's records keep their order.
async fn enqueue(
    producer: &FutureProducer,
    mut record: FutureRecord<'_, str, [u8]>,
    timeout: Duration,
) -> impl std::future::Future<Output = Result<(), PublishError>> {
    let deadline = tokio::time::Instant::now() + timeout;
    let delivery = loop {
        match producer.send_result(record) {
            Ok(delivery) => break Ok(delivery),
            Err((e, back))
                if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull)
                    && tokio::time::Instant::now() < deadline =>
            {
                record = back;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err((e, _)) => break Err(classify(e)),
        }
    };
    async move {
        match delivery?.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((e, _))) => Err(classify(e)),
            Err(_) => Err(classify(KafkaError::Canceled)),
        }
    }
}

/// The progress reader's client context. Reaching the partition's end is how the reader knows
/// it read everything; librdkafka also reports each as a client-wide error event, which the
/// default context logs at ERROR on every start of an exactly-once relay.
struct ReaderContext;

impl ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF) {
            tracing::trace!(reason, "progress reader reached the end of the topic");
        } else {
            tracing::error!(error = %error, reason, "librdkafka: progress reader");
        }
    }
}

impl ConsumerContext for ReaderContext {}

/// Reads the progress topic's single partition backwards in growing steps, up to its last
/// stable offset, for the last record keyed `id`.
fn read_last(
    config: &ClientConfig,
    topic: &str,
    id: &str,
    timeout: Duration,
) -> Result<Progress, KafkaError> {
    let consumer: BaseConsumer<ReaderContext> = config.create_with_context(ReaderContext)?;
    let (low, high) = consumer.fetch_watermarks(topic, 0, Timeout::After(timeout))?;
    let mut look_back = FIRST_LOOK_BACK;
    loop {
        let start = (high - look_back).max(low);
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(topic, 0, Offset::Offset(start))?;
        consumer.assign(&assignment)?;
        let mut last = None;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let remaining = deadline.saturating_duration_since(std::time::Instant::now());
            if remaining.is_zero() {
                return Err(KafkaError::Canceled);
            }
            match consumer.poll(Timeout::After(remaining)) {
                None => continue,
                Some(Err(KafkaError::PartitionEOF(_))) => break,
                Some(Err(e)) => return Err(e),
                Some(Ok(m)) => {
                    if m.key() == Some(id.as_bytes()) {
                        last = m.payload().map(<[u8]>::to_vec);
                    }
                }
            }
        }
        if let Some(value) = last {
            return serde_json::from_slice(&value)
                .map_err(|_| KafkaError::MessageConsumption(RDKafkaErrorCode::BadMessage));
        }
        if start == low {
            return Ok(Progress::default());
        }
        look_back *= 8;
    }
}

/// Serves the producer's delivery reports from a thread of its own while a transaction waits
/// for them, polling every millisecond: the polling thread of rdkafka's `FutureProducer`
/// sometimes serves them only at its next 100 ms wake-up, which each transaction would wait.
pub struct ReportPoller {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: tokio::task::JoinHandle<()>,
}

impl ReportPoller {
    pub fn start(producer: &FutureProducer) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, producer) = (stop.clone(), producer.clone());
        let thread = tokio::task::spawn_blocking(move || {
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                serve_reports(&producer);
            }
        });
        Self { stop, thread }
    }

    pub async fn stop(mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = (&mut self.thread).await;
    }
}

/// One turn of a delivery-report poller: serve what is queued, then sleep a millisecond.
/// Not `poll(1 ms)`: rdkafka's `poll` repeats until its deadline with the time left rounded
/// down to whole milliseconds, so its last millisecond is a busy loop, and a 1 ms poll is
/// nothing else (half a core for the relay at 1,000 msg/s, docs/performance.md).
fn serve_reports(producer: &FutureProducer) {
    // Each call serves one event (a delivery-report event carries a batch of reports).
    for _ in 0..8 {
        producer.poll(Duration::ZERO);
    }
    std::thread::sleep(Duration::from_millis(1));
}

impl Drop for ReportPoller {
    /// A transaction dropped while it waits must not leave the thread polling for ever.
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Runs a blocking librdkafka call off the runtime.
async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, KafkaError> + Send + 'static,
) -> Result<T, KafkaError> {
    tokio::task::spawn_blocking(call)
        .await
        .unwrap_or(Err(KafkaError::Canceled))
}
