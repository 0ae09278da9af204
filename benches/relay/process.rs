//! The relay binary as the bench starts it, and the CPU and ports it and the machine use.

use super::*;
use common::cpu_of;

/// `target/` of the repository, where the relay logs and `bench.json` go; created if the build
/// went to another `CARGO_TARGET_DIR`.
pub(crate) fn out_dir() -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&dir).expect("target directory");
    dir
}

/// The relay binary with its default configuration, publishing from `db_url` to `broker`;
/// `settings`: OUTBOX_RELAY__* variables for this run, such as delete on publish. It logs to
/// `target/bench-relay-{label}.log`.
pub(crate) fn spawn_relay(
    db_url: &str,
    broker: Broker,
    label: &str,
    settings: &[(&str, &str)],
) -> RelayProcess {
    // BENCH_RELAY__X__Y=v sets OUTBOX_RELAY__X__Y=v, to try settings without editing.
    let overrides: Vec<(String, String)> = std::env::vars()
        .filter_map(|(k, v)| {
            Some((
                format!("OUTBOX_RELAY__{}", k.strip_prefix("BENCH_RELAY__")?),
                v,
            ))
        })
        .collect();
    let env: Vec<(&str, &str)> = settings
        .iter()
        .copied()
        .chain(overrides.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .collect();
    let options = RelayOptions {
        broker: Some(broker),
        default_timing: true,
        log: Some(out_dir().join(format!("bench-relay-{label}.log"))),
    };
    RelayProcess::spawn_with(db_url, &options, &env)
}

pub(crate) struct DrainFigures {
    pub(crate) rate: f64,
    /// Rows over the span of their `published_at`: the rate once the relay publishes, without
    /// its start (connecting, and with exactly-once delivery the producer's initialisation).
    pub(crate) publishing_rate: f64,
    /// From the relay's start to the first row published.
    pub(crate) start_up: Duration,
    pub(crate) peak_rss_mib: f64,
    pub(crate) cpu_seconds: f64,
    /// Where the machine's CPU went during the drain: seconds per command, busiest first.
    pub(crate) cpu_by_command: Vec<(String, f64)>,
    /// Share of all cores that was busy during the drain.
    pub(crate) machine_busy: f64,
    /// Mean publishes awaiting the broker, and mean milliseconds to its answer, from the
    /// relay's broker-ack histogram (None if /metrics did not answer).
    pub(crate) in_flight: Option<(f64, f64)>,
    pub(crate) relay: RelayProcess,
}

/// CPU seconds so far of every process, by pid, with its command name.
pub(crate) fn cpu_by_process() -> HashMap<u32, (String, f64)> {
    let mut by = HashMap::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if let Some(used) = cpu_of(&entry.path()) {
            by.insert(pid, used);
        }
    }
    by
}

/// (busy, total) jiffies of all cores from /proc/stat.
pub(crate) fn machine_jiffies() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let v: Vec<f64> = stat
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap())
        .collect();
    let idle = v[3] + v[4];
    let total: f64 = v.iter().take(8).sum();
    (total - idle, total)
}

/// The local TCP ports of `pid`'s sockets: its connections' client ports.
pub(crate) fn tcp_ports_of(pid: u32) -> std::collections::HashSet<u16> {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.flatten()
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .filter_map(|target| {
                    let t = target.to_string_lossy().into_owned();
                    Some(t.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let port = f.get(1)?.rsplit_once(':')?.1;
            inodes
                .contains(*f.get(9)?)
                .then(|| u16::from_str_radix(port, 16).ok())?
        })
        .collect()
}

/// The client port of a Postgres backend, from its process title `postgres: user db
/// 127.0.0.1(port) ...`.
pub(crate) fn backend_client_port(pid: u32) -> Option<u16> {
    let title = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).ok()?;
    let (_, rest) = title.split_once("127.0.0.1(")?;
    rest.split_once(')')?.0.parse().ok()
}

/// Since the snapshots: the share of all cores that was busy (%), and the CPU seconds of the
/// six busiest commands. Differences are taken per pid (kernel workers rename themselves as they go), then summed by
/// command name. Postgres backends serving `relay`'s connections count apart from the rest
/// of Postgres (the writers, the consumer's bookkeeping, background work).
pub(crate) fn cpu_since(
    before: &HashMap<u32, (String, f64)>,
    jiffies_before: (f64, f64),
    relay: Option<u32>,
) -> (f64, Vec<(String, f64)>) {
    let jiffies_after = machine_jiffies();
    let relay_ports = relay.map(tcp_ports_of).unwrap_or_default();
    let mut by_command: HashMap<String, f64> = HashMap::new();
    for (pid, (comm, after)) in cpu_by_process() {
        let was = before.get(&pid).map_or(0.0, |(_, secs)| *secs);
        // Kernel workers by kind, not by instance.
        let name = match comm.split_once('/') {
            Some((kind, _)) if comm.starts_with("kworker") => kind.to_string(),
            _ if comm == "postgres"
                && backend_client_port(pid).is_some_and(|p| relay_ports.contains(&p)) =>
            {
                "postgres (the relay's sessions)".to_string()
            }
            _ => comm,
        };
        *by_command.entry(name).or_insert(0.0) += after - was;
    }
    let mut by: Vec<(String, f64)> = by_command
        .into_iter()
        .filter(|(_, used)| *used > 0.0)
        .collect();
    by.sort_by(|a, b| b.1.total_cmp(&a.1));
    by.truncate(6);
    (busy_between(jiffies_before, jiffies_after), by)
}

/// Below this share of all cores busy, the machine counts as quiet: the idle services
/// (RabbitMQ's and Kafka's housekeeping, Redis, nsqd) use a few percent between them.
const QUIET_BUSY: f64 = 10.0;

/// Waits until the machine is quiet (a quarter second below [`QUIET_BUSY`]) before a timed
/// part, at most a minute. The work a part leaves behind (a deleted quorum queue's log, a
/// broker's log segments, autovacuum) would otherwise run inside the next part's figures: in one
/// full run RabbitMQ's VM used a quarter of a core throughout the Kafka drain that followed
/// the RabbitMQ drains. Prints how long it waited when that was more than a second.
pub(crate) async fn quiet() {
    let started = Instant::now();
    let mut busy = f64::MAX;
    while started.elapsed() < Duration::from_secs(60) {
        let before = machine_jiffies();
        tokio::time::sleep(Duration::from_millis(250)).await;
        busy = busy_between(before, machine_jiffies());
        if busy < QUIET_BUSY {
            break;
        }
    }
    let waited = started.elapsed();
    if busy >= QUIET_BUSY {
        println!("  (the machine stayed {busy:.0} % busy for a minute; measuring anyway)");
    } else if waited > Duration::from_secs(1) {
        println!(
            "  (waited {:.1} s for the machine to be quiet)",
            waited.as_secs_f64()
        );
    }
}

/// Share of all cores busy between two readings of [`machine_jiffies`], in percent.
pub(crate) fn busy_between(before: (f64, f64), after: (f64, f64)) -> f64 {
    (after.0 - before.0) / (after.1 - before.1) * 100.0
}

/// The resident memory of the broker's processes now, in MiB: Kafka's JVM (java), RabbitMQ's
/// Erlang VM (beam.smp), Redis (redis-server: the primary and its replica) or nsqd. The bench
/// runs no other process of those names.
pub(crate) fn broker_rss_mib(broker: Broker) -> Option<f64> {
    let comm = match broker {
        Broker::Amqp => "beam.smp",
        Broker::Kafka => "java",
        Broker::Redis => "redis-server",
        Broker::Nsq => "nsqd",
    };
    let mut kib = 0u64;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let dir = entry.path();
        if std::fs::read_to_string(dir.join("comm")).is_ok_and(|c| c.trim() == comm) {
            let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
            kib += status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    (kib > 0).then(|| kib as f64 / 1024.0)
}

/// CPU seconds so far of the JIT compiler threads (HotSpot's C1 and C2) of every JVM: Kafka's
/// broker is the bench's only one.
pub(crate) fn jit_cpu_seconds() -> f64 {
    let mut seconds = 0.0;
    for (pid, (comm, _)) in cpu_by_process() {
        if comm != "java" {
            continue;
        }
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            // Thread names are cut to 15 bytes: "C2 CompilerThre".
            match cpu_of(&task.path()) {
                Some((name, used))
                    if name.starts_with("C1 Compiler") || name.starts_with("C2 Compiler") =>
                {
                    seconds += used;
                }
                _ => {}
            }
        }
    }
    seconds
}

/// Records how long one core takes for a fixed loop of integer arithmetic, once the machine
/// is quiet. The same host gives the same figure run after run; a shared VM's slow hour (other
/// tenants on its cores) shows as a larger one, and explains ratios and latencies that moved
/// with it.
pub(crate) async fn add_speed_probe(f: &mut Figures, when: &str) {
    quiet().await;
    let ms = tokio::task::spawn_blocking(|| {
        let started = Instant::now();
        let mut x = 0u64;
        for i in 0..100_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i));
        }
        std::hint::black_box(x);
        started.elapsed().as_secs_f64() * 1000.0
    })
    .await
    .expect("the probe's thread");
    f.add(
        format!("machine speed probe {when} (one core, a fixed loop; lower is faster)"),
        ms,
        "ms",
    );
}
