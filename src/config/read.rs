//! Extracting the sections from figment: every mistake with its key, unknown keys, the key
//! list, and the environment values figment cannot read.

use figment::error::Kind;
use figment::providers::Serialized;
use figment::value::{Dict, Value};
use figment::Figment;

use super::{Checks, Config, ConfigError, ConfigIssue, ENV_PREFIX};

/// Deserializes the whole configuration. serde stops at the first bad value, so each round
/// drops the values that failed (their defaults apply instead) and tries again, until the rest
/// deserializes: every bad value and unknown key is reported, each once. Bounded by the number
/// of values given.
pub(super) fn extract(figment: &Figment, checks: &mut Checks) -> Result<Config, ConfigError> {
    let mut root: Dict = figment
        .extract()
        .map_err(|e| ConfigError::Source(e.to_string()))?;
    let order = keys(&Config::default());
    let mut found: Vec<(String, String)> = Vec::new();
    let config = loop {
        match Figment::from(Serialized::defaults(&root)).extract::<Config>() {
            Ok(config) => break config,
            Err(errors) => {
                let mut dropped = false;
                for e in errors {
                    // figment's path names the offending key, unknown ones included.
                    let path = e.path.clone();
                    let message = match &e.kind {
                        Kind::UnknownField(..) => "unknown key".to_string(),
                        kind => kind.to_string(),
                    };
                    dropped |= remove(&mut root, &path);
                    found.push((path.join("."), message));
                }
                if !dropped {
                    // Nothing left to drop (a mistake above every section): report what is known.
                    found.sort_by_key(|(key, _)| position(&order, key));
                    for (key, message) in found {
                        checks.issue(&key, message);
                    }
                    return Err(checks.take_error());
                }
            }
        }
    };
    // In the order of the sections' fields, unknown keys last, whatever order the sources
    // listed them in.
    found.sort_by_key(|(key, _)| position(&order, key));
    for (key, message) in found {
        checks.issue(&key, message);
    }
    Ok(config)
}

fn position(order: &[String], key: &str) -> usize {
    order
        .iter()
        .position(|k| key == k || key.starts_with(&format!("{k}.")))
        .unwrap_or(order.len())
}

fn remove(root: &mut Dict, path: &[String]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut dict = root;
    for name in parents {
        match dict.get_mut(name) {
            Some(Value::Dict(_, inner)) => dict = inner,
            _ => return false,
        }
    }
    dict.remove(last).is_some()
}

/// The dotted keys of `config`'s serialization, in field order. An empty table (a free-form
/// one, such as librdkafka's properties) is a key of its own.
pub(super) fn keys(config: &Config) -> Vec<String> {
    fn walk(prefix: &str, value: &toml::Value, out: &mut Vec<String>) {
        let toml::Value::Table(table) = value else {
            out.push(prefix.to_string());
            return;
        };
        if table.is_empty() && !prefix.is_empty() {
            out.push(prefix.to_string());
        }
        for (name, inner) in table {
            let key = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}.{name}")
            };
            walk(&key, inner, out);
        }
    }
    // toml keeps the serialization's order (its `preserve_order` feature is on).
    let value = toml::Value::try_from(config).expect("the configuration serializes");
    let mut out = Vec::new();
    walk("", &value, &mut out);
    out
}

/// Where a key's value came from: a file path, an environment variable or `default`. An entry
/// of a free-form table that figment cannot look up (a librdkafka property with dots of its
/// own) takes its table's.
pub(super) fn origin(figment: &Figment, key: &str) -> String {
    let mut lookup = key;
    let mut known: Option<Vec<String>> = None;
    let meta = loop {
        if let Some(meta) = figment.find_metadata(lookup) {
            break meta;
        }
        let known = known.get_or_insert_with(|| keys(&Config::default()));
        let free_form = known.iter().any(|k| lookup.starts_with(&format!("{k}.")));
        match lookup.rsplit_once('.') {
            Some((parent, _)) if free_form => lookup = parent,
            _ => return "default".to_string(),
        }
    };
    match &meta.source {
        Some(figment::Source::File(path)) => path.display().to_string(),
        _ if meta.name.contains("environment") => {
            let parts: Vec<&str> = lookup.split('.').collect();
            let name = meta
                .interpolate(&figment::Profile::Default, &parts)
                .to_uppercase()
                .replace('.', "__");
            if name.starts_with(ENV_PREFIX) {
                name
            } else {
                format!("{ENV_PREFIX}{name}")
            }
        }
        _ => meta.name.to_string(),
    }
}

/// OUTBOX_RELAY__* values that figment 0.10 would mangle or panic on: in a quoted string it
/// slices at the first backslash escape by character count as if it were a byte offset, so any
/// non-ASCII character before that backslash truncates the value or panics the process.
pub(super) fn unreadable_environment(
    vars: impl Iterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> Vec<ConfigIssue> {
    let mut issues = Vec::new();
    for (name, value) in vars {
        let (Some(name), Some(value)) = (name.to_str(), value.to_str()) else {
            continue;
        };
        let Some(key) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if mangled_by_figment(value) {
            issues.push(ConfigIssue {
                key: key.to_lowercase().replace("__", "."),
                origin: name.to_string(),
                message: "a quoted string with non-ASCII characters before its first \\ escape \
                          cannot be read; leave the value unquoted or write them as \\u escapes"
                    .into(),
            });
        }
    }
    issues
}

pub(super) fn mangled_by_figment(value: &str) -> bool {
    let (mut in_string, mut escaped, mut seen_escape, mut non_ascii) = (false, false, false, false);
    for c in value.chars() {
        if !in_string {
            if c == '"' {
                (in_string, seen_escape, non_ascii) = (true, false, false);
            }
            continue;
        }
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            // Only the first escape slices; after it the string is copied char by char.
            '\\' if non_ascii && !seen_escape => return true,
            '\\' => (seen_escape, escaped) = (true, true),
            '"' => in_string = false,
            c if !c.is_ascii() => non_ascii = true,
            _ => {}
        }
    }
    false
}
