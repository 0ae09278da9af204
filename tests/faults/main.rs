//! The fault-injection suite (`make faults`; not part of `make test`).
//!
//! Per broker (RabbitMQ, a three-broker Kafka cluster, Redis, nsqd): writers produce a stream of
//! messages through the SQL API (enqueued, prepared then committed, prepared then rolled back,
//! prepared and abandoned) over many keys while faults are injected one after another, each
//! repeated `FAULTS_ROUNDS` times in random order: kill -9 of the relay, of the publishing
//! replica of two, SIGSTOP of it past its lease, broker and Postgres restarts, terminated
//! database sessions, latency, stalls and resets on TCP proxies between the relay and both
//! services; with RabbitMQ the destination deleted and recreated; with Redis and nsqd also kill
//! -9 of the server; with Kafka also kill -9 of a broker (each in turn, and the leader of a
//! partition), the whole cluster down past the publish timeout, the producer's epoch bump and
//! the topic deleted and recreated. A verifier consumes everything and checks it against the
//! outbox afterwards.
//!
//! The active-active targets (`rabbitmq-aa`, `kafka-aa`; tests/faults/replicas.rs) run three
//! replicas with `relay.partitions = 6` under one lease name instead, at-least-once, and inject
//! kill -9 of one replica (a new one started in its place), SIGSTOP of one past its lease then
//! SIGCONT, SIGTERM of one and of two (3 -> 2 -> 3, 3 -> 1 -> 3), the broker restart (Kafka:
//! broker 1, in the first round only) and a relay-broker connection reset. After each fault
//! the backlog must drain as for the other targets, and the six partitions must be dealt two
//! per replica again, within the recovery bound.
//!
//! It restarts the services it uses, so it refuses to run against the shared default ports;
//! `scripts/faults.sh` starts a separate set and runs it.

mod cluster;
#[path = "../common/mod.rs"]
mod common;
mod consume;
mod driver;
mod fault;
mod load;
mod nsq_verify;
mod proxy;
mod redis_verify;
mod replicas;
mod rig;
mod settings;
mod stuck;
mod verify;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Instant;

use common::Broker;
use settings::Settings;
use verify::Summary;

fn main() -> ExitCode {
    // nextest lists the tests of every test binary; this one has none it should run.
    if std::env::args().any(|a| a == "--list") {
        return ExitCode::SUCCESS;
    }
    if std::env::var_os("FAULTS_RUN").is_none() {
        eprintln!("faults: skipped (run it with `make faults`)");
        return ExitCode::SUCCESS;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run())
}

async fn run() -> ExitCode {
    let settings = Settings::from_env();
    let started = Instant::now();
    let mut results = Vec::new();
    for &target in &settings.brokers {
        let summary = driver::run_broker(&settings, target).await;
        results.push((target.id().to_string(), summary));
    }
    let mut total = Summary::default();
    for (_, s) in &results {
        total.add(s);
    }
    results.push(("total".into(), total));
    print_table(&results);
    println!("run time {:.0?}", started.elapsed());
    let mut failed = false;
    for (name, s) in &results {
        for v in s.violations(settings.recovery_bound) {
            println!("FAIL {name}: {v}");
            failed = true;
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        println!("faults: every check passed");
        ExitCode::SUCCESS
    }
}

fn print_table(rows: &[(String, Summary)]) {
    println!();
    println!(
        "{:<11} {:>6} {:>8} {:>9} {:>11} {:>9} {:>5} {:>5} {:>6} {:>6} {:>10} {:>11}  longest recovery",
        "broker", "faults", "written", "committed", "rolled_back", "delivered", "lost", "dead",
        "wrong", "order", "duplicates", "unexplained"
    );
    for (name, s) in rows {
        println!(
            "{:<11} {:>6} {:>8} {:>9} {:>11} {:>9} {:>5} {:>5} {:>6} {:>6} {:>10} {:>11}  {:.2?} ({})",
            name,
            s.faults,
            s.written,
            s.committed,
            s.rolled_back,
            s.delivered,
            s.lost,
            s.dead,
            s.wrongly_published,
            s.order_violations,
            s.duplicates,
            s.unexplained_duplicates,
            s.longest_recovery,
            s.longest_recovery_fault,
        );
    }
    println!(
        "(wrong = prepared, rolled back or expired yet delivered; order = first deliveries of a key \
         out of commit order, NSQ's requeued ones apart; unexplained = duplicates whose first \
         delivery lies outside every fault)"
    );
    for (name, s) in rows.iter().filter(|(name, _)| name != "total") {
        if name == Broker::Nsq.id() {
            println!(
                "requeued {name}: {} first deliveries nsqd had delivered before (attempts above 1), \
                 {} of them after a later message of their key; by the fault nsqd took them in: \
                 {}. A clean stop of nsqd puts the messages in flight to a consumer at the end of \
                 the channel's queue, so those are not counted in order; order holds for every \
                 message nsqd delivered for the first time (tests/faults/nsq_verify.rs)",
                s.requeued,
                s.requeued_out_of_order,
                by_fault(&s.requeued_by_fault)
            );
        }
        if s.held_in_broker > 0 {
            println!(
                "held {name}: {} published messages the verifier's channel never delivered were \
                 still on nsqd's second channel: nsqd keeps the messages in flight to a consumer \
                 in memory, and a kill -9 loses those it had taken off the channel's queue \
                 (tests/faults/nsq_verify.rs). Not lost by the relay",
                s.held_in_broker
            );
        }
        if s.reordered_in_broker > 0 {
            println!(
                "reordered in broker {name}: {} first deliveries came after a later message of \
                 their key that nsqd had taken after them (by nsqd's own timestamps): nsqd \
                 replaying its on-disk queues after a kill -9. The relay's order is the order \
                 the broker took messages in; a re-send would carry a later timestamp",
                s.reordered_in_broker
            );
        }
        if !s.lost_in_broker.is_empty() {
            println!(
                "lost in broker {name}: {} published messages on neither of nsqd's channels had \
                 nsqd's OK within {:?} before it was killed (the earliest {:.2?} before), by \
                 fault: {}. nsqd had not synced them, and skips unsynced writes when it starts \
                 again (tests/faults/fault.rs, NSQD_UNSYNCED). Not lost by the relay; any \
                 other loss still fails the run",
                s.lost_in_broker.values().sum::<usize>(),
                fault::NSQD_UNSYNCED,
                s.lost_in_broker_before,
                by_fault(&s.lost_in_broker)
            );
        }
        if s.lost > 0 {
            println!(
                "lost {name}: {} still committed in the outbox (not published by the end), {} \
                 published or dead; commit_seq {:?}",
                s.lost_unpublished,
                s.lost - s.lost_unpublished,
                s.lost_seqs
            );
        }
        for line in &s.order_details {
            println!("order {name}: {line}");
        }
        for line in &s.stuck_reports {
            println!("stuck {name}: {line}");
        }
        if s.duplicates_by_fault.is_empty() {
            continue;
        }
        println!(
            "duplicates {name}, by the fault their first delivery fell in: {}",
            by_fault(&s.duplicates_by_fault)
        );
    }
}

/// `fault n, fault n`; `none` for an empty map.
fn by_fault(counts: &BTreeMap<String, usize>) -> String {
    if counts.is_empty() {
        return "none".into();
    }
    let counts: Vec<String> = counts.iter().map(|(f, n)| format!("{f} {n}")).collect();
    counts.join(", ")
}
