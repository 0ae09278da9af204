//! Command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "outbox-relay",
    version,
    about = "Relays a Postgres outbox to RabbitMQ or Kafka"
)]
pub struct Cli {
    /// TOML configuration file; environment variables OUTBOX_RELAY__SECTION__KEY override it.
    #[arg(long, short, global = true, env = "OUTBOX_RELAY_CONFIG")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Publish committed outbox rows until SIGTERM or SIGINT.
    Run,
    /// Create or upgrade the outbox schema (idempotent).
    Migrate,
    /// Validate the configuration and print it with secrets redacted.
    CheckConfig,
}
