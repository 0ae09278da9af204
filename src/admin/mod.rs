//! The admin commands: read and repair the outbox without writing SQL. They talk to the
//! database only, so they work while relays run.

use std::fmt::Write;

use serde::Serialize;
use sqlx::PgPool;

use crate::store::{self, StoreError};

mod dead;
pub mod doctor;
pub mod migrate;
mod output;
pub mod top;

pub use dead::{dead, DeadAction, DeadError};
pub use output::Output;

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
    pub(crate) fn of(lease: &store::LeaseInfo) -> Option<Self> {
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
    status_of(pool).await
}

/// Which `status --fail-on` conditions hold; empty when none does.
pub fn failed_conditions(s: &Status, conditions: &[crate::cli::Condition]) -> Vec<String> {
    use crate::cli::Condition;
    let dead = s.counts.get("dead").copied().unwrap_or(0);
    conditions
        .iter()
        .filter_map(|c| match *c {
            Condition::Dead if dead > 0 => Some(format!("{dead} dead message(s)")),
            Condition::Stale(limit) if s.oldest_pending_age_seconds > limit.as_secs_f64() => {
                Some(format!(
                    "the oldest pending message is {:.1}s old, more than {}",
                    s.oldest_pending_age_seconds,
                    humantime::format_duration(limit)
                ))
            }
            _ => None,
        })
        .collect()
}

async fn status_of(pool: &PgPool) -> Result<Status, StoreError> {
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
