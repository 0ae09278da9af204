//! RabbitMQ (AMQP 0-9-1) publisher: publisher confirms, persistent, mandatory.
//!
//! One channel per destination exchange, so that a channel closed by the broker (for example
//! `404 NOT_FOUND` for a missing exchange) fails only that destination's in-flight messages.

mod config;

pub(crate) use config::check_url;
pub use config::AmqpConfig;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::Confirmation;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::Mutex;

use super::{header_pairs, FailureReason, Presence, PublishError, Publisher};
use crate::store::OutboxMessage;

/// AMQP delivery mode 2: the broker writes the message to disk.
const PERSISTENT: u8 = 2;

pub struct AmqpPublisher {
    config: AmqpConfig,
    publish_timeout: Duration,
    state: Mutex<State>,
    /// The connection's negotiated frame_max (0 before the first connection).
    frame_max: AtomicU32,
}

#[derive(Default)]
struct State {
    connection: Option<Connection>,
    channels: HashMap<String, Channel>,
}

impl AmqpPublisher {
    pub fn new(config: AmqpConfig, publish_timeout: Duration) -> Self {
        Self {
            config,
            publish_timeout,
            state: Mutex::new(State::default()),
            frame_max: AtomicU32::new(0),
        }
    }

    async fn connection<'a>(&self, state: &'a mut State) -> Result<&'a Connection, PublishError> {
        let alive = state
            .connection
            .as_ref()
            .is_some_and(|c| c.status().connected());
        if !alive {
            state.channels.clear();
            state.connection = None;
            let runtime = lapin::runtime::default_runtime().map_err(|e| {
                PublishError::retryable(
                    FailureReason::Unavailable,
                    format!("cannot connect to RabbitMQ at {}", self.config.url),
                )
                .caused_by(e)
            })?;
            let tls = OwnedTLSConfig {
                identity: None,
                cert_chain: self.config.tls_ca_pem.clone(),
            };
            let connect = Connection::connect_with_config(
                self.config.url.expose(),
                ConnectionProperties::default().with_connection_name("outbox-relay".into()),
                tls,
                runtime,
            );
            let conn = tokio::time::timeout(self.config.connect_timeout, connect)
                .await
                .map_err(|_| {
                    PublishError::retryable(
                        FailureReason::Unavailable,
                        format!(
                            "cannot connect to RabbitMQ at {}: no answer within {:?}",
                            self.config.url, self.config.connect_timeout
                        ),
                    )
                })?
                .map_err(|e| {
                    PublishError::retryable(
                        FailureReason::Unavailable,
                        format!("cannot connect to RabbitMQ at {}", self.config.url),
                    )
                    .caused_by(e)
                })?;
            tracing::info!(url = %self.config.url, "connected to RabbitMQ");
            self.frame_max
                .store(conn.configuration().frame_max(), Ordering::Relaxed);
            state.connection = Some(conn);
        }
        Ok(state.connection.as_ref().expect("connection was just set"))
    }

    async fn channel(&self, destination: &str) -> Result<Channel, PublishError> {
        let mut state = self.state.lock().await;
        if let Some(ch) = state.channels.get(destination) {
            if ch.status().connected() {
                return Ok(ch.clone());
            }
        }
        // Only `ready` reconnects: a dead connection fails this publish at once instead of
        // every in-flight chain queueing up behind its own reconnect attempt.
        let conn = state
            .connection
            .as_ref()
            .filter(|c| c.status().connected())
            .ok_or_else(|| {
                PublishError::retryable(FailureReason::Unavailable, "not connected to RabbitMQ")
            })?;
        let channel = conn.create_channel().await.map_err(|e| {
            PublishError::retryable(FailureReason::Unavailable, "cannot open channel").caused_by(e)
        })?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| {
                PublishError::retryable(FailureReason::Unavailable, "cannot enable confirms")
                    .caused_by(e)
            })?;
        state
            .channels
            .insert(destination.to_string(), channel.clone());
        Ok(channel)
    }
}

/// A failed publish or confirm: the broker closed the channel (404 for a missing exchange, 403
/// for access) or the connection went away. Classified by the broker's reply code, as lapin
/// reports it, not by the text: this is the publisher's one table of permanent and retryable
/// replies.
fn channel_error(e: lapin::Error) -> PublishError {
    let reply = match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => match amqp.kind() {
            AMQPErrorKind::Soft(code) => {
                Some((code.clone(), amqp.get_message().as_str().to_owned()))
            }
            AMQPErrorKind::Hard(_) => None,
        },
        _ => None,
    };
    let error = match reply {
        // PRECONDITION_FAILED covers other refusals too; RabbitMQ's over-size one reads
        // "message size N is larger than configured max size M", and no retry can fix it.
        Some((AMQPSoftError::PRECONDITIONFAILED, text)) if text.contains("max size") => {
            PublishError::permanent(FailureReason::TooLarge, "publish failed")
        }
        // The user's permissions do not cover this exchange: like Kafka's authorization
        // failures, permanent (after fixing permissions, `dead requeue` sends it again). A
        // refused login is not a channel error: `connection` reports it, retryable.
        Some((AMQPSoftError::ACCESSREFUSED, _)) => {
            PublishError::permanent(FailureReason::Unauthorized, "publish failed")
        }
        // A missing exchange may be declared any moment: retried.
        Some((AMQPSoftError::NOTFOUND, _)) => {
            PublishError::retryable(FailureReason::NotFound, "publish failed")
        }
        _ => PublishError::retryable(FailureReason::Unavailable, "publish failed"),
    };
    error.caused_by(e)
}

/// Bytes of the content header frame, which carries all properties and headers and, unlike
/// the body, cannot be split: a frame over the connection's frame_max makes the broker close
/// the whole connection (FRAME_ERROR), failing every publish in flight.
fn header_frame_size(properties: &BasicProperties) -> usize {
    let short = |s: &Option<ShortString>| s.as_ref().map_or(0, |s| 1 + s.as_str().len());
    let table = properties.headers().as_ref().map_or(0, |t| {
        4 + t
            .inner()
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    AMQPValue::LongString(s) => 4 + s.as_bytes().len(),
                    // `prepare` only puts long strings in the table; this bounds anything else.
                    _ => 16,
                };
                // Name (short string), type tag, value.
                1 + k.as_str().len() + 1 + value
            })
            .sum::<usize>()
    });
    // Frame header (7) and end (1); class, weight, body size and property flags (14).
    let fixed = 7 + 1 + 14;
    let delivery_mode = properties.delivery_mode().map_or(0, |_| 1);
    let timestamp = properties.timestamp().map_or(0, |_| 8);
    fixed
        + short(properties.content_type())
        + short(properties.message_id())
        + table
        + delivery_mode
        + timestamp
}

/// Refuses, permanently, a message whose content header frame the broker would answer by
/// closing the connection; `frame_max` 0 means not negotiated yet (no check).
fn check_frame_size(properties: &BasicProperties, frame_max: u32) -> Result<(), PublishError> {
    let size = header_frame_size(properties);
    if frame_max > 0 && size > frame_max as usize {
        return Err(PublishError::permanent(
            FailureReason::TooLarge,
            format!(
                "headers too large for AMQP: the content header frame takes {size} bytes, over the connection's frame_max of {frame_max}"
            ),
        ));
    }
    Ok(())
}

fn short(what: &str, value: &str) -> Result<ShortString, PublishError> {
    ShortString::try_new(value).map_err(|e| {
        PublishError::permanent(
            FailureReason::Invalid,
            format!("{what} is too long for AMQP: {e}"),
        )
    })
}

/// The exchange, routing key and properties a row is published with. Everything that can be
/// checked before touching the broker; failures here are permanent. Public for the bench,
/// whose RabbitMQ ceiling sends what the relay sends.
pub fn prepare(
    message: &OutboxMessage,
) -> Result<(ShortString, ShortString, BasicProperties), PublishError> {
    let exchange = short("destination (exchange)", &message.destination)?;
    let routing_key = message
        .routing_key
        .as_deref()
        .or(message.message_key.as_deref())
        .unwrap_or("");
    let routing_key = short("routing key", routing_key)?;
    let mut headers = FieldTable::default();
    for (k, v) in header_pairs(&message.headers)? {
        headers.insert(
            short("header name", k)?,
            AMQPValue::LongString(LongString::from(v)),
        );
    }
    let timestamp = u64::try_from(message.committed_at.timestamp()).unwrap_or(0);
    let properties = BasicProperties::default()
        .with_message_id(short("message id", &message.message_id.to_string())?)
        .with_content_type(short("content type", &message.content_type)?)
        .with_delivery_mode(PERSISTENT)
        .with_timestamp(timestamp)
        .with_headers(headers);
    Ok((exchange, routing_key, properties))
}

impl Publisher for AmqpPublisher {
    async fn ready(&self) -> Result<(), PublishError> {
        let mut state = self.state.lock().await;
        self.connection(&mut state).await.map(|_| ())
    }

    async fn publish(&self, message: &OutboxMessage) -> Result<(), PublishError> {
        // Everything under one deadline: opening the channel and writing the frames can stall
        // too (a broker that sent connection.blocked stops all writes).
        tokio::time::timeout(self.publish_timeout, self.publish_confirmed(message))
            .await
            .unwrap_or_else(|_| {
                Err(PublishError::retryable(
                    FailureReason::Timeout,
                    format!("no publisher confirm within {:?}", self.publish_timeout),
                ))
            })
    }

    async fn close(&self) {
        let mut state = self.state.lock().await;
        let channels: Vec<Channel> = state.channels.drain().map(|(_, ch)| ch).collect();
        if let Some(conn) = state.connection.take() {
            // Channels first: a channel dropped while its connection closes is reported by
            // lapin as a connection error, which would be a false alarm at every clean stop.
            // A blocked or half-open connection never completes the close handshake.
            let close = async {
                for ch in channels {
                    let _ = ch.close(200, "outbox-relay shutting down".into()).await;
                }
                conn.close(200, "outbox-relay shutting down".into()).await
            };
            match tokio::time::timeout(self.config.connect_timeout, close).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "closing the RabbitMQ connection"),
                Err(_) => tracing::warn!("RabbitMQ did not answer the close in time"),
            }
        }
    }

    async fn presence(&self, destination: &str) -> Result<Presence, PublishError> {
        // The default exchange always exists and cannot be declared, even passively.
        if destination.is_empty() {
            return Ok(Presence::Exists);
        }
        tokio::time::timeout(self.publish_timeout, self.declare_passive(destination))
            .await
            .unwrap_or_else(|_| {
                Err(PublishError::retryable(
                    FailureReason::Timeout,
                    format!(
                        "no answer to exchange.declare within {:?}",
                        self.publish_timeout
                    ),
                ))
            })
    }
}

impl AmqpPublisher {
    /// A passive declare on a channel of its own: the broker closes the channel when the
    /// exchange is missing, which must not touch the channels that publish.
    async fn declare_passive(&self, exchange: &str) -> Result<Presence, PublishError> {
        let channel = {
            let mut state = self.state.lock().await;
            let conn = self.connection(&mut state).await?;
            conn.create_channel().await.map_err(|e| {
                PublishError::retryable(FailureReason::Unavailable, "cannot open channel")
                    .caused_by(e)
            })?
        };
        let options = ExchangeDeclareOptions {
            passive: true,
            ..ExchangeDeclareOptions::default()
        };
        let declared = channel
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Direct,
                options,
                FieldTable::default(),
            )
            .await;
        match declared {
            Ok(()) => {
                let _ = channel.close(200, "outbox-relay doctor".into()).await;
                Ok(Presence::Exists)
            }
            Err(e) => match channel_error(e) {
                e if e.reason() == FailureReason::NotFound => Ok(Presence::Missing),
                e => Err(e),
            },
        }
    }

    async fn publish_confirmed(&self, message: &OutboxMessage) -> Result<(), PublishError> {
        let (exchange, routing_key, properties) = prepare(message)?;
        let channel = self.channel(&message.destination).await?;
        check_frame_size(&properties, self.frame_max.load(Ordering::Relaxed))?;
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let confirm = channel
            .basic_publish(exchange, routing_key, options, &message.payload, properties)
            .await
            .map_err(channel_error)?;
        let confirmation = confirm.await.map_err(channel_error)?;
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
                Err(PublishError::retryable(
                    FailureReason::Unroutable,
                    format!(
                        "returned by the broker: {} {} (no queue bound for this routing key?)",
                        returned.reply_code, returned.reply_text
                    ),
                ))
            }
            Confirmation::Nack(None) => Err(PublishError::retryable(
                FailureReason::Rejected,
                "negatively acknowledged by the broker",
            )),
            Confirmation::NotRequested => Err(PublishError::retryable(
                FailureReason::Other,
                "channel is not in confirm mode",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publish::testing::{any_json, message};
    use proptest::prelude::*;

    /// The content header frame as lapin writes it to the socket.
    fn encoded_header_frame(properties: &BasicProperties) -> usize {
        use amq_protocol::frame::{gen_frame, AMQPContentHeader, AMQPFrame};
        let frame = AMQPFrame::Header(
            1,
            AMQPContentHeader {
                class_id: 60, // basic
                body_size: 1,
                properties: properties.clone(),
            },
        );
        cookie_factory::gen_simple(gen_frame(&frame), Vec::new())
            .expect("encodable")
            .len()
    }

    #[test]
    fn a_header_frame_over_frame_max_is_refused_permanently() {
        let headers: serde_json::Map<_, _> = (0..40)
            .map(|i| (format!("h{i}"), serde_json::json!("x".repeat(4096))))
            .collect();
        let (_, _, properties) = prepare(&message(headers.into())).unwrap();
        let size = encoded_header_frame(&properties);
        assert!(check_frame_size(&properties, size as u32).is_ok());
        assert!(
            check_frame_size(&properties, 0).is_ok(),
            "not negotiated yet"
        );
        let e = check_frame_size(&properties, size as u32 - 1).unwrap_err();
        assert!(e.is_permanent());
        assert_eq!(e.reason(), FailureReason::TooLarge);
        assert!(e.to_string().contains("frame_max"), "{e}");
    }

    #[test]
    fn access_refused_on_a_channel_is_permanent_and_not_found_is_not() {
        // What lapin reports when the broker closes the channel with `code`.
        let closed = |code: u16, text: &str| {
            let error = lapin::protocol::AMQPError::from_id(code, text.into()).expect("known code");
            lapin::Error::from(lapin::ErrorKind::ProtocolError(error))
        };
        let refused = channel_error(closed(
            403,
            "ACCESS_REFUSED - write access to exchange 'x' in vhost '/' refused for user 'u'",
        ));
        assert!(refused.is_permanent(), "{refused}");
        assert_eq!(refused.reason(), FailureReason::Unauthorized);
        let missing = channel_error(closed(404, "NOT_FOUND - no exchange 'x' in vhost '/'"));
        assert!(!missing.is_permanent(), "{missing}");
        assert_eq!(missing.reason(), FailureReason::NotFound);
        let too_large = channel_error(closed(
            406,
            "PRECONDITION_FAILED - message size 2097152 is larger than configured max size 1048576",
        ));
        assert!(too_large.is_permanent(), "{too_large}");
        assert_eq!(too_large.reason(), FailureReason::TooLarge);
        // Classified by the code, not by words in the text.
        let other = channel_error(closed(
            406,
            "PRECONDITION_FAILED - ACCESS_REFUSED NOT_FOUND",
        ));
        assert!(!other.is_permanent(), "{other}");
        assert_eq!(other.reason(), FailureReason::Unavailable);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// The size the frame_max check uses is the size lapin sends, for any headers.
        #[test]
        fn header_frame_size_is_what_lapin_encodes(
            headers in prop::collection::btree_map(".{0,255}", ".{0,2000}", 0..12),
            content_type in ".{0,100}",
        ) {
            let mut m = message(serde_json::to_value(headers).unwrap());
            m.content_type = content_type;
            if let Ok((_, _, properties)) = prepare(&m) {
                prop_assert_eq!(header_frame_size(&properties), encoded_header_frame(&properties));
            }
        }

        /// The AMQP properties are built from any headers column, or the row is refused as
        /// permanently invalid; header names over 255 bytes are a refusal, not a panic.
        #[test]
        fn any_headers_build_properties_or_a_permanent_error(v in any_json()) {
            match prepare(&message(v.clone())) {
                Ok((_, _, properties)) => {
                    let object = v.as_object().expect("only objects convert");
                    let table = properties.headers().as_ref().expect("headers set");
                    prop_assert_eq!(table.inner().len(), object.len());
                    for (k, value) in object {
                        let got = table.inner().get(k.as_str());
                        let want = AMQPValue::LongString(LongString::from(value.as_str().unwrap()));
                        prop_assert_eq!(got, Some(&want));
                    }
                }
                Err(e) => {
                    prop_assert!(e.is_permanent(), "{}", e);
                    prop_assert_eq!(e.reason(), FailureReason::Invalid);
                }
            }
        }
    }
}
