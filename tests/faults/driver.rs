//! One broker's run: the rig, the load, rounds of every fault in random order, the drain, the
//! checks.

use std::time::{Duration, Instant};

use rand::Rng;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::common::Broker;
use crate::fault::{self, random_between};
use crate::load::Load;
use crate::replicas;
use crate::rig::{retry_query, Rig};
use crate::settings::{Settings, Target};
use crate::verify::{self, Summary};

/// How far before a fault's start a confirm may have been received whose update the fault
/// then prevented (the relay records a batch's outcomes while it publishes the next).
const DUPLICATE_SLACK: Duration = Duration::from_secs(3);

pub async fn run_broker(settings: &Settings, target: Target) -> Summary {
    let broker = target.broker;
    let mut rig = Rig::set_up(settings, target).await;
    let writers = writer_pool(&rig.db.url, settings.writers).await;
    let load = Load::start(
        writers,
        &rig.destination,
        settings.writers,
        settings.keys_per_writer,
        settings.rate,
    );
    if target.active_active {
        match rig.start_replicas().await {
            Ok(took) => println!(
                "== {}: {} replicas hold their share of the partitions after {took:.2?}",
                target.id(),
                replicas::REPLICAS
            ),
            Err(e) => println!("== {}: {e}", target.id()),
        }
    } else {
        let relay = rig.spawn_relay();
        rig.relays.push(relay);
    }
    // Faults start once the relay publishes: a fault on a relay that has not connected yet
    // (an empty backlog counted as recovered) tests nothing, and a stall of the broker proxies
    // before any produce request times out no message (no epoch bump).
    let started = Instant::now();
    let pool = &rig.db.pool;
    let published = retry_query(settings.recovery_bound * 2, || async {
        let published: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM outbox.messages WHERE status = 'published')",
        )
        .fetch_one(pool)
        .await?;
        published.then_some(()).ok_or(sqlx::Error::RowNotFound)
    })
    .await;
    match published {
        Some(()) => println!(
            "== {}: relay publishing after {:.2?}",
            target.id(),
            started.elapsed()
        ),
        None => println!(
            "== {}: the relay published nothing in {:.2?}",
            target.id(),
            started.elapsed()
        ),
    }

    'rounds: for round in 1..=settings.rounds {
        let mut order: Vec<_> = fault::catalogue(target, round, settings.kafka_ports.len())
            .into_iter()
            .filter(|f| settings.selects(&f.name()))
            .collect();
        shuffle(&mut order);
        for fault in order {
            // Faults land at random moments of the stream, mid-batch included.
            tokio::time::sleep(random_between(200, 1500)).await;
            // UTC, as the relays log.
            let at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
            let window = rig.inject(fault).await;
            println!(
                "   {} round {round} {}: {:<40} recovered in {:>8.2?}  {}",
                target.id(),
                &at[11..19],
                window.name,
                window.recovery,
                window.detail
            );
            if let Some(failure) = &window.failure {
                println!("   FAILED: {failure}");
            }
            if broker == Broker::Kafka {
                let waited = rig.wait_in_sync().await;
                if waited > Duration::from_secs(1) {
                    println!("   (replicas back in sync {waited:.1?} later)");
                }
            }
            let stuck = window.stuck.is_some();
            rig.faults.push(window);
            if stuck {
                // Every later fault would only wait out the same backlog.
                println!("   the relay is stuck: the remaining faults are skipped");
                break 'rounds;
            }
        }
    }

    println!("== {}: stopping the load, draining", target.id());
    let write_errors = load.stop().await;
    rig.finish().await;
    let rows = verify::outbox_rows(&rig.db.pool).await;
    let (log, redeliveries) = rig.deliveries.snapshot();
    let held = rig.deliveries.held();
    let mut summary = verify::check(
        &rows,
        &log,
        &held,
        redeliveries,
        &rig.faults,
        DUPLICATE_SLACK,
    );
    summary.exactly_once = target.exactly_once;
    println!(
        "== {}: {} writes failed during faults (expected; the outbox is the source of truth)",
        target.id(),
        write_errors
    );
    rig.cleanup().await;
    summary
}

fn shuffle<T>(items: &mut [T]) {
    let mut rng = rand::rng();
    for i in (1..items.len()).rev() {
        items.swap(i, rng.random_range(0..=i));
    }
}

async fn writer_pool(url: &str, writers: usize) -> PgPool {
    PgPoolOptions::new()
        .max_connections(writers as u32 + 1)
        .acquire_timeout(Duration::from_secs(2))
        .connect(url)
        .await
        .expect("writer pool")
}
