//! `doctor`: one preflight over everything a relay needs, each finding with how to fix it.

use std::fmt::Write;
use std::future::Future;

use serde::Serialize;
use sqlx::PgPool;

use crate::publish::Presence;
use crate::store::{self, doctor, migrations};

/// A transaction that wrote to the outbox and stays open this long holds back every row
/// committed after it began: worth a warning.
const LONG_WRITER_SECS: f64 = 60.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
}

/// One check: what was found, and what to do when it is not ok.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub check: &'static str,
    pub verdict: Verdict,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Finding {
    fn ok(check: &'static str, detail: impl Into<String>) -> Self {
        Self {
            check,
            verdict: Verdict::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    /// A check whose query failed: the schema is missing or the login may not read it.
    fn unreadable(check: &'static str, e: &crate::store::StoreError) -> Self {
        Self::not_ok(
            check,
            Verdict::Fail,
            e.to_string(),
            "run `outbox-relay migrate` as the schema owner; a login that may not read the schema needs GRANT outbox_relay TO <login>",
        )
    }

    fn not_ok(
        check: &'static str,
        verdict: Verdict,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            check,
            verdict,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// The destinations of this many of the newest rows are looked up at the broker.
const RECENT_ROWS: i64 = 10_000;
/// At most this many of them, the most used first.
const RECENT_DESTINATIONS: i64 = 20;

/// What the broker answered: whether it accepts a connection, and what it says of each
/// destination asked about (none when it does not accept one).
pub struct BrokerReport {
    pub ready: Result<(), String>,
    pub destinations: Vec<(String, Result<Presence, String>)>,
}

/// Runs every check; `broker` connects to the configured broker and looks up the
/// destinations it is given. Checks after a failed database connection are skipped: they
/// all need it.
pub async fn doctor<F, B>(pool: &PgPool, broker: F) -> Vec<Finding>
where
    F: FnOnce(Vec<String>) -> B,
    B: Future<Output = BrokerReport>,
{
    let mut out = Vec::new();
    match doctor::ping(pool).await {
        Ok(()) => out.push(Finding::ok("database", "reachable")),
        Err(e) => {
            out.push(Finding::not_ok(
                "database",
                Verdict::Fail,
                format!("cannot connect: {e}"),
                "check database.url (host, port, database, login, TLS) and the network path",
            ));
            out.push(broker_finding(broker(Vec::new()).await.ready));
            return out;
        }
    }
    out.push(schema(pool).await);
    out.push(grants(pool).await);
    match doctor::recent_destinations(pool, RECENT_ROWS, RECENT_DESTINATIONS).await {
        Ok(recent) => {
            let report = broker(recent).await;
            let ready = report.ready.is_ok();
            out.push(broker_finding(report.ready));
            if ready {
                out.push(destinations(report.destinations));
            }
        }
        Err(e) => {
            out.push(broker_finding(broker(Vec::new()).await.ready));
            out.push(Finding::unreadable("destinations", &e));
        }
    }
    out.push(leases(pool).await);
    out.push(fence(pool).await);
    out.push(stuck(pool).await);
    out
}

async fn schema(pool: &PgPool) -> Finding {
    match migrations::states(pool).await {
        Ok(states) => {
            let pending: Vec<String> = states
                .iter()
                .filter(|s| !s.applied)
                .map(|s| format!("{:04} {}", s.version, s.description))
                .collect();
            if pending.is_empty() {
                Finding::ok("schema", format!("all {} migrations applied", states.len()))
            } else {
                Finding::not_ok(
                    "schema",
                    Verdict::Fail,
                    format!("pending: {}", pending.join(", ")),
                    "run `outbox-relay migrate` as the schema owner (`migrate --status` says what each locks)",
                )
            }
        }
        Err(e) => Finding::unreadable("schema", &e),
    }
}

async fn grants(pool: &PgPool) -> Finding {
    match doctor::grants(pool).await {
        Ok(rows) => {
            let missing: Vec<String> = rows
                .into_iter()
                .filter(|(_, g)| !g)
                .map(|(n, _)| n)
                .collect();
            if missing.is_empty() {
                Finding::ok("grants", "this login has every right `run` needs")
            } else {
                Finding::not_ok(
                    "grants",
                    Verdict::Fail,
                    format!("missing: {}", missing.join("; ")),
                    "make the relay's login a member of outbox_relay: GRANT outbox_relay TO <login>",
                )
            }
        }
        Err(e) => Finding::unreadable("grants", &e),
    }
}

fn broker_finding(ready: Result<(), String>) -> Finding {
    match ready {
        Ok(()) => Finding::ok("broker", "accepts a connection"),
        Err(e) => Finding::not_ok(
            "broker",
            Verdict::Fail,
            e,
            "check broker.kind and its section (URL or bootstrap servers, credentials, TLS CA)",
        ),
    }
}

fn destinations(found: Vec<(String, Result<Presence, String>)>) -> Finding {
    if found.is_empty() {
        return Finding::ok("destinations", "no rows yet");
    }
    let mut missing = Vec::new();
    let mut unusable = Vec::new();
    let mut created = Vec::new();
    let mut unchecked = 0;
    for (name, presence) in &found {
        match presence {
            Ok(Presence::Exists) => {}
            Ok(Presence::Missing) => missing.push(format!("{name:?}")),
            Ok(Presence::CreatedOnPublish) => created.push(format!("{name:?}")),
            Ok(Presence::Unchecked) => unchecked += 1,
            Ok(Presence::Unusable(why)) => unusable.push(format!("{name:?}: {why}")),
            Err(e) => unusable.push(format!("{name:?}: cannot look it up: {e}")),
        }
    }
    if !missing.is_empty() || !unusable.is_empty() {
        let mut detail = Vec::new();
        if !missing.is_empty() {
            detail.push(format!("missing at the broker: {}", missing.join(", ")));
        }
        detail.extend(unusable);
        return Finding::not_ok(
            "destinations",
            Verdict::Fail,
            detail.join("; "),
            "create them (a RabbitMQ exchange, a Kafka topic) or fix what is named; their rows are retried, then go dead after retry.max_attempts",
        );
    }
    let mut detail = format!(
        "{} of the newest rows' {} destination(s) exist",
        found.len() - created.len() - unchecked,
        found.len()
    );
    if unchecked > 0 {
        let _ = write!(detail, "; {unchecked} not looked up");
    }
    if !created.is_empty() {
        let _ = write!(
            detail,
            "; the broker creates {} on the first publish",
            created.join(", ")
        );
    }
    Finding::ok("destinations", detail)
}

async fn leases(pool: &PgPool) -> Finding {
    match store::leases(pool).await {
        Ok(leases) => {
            let held: Vec<String> = leases
                .iter()
                .filter(|l| l.held && !l.name.contains("/replicas/"))
                .map(|l| format!("{} by {}", l.name, l.holder))
                .collect();
            if held.is_empty() {
                Finding::not_ok(
                    "lease",
                    Verdict::Warn,
                    "no relay holds a lease: nothing is being published now",
                    "start a relay (`outbox-relay run`); if one runs, see its log and /readyz",
                )
            } else {
                Finding::ok("lease", format!("held: {}", held.join(", ")))
            }
        }
        Err(e) => Finding::unreadable("lease", &e),
    }
}

async fn fence(pool: &PgPool) -> Finding {
    match doctor::fence_holders(pool).await {
        Ok(holders) => {
            let long: Vec<String> = holders
                .iter()
                .filter(|h| h.age_secs.is_none_or(|a| a > LONG_WRITER_SECS))
                .map(|h| {
                    format!(
                        "pid {} ({}, {}) open {}",
                        h.pid,
                        h.username.as_deref().unwrap_or("?"),
                        h.application_name.as_deref().unwrap_or("?"),
                        h.age_secs
                            .map_or("for an unknown time".to_string(), |a| format!("{a:.0}s"))
                    )
                })
                .collect();
            if long.is_empty() {
                Finding::ok(
                    "commit fence",
                    format!("{} outbox writer(s) open, none for long", holders.len()),
                )
            } else {
                Finding::not_ok(
                    "commit fence",
                    Verdict::Warn,
                    format!("long transactions hold back every row committed after they began: {}", long.join("; ")),
                    "end them (commit, or pg_terminate_backend(pid)); keep outbox writes in short transactions",
                )
            }
        }
        Err(e) => Finding::unreadable("commit fence", &e),
    }
}

async fn stuck(pool: &PgPool) -> Finding {
    match doctor::stuck_keys(pool, 5).await {
        Ok(keys) if keys.is_empty() => Finding::ok("stuck keys", "no key waits for a failing row"),
        Ok(keys) => Finding::not_ok(
            "stuck keys",
            Verdict::Warn,
            keys.iter()
                .map(|k| {
                    format!(
                        "{} / {}: attempt {} failed, retry in {:.0}s, {} row(s) behind it ({})",
                        k.destination,
                        k.message_key,
                        k.attempts,
                        k.retry_in_secs,
                        k.behind,
                        k.last_error.as_deref().unwrap_or("-")
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
            "fix what last_error names (a missing exchange or topic, permissions); the row is retried by itself, or goes dead after retry.max_attempts",
        ),
        Err(e) => Finding::unreadable("stuck keys", &e),
    }
}

/// The table of `doctor`.
pub fn render(findings: &Vec<Finding>) -> String {
    let mut out = String::new();
    for f in findings {
        let mark = match f.verdict {
            Verdict::Ok => "ok  ",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
        };
        let _ = writeln!(out, "{mark}  {:<13} {}", f.check, f.detail);
        if let Some(fix) = &f.fix {
            let _ = writeln!(out, "      {:<13} fix: {fix}", "");
        }
    }
    out
}
