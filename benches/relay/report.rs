//! What the machine is, and the figures printed and written to target/bench.json.

use super::*;

/// What the figures were measured on.
pub(crate) async fn machine(pool: &PgPool) -> serde_json::Value {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kib| kib / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let postgres: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(pool)
        .await
        .unwrap();
    let command = |program: &str, args: &[&str]| {
        std::process::Command::new(program)
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|| "unknown".into())
    };
    serde_json::json!({
        "cores": cores,
        "memory_gib": (mem_gib * 10.0).round() / 10.0,
        "cpu": cpu,
        "postgres": postgres,
        "rabbitmq": command("dpkg-query", &["-W", "-f=${Version}", "rabbitmq-server"]),
        "kafka_broker": format!("Apache Kafka {}", kafka_version()),
    })
}

/// Every figure of the run by name, and the ones the charts draw (benches/charts.rs) as
/// records, so that the charts never parse names.
#[derive(Default)]
pub(crate) struct Figures {
    all: Vec<(String, f64, &'static str)>,
    throughput: Vec<serde_json::Value>,
    latency: Vec<serde_json::Value>,
}

impl Figures {
    /// A drain next to the ceilings it is a ratio of (msg/s).
    pub(crate) fn chart_drain(&mut self, broker: &str, drain: f64, own: f64, database: f64) {
        self.throughput.push(serde_json::json!({
            "broker": broker,
            "drain": round(drain),
            "broker_ceiling": round(own),
            "database_ceiling": round(database),
        }));
    }

    /// Commit-to-consumer percentiles of one broker at one rate (ms).
    pub(crate) fn chart_latency(&mut self, broker: &str, rate: u32, l: &super::latency::Latency) {
        self.latency.push(serde_json::json!({
            "broker": broker,
            "rate": rate,
            "p50": round(l.p50),
            "p99": round(l.p99),
            "p999": round(l.p999),
        }));
    }

    /// The `figures` and `charts` of target/bench.json.
    pub(crate) fn json(&self) -> (serde_json::Value, serde_json::Value) {
        let figures = self
            .all
            .iter()
            .map(|(name, v, unit)| {
                serde_json::json!({ "figure": name, "value": round(*v), "unit": unit })
            })
            .collect();
        let charts = serde_json::json!({
            "throughput": self.throughput,
            "latency": self.latency,
        });
        (figures, charts)
    }

    pub(crate) fn add(&mut self, name: impl Into<String>, value: f64, unit: &'static str) -> f64 {
        let name = name.into();
        // Ratios are compared with targets such as 0.8: one decimal would round 0.76 up.
        let decimals = if unit == "x" { 2 } else { 1 };
        println!("  {name:<58} {value:>10.decimals$} {unit}");
        self.all.push((name, value, unit));
        value
    }
}

/// The broker version pinned in scripts/kafka/pom.xml, which scripts/kafka.sh runs.
fn kafka_version() -> String {
    let pom = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka/pom.xml"),
    )
    .unwrap_or_default();
    pom.lines()
        .find_map(|line| {
            let rest = line.trim().strip_prefix("<kafka.version>")?;
            rest.strip_suffix("</kafka.version>")
        })
        .unwrap_or("unknown")
        .to_string()
}

fn round(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}
