use super::*;
use crate::publish::testing::{any_json, message};
use proptest::prelude::*;
use redis::Arg;

fn server_error(line: &str) -> RedisError {
    redis::parse_redis_value(format!("-{line}\r\n").as_bytes())
        .expect("a RESP error line")
        .extract_error()
        .expect_err("an error reply")
}

fn publisher(config: RedisConfig) -> RedisPublisher {
    RedisPublisher::new(config, Duration::from_secs(5)).expect("a valid URL")
}

/// The command's arguments as text (binary payloads are valid UTF-8 in these tests).
fn args(cmd: &Cmd) -> Vec<String> {
    cmd.args_iter()
        .map(|a| match a {
            Arg::Simple(bytes) => String::from_utf8(bytes.to_vec()).unwrap(),
            _ => "<cursor>".into(),
        })
        .collect()
}

#[test]
fn server_errors_are_classified_by_code() {
    let permanent = |line: &str| classify(server_error(line)).is_permanent();
    let reason = |line: &str| classify(server_error(line)).reason();
    assert!(!permanent(
        "WRONGTYPE Operation against a key holding the wrong kind of value"
    ));
    assert!(permanent(
        "NOPERM User relay has no permissions to access the 'orders' key"
    ));
    assert_eq!(reason("NOPERM no permissions"), FailureReason::Unauthorized);
    assert!(permanent("NOAUTH Authentication required."));
    for retryable in [
        "LOADING Redis is loading the dataset in memory",
        "BUSY Redis is busy running a script",
        "READONLY You can't write against a read only replica.",
        "OOM command not allowed when used memory > 'maxmemory'.",
        "MASTERDOWN Link with MASTER is down",
    ] {
        assert!(!permanent(retryable), "{retryable}");
    }
    assert_eq!(reason("LOADING loading"), FailureReason::Unavailable);
    assert_eq!(reason("READONLY replica"), FailureReason::Unavailable);
}

#[test]
fn connection_failures_are_retryable() {
    let reset = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
    let e = classify(reset);
    assert!(!e.is_permanent());
    assert_eq!(e.reason(), FailureReason::Unavailable);
    let timeout = RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
    assert_eq!(classify(timeout).reason(), FailureReason::Timeout);
}

#[test]
fn the_server_version_comes_from_info() {
    let info = "# Server\r\nredis_version:8.6.1\r\nredis_git_sha1:00000000\r\n";
    assert_eq!(server_version(info), Some((8, 6)));
    assert_eq!(server_version("redis_version:7.0.15\r\n"), Some((7, 0)));
    assert_eq!(server_version("# Server\r\n"), None);
}

#[test]
fn a_row_becomes_one_xadd_with_its_fields() {
    let p = publisher(RedisConfig::default());
    let mut m = message(serde_json::json!({"trace": "t1"}));
    m.destination = "orders".into();
    let cmd = p.xadd(&m, false).unwrap();
    let id = uuid::Uuid::nil().to_string();
    assert_eq!(
        args(&cmd),
        [
            "XADD",
            "orders",
            "*",
            "message_id",
            &id,
            "key",
            "k",
            "payload",
            "p",
            "content_type",
            "application/json",
            "headers",
            r#"{"trace":"t1"}"#,
        ]
    );
}

#[test]
fn a_row_without_key_has_no_key_field() {
    let p = publisher(RedisConfig::default());
    let mut m = message(serde_json::json!({}));
    m.message_key = None;
    let a = args(&p.xadd(&m, false).unwrap());
    assert!(!a.contains(&"key".to_string()), "{a:?}");
    assert_eq!(a.last().map(String::as_str), Some("{}"));
}

#[test]
fn idempotence_and_trimming_come_before_the_id() {
    let p = publisher(RedisConfig {
        maxlen: 1000,
        idempotent_producer_id: "relay-a".into(),
        ..RedisConfig::default()
    });
    let a = args(&p.xadd(&message(serde_json::json!({})), true).unwrap());
    let id = uuid::Uuid::nil().to_string();
    assert_eq!(
        &a[..9],
        ["XADD", "d", "IDMP", "relay-a", &id, "MAXLEN", "~", "1000", "*"]
    );
}

#[test]
fn an_entry_over_max_entry_bytes_is_refused_permanently() {
    let p = publisher(RedisConfig {
        max_entry_bytes: 100,
        ..RedisConfig::default()
    });
    let mut m = message(serde_json::json!({}));
    m.payload = vec![b'x'; 100];
    let e = p.xadd(&m, false).unwrap_err();
    assert!(e.is_permanent());
    assert_eq!(e.reason(), FailureReason::TooLarge);
    m.payload = vec![b'x'; 10];
    assert!(p.xadd(&m, false).is_ok());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The headers field is the row's headers as a JSON object of strings, or the row is
    /// refused as permanently invalid.
    #[test]
    fn any_headers_become_a_json_object_or_a_permanent_error(v in any_json()) {
        let p = publisher(RedisConfig::default());
        match p.xadd(&message(v.clone()), false) {
            Ok(cmd) => {
                let a = args(&cmd);
                let sent: serde_json::Value = serde_json::from_str(a.last().unwrap()).unwrap();
                prop_assert_eq!(sent, v);
            }
            Err(e) => {
                prop_assert!(e.is_permanent(), "{}", e);
                prop_assert_eq!(e.reason(), FailureReason::Invalid);
            }
        }
    }
}
