//! Collecting configuration issues: the checks every section uses, and the relations between
//! sections. Each section checks its own keys in the module that owns it.

use std::time::Duration;

use figment::Figment;

use super::{read, Config, ConfigError, ConfigIssue, SecretUrl};

/// Upper bounds keep every duration inside what Postgres intervals and `Instant` arithmetic can
/// hold, and catch unit mistakes ("10000d" for "10000ms").
pub const DAY: Duration = Duration::from_secs(24 * 3600);

/// The issues found so far, with the sources to name each value's origin.
pub struct Checks<'a> {
    figment: &'a Figment,
    issues: Vec<ConfigIssue>,
}

impl<'a> Checks<'a> {
    pub(super) fn new(figment: &'a Figment) -> Self {
        Self {
            figment,
            issues: Vec::new(),
        }
    }

    pub fn issue(&mut self, key: &str, message: impl Into<String>) {
        let origin = self.origin(key);
        self.issues.push(ConfigIssue {
            key: key.to_string(),
            origin,
            message: message.into(),
        });
    }

    /// A file path, an environment variable, or `default`.
    pub fn origin(&self, key: &str) -> String {
        read::origin(self.figment, key)
    }

    /// The key was left at its built-in default: a relation between two keys blames the other.
    pub fn is_default(&self, key: &str) -> bool {
        self.origin(key) == "default"
    }

    /// The key's value as the sources give it, before defaults.
    pub(super) fn given<T: serde::de::DeserializeOwned>(&self, key: &str) -> Option<T> {
        self.figment.extract_inner(key).ok()
    }

    /// Greater than zero and at most `max`.
    pub fn duration(&mut self, key: &str, value: Duration, max: Duration) {
        if value.is_zero() {
            self.issue(key, "must be greater than zero");
        } else {
            self.at_most(key, value, max);
        }
    }

    pub fn at_most(&mut self, key: &str, value: Duration, max: Duration) {
        if value > max {
            self.issue(
                key,
                format!("must be at most {}", humantime::format_duration(max)),
            );
        }
    }

    /// A lower and an upper bound out of order: the issue names the upper bound when the user
    /// set it, else the lower one. Pointing at a key left at its default would send the user to
    /// a key that is not in their configuration.
    pub fn ordered(&mut self, low_key: &str, low: Duration, high_key: &str, high: Duration) {
        if low <= high {
            return;
        }
        if self.is_default(high_key) {
            self.issue(
                low_key,
                format!(
                    "must not be larger than {high_key} ({})",
                    humantime::format_duration(high)
                ),
            );
        } else {
            self.issue(high_key, format!("must not be smaller than {low_key}"));
        }
    }

    /// Parses with one of `schemes`.
    pub fn url(&mut self, key: &str, url: &SecretUrl, schemes: &[&str]) -> bool {
        match url.scheme_problem(schemes) {
            Some(problem) => {
                self.issue(key, problem);
                false
            }
            None => true,
        }
    }

    pub(super) fn take_error(&mut self) -> ConfigError {
        ConfigError::Invalid(std::mem::take(&mut self.issues))
    }

    pub(super) fn finish(mut self, config: Config) -> Result<Config, ConfigError> {
        if self.issues.is_empty() {
            Ok(config)
        } else {
            Err(self.take_error())
        }
    }
}

/// Checks between sections, once each section has checked its own keys.
pub(super) fn relations(c: &Config, checks: &mut Checks) {
    // A task is not late while it waits on calls that are bounded anyway: a publish, or a
    // claim (the broker's connect, then up to three statements). A stall timeout below that
    // would restart a relay that only waits out an outage.
    let broker_connect = c.broker.connect_timeouts().map(|(_, d)| d).max();
    let claim = broker_connect.unwrap_or_default() + 3 * c.database.call_timeout();
    // A Kafka record may wait for room in librdkafka's queue before its own timeout runs.
    let publish = match c.broker.kind {
        crate::publish::BrokerKind::Kafka => {
            crate::publish::kafka::answer_bound(c.relay.publish_timeout)
        }
        _ => c.relay.publish_timeout,
    };
    let longest = publish.max(claim);
    if c.http.livez_stall_timeout <= longest {
        let message = format!(
            "http.livez_stall_timeout ({}) must be more than {}, the longest a task may wait on bounded calls: relay.publish_timeout (with Kafka twice it and 2s), or a claim (the larger of the broker.*.connect_timeout and three times database.connect_timeout + statement_timeout + 5s)",
            humantime::format_duration(c.http.livez_stall_timeout),
            humantime::format_duration(longest)
        );
        // Blame a key the user set: the stall timeout if they set it, else the largest of the
        // timeouts that made the bound.
        let mut contributors = vec![
            ("relay.publish_timeout", c.relay.publish_timeout),
            ("database.statement_timeout", c.database.statement_timeout),
            ("database.connect_timeout", c.database.connect_timeout),
        ];
        contributors.extend(c.broker.connect_timeouts());
        let key = if !checks.is_default("http.livez_stall_timeout") {
            "http.livez_stall_timeout"
        } else {
            contributors
                .iter()
                .filter(|(k, _)| !checks.is_default(k))
                .max_by_key(|(_, d)| *d)
                .map_or("http.livez_stall_timeout", |(k, _)| k)
        };
        checks.issue(key, message);
    }
    c.check_back
        .check_against_stall(c.http.livez_stall_timeout, checks);
    if c.broker.kind != crate::publish::BrokerKind::Kafka
        && c.broker.kafka.delivery == crate::publish::kafka::Delivery::ExactlyOnce
    {
        // Only Kafka has transactions; silently publishing at least once would betray the
        // setting.
        checks.issue(
            "broker.kafka.delivery",
            "\"exactly_once\" needs broker.kind = \"kafka\"",
        );
    }
    if c.relay.partitions.get() > 1
        && c.broker.kind == crate::publish::BrokerKind::Kafka
        && c.broker.kafka.delivery == crate::publish::kafka::Delivery::ExactlyOnce
    {
        // One transactional producer fences the whole group; partitions would need one
        // transactional id, progress record and recovery each, which this version lacks.
        // Publishing at least once instead would betray the setting.
        checks.issue(
            "relay.partitions",
            "must be 1 with broker.kafka.delivery = \"exactly_once\": exactly-once runs one transactional producer per outbox, so replicas fail over instead of sharing partitions (docs/ARCHITECTURE.md)",
        );
    }
    if c.broker.kind == crate::publish::BrokerKind::Redis
        && c.broker.redis.wait_replicas > 0
        && c.broker.redis.wait_timeout >= c.relay.publish_timeout
    {
        // The publish would time out first, and report no reply instead of late replicas.
        checks.issue(
            "broker.redis.wait_timeout",
            format!(
                "must be less than relay.publish_timeout ({})",
                humantime::format_duration(c.relay.publish_timeout)
            ),
        );
    }
    if c.metrics.idle_timeout < 2 * c.metrics.backlog_interval {
        if checks.is_default("metrics.idle_timeout") {
            checks.issue(
                "metrics.backlog_interval",
                format!(
                    "must be at most half of metrics.idle_timeout ({}), or the counters that must stay expire between rewrites",
                    humantime::format_duration(c.metrics.idle_timeout)
                ),
            );
        } else {
            checks.issue(
                "metrics.idle_timeout",
                "must be at least twice metrics.backlog_interval, which rewrites the counters that must stay",
            );
        }
    }
}
