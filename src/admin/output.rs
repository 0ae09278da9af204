//! How the admin commands print data: a table for people, JSON or YAML for scripts. The JSON
//! and YAML carry the same fields, named as in the structs they serialize (README, "Commands").

use serde::Serialize;

/// `-o table|json|yaml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Json,
    Yaml,
}

impl Output {
    /// `value` in this format; `table` renders it for people.
    pub fn render<T: Serialize>(self, value: &T, table: impl FnOnce(&T) -> String) -> String {
        match self {
            Output::Table => table(value),
            Output::Json => {
                serde_json::to_string_pretty(value)
                    .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
                    + "\n"
            }
            Output::Yaml => {
                serde_yaml_ng::to_string(value).unwrap_or_else(|e| format!("error: {e}\n"))
            }
        }
    }
}
