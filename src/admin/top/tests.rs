use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::Utc;

use super::sample::{Database, Metrics, Relay, Sample};
use super::view::{model, Model};
use super::*;
use crate::admin::{PartitionOwner, Status};
use crate::store::{DeadSummary, LeaseInfo, Retrying};

fn address(port: u16) -> SocketAddr {
    ([127, 0, 0, 1], port).into()
}

fn metrics(published: &[(&str, f64)], failures: &[(&str, f64)], leader: f64) -> Metrics {
    let map = |pairs: &[(&str, f64)]| -> BTreeMap<String, f64> {
        pairs.iter().map(|(d, v)| (d.to_string(), *v)).collect()
    };
    Metrics {
        published: map(published),
        failures: map(failures),
        leader: Some(leader),
        partitions_held: None,
    }
}

fn lease(name: &str, holder: &str, held: bool) -> LeaseInfo {
    LeaseInfo {
        name: name.into(),
        holder: holder.into(),
        token: 1,
        acquired_at: Utc::now(),
        expires_at: Utc::now(),
        held,
    }
}

fn database() -> Database {
    let leases = vec![
        lease("outbox-relay", "partitions=2", true),
        lease("outbox-relay/p0", "relay-a", true),
        lease("outbox-relay/p1", "relay-b", true),
    ];
    let partitions = leases.iter().filter_map(PartitionOwner::of).collect();
    Database {
        status: Status {
            counts: [("committed".to_string(), 7), ("dead".to_string(), 2)].into(),
            pending: 7,
            oldest_pending_age_seconds: 1.5,
            dead_by_destination: vec![DeadSummary {
                destination: "billing".into(),
                count: 2,
                last_error: Some("NOT_FOUND - no exchange 'billing'".into()),
            }],
            leases,
            partitions,
        },
        retrying: vec![Retrying {
            destination: "billing".into(),
            rows: 5,
            max_attempts: 3,
        }],
    }
}

/// Two samples two seconds apart: relay A published 200 to orders and failed 4 times for
/// billing; relay B restarted (its counter went down) and relay C does not answer.
fn samples() -> (Sample, Sample) {
    let t0 = Instant::now();
    let before = Sample {
        at: t0,
        database: Ok(database()),
        relays: vec![
            Relay {
                address: address(9464),
                metrics: Ok(metrics(&[("orders", 1000.0)], &[("billing", 10.0)], 1.0)),
            },
            Relay {
                address: address(9465),
                metrics: Ok(metrics(&[("orders", 500.0)], &[], 0.0)),
            },
        ],
    };
    let after = Sample {
        at: t0 + Duration::from_secs(2),
        database: Ok(database()),
        relays: vec![
            Relay {
                address: address(9464),
                metrics: Ok(metrics(&[("orders", 1200.0)], &[("billing", 14.0)], 1.0)),
            },
            Relay {
                address: address(9465),
                metrics: Ok(metrics(&[("orders", 40.0)], &[], 0.0)),
            },
            Relay {
                address: address(9466),
                metrics: Err("connection refused".into()),
            },
        ],
    };
    (before, after)
}

#[test]
fn rates_are_per_second_between_samples_and_survive_a_restart() {
    let (before, after) = samples();
    let m = model(Some(&before), &after);
    assert_eq!(m.relays[0].published_per_sec, Some(100.0));
    assert_eq!(m.relays[0].failures_per_sec, Some(2.0));
    assert_eq!(
        m.relays[1].published_per_sec,
        Some(20.0),
        "a counter that went down counts from zero"
    );
    assert_eq!(m.relays[2].state, "connection refused");
    assert_eq!(m.published_per_sec, Some(120.0));
    assert_eq!(m.failures_per_sec, Some(2.0));

    let orders = &m.destinations[0];
    assert_eq!(orders.destination, "orders", "busiest first");
    assert_eq!(orders.published_per_sec, Some(120.0));
    let billing = &m.destinations[1];
    assert_eq!(
        (billing.failures_per_sec, billing.retrying, billing.dead),
        (Some(2.0), 5, 2)
    );
}

#[test]
fn the_first_sample_has_no_rates() {
    let (before, _) = samples();
    let m: Model = model(None, &before);
    assert_eq!(m.published_per_sec, None);
    assert!(m.relays.iter().all(|r| r.published_per_sec.is_none()));
}

#[test]
fn the_view_shows_backlog_destinations_relays_and_partition_holders() {
    let (before, after) = samples();
    let text = render(&model(Some(&before), &after), 120, "");
    for expected in [
        "7 pending, oldest 1.5s",
        "publishing 120.0 msg/s",
        "orders",
        "NOT_FOUND - no exchange 'billing'",
        "127.0.0.1:9466",
        "connection refused",
        "outbox-relay: held by partitions=2",
        "outbox-relay partitions of relay-a: p0",
        "outbox-relay partitions of relay-b: p1",
    ] {
        assert!(text.contains(expected), "{expected:?} not in\n{text}");
    }
    let database_down = Sample {
        database: Err("no answer within 2s".into()),
        ..after
    };
    let text = render(&model(None, &database_down), 120, "");
    assert!(text.contains("database: no answer within 2s"), "{text}");
}
