//! The admin commands: read and repair the outbox without writing SQL. They talk to the
//! database only, so they work while relays run.

use std::fmt::Write;

use serde::Serialize;
use sqlx::PgPool;

use crate::store::{self, DeadSelection, StoreError};

#[derive(Debug, Serialize)]
pub struct Status {
    pub counts: std::collections::BTreeMap<String, i64>,
    pub pending: i64,
    pub oldest_pending_age_seconds: f64,
    pub dead_by_destination: Vec<store::DeadSummary>,
    pub leases: Vec<store::LeaseInfo>,
    /// The key partitions' leases (`relay.partitions > 1`), read from `leases`.
    pub partitions: Vec<PartitionOwner>,
}

/// Who holds one key partition of a partitioned group.
#[derive(Debug, Serialize)]
pub struct PartitionOwner {
    /// The group's `ha.lease_name`.
    pub group: String,
    pub partition: u32,
    pub holder: String,
    pub held: bool,
}

impl PartitionOwner {
    /// A partition's lease is named `<group>/p<index>` (src/partitions).
    fn of(lease: &store::LeaseInfo) -> Option<Self> {
        if lease.name.contains("/replicas/") {
            return None;
        }
        let (group, index) = lease.name.rsplit_once("/p")?;
        Some(Self {
            group: group.to_string(),
            partition: index.parse().ok()?,
            holder: lease.holder.clone(),
            held: lease.held,
        })
    }
}

pub async fn status(pool: &PgPool) -> Result<Status, StoreError> {
    let counts = store::count_by_status(pool)
        .await?
        .into_iter()
        .map(|(s, n)| (s.to_string(), n))
        .collect();
    let backlog = store::backlog(pool).await?;
    let leases = store::leases(pool).await?;
    let mut partitions: Vec<PartitionOwner> =
        leases.iter().filter_map(PartitionOwner::of).collect();
    partitions.sort_by(|a, b| (&a.group, a.partition).cmp(&(&b.group, b.partition)));
    Ok(Status {
        counts,
        pending: backlog.pending,
        oldest_pending_age_seconds: backlog.oldest_age_secs,
        dead_by_destination: store::dead_by_destination(pool).await?,
        leases,
        partitions,
    })
}

pub fn render_status(s: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:<12} {:>10}", "STATUS", "MESSAGES");
    for status in store::MessageStatus::ALL {
        let n = s.counts.get(status.as_str()).copied().unwrap_or(0);
        let _ = writeln!(out, "{:<12} {:>10}", status.as_str(), n);
    }
    let _ = writeln!(
        out,
        "\nbacklog: {} pending, oldest {:.1}s",
        s.pending, s.oldest_pending_age_seconds
    );
    if s.dead_by_destination.is_empty() {
        let _ = writeln!(out, "dead: none");
    } else {
        let _ = writeln!(
            out,
            "\n{:<32} {:>6}  LAST ERROR",
            "DEAD BY DESTINATION", "COUNT"
        );
        for d in &s.dead_by_destination {
            let _ = writeln!(
                out,
                "{:<32} {:>6}  {}",
                d.destination,
                d.count,
                d.last_error.as_deref().unwrap_or("-")
            );
        }
    }
    if s.leases.is_empty() {
        let _ = writeln!(out, "lease: no relay has run yet");
    }
    for l in &s.leases {
        let state = if l.held {
            "held by"
        } else {
            "expired, last held by"
        };
        let _ = writeln!(
            out,
            "lease {}: {state} {} (token {}, expires {})",
            l.name, l.holder, l.token, l.expires_at
        );
    }
    render_partitions(&mut out, &s.partitions);
    out
}

/// One line per partitioned group: each replica with the partitions it holds, and those no
/// replica holds now.
fn render_partitions(out: &mut String, partitions: &[PartitionOwner]) {
    let mut groups: std::collections::BTreeMap<&str, Vec<&PartitionOwner>> = Default::default();
    for p in partitions {
        groups.entry(&p.group).or_default().push(p);
    }
    for (group, parts) in groups {
        let mut by_holder: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
        let mut unowned = Vec::new();
        for p in parts {
            let name = format!("p{}", p.partition);
            if p.held {
                by_holder.entry(&p.holder).or_default().push(name);
            } else {
                unowned.push(name);
            }
        }
        let _ = writeln!(out, "\npartitions of {group}:");
        for (holder, names) in by_holder {
            let _ = writeln!(out, "  {holder}: {}", names.join(" "));
        }
        if !unowned.is_empty() {
            let _ = writeln!(out, "  no holder: {}", unowned.join(" "));
        }
    }
}

/// What to do with dead messages; the command line's `dead` subcommands map onto it.
#[derive(Debug, Clone)]
pub enum DeadAction {
    /// List them, oldest first, as a table or JSON.
    List {
        destination: Option<String>,
        limit: i64,
        json: bool,
    },
    /// Back to committed, attempts reset.
    Requeue(DeadSelection),
    /// Delete them.
    Discard(DeadSelection),
}

/// Runs a `dead` action and returns what to print.
pub async fn dead(pool: &PgPool, action: &DeadAction) -> Result<String, StoreError> {
    match action {
        DeadAction::List {
            destination,
            limit,
            json,
        } => {
            let rows = store::list_dead(pool, destination.as_deref(), *limit).await?;
            if *json {
                return Ok(serde_json::to_string_pretty(&rows).unwrap_or_default() + "\n");
            }
            let mut out = format!(
                "{:<36}  {:<24} {:<16} {:>8}  LAST ERROR\n",
                "MESSAGE ID", "DESTINATION", "KEY", "ATTEMPTS"
            );
            for r in rows {
                let _ = writeln!(
                    out,
                    "{:<36}  {:<24} {:<16} {:>8}  {}",
                    r.message_id,
                    r.destination,
                    r.message_key.as_deref().unwrap_or("-"),
                    r.attempts,
                    r.last_error.as_deref().unwrap_or("-")
                );
            }
            Ok(out)
        }
        DeadAction::Requeue(which) => {
            let n = store::requeue_dead(pool, which).await?;
            Ok(format!("requeued {n} dead message(s)\n"))
        }
        DeadAction::Discard(which) => {
            let n = store::discard_dead(pool, which).await?;
            Ok(format!("discarded {n} dead message(s)\n"))
        }
    }
}
