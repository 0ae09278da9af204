//! Metric names, defined once and described at start-up, and the Prometheus recorder.
//! Labels are low-cardinality: destination, a fixed failure reason, status, dependency.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

pub const PUBLISHED: &str = "outbox_relay_messages_published_total";
pub const PUBLISH_FAILURES: &str = "outbox_relay_publish_failures_total";
pub const DEAD: &str = "outbox_relay_messages_dead_total";
pub const PENDING: &str = "outbox_relay_pending_messages";
pub const OLDEST_PENDING_AGE: &str = "outbox_relay_oldest_pending_age_seconds";
pub const COMMIT_TO_PUBLISH: &str = "outbox_relay_commit_to_publish_seconds";
pub const BATCH_SECONDS: &str = "outbox_relay_publish_batch_seconds";
pub const BATCH_MESSAGES: &str = "outbox_relay_batch_messages";
pub const EXPIRED: &str = "outbox_relay_prepared_expired_total";
pub const PURGED: &str = "outbox_relay_purged_total";
pub const PASSED_ROWS_FOUND: &str = "outbox_relay_passed_rows_found_total";
pub const LEADER: &str = "outbox_relay_leader";
pub const UP: &str = "outbox_relay_up";
pub const BUILD_INFO: &str = "outbox_relay_build_info";

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
const SIZE_BUCKETS: &[f64] = &[
    1.0, 5.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
];

/// Installs the global recorder; the handle renders `/metrics`. Only the binary calls this,
/// so library users and tests that run the relay in-process are unaffected.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(COMMIT_TO_PUBLISH.into()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(BATCH_SECONDS.into()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(BATCH_MESSAGES.into()), SIZE_BUCKETS)?
        .install_recorder()?;
    describe();
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(handle)
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
    describe_counter!(
        EXPIRED,
        "Prepared messages rolled back because they expired."
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
        UP,
        "1 when the dependency (database, broker) was reachable at last use."
    );
    describe_gauge!(BUILD_INFO, "Always 1; the version label names the build.");
}
