//! The documentation stays true to the code: every configuration key is documented, every
//! relative link of the README and docs/ points to a file that exists, every command they
//! show exists with the options they show, and the charts of docs/performance/ are what
//! benches/charts.rs draws from the run committed beside them.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_configuration_key_is_in_docs_configuration() {
    let doc = std::fs::read_to_string(root().join("docs/CONFIGURATION.md")).unwrap();
    let missing: Vec<String> = outbox_relay::config::keys()
        .into_iter()
        .filter(|k| !doc.contains(&format!("`{k}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "not in docs/CONFIGURATION.md: {missing:?}"
    );
}

/// `[text](target)` links whose target is a relative path (no scheme, not an anchor alone).
fn relative_links(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = markdown;
    while let Some(at) = rest.find("](") {
        rest = &rest[at + 2..];
        let Some(end) = rest.find(')') else { break };
        let target = rest[..end].split('#').next().unwrap_or("").trim();
        if !target.is_empty() && !target.contains("://") && !target.starts_with("mailto:") {
            out.push(target.to_string());
        }
    }
    out
}

#[test]
fn relative_links_of_the_readme_and_docs_point_to_files_that_exist() {
    let mut pages = vec![
        root().join("README.md"),
        root().join("UPGRADING.md"),
        root().join("CHANGELOG.md"),
    ];
    for entry in std::fs::read_dir(root().join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            pages.push(path);
        }
    }
    let mut broken = Vec::new();
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap();
        let dir = page.parent().unwrap_or(Path::new("."));
        for target in relative_links(&text) {
            if !dir.join(&target).exists() {
                broken.push(format!("{}: {target}", page.display()));
            }
        }
    }
    assert!(broken.is_empty(), "broken links: {broken:#?}");
}

#[test]
fn the_readme_stays_a_short_page() {
    let size = std::fs::metadata(root().join("README.md")).unwrap().len();
    assert!(
        size < 12 * 1024,
        "README.md is {size} bytes; details belong in docs/"
    );
}

/// The README, UPGRADING, CHANGELOG, docs/*.md and the client libraries' and chart's READMEs.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![
        root().join("README.md"),
        root().join("UPGRADING.md"),
        root().join("CHANGELOG.md"),
        root().join("charts/outbox-relay/README.md"),
    ];
    for dir in [
        "docs",
        "clients/go",
        "clients/python",
        "clients/typescript",
        "clients/java",
    ] {
        for entry in std::fs::read_dir(root().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "md") {
                pages.push(path);
            }
        }
    }
    pages
}

/// The lines of the ```sh blocks of a page.
fn shell_lines(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_shell = false;
    for line in markdown.lines() {
        let fence = line.trim_start();
        if let Some(lang) = fence.strip_prefix("```") {
            in_shell = !in_shell && matches!(lang.trim(), "sh" | "bash" | "console");
            continue;
        }
        if in_shell {
            out.push(line.to_string());
        }
    }
    out
}

/// Every long option and `-o` of a command and its subcommands, and the global ones.
fn options(command: &clap::Command, into: &mut std::collections::BTreeSet<String>) {
    for arg in command.get_arguments() {
        if let Some(long) = arg.get_long() {
            into.insert(format!("--{long}"));
        }
        if let Some(short) = arg.get_short() {
            into.insert(format!("-{short}"));
        }
    }
    for sub in command.get_subcommands() {
        options(sub, into);
    }
}

#[test]
fn every_command_the_docs_show_exists_with_the_options_they_show() {
    use clap::CommandFactory;
    let cli = outbox_relay::cli::Cli::command();
    let mut global = std::collections::BTreeSet::new();
    for arg in cli.get_arguments() {
        if let Some(long) = arg.get_long() {
            global.insert(format!("--{long}"));
        }
    }
    global.extend(["--help".to_string(), "--version".to_string()]);
    let mut seen = 0;
    let mut wrong = Vec::new();
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        for line in shell_lines(&text) {
            // The binary, not a path or a name that contains it (charts/outbox-relay), and
            // the last such word: `kubectl exec POD -c outbox-relay -- outbox-relay status`.
            let Some(at) = line
                .match_indices("outbox-relay ")
                .map(|(i, _)| i)
                .filter(|&i| i == 0 || line.as_bytes()[i - 1] == b' ')
                .last()
            else {
                continue;
            };
            let command = line[at + "outbox-relay ".len()..]
                .split(" #")
                .next()
                .unwrap_or("");
            let mut words = command.split_whitespace();
            let Some(name) = words.next() else { continue };
            seen += 1;
            let Some(sub) = cli.find_subcommand(name) else {
                wrong.push(format!("{}: no command {name:?}: {line}", page.display()));
                continue;
            };
            let mut known = global.clone();
            options(sub, &mut known);
            // `[--relay IP:PORT ...]`, `-o table|json|yaml`, `--fail-on dead`, `--since=1h`.
            for word in words {
                let word = word.trim_matches(|c| c == '[' || c == ']');
                for option in word.split('|').filter(|o| o.starts_with('-')) {
                    let option = option.split('=').next().unwrap_or(option);
                    if option != "--" && !known.contains(option) {
                        wrong.push(format!(
                            "{}: `{name}` has no {option}: {line}",
                            page.display()
                        ));
                    }
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(
        seen > 20,
        "the docs show {seen} commands: is the parsing broken?"
    );
}

#[path = "../benches/charts.rs"]
mod charts;

/// docs/performance.md shows charts "generated by `make bench`": they must be what the
/// generator draws from the run committed beside them, not edited or left from another run.
#[test]
fn the_committed_charts_are_drawn_from_the_run_committed_beside_them() {
    let committed = root().join("docs/performance");
    let json = committed.join("bench.json");
    assert!(
        json.exists(),
        "no docs/performance/bench.json: run `make bench` and commit docs/performance/"
    );
    let out = std::env::temp_dir().join(format!("outbox-relay-charts-{}", std::process::id()));
    let wrote = charts::draw(&json, &out).unwrap();
    assert!(
        wrote.contains(&"throughput.svg") && wrote.contains(&"latency.svg"),
        "the committed run has drains and latencies: {wrote:?}"
    );
    for name in wrote.into_iter().filter(|n| *n != "bench.json") {
        let drawn = std::fs::read_to_string(out.join(name)).unwrap();
        let kept = std::fs::read_to_string(committed.join(name)).unwrap_or_default();
        assert!(
            drawn == kept,
            "docs/performance/{name} is not what benches/charts.rs draws from bench.json beside it: \
             run `cargo bench --bench charts -- docs/performance/bench.json` and commit"
        );
    }
    let _ = std::fs::remove_dir_all(out);
}
