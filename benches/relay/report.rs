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

pub(crate) struct Figures(pub(crate) Vec<(String, f64, &'static str)>);

impl Figures {
    pub(crate) fn add(&mut self, name: impl Into<String>, value: f64, unit: &'static str) -> f64 {
        let name = name.into();
        // Ratios are compared with targets such as 0.8: one decimal would round 0.76 up.
        let decimals = if unit == "x" { 2 } else { 1 };
        println!("  {name:<58} {value:>10.decimals$} {unit}");
        self.0.push((name, value, unit));
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
