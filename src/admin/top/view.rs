//! What `top` shows, computed from two samples (rates need a previous one), and how it is
//! drawn.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row, Table};
use ratatui::Frame;

use super::sample::{Metrics, Sample};
use crate::store::MessageStatus;

/// One frame's figures. Rates are `None` until a second sample of the same source exists.
#[derive(Debug, Default, PartialEq)]
pub struct Model {
    /// Why the database could not be read, when it could not.
    pub database_error: Option<String>,
    pub counts: Vec<(&'static str, i64)>,
    pub pending: i64,
    pub oldest_pending_secs: f64,
    pub published_per_sec: Option<f64>,
    pub failures_per_sec: Option<f64>,
    pub destinations: Vec<DestinationRow>,
    pub relays: Vec<RelayRow>,
    /// Who holds each lease, and for partitioned groups which partitions each replica holds.
    pub leases: Vec<String>,
}

#[derive(Debug, Default, PartialEq)]
pub struct DestinationRow {
    pub destination: String,
    pub published_per_sec: Option<f64>,
    pub failures_per_sec: Option<f64>,
    /// Committed rows waiting for a retry after a failed publish (from the database).
    pub retrying: i64,
    pub dead: i64,
    pub last_error: Option<String>,
}

#[derive(Debug, PartialEq)]
pub struct RelayRow {
    pub address: SocketAddr,
    /// "up", or why `/metrics` could not be read.
    pub state: String,
    pub leader: Option<bool>,
    pub partitions_held: Option<f64>,
    pub published_per_sec: Option<f64>,
    pub failures_per_sec: Option<f64>,
}

/// Per-destination rates of a counter between two scrapes of one relay. A counter that went
/// down belongs to a restarted relay: it counts from zero.
fn rates(
    now: &BTreeMap<String, f64>,
    before: &BTreeMap<String, f64>,
    secs: f64,
) -> BTreeMap<String, f64> {
    now.iter()
        .map(|(d, &n)| {
            let b = before.get(d).copied().unwrap_or(0.0);
            let delta = if n >= b { n - b } else { n };
            (d.clone(), delta / secs)
        })
        .collect()
}

/// The sum of the rates. Not `Iterator::sum`: its sum of nothing is -0.0, shown as "-0.0".
fn total(rates: &BTreeMap<String, f64>) -> f64 {
    rates.values().fold(0.0, |a, b| a + b)
}

fn add_all(into: &mut BTreeMap<String, f64>, from: &BTreeMap<String, f64>) {
    for (d, v) in from {
        *into.entry(d.clone()).or_default() += v;
    }
}

pub fn model(before: Option<&Sample>, now: &Sample) -> Model {
    let mut m = Model::default();
    let mut published: Option<BTreeMap<String, f64>> = None;
    let mut failures: Option<BTreeMap<String, f64>> = None;
    for relay in &now.relays {
        let previous: Option<&Metrics> = before.and_then(|b| {
            b.relays
                .iter()
                .find(|r| r.address == relay.address)
                .and_then(|r| r.metrics.as_ref().ok())
        });
        let secs = before.map(|b| now.at.duration_since(b.at).as_secs_f64());
        let row = match (&relay.metrics, previous, secs) {
            (Err(e), _, _) => RelayRow {
                address: relay.address,
                state: e.clone(),
                leader: None,
                partitions_held: None,
                published_per_sec: None,
                failures_per_sec: None,
            },
            (Ok(metrics), previous, secs) => {
                let pair = previous.zip(secs.filter(|s| *s > 0.0));
                let p = pair.map(|(prev, s)| rates(&metrics.published, &prev.published, s));
                let f = pair.map(|(prev, s)| rates(&metrics.failures, &prev.failures, s));
                if let Some(p) = &p {
                    add_all(published.get_or_insert_with(BTreeMap::new), p);
                }
                if let Some(f) = &f {
                    add_all(failures.get_or_insert_with(BTreeMap::new), f);
                }
                RelayRow {
                    address: relay.address,
                    state: "up".into(),
                    leader: metrics.leader.map(|v| v > 0.0),
                    partitions_held: metrics.partitions_held,
                    published_per_sec: p.as_ref().map(total),
                    failures_per_sec: f.as_ref().map(total),
                }
            }
        };
        m.relays.push(row);
    }
    m.published_per_sec = published.as_ref().map(total);
    m.failures_per_sec = failures.as_ref().map(total);

    let mut rows: BTreeMap<String, DestinationRow> = BTreeMap::new();
    for (d, v) in published.iter().flatten() {
        entry(&mut rows, d).published_per_sec = Some(*v);
    }
    for (d, v) in failures.iter().flatten() {
        entry(&mut rows, d).failures_per_sec = Some(*v);
    }
    match &now.database {
        Err(e) => m.database_error = Some(e.clone()),
        Ok(db) => {
            let s = &db.status;
            m.counts = MessageStatus::ALL
                .iter()
                .map(|st| (st.as_str(), s.counts.get(st.as_str()).copied().unwrap_or(0)))
                .collect();
            m.pending = s.pending;
            m.oldest_pending_secs = s.oldest_pending_age_seconds;
            for r in &db.retrying {
                entry(&mut rows, &r.destination).retrying = r.rows;
            }
            for d in &s.dead_by_destination {
                let row = entry(&mut rows, &d.destination);
                row.dead = d.count;
                row.last_error = d.last_error.clone();
            }
            m.leases = leases(s);
        }
    }
    m.destinations = rows.into_values().collect();
    // Busiest first; then those in trouble; then by name.
    m.destinations.sort_by(|a, b| {
        let rate = |r: &DestinationRow| r.published_per_sec.unwrap_or(0.0);
        rate(b)
            .total_cmp(&rate(a))
            .then((b.retrying + b.dead).cmp(&(a.retrying + a.dead)))
            .then(a.destination.cmp(&b.destination))
    });
    m
}

fn entry<'a>(rows: &'a mut BTreeMap<String, DestinationRow>, d: &str) -> &'a mut DestinationRow {
    rows.entry(d.to_string()).or_insert_with(|| DestinationRow {
        destination: d.to_string(),
        ..DestinationRow::default()
    })
}

/// One line per plain lease, and per partitioned group one line per replica with its
/// partitions.
fn leases(s: &crate::admin::Status) -> Vec<String> {
    let mut out = Vec::new();
    for l in s.leases.iter().filter(|l| !l.name.contains("/replicas/")) {
        if crate::admin::PartitionOwner::of(l).is_some() {
            continue;
        }
        let state = if l.held { "held by" } else { "expired, was" };
        out.push(format!("{}: {state} {}", l.name, l.holder));
    }
    let mut groups: BTreeMap<(&str, &str), Vec<String>> = BTreeMap::new();
    for p in &s.partitions {
        let holder = if p.held { p.holder.as_str() } else { "(none)" };
        groups
            .entry((p.group.as_str(), holder))
            .or_default()
            .push(format!("p{}", p.partition));
    }
    for ((group, holder), parts) in groups {
        out.push(format!(
            "{group} partitions of {holder}: {}",
            parts.join(" ")
        ));
    }
    if out.is_empty() {
        out.push("no relay has taken a lease yet".into());
    }
    out
}

fn rate(r: Option<f64>) -> String {
    r.map_or_else(|| "-".to_string(), |r| format!("{r:.1}"))
}

/// Rows of the frame besides the tables' own rows: titles, borders, headers, the footer.
const FIXED_ROWS: u16 = 4 + 3 + 3 + 2 + 1;

/// The height at which every row of `m` is drawn.
pub fn full_height(m: &Model) -> u16 {
    let rows = m.destinations.len().max(1) + m.relays.len().max(1) + m.leases.len();
    FIXED_ROWS + u16::try_from(rows).unwrap_or(u16::MAX - FIXED_ROWS)
}

pub fn draw(frame: &mut Frame, m: &Model, footer: &str) {
    let relays = u16::try_from(m.relays.len().max(1)).unwrap_or(u16::MAX);
    let leases = u16::try_from(m.leases.len()).unwrap_or(u16::MAX);
    let [summary, destinations, relay_area, lease_area, footer_area] = Layout::vertical([
        Constraint::Length(4),
        Constraint::Min(3),
        Constraint::Length(relays + 3),
        Constraint::Length(leases + 2),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    let bold = Style::new().add_modifier(Modifier::BOLD);

    let first = match &m.database_error {
        Some(e) => Line::from(format!("database: {e}")),
        None => Line::from(format!(
            "backlog {} pending, oldest {:.1}s   publishing {} msg/s   failures {} /s",
            m.pending,
            m.oldest_pending_secs,
            rate(m.published_per_sec),
            rate(m.failures_per_sec)
        )),
    };
    let counts = m
        .counts
        .iter()
        .map(|(s, n)| format!("{s} {n}"))
        .collect::<Vec<_>>()
        .join("   ");
    frame.render_widget(
        Paragraph::new(vec![first, Line::from(counts)]).block(Block::bordered().title(" outbox ")),
        summary,
    );

    let header = Row::new([
        "DESTINATION",
        "PUBLISHED/S",
        "FAILURES/S",
        "RETRYING",
        "DEAD",
        "LAST DEAD ERROR",
    ])
    .style(bold);
    let rows = m.destinations.iter().map(|d| {
        Row::new([
            d.destination.clone(),
            rate(d.published_per_sec),
            rate(d.failures_per_sec),
            d.retrying.to_string(),
            d.dead.to_string(),
            d.last_error.clone().unwrap_or_default(),
        ])
    });
    frame.render_widget(
        Table::new(
            rows,
            [
                Constraint::Fill(1),
                Constraint::Length(12),
                Constraint::Length(11),
                Constraint::Length(9),
                Constraint::Length(7),
                Constraint::Fill(1),
            ],
        )
        .header(header)
        .block(Block::bordered().title(" destinations ")),
        destinations,
    );

    let header = Row::new([
        "RELAY /metrics",
        "LEADER",
        "PARTITIONS",
        "PUBLISHED/S",
        "FAILURES/S",
        "STATE",
    ])
    .style(bold);
    let rows = m.relays.iter().map(|r| {
        Row::new([
            r.address.to_string(),
            r.leader
                .map_or("-", |l| if l { "yes" } else { "no" })
                .to_string(),
            r.partitions_held
                .map_or_else(|| "-".to_string(), |p| format!("{p:.0}")),
            rate(r.published_per_sec),
            rate(r.failures_per_sec),
            r.state.clone(),
        ])
    });
    frame.render_widget(
        Table::new(
            rows,
            [
                Constraint::Length(22),
                Constraint::Length(7),
                Constraint::Length(11),
                Constraint::Length(12),
                Constraint::Length(11),
                Constraint::Fill(1),
            ],
        )
        .header(header)
        .block(Block::bordered().title(" relays ")),
        relay_area,
    );

    frame.render_widget(
        Paragraph::new(
            m.leases
                .iter()
                .map(|l| Line::from(l.as_str()))
                .collect::<Vec<_>>(),
        )
        .block(Block::bordered().title(" leases ")),
        lease_area,
    );
    frame.render_widget(Paragraph::new(footer), footer_area);
}
