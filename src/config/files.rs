//! Secrets and certificates from files: `database.url_file`, `broker.amqp.url_file`,
//! `broker.kafka.sasl_password_file`, `broker.redis.url_file`, `broker.nsq.auth_secret_file` (Secrets mounted as files:
//! Kubernetes volumes, Vault Agent, CSI drivers), `broker.amqp.tls_ca_file`,
//! `broker.redis.tls_ca_file`, `broker.nsq.tls_ca_file` and each check-back producer's token,
//! CA and client identity files. Each is read once at start, like every
//! other key; a value and its file form together are a mistake, reported on the file key.

use super::{Checks, Config, SecretUrl};
use crate::publish::{amqp, redis};
use crate::store;

const SASL_PASSWORD: &str = "sasl.password";

impl Checks<'_> {
    pub(super) fn read_files(&mut self, c: &mut Config) {
        let defaults = Config::default();
        let db = &mut c.database;
        if let Some(raw) = self.secret_file(
            "database.url_file",
            "database.url",
            &defaults.database.url,
            &db.url_file,
        ) {
            let url = SecretUrl::new(raw);
            if self.url("database.url_file", &url, store::SCHEMES) {
                db.url = url;
            }
        }
        let mq = &mut c.broker.amqp;
        if let Some(raw) = self.secret_file(
            "broker.amqp.url_file",
            "broker.amqp.url",
            &defaults.broker.amqp.url,
            &mq.url_file,
        ) {
            let url = SecretUrl::new(raw);
            if amqp::check_url(self, "broker.amqp.url_file", &url) {
                mq.url = url;
            }
        }
        mq.read_ca(self);
        let rd = &mut c.broker.redis;
        if let Some(raw) = self.secret_file(
            "broker.redis.url_file",
            "broker.redis.url",
            &defaults.broker.redis.url,
            &rd.url_file,
        ) {
            let url = SecretUrl::new(raw);
            if redis::check_url(self, "broker.redis.url_file", &url) {
                rd.url = url;
            }
        }
        rd.read_ca(self);
        let nsq = &mut c.broker.nsq;
        nsq.read_ca(self);
        if let Some(secret) = self.file_unless(
            "broker.nsq.auth_secret_file",
            (!nsq.auth_secret.is_empty()).then_some("broker.nsq.auth_secret"),
            &nsq.auth_secret_file,
        ) {
            nsq.auth_secret = super::Secret::new(secret);
        }
        let kafka = &mut c.broker.kafka;
        let conflict = kafka.properties.0.contains_key(SASL_PASSWORD);
        if let Some(password) = self.file_unless(
            "broker.kafka.sasl_password_file",
            conflict.then_some("broker.kafka.properties.\"sasl.password\""),
            &kafka.sasl_password_file,
        ) {
            kafka.properties.0.insert(SASL_PASSWORD.into(), password);
        }
        c.check_back.read_files(self);
    }

    /// The content of the file named by `file_key`, unless it is unset, `value_key` holds a
    /// value of its own too, or it cannot be read (both issues of `file_key`). The built-in
    /// default does not count as a value: config.example.toml (and the image's config, a copy
    /// of it) spells every default out.
    fn secret_file(
        &mut self,
        file_key: &str,
        value_key: &str,
        default: &SecretUrl,
        path: &str,
    ) -> Option<String> {
        let given = self.given::<String>(value_key);
        let both = given
            .is_some_and(|v| v != default.expose())
            .then_some(value_key);
        self.file_unless(file_key, both, path)
    }

    pub(crate) fn file_unless(
        &mut self,
        file_key: &str,
        other: Option<&str>,
        path: &str,
    ) -> Option<String> {
        if path.is_empty() {
            return None;
        }
        if let Some(other) = other {
            self.issue(
                file_key,
                format!("set either {other} or {file_key}, not both"),
            );
            return None;
        }
        match std::fs::read_to_string(path) {
            // Files written by `echo` or editors end in a newline that is not part of the secret.
            Ok(text) if !text.trim().is_empty() => Some(text.trim_end_matches(['\n', '\r']).into()),
            Ok(_) => {
                self.issue(file_key, format!("{path} is empty"));
                None
            }
            Err(e) => {
                self.issue(file_key, format!("cannot read {path}: {e}"));
                None
            }
        }
    }
}

impl Checks<'_> {
    /// The certificates of a `tls_ca_file` key, read once the URL is final (it may come from
    /// its file): the file must hold at least one PEM certificate, and only makes sense with a
    /// TLS URL (a CA given for a plain one would protect nothing). `scheme` is the TLS scheme
    /// and `needs` names it for the message ("an amqps:// broker.amqp.url").
    pub(crate) fn ca_file(
        &mut self,
        key: &str,
        path: &str,
        url: &SecretUrl,
        scheme: &str,
        needs: &str,
    ) -> Option<String> {
        if path.is_empty() {
            return None;
        }
        if !url::Url::parse(url.expose()).is_ok_and(|u| u.scheme() == scheme) {
            self.issue(key, format!("is only used with {needs}"));
            return None;
        }
        match std::fs::read_to_string(path) {
            Ok(pem) if pem.contains("-----BEGIN CERTIFICATE-----") => Some(pem),
            Ok(_) => {
                self.issue(key, format!("{path} holds no PEM certificate"));
                None
            }
            Err(e) => {
                self.issue(key, format!("cannot read {path}: {e}"));
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError};
    use figment::providers::{Format, Toml};
    use figment::Figment;

    fn load(toml: &str) -> Result<Config, ConfigError> {
        Config::from_figment(&Figment::from(Toml::string(toml)))
    }

    fn issues(toml: &str) -> Vec<String> {
        match load(toml) {
            Ok(_) => Vec::new(),
            Err(ConfigError::Invalid(issues)) => issues.iter().map(|i| i.to_string()).collect(),
            Err(e) => vec![e.to_string()],
        }
    }

    fn secret(content: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), content).unwrap();
        file
    }

    #[test]
    fn urls_and_the_sasl_password_come_from_their_files_without_the_final_newline() {
        let db = secret("postgres://relay:s3cret@db:5432/orders\n");
        let amqp = secret("amqps://relay:s3cret@mq:5671/%2f\n");
        let sasl = secret("hunter2\n");
        let c = load(&format!(
            "[database]\nurl_file = {:?}\n[broker.amqp]\nurl_file = {:?}\n[broker.kafka]\nsasl_password_file = {:?}\n",
            db.path(),
            amqp.path(),
            sasl.path()
        ))
        .expect("valid");
        assert_eq!(
            c.database.url.expose(),
            "postgres://relay:s3cret@db:5432/orders"
        );
        assert_eq!(
            c.broker.amqp.url.expose(),
            "amqps://relay:s3cret@mq:5671/%2f"
        );
        assert_eq!(c.broker.kafka.properties.0["sasl.password"], "hunter2");
        let shown = c.to_redacted_toml();
        assert!(
            !shown.contains("s3cret") && !shown.contains("hunter2"),
            "{shown}"
        );
    }

    #[test]
    fn a_value_and_its_file_together_are_an_issue_of_the_file_key() {
        let f = secret("postgres://db/x");
        let text = issues(&format!(
            "[database]\nurl = \"postgres://db/y\"\nurl_file = {:?}\n[broker.kafka]\nsasl_password_file = {:?}\n[broker.kafka.properties]\n\"sasl.password\" = \"p\"\n",
            f.path(),
            f.path()
        ))
        .join("\n");
        assert!(
            text.contains("database.url_file") && text.contains("not both"),
            "{text}"
        );
        assert!(
            text.contains("broker.kafka.sasl_password_file") && text.contains("not both"),
            "{text}"
        );
    }

    #[test]
    fn the_default_url_spelled_out_as_in_the_example_does_not_conflict_with_the_file() {
        let db = secret("postgres://relay:s3cret@db:5432/orders");
        let c = load(&format!(
            "[database]\nurl = \"postgres://localhost:5432/postgres\"\nurl_file = {:?}\n",
            db.path()
        ))
        .expect("valid");
        assert_eq!(
            c.database.url.expose(),
            "postgres://relay:s3cret@db:5432/orders"
        );
    }

    #[test]
    fn a_missing_empty_or_malformed_file_is_an_issue_that_never_shows_the_secret() {
        let text = issues("[broker.amqp]\nurl_file = \"/nonexistent/amqp-url\"\n").join("\n");
        assert!(
            text.contains("broker.amqp.url_file") && text.contains("cannot read"),
            "{text}"
        );
        let empty = secret("\n");
        let text = issues(&format!("[database]\nurl_file = {:?}\n", empty.path())).join("\n");
        assert!(text.contains("is empty"), "{text}");
        let wrong = secret("mysql://root:s3cret@db/x");
        let text = issues(&format!("[database]\nurl_file = {:?}\n", wrong.path())).join("\n");
        assert!(
            text.contains("database.url_file") && text.contains("scheme `mysql`"),
            "{text}"
        );
        assert!(!text.contains("s3cret"), "{text}");
    }
}
