//! Metric names, defined once and described at start-up, and the Prometheus recorder.
//! Labels are low-cardinality: destination, a fixed failure reason, status, dependency.

use std::time::Duration;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;
use serde::{Deserialize, Serialize};

use crate::config::{Checks, DAY};

pub const PUBLISHED: &str = "outbox_relay_messages_published_total";
pub const PUBLISH_FAILURES: &str = "outbox_relay_publish_failures_total";
pub const DEAD: &str = "outbox_relay_messages_dead_total";
pub const PENDING: &str = "outbox_relay_pending_messages";
pub const OLDEST_PENDING_AGE: &str = "outbox_relay_oldest_pending_age_seconds";
pub const COMMIT_TO_PUBLISH: &str = "outbox_relay_commit_to_publish_seconds";
pub const BATCH_SECONDS: &str = "outbox_relay_publish_batch_seconds";
pub const BROKER_ACK: &str = "outbox_relay_broker_ack_seconds";
pub const BATCH_MESSAGES: &str = "outbox_relay_batch_messages";
pub const DEAD_NOW: &str = "outbox_relay_dead_messages";
pub const EXPIRED: &str = "outbox_relay_messages_expired_total";
pub const CHECKS: &str = "outbox_relay_check_back_total";
pub const CHECKS_UNCONFIGURED: &str = "outbox_relay_check_back_unconfigured_total";
pub const PURGED: &str = "outbox_relay_messages_purged_total";
pub const PASSED_ROWS_FOUND: &str = "outbox_relay_passed_rows_found_total";
pub const LEADER: &str = "outbox_relay_leader";
pub const PARTITIONS_HELD: &str = "outbox_relay_partitions_held";
pub const HANDOFFS: &str = "outbox_relay_partition_handoffs_total";
pub const LEASE_UNOWNED: &str = "outbox_relay_lease_unowned_seconds";
pub const UP: &str = "outbox_relay_up";
pub const BUILD_INFO: &str = "outbox_relay_build_info";
pub const TABLE_SIZE: &str = "outbox_relay_table_size_bytes";
pub const INDEX_SIZE: &str = "outbox_relay_index_size_bytes";
pub const DEAD_TUPLES: &str = "outbox_relay_table_dead_tuples";
pub const LAST_AUTOVACUUM_AGE: &str = "outbox_relay_last_autovacuum_age_seconds";
pub const VACUUM_HORIZON_AGE: &str = "outbox_relay_vacuum_horizon_age_seconds";
pub const VACUUM_HORIZON_XIDS: &str = "outbox_relay_vacuum_horizon_age_xids";

/// How this replica's hold on a partition began or ended (the hand-off counter's `event`).
pub const HANDOFF_EVENTS: [&str; 3] = ["won", "released", "lost"];

/// The purge counter's statuses, known in advance, so their series exist from the start.
const PURGED_STATUSES: [&str; 3] = ["published", "rolled_back", "dead"];

/// The commit the binary was built from: `OUTBOX_RELAY_REVISION` at build time (for builds
/// without a `.git`, such as the Dockerfile's), else `git rev-parse`, else "unknown".
pub const REVISION: &str = env!("OUTBOX_RELAY_REVISION");

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
const SIZE_BUCKETS: &[f64] = &[
    1.0, 5.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
];

/// Installs the global recorder; the handle renders `/metrics`. Only the binary calls this,
/// so library users and tests that run the relay in-process are unaffected.
///
/// Counters and histograms not written for `idle_timeout` leave the output, so those of
/// destinations no longer used do not stay forever; [`keep_alive`] rewrites the counters that
/// must never leave.
pub fn install(idle_timeout: Duration) -> Result<Exporter, BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(COMMIT_TO_PUBLISH.into()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(BATCH_SECONDS.into()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(BROKER_ACK.into()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(BATCH_MESSAGES.into()), SIZE_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(LEASE_UNOWNED.into()), LATENCY_BUCKETS)?
        // Counters and histograms only: they carry the destination label. Gauges stay, so an
        // outage that stops their updates does not make the backlog's age vanish.
        .idle_timeout(
            MetricKindMask::COUNTER | MetricKindMask::HISTOGRAM,
            Some(idle_timeout),
        )
        .install_recorder()?;
    describe();
    let process = metrics_process::Collector::default();
    process.describe();
    keep_alive();
    Ok(Exporter { handle, process })
}

/// The Prometheus handle with the process collector, which reads `/proc` at each scrape.
#[derive(Clone)]
pub struct Exporter {
    handle: PrometheusHandle,
    process: metrics_process::Collector,
}

impl Exporter {
    /// The text for `/metrics`. Reads `/proc`: call it off the async runtime's threads.
    pub fn render_blocking(&self) -> String {
        self.process.collect();
        self.handle.run_upkeep();
        self.handle.render()
    }
}

/// Writes the series that alerts and dashboards need from the start: build info, and the
/// counters whose labels are known in advance, at their current value. Called again every
/// `metrics.backlog_interval`, so that those counters never reach the idle timeout. A new
/// series' first increment is invisible to `increase()`, so a counter that appeared only with
/// its first event would hide that event from every alert.
pub fn keep_alive() {
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "revision" => REVISION)
        .set(1.0);
    for outcome in ["rolled_back", "dead"] {
        metrics::counter!(EXPIRED, "outcome" => outcome).increment(0);
    }
    metrics::counter!(PASSED_ROWS_FOUND).increment(0);
    for event in HANDOFF_EVENTS {
        metrics::counter!(HANDOFFS, "event" => event).increment(0);
    }
    for status in PURGED_STATUSES {
        metrics::counter!(PURGED, "status" => status).increment(0);
    }
}

fn describe() {
    describe_counter!(
        PUBLISHED,
        "Messages confirmed by the broker and marked published."
    );
    describe_counter!(
        PUBLISH_FAILURES,
        "Failed publish attempts, by destination and reason."
    );
    describe_counter!(DEAD, "Messages that became dead (no more retries).");
    describe_gauge!(PENDING, "Committed messages not yet published.");
    describe_gauge!(
        OLDEST_PENDING_AGE,
        Unit::Seconds,
        "Age of the oldest committed, unpublished message (0 when none)."
    );
    describe_histogram!(
        COMMIT_TO_PUBLISH,
        Unit::Seconds,
        "From a message's committed_at to the broker's confirm."
    );
    describe_histogram!(
        BATCH_SECONDS,
        Unit::Seconds,
        "Time from a claim's return until every chain it claimed is answered."
    );
    describe_histogram!(BATCH_MESSAGES, "Messages per claimed batch.");
    describe_histogram!(
        BROKER_ACK,
        Unit::Seconds,
        "From handing a message to the broker client to the broker's acknowledgement."
    );
    describe_counter!(
        CHECKS,
        "Check-back calls to a configured producer, by producer and outcome (committed, rolled_back, unknown, timeout, unreachable, bad_answer)."
    );
    describe_counter!(
        CHECKS_UNCONFIGURED,
        "Prepared messages due for check-back whose producer is not in check_back.producers: never called."
    );
    describe_counter!(
        EXPIRED,
        "Prepared messages that expired undecided: rolled back, or parked as dead when they name a check-back producer."
    );
    describe_counter!(
        PURGED,
        "Finished messages deleted after their retention, by status."
    );
    describe_counter!(
        PASSED_ROWS_FOUND,
        "Backlog checks that found committed messages below the point the claims had passed (should stay 0)."
    );
    describe_gauge!(
        LEADER,
        "1 on the replica that holds the lease and publishes, else 0."
    );
    describe_gauge!(
        PARTITIONS_HELD,
        "Key partitions this replica holds and publishes (relay.partitions > 1), else 0."
    );
    describe_counter!(
        HANDOFFS,
        "Partition hand-offs seen by this replica: won (lease taken), released (drained and given up), lost (lease taken by another replica or run out)."
    );
    describe_histogram!(
        LEASE_UNOWNED,
        Unit::Seconds,
        "When this replica took a lease (the outbox's, or a partition's) from no valid holder: how long it had had none."
    );
    describe_gauge!(
        UP,
        "1 when the dependency (database, broker) was reachable at last use."
    );
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the version and revision labels name the build."
    );
    describe_gauge!(
        DEAD_NOW,
        "Dead messages in the outbox now, by destination (refreshed with the backlog)."
    );
    describe_gauge!(
        TABLE_SIZE,
        Unit::Bytes,
        "Size of outbox.messages without its indexes (heap, TOAST, free space and visibility maps)."
    );
    describe_gauge!(
        INDEX_SIZE,
        Unit::Bytes,
        "Size of the indexes of outbox.messages."
    );
    describe_gauge!(
        DEAD_TUPLES,
        "Dead row versions in outbox.messages that vacuum has not removed yet (estimate)."
    );
    describe_gauge!(
        LAST_AUTOVACUUM_AGE,
        Unit::Seconds,
        "Time since outbox.messages was last vacuumed (auto or manual); absent before the first."
    );
    describe_gauge!(
        VACUUM_HORIZON_AGE,
        Unit::Seconds,
        "Age of the oldest transaction in this database that holds back vacuum (0 when none)."
    );
    describe_gauge!(
        VACUUM_HORIZON_XIDS,
        "Age in transaction ids of the oldest snapshot, transaction, prepared transaction or replication slot that holds back vacuum."
    );
}

/// The `[metrics]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    #[serde(with = "humantime_serde")]
    pub backlog_interval: Duration,
    /// Per-destination series not written for this long leave `/metrics`.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            backlog_interval: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(3600),
        }
    }
}

impl MetricsConfig {
    pub(crate) fn check(&self, c: &mut Checks) {
        c.at_most("metrics.backlog_interval", self.backlog_interval, DAY);
        c.duration("metrics.idle_timeout", self.idle_timeout, 30 * DAY);
    }
}
