//! One broker's run: the rig, the load, rounds of every fault in random order, the drain, the
//! checks.

use std::time::{Duration, Instant};

use rand::Rng;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::common::Broker;
use crate::fault::{random_between, Fault, FAULTS};
use crate::load::Load;
use crate::rig::Rig;
use crate::settings::Settings;
use crate::verify::{self, Summary};

/// How far before a fault's start a confirm may have been received whose update the fault
/// then prevented (the relay records a batch's outcomes while it publishes the next).
const DUPLICATE_SLACK: Duration = Duration::from_secs(3);

pub async fn run_broker(settings: &Settings, broker: Broker) -> Summary {
    let mut rig = Rig::set_up(settings, broker).await;
    let writers = writer_pool(&rig.db.url, settings.writers).await;
    let load = Load::start(
        writers,
        &rig.destination,
        settings.writers,
        settings.keys_per_writer,
        settings.rate,
    );
    let relay = rig.spawn_relay();
    rig.relays.push(relay);
    let first = rig.wait_recovered(Instant::now()).await;
    println!(
        "== {}: relay publishing after {:.2?}",
        broker.id(),
        first.elapsed()
    );

    for round in 1..=settings.rounds {
        let mut order: Vec<Fault> = FAULTS
            .iter()
            .copied()
            .filter(|f| settings.only.is_empty() || f.name().contains(&settings.only))
            .filter(|f| settings.kafka_all || f.runs_on(broker))
            .collect();
        shuffle(&mut order);
        for fault in order {
            // Faults land at random moments of the stream, mid-batch included.
            tokio::time::sleep(random_between(200, 1500)).await;
            let window = rig.inject(fault).await;
            if let Some(crash) = rig.broker_crash() {
                panic!("the broker crashed during {}: {crash}", window.name);
            }
            println!(
                "   {} round {round}: {:<34} recovered in {:.2?}",
                broker.id(),
                window.name,
                window.recovery
            );
            rig.faults.push(window);
        }
    }

    println!("== {}: stopping the load, draining", broker.id());
    let write_errors = load.stop().await;
    rig.finish().await;
    let rows = verify::outbox_rows(&rig.db.pool).await;
    let (log, redeliveries) = rig.deliveries.snapshot();
    let summary = verify::check(&rows, &log, redeliveries, &rig.faults, DUPLICATE_SLACK);
    println!(
        "== {}: {} writes failed during faults (expected; the outbox is the source of truth)",
        broker.id(),
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
