//! Logging set-up. `RUST_LOG`, when set, wins over `log.level`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use serde::{Deserialize, Serialize};

use crate::config::Checks;

/// Always appended, whatever the configured level: lapin reports a message the broker
/// returned (unroutable, mandatory) at warn with its whole body. The relay logs the return
/// itself, without the payload.
const PAYLOAD_LOGGERS_OFF: &str = "lapin::returned_messages=off";

pub fn init(config: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| {
            // Postgres notices such as "schema already exists, skipping" are noise at info.
            EnvFilter::new(format!("{},sqlx::postgres::notice=warn", config.level))
        })
        .add_directive(PAYLOAD_LOGGERS_OFF.parse().expect("a valid directive"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // try_init: a second call (tests) keeps the first subscriber instead of panicking.
    let _ = match config.format.resolve(std::io::stderr().is_terminal()) {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        _ => builder.try_init(),
    };
}

/// The `[log]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Text on a terminal (someone reads it), JSON otherwise (a collector does).
    Auto,
    Json,
    Text,
}

impl LogFormat {
    /// The format to write, `auto` decided by whether stderr is a terminal.
    pub fn resolve(self, terminal: bool) -> LogFormat {
        match self {
            LogFormat::Auto if terminal => LogFormat::Text,
            LogFormat::Auto => LogFormat::Json,
            other => other,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_string(),
            format: LogFormat::Auto,
        }
    }
}

impl LogConfig {
    pub(crate) fn check(&self, c: &mut Checks) {
        // Checked first: tracing-subscriber 0.3 indexes filters by char count as byte offsets
        // and panics on some non-ASCII input; targets and levels are ASCII anyway.
        if !self.level.is_ascii() {
            c.issue("log.level", "must be ASCII, e.g. `info,sqlx=warn`");
        } else if let Err(e) = EnvFilter::builder().parse(&self.level) {
            c.issue("log.level", format!("not a valid filter: {e}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_text_on_a_terminal_and_json_for_collectors() {
        assert_eq!(LogFormat::Auto.resolve(true), LogFormat::Text);
        assert_eq!(LogFormat::Auto.resolve(false), LogFormat::Json);
        assert_eq!(LogFormat::Json.resolve(true), LogFormat::Json);
        assert_eq!(LogFormat::Text.resolve(false), LogFormat::Text);
    }
}
