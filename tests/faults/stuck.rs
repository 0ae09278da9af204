//! What the suite prints when the relay did not recover from a fault: enough to tell a relay
//! that exited, one that waits on the broker and one that stopped turning, from the CI output
//! alone (the relays' logs stay on the machine that ran it).

use std::fmt::Write;
use std::time::Duration;

use crate::cluster;
use crate::common::Broker;
use crate::rig::Rig;

/// Relay log lines kept per relay: its own warnings and errors, and librdkafka's last words.
const OWN_LINES: usize = 12;
const LIBRDKAFKA_LINES: usize = 8;
/// A log line is cut here: some librdkafka lines run to kilobytes.
const LINE_CHARS: usize = 300;

/// Committed rows, their most attempts, seconds until the earliest is available, a last error.
type Backlog = (i64, Option<i32>, Option<f64>, Option<String>);

impl Rig<'_> {
    /// The state of every relay and of the backlog, as lines to print.
    pub async fn stuck_report(&mut self) -> Vec<String> {
        let mut report = Vec::new();
        // The suite's rows all go to one destination.
        let published_sample = format!(
            "outbox_relay_messages_published_total{{destination=\"{}\"}}",
            self.destination
        );
        let health = |(code, body): (u16, String)| {
            format!(
                "{code} {}",
                body.split_whitespace().collect::<Vec<_>>().join(" ")
            )
        };
        for relay in &mut self.relays {
            let state = match relay.child.try_wait() {
                Ok(None) => "running".to_string(),
                Ok(Some(status)) => format!("exited ({status})"),
                Err(e) => format!("unknown ({e})"),
            };
            let live = ask(relay.get("/livez"))
                .await
                .map_or_else(String::from, health);
            let ready = ask(relay.get("/readyz"))
                .await
                .map_or_else(String::from, health);
            let published = ask(relay.metric(&published_sample))
                .await
                .map_or_else(String::from, |v| v.to_string());
            report.push(format!(
                "relay pid {}: {state}; /livez {live}; /readyz {ready}; published_total {published}",
                relay.pid()
            ));
            report.extend(
                log_tail(&relay.logs())
                    .into_iter()
                    .map(|l| format!("  {l}")),
            );
        }
        let pool = &self.db.pool;
        let backlog: Result<Backlog, _> = sqlx::query_as(
            "SELECT count(*), max(attempts),
                    extract(epoch FROM min(available_at) - now())::float8,
                    left(max(last_error), 200)
               FROM outbox.messages WHERE status = 'committed'",
        )
        .fetch_one(pool)
        .await;
        report.push(match backlog {
            Ok((rows, attempts, next, error)) => format!(
                "backlog: {rows} committed rows, attempts at most {attempts:?}, the earliest \
                 available in {next:?} s, a last error {error:?}"
            ),
            Err(e) => format!("backlog: cannot read it ({e})"),
        });
        // A clean cut in commit_seq with no failed attempt points at the commit fence: a
        // transaction that drew a commit_seq and has not ended holds back every later row.
        let fence: Result<(i64, Option<i64>, Option<String>), _> = sqlx::query_as(
            "SELECT outbox.drawn_commit_seq(),
                    (SELECT max(commit_seq) FROM outbox.messages WHERE status = 'published'),
                    (SELECT string_agg(format('%s: pid %s (%s, %s, transaction open %s s)', h,
                                              a.pid, a.application_name, a.state,
                                              round(extract(epoch FROM now() - a.xact_start))),
                                       '; ')
                       FROM unnest(outbox.fence_lock_holders()) AS h
                       LEFT JOIN pg_catalog.pg_locks l
                              ON l.virtualtransaction = h AND l.locktype = 'virtualxid'
                       LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid)",
        )
        .fetch_one(pool)
        .await;
        report.push(match fence {
            Ok((drawn, published, holders)) => format!(
                "commit fence: last commit_seq drawn {drawn}, highest published {published:?}, \
                 holders {}",
                holders.as_deref().unwrap_or("none")
            ),
            Err(e) => format!("commit fence: cannot read it ({e})"),
        });
        if self.broker == Broker::Kafka {
            report.push(
                match cluster::partitions(&self.kafka_bootstrap, &self.destination).await {
                    Ok(partitions) => {
                        let mut line = String::from("partitions (id: leader, in sync):");
                        for p in partitions {
                            let _ = write!(line, " {}: {} {},", p.id, p.leader, p.in_sync);
                        }
                        line
                    }
                    Err(e) => format!("partitions: {e}"),
                },
            );
        }
        report
    }
}

/// A relay's HTTP answer, or why there is none: a stopped process accepts the connection and
/// never answers, and `None` is no connection (or, for a metric, no such sample).
async fn ask<T>(call: impl std::future::Future<Output = Option<T>>) -> Result<T, &'static str> {
    match tokio::time::timeout(Duration::from_secs(2), call).await {
        Ok(Some(answer)) => Ok(answer),
        Ok(None) => Err("unavailable"),
        Err(_) => Err("no answer in 2 s"),
    }
}

/// The relay's last warnings and errors and librdkafka's last lines, oldest first.
fn log_tail(log: &str) -> Vec<String> {
    let cut = |l: &str| l.chars().take(LINE_CHARS).collect::<String>();
    let own: Vec<&str> = log
        .lines()
        .filter(|l| !l.contains("librdkafka") && (l.contains(" WARN ") || l.contains(" ERROR ")))
        .collect();
    let rdkafka: Vec<&str> = log.lines().filter(|l| l.contains("librdkafka")).collect();
    let last = |lines: &[&str], n: usize| -> Vec<String> {
        lines[lines.len().saturating_sub(n)..]
            .iter()
            .map(|l| cut(l))
            .collect()
    };
    let mut tail = last(&own, OWN_LINES);
    tail.extend(last(&rdkafka, LIBRDKAFKA_LINES));
    tail
}
