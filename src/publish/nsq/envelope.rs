//! What an NSQ message body holds: NSQ messages are bytes without headers, so every column a
//! consumer needs travels in a CloudEvents 1.0 event in structured JSON mode.

use base64::Engine as _;
use chrono::SecondsFormat;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::publish::{header_pairs, PublishError};
use crate::store::OutboxMessage;

/// The event, attributes in the order docs/BROKERS.md lists them.
#[derive(Serialize)]
struct Event<'a> {
    specversion: &'static str,
    id: String,
    source: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    datacontenttype: &'a str,
    time: String,
    /// The Partitioning extension's attribute: the row's `message_key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    partitionkey: Option<&'a str>,
    /// The row's headers as one JSON object in a string: extension attribute names allow only
    /// lower-case letters and digits, so headers as attributes of their own would lose names.
    #[serde(skip_serializing_if = "Option::is_none")]
    outboxheaders: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_base64: Option<String>,
}

/// The event for a row. Headers that are not a JSON object of strings are a permanent error
/// (as for every publisher).
pub fn envelope(
    message: &OutboxMessage,
    source: &str,
    kind: &str,
) -> Result<Vec<u8>, PublishError> {
    let headers = header_pairs(&message.headers)?;
    let outboxheaders = (!headers.is_empty()).then(|| {
        let object: serde_json::Map<String, serde_json::Value> = headers
            .into_iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
            .collect();
        serde_json::Value::Object(object).to_string()
    });
    let (data, data_base64) = match json_data(&message.content_type, &message.payload) {
        Some(raw) => (Some(raw), None),
        None => (
            None,
            Some(base64::engine::general_purpose::STANDARD.encode(&message.payload)),
        ),
    };
    let event = Event {
        specversion: "1.0",
        id: message.message_id.to_string(),
        source,
        kind,
        datacontenttype: &message.content_type,
        time: message
            .committed_at
            .to_rfc3339_opts(SecondsFormat::AutoSi, true),
        partitionkey: message.message_key.as_deref(),
        outboxheaders,
        data,
        data_base64,
    };
    Ok(serde_json::to_vec(&event).expect("the event serialises"))
}

/// The payload as it is, when the content type is JSON and the payload parses as JSON.
fn json_data(content_type: &str, payload: &[u8]) -> Option<Box<RawValue>> {
    if !is_json(content_type) {
        return None;
    }
    let text = std::str::from_utf8(payload).ok()?.trim();
    RawValue::from_string(text.to_string()).ok()
}

/// `application/json` or any `+json` media type, parameters ignored (RFC 6838 suffixes).
fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence == "text/json"
        || (essence.contains('/') && essence.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publish::testing::{any_json, message};
    use crate::publish::FailureReason;
    use chrono::TimeZone;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    fn event(m: &OutboxMessage) -> Value {
        serde_json::from_slice(&envelope(m, "outbox-relay", "outbox.message").unwrap()).unwrap()
    }

    #[test]
    fn a_row_becomes_a_cloudevent_with_every_column() {
        let mut m = message(json!({"traceparent": "00-abc", "x-b": "2"}));
        m.message_id = uuid::Uuid::from_u128(0x0192_0000_0000_7000_8000_0000_0000_0001);
        m.committed_at = chrono::Utc
            .timestamp_opt(1_700_000_000, 123_000_000)
            .unwrap();
        m.payload = br#"{"order": 7, "big": 12345678901234567890}"#.to_vec();
        let bytes = envelope(&m, "urn:shop", "shop.order").unwrap();
        let text = String::from_utf8(bytes).unwrap();
        assert_eq!(
            text,
            concat!(
                r#"{"specversion":"1.0","id":"01920000-0000-7000-8000-000000000001","#,
                r#""source":"urn:shop","type":"shop.order","datacontenttype":"application/json","#,
                r#""time":"2023-11-14T22:13:20.123Z","partitionkey":"k","#,
                r#""outboxheaders":"{\"traceparent\":\"00-abc\",\"x-b\":\"2\"}","#,
                r#""data":{"order": 7, "big": 12345678901234567890}}"#
            ),
            "JSON payloads are embedded byte for byte"
        );
    }

    #[test]
    fn without_key_or_headers_those_attributes_are_absent() {
        let mut m = message(json!({}));
        m.message_key = None;
        let e = event(&m);
        assert!(e.get("partitionkey").is_none() && e.get("outboxheaders").is_none());
        assert_eq!(e["time"], "1970-01-01T00:00:00Z");
        // The test row's payload `p` is labelled JSON but is not.
        assert_eq!(e["data_base64"], "cA==");
    }

    #[test]
    fn non_json_payloads_travel_as_base64_of_their_exact_bytes() {
        let mut m = message(json!({}));
        m.content_type = "application/octet-stream".into();
        m.payload = (0..=255u8).collect();
        let e = event(&m);
        assert!(e.get("data").is_none());
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(e["data_base64"].as_str().unwrap())
            .unwrap();
        assert_eq!(bytes, m.payload);
        assert_eq!(e["datacontenttype"], "application/octet-stream");

        // Labelled JSON but not JSON: still every byte, as base64.
        m.content_type = "application/json".into();
        m.payload = b"{not json".to_vec();
        let e = event(&m);
        assert!(e.get("data").is_none());
        assert_eq!(e["data_base64"], "e25vdCBqc29u");
    }

    #[test]
    fn json_media_types_are_recognised() {
        for yes in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/cloudevents+json",
            "application/vnd.api+json",
            "text/json",
        ] {
            assert!(is_json(yes), "{yes}");
        }
        for no in [
            "text/plain",
            "application/octet-stream",
            "",
            "+json",
            "json",
        ] {
            assert!(!is_json(no), "{no}");
        }
    }

    #[test]
    fn bad_headers_are_a_permanent_error() {
        let e = envelope(&message(json!({"a": 1})), "s", "t").unwrap_err();
        assert!(e.is_permanent());
        assert_eq!(e.reason(), FailureReason::Invalid);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any payload and headers give valid JSON whose data is the payload, or a permanent
        /// error.
        #[test]
        fn any_row_gives_an_event_or_a_permanent_error(
            headers in any_json(),
            payload in prop::collection::vec(any::<u8>(), 0..64),
            json_payload in any_json(),
            as_json in any::<bool>(),
        ) {
            let mut m = message(headers.clone());
            m.payload = if as_json { json_payload.to_string().into_bytes() } else { payload };
            match envelope(&m, "s", "t") {
                Ok(bytes) => {
                    let e: Value = serde_json::from_slice(&bytes).unwrap();
                    let sent: Value = match e.get("outboxheaders") {
                        Some(h) => serde_json::from_str(h.as_str().unwrap()).unwrap(),
                        None => json!({}),
                    };
                    prop_assert_eq!(sent, headers);
                    match (e.get("data"), e.get("data_base64")) {
                        (Some(d), None) => {
                            let parsed: Value = serde_json::from_slice(&m.payload).unwrap();
                            prop_assert_eq!(d, &parsed);
                        }
                        (None, Some(b)) => {
                            let bytes = base64::engine::general_purpose::STANDARD
                                .decode(b.as_str().unwrap()).unwrap();
                            prop_assert_eq!(bytes, m.payload);
                        }
                        other => prop_assert!(false, "{:?}", other),
                    }
                }
                Err(e) => {
                    prop_assert!(e.is_permanent());
                    prop_assert_eq!(e.reason(), FailureReason::Invalid);
                }
            }
        }
    }
}
