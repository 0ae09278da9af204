//! Active-active: the drain to RabbitMQ with 1, 2 and 3 replicas sharing `relay.partitions`,
//! and what partitions cost one replica (docs/performance.md "Replicas").
//!
//! The replicas start on an empty outbox and deal the partitions out first; then the backlog
//! is written in one transaction, so that every replica sees all of it at the same moment, and
//! the drain is timed from that commit. Otherwise the first replica up would drain alone until
//! the others had joined, which measures the join, not the sharing.

use super::*;

/// The partitions of the multi-replica runs: an even share for 1, 2 and 3 replicas.
const PARTITIONS: u32 = 6;

pub(crate) struct ReplicaDrain {
    pub(crate) replicas: usize,
    pub(crate) partitions: u32,
    pub(crate) rate: f64,
    /// CPU of all the replicas together during the drain.
    pub(crate) relay_cpu: f64,
    pub(crate) machine_busy: f64,
    /// Still running for the 3-replica layout (its idle cost is measured next); stopped
    /// otherwise, so as not to disturb the next drain.
    pub(crate) relays: Vec<RelayProcess>,
}

/// Drains with each layout in turn: 1 x 1 (one lease, as without partitions), 1 x 6 (one
/// replica running a loop per partition: the partitions' own cost), 2 x 6 and 3 x 6.
pub(crate) async fn replica_drains(exchange: &str, rows: i64) -> Vec<ReplicaDrain> {
    let mut out = Vec::new();
    for (replicas, partitions) in [(1, 1), (1, PARTITIONS), (2, PARTITIONS), (3, PARTITIONS)] {
        let mut drain = replica_drain(exchange, rows, replicas, partitions).await;
        if replicas < 3 {
            for relay in std::mem::take(&mut drain.relays) {
                relay.stop_blocking();
            }
        }
        out.push(drain);
    }
    out
}

async fn replica_drain(
    exchange: &str,
    rows: i64,
    replicas: usize,
    partitions: u32,
) -> ReplicaDrain {
    let (pool, url) = fresh_db().await;
    let count = partitions.to_string();
    let settings = [("OUTBOX_RELAY__RELAY__PARTITIONS", count.as_str())];
    let relays: Vec<RelayProcess> = (0..replicas)
        .map(|i| {
            let label = format!("drain-replicas-{replicas}x{partitions}-{i}");
            spawn_relay(&url, Broker::Amqp, &label, &settings)
        })
        .collect();
    dealt(&relays, partitions).await;
    quiet().await;
    let (cpu_before, jiffies_before) = (cpu_by_process(), machine_jiffies());
    let relay_cpu_before: f64 = relays.iter().map(RelayProcess::cpu_seconds).sum();
    // One transaction: every replica sees the whole backlog at its commit.
    let writing = fill_by(&pool, exchange, rows, rows);
    writing.await;
    let started = Instant::now();
    wait_drained(&pool).await;
    let rate = rows as f64 / started.elapsed().as_secs_f64();
    let relay_cpu = relays.iter().map(RelayProcess::cpu_seconds).sum::<f64>() - relay_cpu_before;
    let (machine_busy, _) = cpu_since(&cpu_before, jiffies_before, None);
    pool.close().await;
    ReplicaDrain {
        replicas,
        partitions,
        rate,
        relay_cpu,
        machine_busy,
        relays,
    }
}

/// The database ceiling (instant publisher, in process) with one replica holding all
/// [`PARTITIONS`]: what the partitions cost the database path, each loop claiming with the
/// partition's hash filter over the rows of all.
pub(crate) async fn partitioned_database_ceiling(f: &mut Figures, outbox: Outbox<'_>) -> f64 {
    let (pool, mut config) =
        ceiling_outbox(outbox, Config::default().sweeper.published_retention).await;
    config.relay.partitions = std::num::NonZeroU32::new(PARTITIONS).expect("non-zero");
    let drained = CancellationToken::new();
    let drain = drain_in_process(&pool, config, InstantPublisher, outbox.rows, &drained);
    ceiling(
        f,
        &format!("ceiling: database, 1 replica x {PARTITIONS} partitions (instant publisher)"),
        drain,
    )
    .await
}

/// Waits until the replicas hold every partition, shares differing by at most one (with one
/// partition: until one replica leads).
async fn dealt(relays: &[RelayProcess], partitions: u32) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut held = Vec::new();
        for r in relays {
            let metric = if partitions == 1 {
                "outbox_relay_leader"
            } else {
                "outbox_relay_partitions_held"
            };
            held.push(r.metric(metric).await.unwrap_or(0.0) as u32);
        }
        let total: u32 = held.iter().sum();
        let spread = held.iter().max().unwrap_or(&0) - held.iter().min().unwrap_or(&0);
        if total == partitions && spread <= 1 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the replicas did not share the partitions: {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The figures of [`replica_drains`], as rates and ratios to the single replica and the
/// ceilings measured in the same run.
pub(crate) fn report_replicas(
    f: &mut Figures,
    drains: &[ReplicaDrain],
    database_ceiling: f64,
    partitioned_ceiling: f64,
) {
    if database_ceiling != f64::MAX {
        f.add(
            format!("ceiling: database, 1 x {PARTITIONS} partitions / 1 x 1"),
            partitioned_ceiling / database_ceiling,
            "x",
        );
    }
    let Some(single) = drains.iter().find(|d| d.partitions == 1) else {
        return;
    };
    for d in drains {
        let name = format!(
            "drain to RabbitMQ (classic), {} replica{} x {} partition{}",
            d.replicas,
            if d.replicas == 1 { "" } else { "s" },
            d.partitions,
            if d.partitions == 1 { "" } else { "s" },
        );
        f.add(&name, d.rate, "msg/s");
        f.add(format!("{name}: relays' CPU"), d.relay_cpu, "s");
        f.add(
            format!("{name}: machine busy (all cores)"),
            d.machine_busy,
            "%",
        );
        if d.partitions > 1 {
            f.add(
                format!("{name} / 1 replica x 1 partition"),
                d.rate / single.rate,
                "x",
            );
        }
        if database_ceiling != f64::MAX {
            f.add(
                format!("{name} / database ceiling"),
                d.rate / database_ceiling,
                "x",
            );
        }
    }
}
