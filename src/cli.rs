//! Command line.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand};
use uuid::Uuid;

pub use crate::admin::Output;

/// `--version`: the package version and the commit it was built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("OUTBOX_RELAY_REVISION"),
    ")"
);

#[derive(Debug, Parser)]
#[command(
    name = "outbox-relay",
    version = VERSION,
    about = "Relays a Postgres outbox to RabbitMQ, Kafka, Redis Streams or NSQ"
)]
pub struct Cli {
    /// TOML configuration file; environment variables OUTBOX_RELAY__SECTION__KEY override it.
    #[arg(long, short, global = true, env = "OUTBOX_RELAY_CONFIG")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

/// The database of an admin command (`status`, `dead`, `migrate`) when no configuration file
/// is at hand: overrides `database.url`.
#[derive(Debug, Clone, Args)]
pub struct Database {
    /// Postgres URL; overrides database.url of the configuration.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, global = true)]
    pub database_url: Option<String>,
}

/// How a command that prints data prints it.
#[derive(Debug, Clone, Args)]
pub struct Format {
    /// Output format; JSON and YAML field names are stable (README, "Commands").
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// The same as `-o json` (kept for scripts written before `-o`).
    #[arg(long, hide = true, conflicts_with = "output")]
    pub json: bool,
}

impl Format {
    pub fn output(&self) -> Output {
        if self.json {
            Output::Json
        } else {
            self.output
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Publish committed outbox rows until SIGTERM or SIGINT.
    Run,
    /// Create or upgrade the outbox schema (idempotent), listing each migration applied.
    Migrate {
        #[command(flatten)]
        database: Database,
        /// List the migrations, applied and pending, with what each pending one locks.
        #[arg(long, conflicts_with = "print_sql")]
        status: bool,
        /// Print the SQL of the pending migrations (with --all: every one), with the
        /// bookkeeping rows the relay checks, for Flyway, Liquibase or a DBA; apply nothing.
        #[arg(long)]
        print_sql: bool,
        #[arg(long, requires = "print_sql")]
        all: bool,
        #[command(flatten)]
        format: Format,
    },
    /// Validate the configuration and print it with secrets redacted.
    CheckConfig {
        #[command(flatten)]
        format: Format,
    },
    /// Counts per status, backlog, dead messages per destination, lease holders, partitions.
    Status {
        #[command(flatten)]
        format: Format,
        #[command(flatten)]
        database: Database,
        /// Print again every INTERVAL until interrupted (default 2s).
        #[arg(long, value_name = "INTERVAL", num_args = 0..=1, default_missing_value = "2s",
              value_parser = parse_interval)]
        watch: Option<Duration>,
        /// Exit 3 when a condition holds: `dead` (any dead message) or `stale=DURATION` (the
        /// oldest pending message is older). Repeatable.
        #[arg(long = "fail-on", value_name = "CONDITION", value_parser = parse_condition)]
        fail_on: Vec<Condition>,
    },
    /// Check everything a relay needs (database, schema, grants, broker, lease, long
    /// transactions, stuck keys) and say how to fix what is not right; exit 3 if a check fails.
    Doctor {
        #[command(flatten)]
        database: Database,
        #[command(flatten)]
        format: Format,
    },
    /// A live view: backlog, publish rate, failures and dead rows by destination, and which
    /// relay publishes, from the database and the relays' /metrics. `q` quits.
    Top {
        #[command(flatten)]
        database: Database,
        /// A relay's http.listen address, IP:PORT, whose /metrics is read (repeat for each
        /// replica). Default: http.listen of this configuration, asked on loopback.
        #[arg(long = "relay", value_name = "IP:PORT")]
        relays: Vec<std::net::SocketAddr>,
        /// How often to refresh; rates are over this interval.
        #[arg(long, default_value = "2s", value_parser = parse_interval)]
        interval: Duration,
        /// Print one view as plain text and exit (also when stdout is not a terminal).
        #[arg(long)]
        once: bool,
        /// Columns of the plain-text view.
        #[arg(long, default_value_t = 120)]
        width: u16,
    },
    /// Inspect, requeue or discard dead messages.
    Dead {
        #[command(subcommand)]
        command: DeadCommand,
        #[command(flatten)]
        database: Database,
    },
    /// Exit 0 when the relay at http.listen answers /livez with 200, else 1 (for Docker,
    /// Compose and ECS health checks, where no HTTP client is in the image).
    Healthcheck {
        /// How long to wait for the answer.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Write the man pages, generated from these definitions, into a directory (`make man`).
    #[command(hide = true)]
    Man {
        #[arg(long, default_value = "target/man")]
        out_dir: PathBuf,
    },
}

/// A `status --fail-on` condition.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Condition {
    /// Any dead message.
    Dead,
    /// The oldest pending message is older than this.
    Stale(Duration),
}

/// A refresh interval: a humantime duration above zero.
fn parse_interval(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("must be longer than 0s".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

fn parse_condition(s: &str) -> Result<Condition, String> {
    match s.split_once('=') {
        None if s == "dead" => Ok(Condition::Dead),
        Some(("stale", d)) => humantime::parse_duration(d)
            .map(Condition::Stale)
            .map_err(|e| format!("stale={d}: {e}")),
        _ => Err(format!(
            "unknown condition {s:?}: use dead or stale=DURATION"
        )),
    }
}

#[derive(Debug, Subcommand)]
pub enum DeadCommand {
    /// List dead messages, oldest first.
    List {
        #[command(flatten)]
        filter: Filter,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[command(flatten)]
        format: Format,
    },
    /// One dead message: headers, timestamps, attempts, the whole last error.
    Show {
        id: Uuid,
        /// Include the payload (left out by default: it may hold personal data).
        #[arg(long)]
        payload: bool,
        #[command(flatten)]
        format: Format,
    },
    /// Put dead messages back to committed with attempts reset; each takes a new place at
    /// the end of its key's order.
    Requeue(Selection),
    /// Delete dead messages.
    Discard(Selection),
}

/// Which dead messages a command looks at.
#[derive(Debug, Clone, Default, Args)]
pub struct Filter {
    #[arg(long)]
    pub destination: Option<String>,
    /// Only messages of this key.
    #[arg(long)]
    pub key: Option<String>,
    /// Only messages that died within this long (`1h`, `30m`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub since: Option<Duration>,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("which").required(true).args(["ids", "all"])))]
pub struct Selection {
    /// Message ids (repeat or separate with spaces).
    #[arg(long = "id", num_args = 1..)]
    pub ids: Vec<Uuid>,
    /// Every dead message (narrowed by --destination, --key, --since).
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub filter: Filter,
    /// Print what would change and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn a_refresh_interval_is_above_zero() {
        assert_eq!(parse_interval("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_interval("0s").unwrap_err().contains("longer than 0s"));
        assert!(parse_interval("soon").is_err());
    }

    #[test]
    fn fail_on_conditions_parse_or_name_the_fix() {
        assert_eq!(parse_condition("dead"), Ok(Condition::Dead));
        assert_eq!(
            parse_condition("stale=5m"),
            Ok(Condition::Stale(Duration::from_secs(300)))
        );
        assert!(parse_condition("stale=soon")
            .unwrap_err()
            .contains("stale=soon"));
        assert!(parse_condition("late")
            .unwrap_err()
            .contains("dead or stale"));
    }
}
