//! The configuration's tests: the example file, precedence, every key's checks, fuzzing.

/// Every issue a TOML document gives, one string each (none for a valid config).
#[cfg(test)]
pub(crate) fn issues_of(toml: &str) -> Vec<String> {
    use crate::config::*;
    match Config::from_figment(&Figment::from(Toml::string(toml))) {
        Ok(_) => Vec::new(),
        Err(ConfigError::Invalid(issues)) => issues.iter().map(ToString::to_string).collect(),
        Err(e) => panic!("{e}"),
    }
}

#[cfg(test)]
mod general {
    use std::time::Duration;

    use crate::config::read::{mangled_by_figment, unreadable_environment};
    use crate::config::*;

    const EXAMPLE: &str = include_str!("../../config.example.toml");

    fn example_keys() -> Vec<String> {
        let table: toml::Table = EXAMPLE.parse().expect("config.example.toml is TOML");
        fn walk(prefix: &str, table: &toml::Table, out: &mut Vec<String>) {
            for (k, v) in table {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                if let toml::Value::Table(t) = v {
                    walk(&key, t, out);
                }
                out.push(key);
            }
        }
        let mut out = Vec::new();
        walk("", &table, &mut out);
        out
    }

    #[test]
    fn example_documents_every_key_with_its_default() {
        let documented = example_keys();
        for key in keys() {
            assert!(
                documented.contains(&key),
                "{key} is not in config.example.toml"
            );
        }
        let figment = Figment::from(Toml::string(EXAMPLE));
        let from_example = Config::from_figment(&figment).expect("example is valid");
        assert_eq!(
            from_example.to_redacted_toml(),
            Config::default().to_redacted_toml(),
            "config.example.toml must show the defaults"
        );
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let figment = Figment::from(Toml::string(
            "[relay]\nbatch_size = -1\nmax_in_flight = 0\n[retry]\ninitial_backoff = \"10s\"\nmax_backoff = \"1s\"\n[log]\nformat = \"xml\"\n[extra]\na = 1\n",
        ));
        let Err(ConfigError::Invalid(issues)) = Config::from_figment(&figment) else {
            panic!("expected invalid configuration");
        };
        let keys: Vec<&str> = issues.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "relay.batch_size",
                "relay.max_in_flight",
                "log.format",
                "extra",
                "retry.max_backoff"
            ]
        );
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's signature, not ours
    fn environment_overrides_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "relay.toml",
                "[relay]\nbatch_size = 10\npoll_interval = \"1s\"\n",
            )?;
            jail.set_env("OUTBOX_RELAY__RELAY__BATCH_SIZE", "20");
            jail.set_env("OUTBOX_RELAY_PORT", "tcp://10.0.0.1:9090"); // Kubernetes service link
            let c = Config::load(Some(Path::new("relay.toml"))).expect("valid");
            assert_eq!(c.relay.batch_size.get(), 20);
            assert_eq!(c.relay.poll_interval, Duration::from_secs(1));
            Ok(())
        });
    }

    #[test]
    fn environment_values_figment_would_mangle_are_refused_with_their_variable() {
        assert!(mangled_by_figment("\"\u{800}\u{800}00#\\ \""));
        assert!(mangled_by_figment(r#"["a", "é\n"]"#));
        assert!(!mangled_by_figment(r#""a\né""#));
        assert!(!mangled_by_figment(r#"é\n"#));
        assert!(!mangled_by_figment("postgres://u:pässword@h/db"));
        let vars = [
            ("OUTBOX_RELAY__DATABASE__URL", "\"é\\n\""),
            ("OTHER", "\"é\\n\""),
        ]
        .map(|(k, v)| (k.into(), v.into()));
        let issues = unreadable_environment(vars.into_iter());
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert_eq!(issues[0].key, "database.url");
        assert_eq!(issues[0].origin, "OUTBOX_RELAY__DATABASE__URL");
    }

    fn invalid_keys(toml: &str) -> Vec<String> {
        match Config::from_figment(&Figment::from(Toml::string(toml))) {
            Err(ConfigError::Invalid(issues)) => issues.into_iter().map(|i| i.key).collect(),
            other => panic!("expected invalid configuration, got {other:?}"),
        }
    }

    #[test]
    fn a_stall_timeout_within_the_longest_bounded_wait_blames_the_key_that_was_set() {
        // Default claim bound: 10s + 3 x (5s + 30s + 5s) = 130s.
        assert_eq!(
            invalid_keys("[http]\nlivez_stall_timeout = \"2m\"\n"),
            vec!["http.livez_stall_timeout"]
        );
        let just_above = "[http]\nlivez_stall_timeout = \"131s\"\n";
        assert!(Config::from_figment(&Figment::from(Toml::string(just_above))).is_ok());
        assert_eq!(
            invalid_keys("[relay]\npublish_timeout = \"10m\"\n"),
            vec!["relay.publish_timeout"]
        );
        // A Kafka record may wait twice the publish timeout and 2 s: 4m is enough for
        // RabbitMQ's 2m publish timeout, not for Kafka's.
        let waits = "[relay]\npublish_timeout = \"2m\"\n[http]\nlivez_stall_timeout = \"4m\"\n";
        assert!(Config::from_figment(&Figment::from(Toml::string(waits))).is_ok());
        assert_eq!(
            invalid_keys(&format!("[broker]\nkind = \"kafka\"\n{waits}")),
            vec!["http.livez_stall_timeout"]
        );
        assert_eq!(
            invalid_keys("[database]\nstatement_timeout = \"500us\"\n"),
            vec!["database.statement_timeout"]
        );
        // The idle timeout left at its default: the interval that was set is at fault.
        assert_eq!(
            invalid_keys("[metrics]\nbacklog_interval = \"1h\"\n"),
            vec!["metrics.backlog_interval"]
        );
        assert_eq!(
            invalid_keys("[metrics]\nidle_timeout = \"5s\"\n"),
            vec!["metrics.idle_timeout"]
        );
    }

    #[test]
    fn non_ascii_log_filter_is_an_issue_not_a_panic() {
        assert_eq!(
            invalid_keys("[log]\nlevel = \"[\u{feff}{\"\n"),
            ["log.level"]
        );
    }

    #[test]
    fn backoff_order_blames_the_key_that_was_set() {
        assert_eq!(
            invalid_keys("[retry]\ninitial_backoff = \"1h\"\n"),
            ["retry.initial_backoff"]
        );
    }

    #[test]
    fn durations_have_upper_bounds() {
        let figment = Figment::from(Toml::string(
            "[retry]\nmax_backoff = \"10000years\"\n[relay]\nshutdown_grace = \"3days\"\n",
        ));
        let Err(ConfigError::Invalid(issues)) = Config::from_figment(&figment) else {
            panic!("expected invalid configuration");
        };
        let keys: Vec<&str> = issues.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(keys, vec!["relay.shutdown_grace", "retry.max_backoff"]);
    }

    #[test]
    fn secrets_are_redacted() {
        let u = SecretUrl::new("amqps://user:s3cret@host:5671/vh?password=p2&x=1");
        let shown = format!("{u} {u:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("p2"),
            "{shown}"
        );
        assert!(shown.contains("user:REDACTED@host"), "{shown}");
    }
}

#[cfg(test)]
mod kafka_tests {
    use crate::config::*;

    fn load(toml: &str) -> Result<Config, ConfigError> {
        Config::from_figment(&Figment::from(Toml::string(toml)))
    }

    #[test]
    fn properties_pass_through_flattened() {
        let c = load(
            "[broker]\nkind = \"kafka\"\n[broker.kafka]\nbootstrap_servers = \"127.0.0.1:9092\"\n\
             [broker.kafka.properties]\n\"compression.type\" = \"zstd\"\nlinger.ms = 5\nacks = \"all\"\n",
        )
        .expect("valid");
        assert_eq!(c.broker.kind, BrokerKind::Kafka);
        let p = &c.broker.kafka.properties.0;
        assert_eq!(p["compression.type"], "zstd");
        assert_eq!(p["linger.ms"], "5");
        assert_eq!(p["acks"], "all");
    }

    #[test]
    fn weakening_or_owned_properties_are_rejected_with_their_key() {
        let Err(ConfigError::Invalid(issues)) = load(
            "[broker.kafka.properties]\nacks = 1\n\"enable.idempotence\" = false\n\
             \"bootstrap.servers\" = \"x:1\"\n\"message.timeout.ms\" = 5\n",
        ) else {
            panic!("expected invalid configuration");
        };
        let text = issues
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        for key in [
            "acks",
            "enable.idempotence",
            "bootstrap.servers",
            "message.timeout.ms",
        ] {
            assert!(
                text.contains(&format!("broker.kafka.properties.{key}")),
                "{key} not named:\n{text}"
            );
        }
        assert!(text.contains("relay.publish_timeout"), "{text}");
    }

    #[test]
    fn secret_properties_are_redacted() {
        let c = load("[broker.kafka.properties]\n\"sasl.password\" = \"hunter2\"\n\"sasl.username\" = \"me\"\n")
            .expect("valid");
        let shown = format!("{} {:?}", c.to_redacted_toml(), c);
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("me"), "{shown}");
    }
}

#[cfg(test)]
mod fuzz_tests {
    use crate::config::*;
    use proptest::prelude::*;

    /// A value of the kinds a user might write for any key: right and wrong types, durations
    /// good and bad, empty, huge and negative numbers, nested tables.
    fn any_value() -> impl Strategy<Value = toml::Value> {
        let leaf = prop_oneof![
            any::<i64>().prop_map(toml::Value::Integer),
            any::<bool>().prop_map(toml::Value::Boolean),
            any::<f64>().prop_map(toml::Value::Float),
            "[0-9]{0,6}(ms|s|m|h|d|years|)".prop_map(toml::Value::String),
            ".{0,30}".prop_map(toml::Value::String),
        ];
        leaf.prop_recursive(2, 12, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(toml::Value::Array),
                prop::collection::btree_map("[a-z._]{1,12}", inner, 0..4)
                    .prop_map(|m| toml::Value::Table(m.into_iter().collect())),
            ]
        })
    }

    /// A known key or a made-up one.
    fn any_key() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => prop::sample::select(keys()),
            1 => "[a-z]{1,8}(\\.[a-z_]{1,8}){0,2}",
        ]
    }

    fn document(entries: &[(String, toml::Value)]) -> String {
        let mut root = toml::Table::new();
        for (key, value) in entries {
            let mut table = &mut root;
            let parts: Vec<&str> = key.split('.').collect();
            for part in &parts[..parts.len() - 1] {
                let slot = table
                    .entry(part.to_string())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                if !slot.is_table() {
                    *slot = toml::Value::Table(toml::Table::new());
                }
                table = slot.as_table_mut().expect("made a table");
            }
            table.insert(parts[parts.len() - 1].to_string(), value.clone());
        }
        toml::to_string(&root).expect("serialisable")
    }

    /// The one contract of the reader: a Config, or issues that each name the key at fault (and
    /// where its value came from), never a panic.
    fn check(result: Result<Config, ConfigError>, syntax_may_fail: bool) {
        match result {
            Ok(_) => {}
            Err(ConfigError::Invalid(issues)) => {
                assert!(!issues.is_empty());
                for i in issues {
                    assert!(!i.key.is_empty(), "issue without a key: {i}");
                    assert!(!i.message.is_empty(), "issue without a message: {i}");
                    assert_ne!(i.origin, "default", "a default cannot be at fault: {i}");
                }
            }
            Err(ConfigError::Source(e)) => {
                assert!(
                    syntax_may_fail,
                    "well-formed input refused as unreadable: {e}"
                );
                assert!(!e.is_empty());
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Arbitrary text: mostly not TOML at all, so a readable error, never a panic.
        #[test]
        fn any_text_as_the_file(text in ".{0,200}") {
            check(Config::from_figment(&Figment::from(Toml::string(&text))), true);
        }

        /// Well-formed TOML with known and unknown keys and values of every kind.
        #[test]
        fn any_document_gives_a_config_or_keyed_issues(
            entries in prop::collection::vec((any_key(), any_value()), 0..8)
        ) {
            let text = document(&entries);
            check(Config::from_figment(&Figment::from(Toml::string(&text))), false);
        }

        /// Any value in any OUTBOX_RELAY__* variable, known key or not.
        #[test]
        #[allow(clippy::result_large_err)] // figment::Jail's signature, not ours
        fn any_environment_gives_a_config_or_keyed_issues(
            vars in prop::collection::vec((any_key(), "[^\0]{0,40}"), 0..6)
        ) {
            figment::Jail::expect_with(|jail| {
                for (key, value) in &vars {
                    let name = format!("{ENV_PREFIX}{}", key.to_uppercase().replace('.', "__"));
                    jail.set_env(name, value);
                }
                let result = Config::load(None);
                if let Err(ConfigError::Invalid(issues)) = &result {
                    for i in issues {
                        assert!(i.origin.starts_with(ENV_PREFIX), "{i}");
                    }
                }
                check(result, false);
                Ok(())
            });
        }
    }
}

#[cfg(test)]
mod amqp_tls_tests {
    use crate::config::*;

    use super::issues_of as issues;

    fn amqp(url: &str, ca: &str) -> String {
        format!("[broker.amqp]\nurl = \"{url}\"\ntls_ca_file = \"{ca}\"\n")
    }

    #[test]
    fn ca_file_is_read_at_load_and_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("ca.pem");
        std::fs::write(
            &good,
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let url = "amqps://u:p@host/%2f";

        let c = Config::from_figment(&Figment::from(Toml::string(&amqp(
            url,
            good.to_str().unwrap(),
        ))))
        .expect("valid");
        assert!(c.broker.amqp.tls_ca_pem.unwrap().contains("MIIB"));

        let text = issues(&amqp(url, empty.to_str().unwrap())).join("\n");
        assert!(
            text.contains("broker.amqp.tls_ca_file") && text.contains("holds no PEM certificate"),
            "{text}"
        );
        let text = issues(&amqp(url, "/nonexistent/ca.pem")).join("\n");
        assert!(text.contains("cannot read /nonexistent/ca.pem"), "{text}");
        // A CA for a plain connection would protect nothing: refuse the mix-up.
        let text = issues(&amqp("amqp://u:p@host/%2f", good.to_str().unwrap())).join("\n");
        assert!(text.contains("only used with an amqps://"), "{text}");
    }
}

#[cfg(test)]
mod amqp_url_tests {
    use crate::config::*;

    fn issues(url: &str) -> Vec<ConfigIssue> {
        let toml = format!("[broker.amqp]\nurl = \"{url}\"\n");
        match Config::from_figment(&Figment::from(Toml::string(&toml))) {
            Ok(_) => Vec::new(),
            Err(ConfigError::Invalid(issues)) => issues,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn a_url_the_amqp_client_cannot_use_is_an_issue_of_broker_amqp_url_without_its_password() {
        let long = "v".repeat(256);
        let cases = [
            (
                format!("amqp://u:s3cret@host/{long}"),
                "the vhost is 256 bytes long; AMQP allows at most 255",
            ),
            // Percent-encoded, the limit is on the decoded name.
            (
                format!("amqps://u:s3cret@host/{}", "%2f".repeat(256)),
                "the vhost is 256 bytes long",
            ),
            (
                "amqp://u:s3cret@host/%2f?frame_max=lots".into(),
                "not a valid AMQP URL: invalid digit",
            ),
            (
                "amqp://u:s3cret@host/%2f?auth_mechanism=KERBEROS".into(),
                "not a valid AMQP URL: Invalid SASL mechanism",
            ),
            (
                "amqp:u:s3cret@host".into(),
                "not a valid AMQP URL: expected",
            ),
        ];
        for (url, expected) in cases {
            let found = issues(&url);
            assert_eq!(found.len(), 1, "{url}: {found:?}");
            let text = found[0].to_string();
            assert_eq!(found[0].key, "broker.amqp.url", "{text}");
            assert!(text.contains(expected), "{url}: {text}");
            assert!(!text.contains("s3cret"), "{text}");
        }
    }

    #[test]
    fn a_vhost_of_255_bytes_and_the_usual_forms_are_accepted() {
        for url in [
            format!("amqp://u:p@host/{}", "v".repeat(255)),
            "amqp://u:p@host:5672/%2f?heartbeat=10&frame_max=8192".into(),
            "amqps://u:p@host/vh".into(),
            "amqp://host".into(),
        ] {
            assert!(issues(&url).is_empty(), "{url}: {:?}", issues(&url));
        }
    }
}

#[cfg(test)]
mod nsq_tests {
    use crate::config::*;

    /// Every issue, one per line.
    pub(super) fn issues(toml: &str) -> String {
        super::issues_of(toml).join("\n")
    }

    #[test]
    fn keys_are_checked_by_their_full_names() {
        let text = issues(
            "[broker.nsq]\nnsqd_tcp_address = \"nsqd\"\nmax_message_bytes = 0\ncloudevents_source = \"\"\ncloudevents_type = \" \"\nconnect_timeout = \"0s\"\n",
        );
        for key in [
            "broker.nsq.nsqd_tcp_address",
            "broker.nsq.max_message_bytes",
            "broker.nsq.cloudevents_source",
            "broker.nsq.cloudevents_type",
            "broker.nsq.connect_timeout",
        ] {
            assert!(text.contains(key), "{key} in {text}");
        }
    }

    #[test]
    fn the_ca_file_is_read_with_tls_only() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let toml = |tls: bool| {
            format!(
                "[broker.nsq]\ntls_v1 = {tls}\ntls_ca_file = \"{}\"\n",
                ca.display()
            )
        };
        let c = Config::from_figment(&Figment::from(Toml::string(&toml(true)))).expect("valid");
        assert!(c.broker.nsq.tls_ca_pem.unwrap().contains("MIIB"));
        let text = issues(&toml(false));
        assert!(
            text.contains("broker.nsq.tls_ca_file") && text.contains("tls_v1"),
            "{text}"
        );
    }

    #[test]
    fn the_auth_secret_is_redacted_and_comes_from_a_file_or_the_key() {
        let c = Config::from_figment(&Figment::from(Toml::string(
            "[broker.nsq]\nauth_secret = \"s3cret\"\n",
        )))
        .expect("valid");
        assert_eq!(c.broker.nsq.auth_secret.expose(), "s3cret");
        let shown = c.to_redacted_toml();
        assert!(
            !shown.contains("s3cret") && shown.contains("REDACTED"),
            "{shown}"
        );
        assert!(!format!("{:?}", c.broker.nsq).contains("s3cret"));

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "from-file\n").unwrap();
        let c = Config::from_figment(&Figment::from(Toml::string(&format!(
            "[broker.nsq]\nauth_secret_file = \"{}\"\n",
            file.display()
        ))))
        .expect("valid");
        assert_eq!(c.broker.nsq.auth_secret.expose(), "from-file");
        let text = issues(&format!(
            "[broker.nsq]\nauth_secret = \"x\"\nauth_secret_file = \"{}\"\n",
            file.display()
        ));
        assert!(text.contains("broker.nsq.auth_secret_file"), "{text}");
    }
}

#[cfg(test)]
mod exactly_once_tests {
    // Every issue of a config, one per line: the NSQ tests' helper.
    use super::nsq_tests::issues;

    #[test]
    fn exactly_once_is_refused_without_kafka_and_with_defeating_properties() {
        let text = issues("[broker.kafka]\ndelivery = \"exactly_once\"\n");
        assert!(
            text.contains("broker.kafka.delivery") && text.contains("needs broker.kind"),
            "{text}"
        );
        let ok = "[broker]\nkind = \"kafka\"\n[broker.kafka]\ndelivery = \"exactly_once\"\n";
        assert_eq!(issues(ok), "");
        let own_id = format!("{ok}[broker.kafka.properties]\n\"transactional.id\" = \"x\"\n");
        let text = issues(&own_id);
        assert!(
            text.contains("broker.kafka.properties.transactional.id")
                && text.contains("broker.kafka.transactional_id"),
            "{text}"
        );
        let text = issues("[broker.kafka]\nprogress_topic = \"no spaces\"\n");
        assert!(text.contains("broker.kafka.progress_topic"), "{text}");
        let text = issues("[broker.kafka]\ndelivery = \"twice\"\n");
        assert!(text.contains("broker.kafka.delivery"), "{text}");
    }

    #[test]
    fn partitions_are_bounded_and_refused_with_exactly_once() {
        let ok = "[broker]\nkind = \"kafka\"\n[broker.kafka]\ndelivery = \"exactly_once\"\n";
        let text = issues(&format!("{ok}[relay]\npartitions = 4\n"));
        assert!(
            text.contains("relay.partitions") && text.contains("exactly_once"),
            "{text}"
        );
        assert!(issues("[relay]\npartitions = 257\n").contains("relay.partitions"));
        assert!(issues("[relay]\npartitions = 0\n").contains("relay.partitions"));
        assert_eq!(issues("[relay]\npartitions = 12\n"), "");
    }
}
