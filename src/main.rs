use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use outbox_relay::cli::{Cli, Command, Database, DeadCommand, Filter};
use outbox_relay::config::{BrokerKind, Config, SecretUrl};
use outbox_relay::store::DeadFilter;
use outbox_relay::telemetry::{self, instruments};
use outbox_relay::{admin, app, healthcheck, store};
use tokio_util::sync::CancellationToken;

/// Exit code for configuration errors, distinct from runtime failures (1).
const EXIT_CONFIG: u8 = 2;
/// Exit code of `status --fail-on` when a condition holds.
const EXIT_CONDITION: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Generated from the definitions alone: no configuration needed.
    match &cli.command {
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut command, "outbox-relay", &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
        Command::Man { out_dir } => {
            let command = <Cli as clap::CommandFactory>::command();
            let written = std::fs::create_dir_all(out_dir)
                .and_then(|()| clap_mangen::generate_to(command, out_dir));
            return match written {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!(
                        "outbox-relay: cannot write the man pages to {}: {e}",
                        out_dir.display()
                    );
                    ExitCode::FAILURE
                }
            };
        }
        _ => {}
    }
    let loaded = Config::load(cli.config.as_deref()).map(|mut c| {
        if let Some(url) = database_url(&cli.command) {
            c.database.url = SecretUrl::new(url);
        }
        c
    });
    let config = match loaded {
        Ok(c) => c,
        Err(e) => {
            eprintln!("outbox-relay: {e}");
            // Docker reserves health-check exit code 2; unhealthy is 1.
            if matches!(cli.command, Command::Healthcheck { .. }) {
                return ExitCode::FAILURE;
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let starts_relay = matches!(cli.command, Command::Run | Command::CheckConfig { .. });
    if starts_relay && config.broker.kind == BrokerKind::Kafka {
        // Building the producer validates every librdkafka property; it connects lazily.
        if let Err(e) = app::kafka_publisher(&config) {
            eprintln!("outbox-relay: invalid configuration:\n  - broker.kafka.properties: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    }
    if let Command::CheckConfig { format } = &cli.command {
        print!(
            "{}",
            format.output().render(&config, Config::to_redacted_toml)
        );
        return ExitCode::SUCCESS;
    }
    if let Command::Healthcheck { timeout } = cli.command {
        return healthcheck(&config, timeout);
    }
    // The live view owns the terminal: a log line would tear it.
    if !matches!(cli.command, Command::Top { .. }) {
        telemetry::init(&config.log);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("outbox-relay: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(cli.command, config)) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "exiting");
            eprintln!("outbox-relay: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--database-url` (or `DATABASE_URL`) of an admin command.
fn database_url(command: &Command) -> Option<String> {
    match command {
        Command::Migrate { database, .. }
        | Command::Status { database, .. }
        | Command::Dead { database, .. }
        | Command::Doctor { database, .. }
        | Command::Top { database, .. } => database.database_url.clone(),
        _ => None,
    }
}

async fn execute(command: Command, config: Config) -> anyhow::Result<ExitCode> {
    match command {
        Command::CheckConfig { .. }
        | Command::Healthcheck { .. }
        | Command::Completions { .. }
        | Command::Man { .. } => {
            unreachable!("handled before the runtime starts")
        }
        Command::Status {
            format,
            watch,
            fail_on,
            database: Database { .. },
        } => {
            let pool = store::pool(&config.database)?;
            loop {
                let status = admin::status(&pool).await?;
                if watch.is_some() {
                    // Clear the screen and home the cursor: one refreshing view.
                    print!("\x1b[2J\x1b[H");
                }
                print!("{}", format.output().render(&status, admin::render_status));
                let failed = admin::failed_conditions(&status, &fail_on);
                let Some(every) = watch else {
                    for f in &failed {
                        eprintln!("outbox-relay: status: {f}");
                    }
                    return Ok(if failed.is_empty() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(EXIT_CONDITION)
                    });
                };
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
                }
            }
        }
        Command::Doctor { format, .. } => {
            let pool = store::pool(&config.database)?;
            let findings =
                admin::doctor::doctor(&pool, |recent| app::broker_check(&config, recent)).await;
            print!(
                "{}",
                format.output().render(&findings, admin::doctor::render)
            );
            let failed = findings
                .iter()
                .any(|f| f.verdict == admin::doctor::Verdict::Fail);
            Ok(if failed {
                ExitCode::from(EXIT_CONDITION)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Top {
            relays,
            interval,
            once,
            width,
            ..
        } => {
            let pool = store::pool(&config.database)?;
            let relays = if relays.is_empty() {
                vec![healthcheck::target(config.http.listen)]
            } else {
                relays
            };
            let options = admin::top::Options { relays, interval };
            if once || !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                print!("{}", admin::top::once(&pool, &options, width).await);
            } else {
                admin::top::interactive(&pool, &options).await?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Dead { command, .. } => {
            let pool = store::pool(&config.database)?;
            let mut progress = |line: &str| eprintln!("{line}");
            print!(
                "{}",
                admin::dead(&pool, &dead_action(command), &mut progress).await?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate {
            status,
            print_sql,
            all,
            format,
            ..
        } => {
            let pool = store::migration_pool(&config.database)?;
            if status || print_sql {
                let states = store::migrations::states(&pool).await?;
                if status {
                    print!(
                        "{}",
                        format
                            .output()
                            .render(&states, admin::migrate::render_states)
                    );
                } else {
                    print!("{}", store::migrations::script(&states, all));
                }
                return Ok(ExitCode::SUCCESS);
            }
            // A second small pool watches index builds while the migrations hold theirs.
            let watch = store::pool(&config.database)?;
            let mut progress = |line: &str| eprintln!("{line}");
            let done = admin::migrate::migrate(&pool, &watch, &mut progress)
                .await
                .context("migrate")?;
            print!("{done}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Run => {
            tracing::info!(config = %config.to_redacted_toml(), version = env!("CARGO_PKG_VERSION"), "starting");
            let metrics = instruments::install(config.metrics.idle_timeout)
                .context("install the metrics recorder")?;
            let shutdown = CancellationToken::new();
            tokio::spawn(stop_on_signal(shutdown.clone()));
            app::run(config, Some(metrics), shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn dead_filter(filter: Filter, ids: Vec<uuid::Uuid>) -> DeadFilter {
    DeadFilter {
        destination: filter.destination,
        key: filter.key,
        since: filter.since,
        ids: (!ids.is_empty()).then_some(ids),
    }
}

/// The command line's `dead` subcommand as the admin action it asks for.
fn dead_action(command: DeadCommand) -> admin::DeadAction {
    match command {
        DeadCommand::List {
            filter,
            limit,
            format,
        } => admin::DeadAction::List {
            filter: dead_filter(filter, Vec::new()),
            limit,
            output: format.output(),
        },
        DeadCommand::Show {
            id,
            payload,
            format,
        } => admin::DeadAction::Show {
            id,
            payload,
            output: format.output(),
        },
        DeadCommand::Requeue(s) => admin::DeadAction::Requeue {
            filter: dead_filter(s.filter, s.ids),
            dry_run: s.dry_run,
        },
        DeadCommand::Discard(s) => admin::DeadAction::Discard {
            filter: dead_filter(s.filter, s.ids),
            dry_run: s.dry_run,
        },
    }
}

/// Quiet on success, one line on stderr otherwise: health checks keep their output.
fn healthcheck(config: &Config, timeout: std::time::Duration) -> ExitCode {
    let addr = healthcheck::target(config.http.listen);
    let checked = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| {
            rt.block_on(healthcheck::check(addr, timeout))
                .map_err(|e| e.to_string())
        });
    match checked {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("outbox-relay: not live: {e}");
            ExitCode::FAILURE
        }
    }
}

/// SIGTERM and SIGINT both mean: stop claiming, drain, exit 0.
async fn stop_on_signal(shutdown: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, draining"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, draining"),
    }
    shutdown.cancel();
}
