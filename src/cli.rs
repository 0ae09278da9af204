//! Command line.

use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand};
use uuid::Uuid;

#[derive(Debug, Parser)]
#[command(
    name = "outbox-relay",
    version,
    about = "Relays a Postgres outbox to RabbitMQ, Kafka, Redis Streams or NSQ"
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
    /// Counts per status, backlog, dead messages per destination, lease holder.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Inspect, requeue or discard dead messages.
    Dead {
        #[command(subcommand)]
        command: DeadCommand,
    },
    /// Exit 0 when the relay at http.listen answers /livez with 200, else 1 (for Docker,
    /// Compose and ECS health checks, where no HTTP client is in the image).
    Healthcheck {
        /// How long to wait for the answer.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
}

#[derive(Debug, Subcommand)]
pub enum DeadCommand {
    /// List dead messages, oldest first.
    List {
        #[arg(long)]
        destination: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Put dead messages back to committed with attempts reset; each takes a new place at
    /// the end of its key's order.
    Requeue(Selection),
    /// Delete dead messages.
    Discard(Selection),
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("which").required(true).args(["ids", "all"])))]
pub struct Selection {
    /// Message ids (repeat or separate with spaces).
    #[arg(long = "id", num_args = 1..)]
    pub ids: Vec<Uuid>,
    /// Every dead message (of --destination, if given).
    #[arg(long)]
    pub all: bool,
    #[arg(long, requires = "all")]
    pub destination: Option<String>,
}
