//! Reading keys from figment: each value with its key, the origin of a value (file or
//! environment variable) for error messages, unknown keys, and the checks that need the
//! value's own text (URLs, librdkafka properties, the CA file).

use std::time::Duration;

use figment::value::{Dict, Value};
use figment::Figment;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::{AmqpConfig, ConfigIssue, KafkaProperties, SecretUrl, ENV_PREFIX, KEYS};

#[derive(Deserialize)]
struct HumanDuration(#[serde(with = "humantime_serde")] Duration);

pub(super) struct Reader<'a> {
    pub(super) figment: &'a Figment,
    pub(super) issues: Vec<ConfigIssue>,
}

impl Reader<'_> {
    pub(super) fn read<T: DeserializeOwned>(&mut self, key: &str, default: T) -> T {
        debug_assert!(KEYS.contains(&key), "{key} missing from KEYS");
        if !self.figment.contains(key) {
            return default;
        }
        match self.figment.extract_inner::<T>(key) {
            Ok(value) => value,
            Err(e) => {
                self.issue(key, e.kind.to_string());
                default
            }
        }
    }

    pub(super) fn duration(&mut self, key: &str, default: Duration) -> Duration {
        self.read(key, HumanDuration(default)).0
    }

    pub(super) fn url(&mut self, key: &str, default: SecretUrl, schemes: &[&str]) -> SecretUrl {
        let raw: String = self.read(key, default.expose().to_string());
        self.checked_url(key, raw, default, schemes)
    }

    /// `raw` if it parses with one of `schemes`, else an issue of `key` and `default`.
    pub(super) fn checked_url(
        &mut self,
        key: &str,
        raw: String,
        default: SecretUrl,
        schemes: &[&str],
    ) -> SecretUrl {
        match url::Url::parse(&raw) {
            Ok(u) if schemes.contains(&u.scheme()) => SecretUrl(raw),
            Ok(u) => {
                self.issue(
                    key,
                    format!(
                        "scheme `{}` is not one of {}",
                        u.scheme(),
                        schemes.join(", ")
                    ),
                );
                default
            }
            // The parse error never includes the URL itself, so no secret leaks here.
            Err(e) => {
                self.issue(key, format!("not a valid URL: {e}"));
                default
            }
        }
    }

    /// An AMQP URL as the client reads it: a vhost the protocol cannot carry (over 255
    /// bytes) or a malformed query parameter would otherwise only fail, or panic, at connect.
    pub(super) fn amqp_url(&mut self, key: &str, default: SecretUrl) -> SecretUrl {
        let raw: String = self.read(key, default.expose().to_string());
        self.checked_amqp_url(key, raw, default)
    }

    pub(super) fn checked_amqp_url(
        &mut self,
        key: &str,
        raw: String,
        default: SecretUrl,
    ) -> SecretUrl {
        let url = self.checked_url(key, raw, default.clone(), &["amqp", "amqps"]);
        if url == default {
            return url;
        }
        let problem = match url.expose().parse::<lapin::uri::AMQPUri>() {
            // The client's message for a URL that cannot be a base quotes the URL itself,
            // password included.
            Err(_) if url::Url::parse(url.expose()).is_ok_and(|u| u.cannot_be_a_base()) => {
                Some("not a valid AMQP URL: expected amqp://user:password@host:port/vhost".into())
            }
            Err(e) => Some(format!("not a valid AMQP URL: {e}")),
            Ok(uri) if uri.vhost.len() > 255 => Some(format!(
                "the vhost is {} bytes long; AMQP allows at most 255",
                uri.vhost.len()
            )),
            Ok(_) => None,
        };
        match problem {
            Some(message) => {
                self.issue(key, message);
                default
            }
            None => url,
        }
    }

    /// A table of librdkafka properties. Dotted names may arrive nested (`linger.ms = 5` in
    /// TOML, or `..._PROPERTIES__LINGER.MS` in the environment); they are flattened back.
    pub(super) fn kafka_properties(&mut self, key: &str) -> KafkaProperties {
        let table: toml::Table = self.read(key, toml::Table::new());
        let mut out = std::collections::BTreeMap::new();
        self.flatten_properties(key, "", &table, &mut out);
        KafkaProperties(out)
    }

    pub(super) fn flatten_properties(
        &mut self,
        key: &str,
        prefix: &str,
        table: &toml::Table,
        out: &mut std::collections::BTreeMap<String, String>,
    ) {
        for (name, value) in table {
            let name = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}.{name}")
            };
            let text = match value {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Table(t) => {
                    self.flatten_properties(key, &name, t, out);
                    continue;
                }
                _ => {
                    // The origin of the whole table: a property name with its own dots (or
                    // ending in one) cannot be looked up as a figment path.
                    self.issue_at(
                        &format!("{key}.{name}"),
                        key,
                        "must be a string, number or boolean".into(),
                    );
                    continue;
                }
            };
            out.insert(name, text);
        }
    }

    pub(super) fn issue(&mut self, key: &str, message: String) {
        let origin = self.origin(key);
        self.issues.push(ConfigIssue {
            key: key.to_string(),
            origin,
            message,
        });
    }

    /// An issue about `key` whose origin is looked up under `origin_key` (a nested name that
    /// figment may not resolve, such as a dotted librdkafka property).
    pub(super) fn issue_at(&mut self, key: &str, origin_key: &str, message: String) {
        let origin = self.origin(origin_key);
        self.issues.push(ConfigIssue {
            key: key.to_string(),
            origin,
            message,
        });
    }

    pub(super) fn origin(&self, key: &str) -> String {
        let Some(meta) = self.figment.find_metadata(key) else {
            return "default".to_string();
        };
        match &meta.source {
            Some(figment::Source::File(path)) => path.display().to_string(),
            _ if meta.name.contains("environment") => {
                let parts: Vec<&str> = key.split('.').collect();
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

    pub(super) fn check_unknown(&mut self, dict: &Dict, prefix: &str) {
        for (name, value) in dict {
            let key = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}.{name}")
            };
            if KEYS.contains(&key.as_str()) {
                continue;
            }
            match value {
                Value::Dict(_, inner) if KEYS.iter().any(|k| k.starts_with(&format!("{key}."))) => {
                    self.check_unknown(inner, &key)
                }
                _ => self.issue(&key, "unknown key".to_string()),
            }
        }
    }

    /// Reads `broker.amqp.tls_ca_file`: it must hold at least one PEM certificate and only
    /// makes sense with an `amqps://` URL (a CA given for a plain URL would protect nothing).
    pub(super) fn amqp_tls_ca(&mut self, c: &AmqpConfig) -> Option<String> {
        const KEY: &str = "broker.amqp.tls_ca_file";
        if c.tls_ca_file.is_empty() {
            return None;
        }
        if !url::Url::parse(c.url.expose()).is_ok_and(|u| u.scheme() == "amqps") {
            self.issue(KEY, "is only used with an amqps:// broker.amqp.url".into());
            return None;
        }
        match std::fs::read_to_string(&c.tls_ca_file) {
            Ok(pem) if pem.contains("-----BEGIN CERTIFICATE-----") => Some(pem),
            Ok(_) => {
                self.issue(KEY, format!("{} holds no PEM certificate", c.tls_ca_file));
                None
            }
            Err(e) => {
                self.issue(KEY, format!("cannot read {}: {e}", c.tls_ca_file));
                None
            }
        }
    }
}
