use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use outbox_relay::cli::{Cli, Command, DeadCommand, Selection};
use outbox_relay::config::{BrokerKind, Config};
use outbox_relay::store::DeadSelection;
use outbox_relay::telemetry::{self, instruments};
use outbox_relay::{admin, app, healthcheck, store};
use tokio_util::sync::CancellationToken;

/// Exit code for configuration errors, distinct from runtime failures (1).
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
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
    let starts_relay = matches!(cli.command, Command::Run | Command::CheckConfig);
    if starts_relay && config.broker.kind == BrokerKind::Kafka {
        // Building the producer validates every librdkafka property; it connects lazily.
        if let Err(e) = app::kafka_publisher(&config) {
            eprintln!("outbox-relay: invalid configuration:\n  - broker.kafka.properties: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    }
    if let Command::CheckConfig = cli.command {
        print!("{}", config.to_redacted_toml());
        return ExitCode::SUCCESS;
    }
    if let Command::Healthcheck { timeout } = cli.command {
        return healthcheck(&config, timeout);
    }
    telemetry::init(&config.log);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("outbox-relay: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(cli.command, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "exiting");
            eprintln!("outbox-relay: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
        Command::CheckConfig | Command::Healthcheck { .. } => {
            unreachable!("handled before the runtime starts")
        }
        Command::Status { json } => {
            let pool = store::pool(&config.database)?;
            let status = admin::status(&pool).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", admin::render_status(&status));
            }
            Ok(())
        }
        Command::Dead { command } => {
            let pool = store::pool(&config.database)?;
            print!("{}", admin::dead(&pool, &dead_action(command)).await?);
            Ok(())
        }
        Command::Migrate => {
            let pool = store::migration_pool(&config.database)?;
            store::migrate(&pool).await.context("migrate")?;
            tracing::info!("outbox schema is up to date");
            Ok(())
        }
        Command::Run => {
            tracing::info!(config = %config.to_redacted_toml(), version = env!("CARGO_PKG_VERSION"), "starting");
            let metrics = instruments::install(config.metrics.idle_timeout)
                .context("install the metrics recorder")?;
            let shutdown = CancellationToken::new();
            tokio::spawn(stop_on_signal(shutdown.clone()));
            app::run(config, Some(metrics), shutdown).await?;
            Ok(())
        }
    }
}

/// The command line's `dead` subcommand as the admin action it asks for.
fn dead_action(command: DeadCommand) -> admin::DeadAction {
    let selection = |s: Selection| {
        if s.all {
            DeadSelection::All {
                destination: s.destination,
            }
        } else {
            DeadSelection::Ids(s.ids)
        }
    };
    match command {
        DeadCommand::List {
            destination,
            limit,
            json,
        } => admin::DeadAction::List {
            destination,
            limit,
            json,
        },
        DeadCommand::Requeue(s) => admin::DeadAction::Requeue(selection(s)),
        DeadCommand::Discard(s) => admin::DeadAction::Discard(selection(s)),
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
