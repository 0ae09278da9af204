//! The charts of docs/performance.md, drawn from the `charts` records of target/bench.json
//! (benches/relay writes them; `make bench` runs this after it): throughput against the
//! ceilings of the same run per broker, and latency percentiles per broker and rate, as SVG,
//! with the table of the same run beside them in docs/performance/latest.md.
//!
//! `cargo bench --bench charts [-- BENCH_JSON [OUT_DIR]]` draws them again from a saved run
//! (docs/performance/bench.json is the committed one).

use std::error::Error;
use std::fmt::Write;
use std::path::{Path, PathBuf};

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use serde::Deserialize;

/// The drain target: a ratio of the lower of the broker's and the database's ceilings.
const DRAIN_TARGET: f64 = 0.8;

#[derive(Deserialize)]
struct Run {
    date: Option<String>,
    revision: Option<String>,
    rows: i64,
    payload_bytes: i64,
    keys: i64,
    latency_seconds: u64,
    machine: serde_json::Value,
    #[serde(default)]
    charts: Charts,
}

#[derive(Deserialize, Default)]
struct Charts {
    #[serde(default)]
    throughput: Vec<Throughput>,
    #[serde(default)]
    latency: Vec<Latency>,
}

#[derive(Deserialize)]
struct Throughput {
    broker: String,
    drain: f64,
    broker_ceiling: f64,
    database_ceiling: f64,
}

impl Throughput {
    fn ratio(&self) -> f64 {
        self.drain / self.broker_ceiling.min(self.database_ceiling)
    }
}

#[derive(Deserialize)]
struct Latency {
    broker: String,
    rate: u32,
    p50: f64,
    p99: f64,
    p999: f64,
}

/// Three bars per group, as horizontal segments listed from the top: segment 0 is at the
/// bottom of the chart, so the first group's first bar is the highest segment.
fn segment(groups: usize, group: usize, bar: usize) -> i32 {
    i32::try_from((groups - 1 - group) * 3 + (2 - bar)).expect("a few dozen bars")
}

/// The group's name on the middle bar of its three, nothing on the others.
fn group_label(names: &[String], value: &SegmentValue<i32>) -> String {
    match value {
        SegmentValue::CenterOf(k) if k % 3 == 1 => {
            let from_bottom = usize::try_from(k / 3).unwrap_or(usize::MAX);
            (names.len().checked_sub(1 + from_bottom))
                .and_then(|group| names.get(group).cloned())
                .unwrap_or_default()
        }
        _ => String::new(),
    }
}

/// A horizontal bar from `from` to `value` filling segment `k`, `gap` pixels short of it
/// above and below.
fn bar_of(
    k: i32,
    from: f64,
    value: f64,
    colour: RGBColor,
    gap: u32,
) -> Rectangle<(f64, SegmentValue<i32>)> {
    let mut rect = Rectangle::new(
        [
            (from, SegmentValue::Exact(k)),
            (value, SegmentValue::Exact(k + 1)),
        ],
        colour.filled(),
    );
    rect.set_margin(gap, gap, 0, 0);
    rect
}

const COLOURS: [RGBColor; 3] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(150, 150, 150),
];

fn throughput_chart(run: &Run, path: &Path) -> Result<(), Box<dyn Error>> {
    let rows = &run.charts.throughput;
    let groups = rows.len();
    let names: Vec<String> = rows.iter().map(|r| r.broker.clone()).collect();
    let max = rows
        .iter()
        .flat_map(|r| [r.drain, r.broker_ceiling, r.database_ceiling])
        .fold(0.0, f64::max)
        * 1.15;
    let height = u32::try_from(groups * 3 * 20 + 110)?;
    let root = SVGBackend::new(path, (900, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Drain of {} rows against the ceilings of the same run (msg/s)",
                thousands(run.rows)
            ),
            ("sans-serif", 17),
        )
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(190)
        .build_cartesian_2d(0f64..max, (0..i32::try_from(groups * 3)?).into_segmented())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .light_line_style(WHITE)
        .y_labels(groups * 3)
        .y_label_formatter(&|v| group_label(&names, v))
        .x_label_formatter(&|x| format!("{:.0}k", x / 1000.0))
        .draw()?;
    let series = ["relay drain", "broker alone", "database alone"];
    for (bar, label) in series.into_iter().enumerate() {
        let colour = COLOURS[bar];
        chart
            .draw_series(rows.iter().enumerate().map(|(group, r)| {
                let value = [r.drain, r.broker_ceiling, r.database_ceiling][bar];
                bar_of(segment(groups, group, bar), 0.0, value, colour, 2)
            }))?
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled()));
    }
    // Each drain's ratio to the lower ceiling, at the end of its bar.
    chart.draw_series(rows.iter().enumerate().map(|(group, r)| {
        let verdict = if r.ratio() >= DRAIN_TARGET {
            ""
        } else {
            " (target 0.8)"
        };
        // A text hangs below its anchor: from the top of the bar's segment.
        Text::new(
            format!(" {:.2} x{verdict}", r.ratio()),
            (r.drain, SegmentValue::Exact(segment(groups, group, 0) + 1)),
            ("sans-serif", 12),
        )
    }))?;
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    root.present()?;
    Ok(())
}

fn latency_chart(run: &Run, path: &Path) -> Result<(), Box<dyn Error>> {
    let rows = &run.charts.latency;
    let groups = rows.len();
    let names: Vec<String> = rows
        .iter()
        .map(|r| format!("{} at {} msg/s", r.broker, r.rate))
        .collect();
    // Room on the right for the legend.
    let max = rows.iter().map(|r| r.p999).fold(1.0, f64::max) * 8.0;
    let height = u32::try_from(groups * 3 * 14 + 110)?;
    let root = SVGBackend::new(path, (900, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let floor = 0.5;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Commit to consumer, {} s per rate (ms, log scale); the marks are the p99 targets",
                run.latency_seconds
            ),
            ("sans-serif", 15),
        )
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(250)
        .build_cartesian_2d(
            (floor..max).log_scale(),
            (0..i32::try_from(groups * 3)?).into_segmented(),
        )?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .light_line_style(WHITE)
        .y_labels(groups * 3)
        .y_label_formatter(&|v| group_label(&names, v))
        .x_label_formatter(&|x| format!("{x}"))
        .draw()?;
    for (bar, label) in ["p50", "p99", "p99.9"].into_iter().enumerate() {
        let colour = COLOURS[bar];
        chart
            .draw_series(rows.iter().enumerate().map(|(group, r)| {
                let value = [r.p50, r.p99, r.p999][bar];
                bar_of(segment(groups, group, bar), floor, value, colour, 1)
            }))?
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled()));
    }
    // Each p99 against its rate's target.
    chart
        .draw_series(rows.iter().enumerate().filter_map(|(group, r)| {
            let target = p99_target(&r.broker, r.rate)?;
            let k = segment(groups, group, 1);
            Some(PathElement::new(
                [
                    (target, SegmentValue::Exact(k)),
                    (target, SegmentValue::Exact(k + 1)),
                ],
                BLACK.stroke_width(2),
            ))
        }))?
        .label("p99 target")
        .legend(|(x, y)| PathElement::new([(x + 5, y - 6), (x + 5, y + 6)], BLACK.stroke_width(2)));
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    root.present()?;
    Ok(())
}

/// The p99 target of a broker's latency part at a rate, where one is set: exactly once waits
/// for the transaction's commit, and has a target of its own.
fn p99_target(broker: &str, rate: u32) -> Option<f64> {
    match (broker.ends_with("exactly once"), rate) {
        (true, 1000) => Some(50.0),
        (false, 1000) => Some(20.0),
        (false, 5000) => Some(50.0),
        _ => None,
    }
}

/// 200000 as 200,000.
fn thousands(n: i64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn table(run: &Run, wrote: &[&str]) -> String {
    let mut out = String::new();
    let machine = &run.machine;
    let _ = writeln!(
        out,
        "# The latest `make bench` run\n\n\
         Written by `make bench` (benches/charts.rs, from the `charts` records of\n\
         target/bench.json), so that these charts and tables are always of one run:\n\
         {} at revision {}, {} rows of {} bytes over {} keys, latency over {} s per rate, on\n\
         {} cores and {} GiB ({}), Postgres {}, RabbitMQ {}, {}. Every ratio is to ceilings\n\
         measured in the same run. What the figures mean, and the history: [performance.md](../performance.md).\n",
        run.date.as_deref().unwrap_or("an unrecorded date"),
        run.revision.as_deref().unwrap_or("unknown"),
        thousands(run.rows),
        run.payload_bytes,
        thousands(run.keys),
        run.latency_seconds,
        machine["cores"],
        machine["memory_gib"],
        machine["cpu"].as_str().unwrap_or("?"),
        machine["postgres"].as_str().unwrap_or("?"),
        machine["rabbitmq"].as_str().unwrap_or("?"),
        machine["kafka_broker"].as_str().unwrap_or("?"),
    );
    if !run.charts.throughput.is_empty() {
        let _ = writeln!(out, "## Throughput\n");
        if wrote.contains(&"throughput.svg") {
            let _ = writeln!(out, "![Drain and ceilings per broker](throughput.svg)\n");
        }
        let _ = writeln!(
            out,
            "| Broker | Drain (msg/s) | Broker alone | Database alone | Drain / lower ceiling | Target {DRAIN_TARGET} x |\n|---|---|---|---|---|---|"
        );
        for r in &run.charts.throughput {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {:.2} x | {} |",
                r.broker,
                thousands(r.drain.round() as i64),
                thousands(r.broker_ceiling.round() as i64),
                thousands(r.database_ceiling.round() as i64),
                r.ratio(),
                if r.ratio() >= DRAIN_TARGET {
                    "met"
                } else {
                    "missed"
                }
            );
        }
        out.push('\n');
    }
    if !run.charts.latency.is_empty() {
        let _ = writeln!(out, "## Latency, commit to consumer\n");
        if wrote.contains(&"latency.svg") {
            let _ = writeln!(
                out,
                "![Latency percentiles per broker and rate](latency.svg)\n"
            );
        }
        let _ = writeln!(
            out,
            "| Broker | Rate (msg/s) | p50 (ms) | p99 (ms) | p99.9 (ms) | p99 target |\n|---|---|---|---|---|---|"
        );
        for r in &run.charts.latency {
            let target = match p99_target(&r.broker, r.rate) {
                Some(t) if r.p99 <= t => format!("{t:.0} ms: met"),
                Some(t) => format!("{t:.0} ms: missed"),
                None => "-".to_string(),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {:.1} | {:.1} | {:.1} | {target} |",
                r.broker, r.rate, r.p50, r.p99, r.p999
            );
        }
    }
    out
}

/// Draws the charts and the table of the run in `json` into `out`, with a copy of `json`
/// (so that they can be drawn again, and checked, from what is committed), and removes the
/// charts of an earlier run that this one has no figures for. Returns the files written.
pub fn draw(json: &Path, out: &Path) -> Result<Vec<&'static str>, Box<dyn Error>> {
    let text = std::fs::read_to_string(json)?;
    let run: Run = serde_json::from_str(&text)?;
    let mut wrote = Vec::new();
    if run.charts.throughput.is_empty() && run.charts.latency.is_empty() {
        return Ok(wrote);
    }
    std::fs::create_dir_all(out)?;
    for (name, empty) in [
        ("throughput.svg", run.charts.throughput.is_empty()),
        ("latency.svg", run.charts.latency.is_empty()),
    ] {
        let path = out.join(name);
        if empty {
            let _ = std::fs::remove_file(path);
            continue;
        }
        match name {
            "throughput.svg" => throughput_chart(&run, &path)?,
            _ => latency_chart(&run, &path)?,
        }
        wrote.push(name);
    }
    std::fs::write(out.join("latest.md"), table(&run, &wrote))?;
    wrote.push("latest.md");
    if json != out.join("bench.json") {
        std::fs::write(out.join("bench.json"), text)?;
    }
    wrote.push("bench.json");
    Ok(wrote)
}

#[allow(dead_code)] // tests/docs.rs includes this file for `draw` alone.
fn main() -> Result<(), Box<dyn Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // `cargo bench` passes `--bench` to every target; only plain arguments are ours.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let json = args
        .first()
        .map_or_else(|| root.join("target/bench.json"), PathBuf::from);
    let out = args
        .get(1)
        .map_or_else(|| root.join("docs/performance"), PathBuf::from);
    let wrote = draw(&json, &out)?;
    if wrote.is_empty() {
        println!("{}: no drain or latency figures to chart", json.display());
    } else {
        println!(
            "charts of {} written to {}: {}",
            json.display(),
            out.display(),
            wrote.join(", ")
        );
    }
    Ok(())
}
