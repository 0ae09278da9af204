//! The part of nsqd's TCP protocol (V2) a publisher speaks, as a tokio-util codec.
//!
//! After the 4-byte magic `  V2` a client sends commands: a line (`PUB <topic>\n`), and for
//! those with a body its size (4 bytes, big-endian) and the body. nsqd answers every command
//! but `NOP` with one frame, in the order the commands came: size (4 bytes, big-endian, the
//! bytes after it), frame type (4 bytes: 0 response, 1 error, 2 message), data.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

pub const MAGIC: &[u8] = b"  V2";

/// The data of the response that acknowledges a `PUB` (and an `IDENTIFY` without feature
/// negotiation).
pub const OK: &[u8] = b"OK";

/// What nsqd sends every heartbeat interval; a client that does not answer (with `NOP`) in
/// twice that interval is disconnected.
pub const HEARTBEAT: &[u8] = b"_heartbeat_";

/// nsqd's answers to a publisher are short (`OK`, an error line, the `IDENTIFY` JSON); a
/// bigger size means the stream is not nsqd's protocol, and is refused before buffering it.
const MAX_FRAME: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// The client's settings, a JSON object; answered with `OK` or, with
    /// `feature_negotiation`, a JSON object of the server's.
    Identify(Bytes),
    Pub {
        topic: String,
        body: Bytes,
    },
    /// A publish nsqd delivers `defer_ms` later. The relay claims a delayed row only once it
    /// is due, so it never sends one; kept with its encoding test so the protocol module
    /// covers every publishing command.
    #[allow(dead_code)]
    Dpub {
        topic: String,
        defer_ms: u64,
        body: Bytes,
    },
    /// The secret nsqd hands to its auth server; answered with a JSON object.
    Auth(Bytes),
    /// The answer to a heartbeat; nsqd sends nothing back.
    Nop,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Response(Bytes),
    /// `E_CODE description`.
    Error(Bytes),
    /// A message for a subscriber; a publisher never subscribes.
    Message(Bytes),
}

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("frame of {0} bytes: not nsqd's protocol")]
    FrameSize(usize),
    #[error("unknown frame type {0}")]
    FrameType(u32),
}

#[derive(Debug, Default)]
pub struct NsqCodec;

impl Encoder<Command> for NsqCodec {
    type Error = ProtocolError;

    fn encode(&mut self, command: Command, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        match command {
            Command::Identify(body) => {
                dst.put_slice(b"IDENTIFY\n");
                put_body(dst, &body);
            }
            Command::Pub { topic, body } => {
                dst.reserve(6 + topic.len() + 4 + body.len());
                dst.put_slice(b"PUB ");
                dst.put_slice(topic.as_bytes());
                dst.put_u8(b'\n');
                put_body(dst, &body);
            }
            Command::Dpub {
                topic,
                defer_ms,
                body,
            } => {
                dst.put_slice(format!("DPUB {topic} {defer_ms}\n").as_bytes());
                put_body(dst, &body);
            }
            Command::Auth(secret) => {
                dst.put_slice(b"AUTH\n");
                put_body(dst, &secret);
            }
            Command::Nop => dst.put_slice(b"NOP\n"),
        }
        Ok(())
    }
}

fn put_body(dst: &mut BytesMut, body: &[u8]) {
    // Sizes are checked against max_message_bytes (at most i32::MAX) before a command is built.
    dst.put_u32(body.len() as u32);
    dst.put_slice(body);
}

impl Decoder for NsqCodec {
    type Item = Frame;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
        if src.len() < 4 {
            return Ok(None);
        }
        let size = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if !(4..=MAX_FRAME).contains(&size) {
            return Err(ProtocolError::FrameSize(size));
        }
        if src.len() < 4 + size {
            src.reserve(4 + size - src.len());
            return Ok(None);
        }
        src.advance(4);
        let kind = src.get_u32();
        let data = src.split_to(size - 4).freeze();
        match kind {
            0 => Ok(Some(Frame::Response(data))),
            1 => Ok(Some(Frame::Error(data))),
            2 => Ok(Some(Frame::Message(data))),
            other => Err(ProtocolError::FrameType(other)),
        }
    }
}

/// The code of an error frame's data (`E_BAD_TOPIC` of `E_BAD_TOPIC PUB topic name ...`).
pub fn error_code(data: &[u8]) -> &str {
    let text = std::str::from_utf8(data).unwrap_or("");
    text.split_whitespace().next().unwrap_or("")
}

/// nsqd's rule for topic names: 1 to 64 bytes of `[.a-zA-Z0-9_-]`, the optional suffix
/// `#ephemeral` counted in. nsqd answers a `PUB` to any other name with a fatal error.
pub fn valid_topic(name: &str) -> bool {
    let base = name.strip_suffix("#ephemeral").unwrap_or(name);
    (1..=64).contains(&name.len())
        && !base.is_empty()
        && base
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(command: Command) -> Vec<u8> {
        let mut dst = BytesMut::new();
        NsqCodec.encode(command, &mut dst).unwrap();
        dst.to_vec()
    }

    fn frame(kind: u32, data: &[u8]) -> Vec<u8> {
        let mut f = ((data.len() + 4) as u32).to_be_bytes().to_vec();
        f.extend(kind.to_be_bytes());
        f.extend(data);
        f
    }

    fn decode_all(bytes: &[u8]) -> Vec<Frame> {
        let mut src = BytesMut::from(bytes);
        let mut frames = Vec::new();
        while let Some(f) = NsqCodec.decode(&mut src).unwrap() {
            frames.push(f);
        }
        assert!(src.is_empty(), "left over: {src:?}");
        frames
    }

    #[test]
    fn commands_are_encoded_as_nsqd_reads_them() {
        assert_eq!(
            encode(Command::Identify(Bytes::from_static(b"{\"a\":1}"))),
            b"IDENTIFY\n\x00\x00\x00\x07{\"a\":1}"
        );
        assert_eq!(
            encode(Command::Pub {
                topic: "orders".into(),
                body: Bytes::from_static(b"hello"),
            }),
            b"PUB orders\n\x00\x00\x00\x05hello"
        );
        assert_eq!(
            encode(Command::Dpub {
                topic: "orders".into(),
                defer_ms: 1500,
                body: Bytes::from_static(b"hi"),
            }),
            b"DPUB orders 1500\n\x00\x00\x00\x02hi"
        );
        assert_eq!(
            encode(Command::Auth(Bytes::from_static(b"s3cret"))),
            b"AUTH\n\x00\x00\x00\x06s3cret"
        );
        assert_eq!(encode(Command::Nop), b"NOP\n");
    }

    #[test]
    fn a_body_of_256_bytes_or_more_has_a_big_endian_size() {
        let body = vec![b'x'; 0x1_0203];
        let wire = encode(Command::Pub {
            topic: "t".into(),
            body: Bytes::from(body.clone()),
        });
        assert_eq!(&wire[..6], b"PUB t\n");
        assert_eq!(&wire[6..10], [0, 1, 2, 3]);
        assert_eq!(&wire[10..], &body[..]);
    }

    #[test]
    fn frames_of_each_type_are_decoded() {
        let mut wire = frame(0, b"OK");
        wire.extend(frame(1, b"E_BAD_TOPIC PUB topic name \"a b\" is not valid"));
        wire.extend(frame(0, b"_heartbeat_"));
        wire.extend(frame(2, b"message bytes"));
        let frames = decode_all(&wire);
        assert_eq!(frames[0], Frame::Response(Bytes::from_static(OK)));
        let Frame::Error(e) = &frames[1] else {
            panic!("{:?}", frames[1])
        };
        assert_eq!(error_code(e), "E_BAD_TOPIC");
        assert_eq!(frames[2], Frame::Response(Bytes::from_static(HEARTBEAT)));
        assert_eq!(
            frames[3],
            Frame::Message(Bytes::from_static(b"message bytes"))
        );
    }

    #[test]
    fn a_partial_frame_waits_for_the_rest_byte_by_byte() {
        let wire = [
            frame(0, b"OK"),
            frame(1, b"E_PUB_FAILED PUB failed exiting"),
        ]
        .concat();
        let mut src = BytesMut::new();
        let mut frames = Vec::new();
        for b in wire {
            src.put_u8(b);
            if let Some(f) = NsqCodec.decode(&mut src).unwrap() {
                frames.push(f);
            }
        }
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0], Frame::Response(Bytes::from_static(OK)));
        assert!(matches!(&frames[1], Frame::Error(e) if error_code(e) == "E_PUB_FAILED"));
        assert!(src.is_empty());
    }

    #[test]
    fn sizes_and_types_outside_the_protocol_are_errors() {
        let mut src = BytesMut::from(&[0, 0, 0, 2, 0, 0][..]);
        assert!(matches!(
            NsqCodec.decode(&mut src),
            Err(ProtocolError::FrameSize(2))
        ));
        let mut src = BytesMut::from(&[0x48, 0x54, 0x54, 0x50][..]); // "HTTP"
        assert!(matches!(
            NsqCodec.decode(&mut src),
            Err(ProtocolError::FrameSize(_))
        ));
        let mut src = BytesMut::from(&frame(7, b"x")[..]);
        assert!(matches!(
            NsqCodec.decode(&mut src),
            Err(ProtocolError::FrameType(7))
        ));
    }

    #[test]
    fn error_codes_are_the_first_word() {
        assert_eq!(
            error_code(b"E_BAD_MESSAGE PUB message too big 5 > 4"),
            "E_BAD_MESSAGE"
        );
        assert_eq!(error_code(b"E_INVALID"), "E_INVALID");
        assert_eq!(error_code(b""), "");
        assert_eq!(error_code(b"\xff\xfe"), "");
    }

    #[test]
    fn topic_names_follow_nsqd() {
        for ok in [
            "orders",
            "a",
            "a.b_c-D9",
            "orders#ephemeral",
            &"x".repeat(64),
        ] {
            assert!(valid_topic(ok), "{ok}");
        }
        let long_ephemeral = format!("{}#ephemeral", "x".repeat(55));
        for bad in [
            "",
            "#ephemeral",
            "a b",
            "a/b",
            "ä",
            "a#other",
            "a#ephemeral#ephemeral",
            &"x".repeat(65),
            &long_ephemeral,
        ] {
            assert!(!valid_topic(bad), "{bad}");
        }
        assert!(valid_topic(&format!("{}#ephemeral", "x".repeat(54))));
    }
}
