//! Checks between keys, once every key is read: orders, bounds, what the relay owns.

use std::time::Duration;

use super::{Config, Reader, KAFKA_OWNED, KAFKA_REQUIRED};

impl Reader<'_> {
    pub(super) fn check_relations(&mut self, c: &Config) {
        if c.retry.initial_backoff.is_zero() {
            self.issue("retry.initial_backoff", "must be greater than zero".into());
        }
        if c.retry.initial_backoff > c.retry.max_backoff {
            // Blame the key the user set: with max_backoff left at its default, pointing at it
            // would send them to a key that is not in their configuration.
            if self.origin("retry.max_backoff") == "default" {
                self.issue(
                    "retry.initial_backoff",
                    format!(
                        "must not be larger than retry.max_backoff ({})",
                        humantime::format_duration(c.retry.max_backoff)
                    ),
                );
            } else {
                self.issue(
                    "retry.max_backoff",
                    "must not be smaller than retry.initial_backoff".into(),
                );
            }
        }
        for (key, value) in [
            ("relay.poll_interval", c.relay.poll_interval),
            ("relay.publish_timeout", c.relay.publish_timeout),
            ("sweeper.interval", c.sweeper.interval),
            ("sweeper.purge_interval", c.sweeper.purge_interval),
            ("database.connect_timeout", c.database.connect_timeout),
            ("database.statement_timeout", c.database.statement_timeout),
            ("http.livez_stall_timeout", c.http.livez_stall_timeout),
            ("metrics.idle_timeout", c.metrics.idle_timeout),
            ("broker.amqp.connect_timeout", c.broker.amqp.connect_timeout),
            (
                "broker.kafka.connect_timeout",
                c.broker.kafka.connect_timeout,
            ),
        ] {
            if value.is_zero() {
                self.issue(key, "must be greater than zero".into());
            }
        }
        // Upper bounds keep every duration inside what Postgres intervals and Instant
        // arithmetic can hold, and catch unit mistakes ("10000d" for "10000ms").
        const DAY: Duration = Duration::from_secs(24 * 3600);
        for (key, value, max) in [
            ("database.connect_timeout", c.database.connect_timeout, DAY),
            (
                "database.statement_timeout",
                c.database.statement_timeout,
                DAY,
            ),
            ("http.livez_stall_timeout", c.http.livez_stall_timeout, DAY),
            ("metrics.idle_timeout", c.metrics.idle_timeout, 30 * DAY),
            (
                "broker.amqp.connect_timeout",
                c.broker.amqp.connect_timeout,
                DAY,
            ),
            (
                "broker.kafka.connect_timeout",
                c.broker.kafka.connect_timeout,
                DAY,
            ),
            ("relay.poll_interval", c.relay.poll_interval, DAY),
            ("relay.publish_timeout", c.relay.publish_timeout, DAY),
            ("relay.shutdown_grace", c.relay.shutdown_grace, DAY),
            ("retry.initial_backoff", c.retry.initial_backoff, 30 * DAY),
            ("retry.max_backoff", c.retry.max_backoff, 30 * DAY),
            ("sweeper.interval", c.sweeper.interval, DAY),
            ("sweeper.purge_interval", c.sweeper.purge_interval, DAY),
            (
                "sweeper.published_retention",
                c.sweeper.published_retention,
                3650 * DAY,
            ),
            (
                "sweeper.rolled_back_retention",
                c.sweeper.rolled_back_retention,
                3650 * DAY,
            ),
            (
                "sweeper.dead_retention",
                c.sweeper.dead_retention,
                3650 * DAY,
            ),
            ("ha.lease_ttl", c.ha.lease_ttl, DAY),
            ("metrics.backlog_interval", c.metrics.backlog_interval, DAY),
        ] {
            if value > max {
                self.issue(
                    key,
                    format!("must be at most {}", humantime::format_duration(max)),
                );
            }
        }
        // A task is not late while it waits on calls that are bounded anyway: a publish, or a
        // claim (the broker's connect, then up to three statements). A stall timeout below that
        // would restart a relay that only waits out an outage.
        let broker_connect = c
            .broker
            .amqp
            .connect_timeout
            .max(c.broker.kafka.connect_timeout);
        let claim = broker_connect + 3 * c.database.call_timeout();
        let longest = c.relay.publish_timeout.max(claim);
        if c.http.livez_stall_timeout <= longest {
            let message = format!(
                "http.livez_stall_timeout ({}) must be more than {}, the longest a task may wait on bounded calls: relay.publish_timeout, or a claim (the larger of the broker.*.connect_timeout and three times database.connect_timeout + statement_timeout + 5s)",
                humantime::format_duration(c.http.livez_stall_timeout),
                humantime::format_duration(longest)
            );
            // Blame a key the user set, as for the backoffs: the stall timeout if they set it,
            // else the largest of the timeouts that made the bound.
            let contributors = [
                ("relay.publish_timeout", c.relay.publish_timeout),
                ("database.statement_timeout", c.database.statement_timeout),
                ("database.connect_timeout", c.database.connect_timeout),
                ("broker.amqp.connect_timeout", c.broker.amqp.connect_timeout),
                (
                    "broker.kafka.connect_timeout",
                    c.broker.kafka.connect_timeout,
                ),
            ];
            let key = if self.origin("http.livez_stall_timeout") != "default" {
                "http.livez_stall_timeout"
            } else {
                contributors
                    .iter()
                    .filter(|(k, _)| self.origin(k) != "default")
                    .max_by_key(|(_, d)| *d)
                    .map_or("http.livez_stall_timeout", |(k, _)| k)
            };
            self.issue(key, message);
        }
        if c.database.statement_timeout < Duration::from_millis(1) {
            // Postgres takes milliseconds; less would round to 0, which means no timeout.
            self.issue("database.statement_timeout", "must be at least 1ms".into());
        }
        if c.metrics.idle_timeout < 2 * c.metrics.backlog_interval {
            // Blame the key the user set, as for the backoffs.
            if self.origin("metrics.idle_timeout") == "default" {
                self.issue(
                    "metrics.backlog_interval",
                    format!(
                        "must be at most half of metrics.idle_timeout ({}), or the counters that must stay expire between rewrites",
                        humantime::format_duration(c.metrics.idle_timeout)
                    ),
                );
            } else {
                self.issue(
                    "metrics.idle_timeout",
                    "must be at least twice metrics.backlog_interval, which rewrites the counters that must stay".into(),
                );
            }
        }
        if c.ha.lease_ttl < Duration::from_millis(300) {
            self.issue("ha.lease_ttl", "must be at least 300ms".into());
        }
        if c.ha.lease_name.is_empty() {
            self.issue("ha.lease_name", "must not be empty".into());
        }
        if c.broker.kafka.bootstrap_servers.trim().is_empty() {
            self.issue("broker.kafka.bootstrap_servers", "must not be empty".into());
        }
        for (name, value) in &c.broker.kafka.properties.0 {
            let key = format!("broker.kafka.properties.{name}");
            if let Some((_, instead)) = KAFKA_OWNED.iter().find(|(k, _)| k == name) {
                self.issue_at(
                    &key,
                    "broker.kafka.properties",
                    format!("owned by the relay: {instead}"),
                );
            }
            if let Some((_, allowed)) = KAFKA_REQUIRED.iter().find(|(k, _)| k == name) {
                if !allowed.contains(&value.as_str()) {
                    self.issue_at(
                        &key,
                        "broker.kafka.properties",
                        format!(
                            "the relay always uses {}; `{value}` would weaken delivery",
                            allowed[0]
                        ),
                    );
                }
            }
        }
        // Checked first: tracing-subscriber 0.3 indexes filters by char count as byte offsets
        // and panics on some non-ASCII input; targets and levels are ASCII anyway.
        if !c.log.level.is_ascii() {
            self.issue("log.level", "must be ASCII, e.g. `info,sqlx=warn`".into());
        } else if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&c.log.level) {
            self.issue("log.level", format!("not a valid filter: {e}"));
        }
    }
}
