//! A minimal nsqd consumer over its TCP protocol (V2): one connection subscribed to one
//! channel of a topic, every message finished (FIN) as soon as it is read. The tests, the
//! fault suite's verifier, the bench and the demo read topics with it; it needs only tokio
//! and serde_json, so the demo includes this file as it is.
//!
//! Frames from nsqd: size (4 bytes, big-endian, the bytes after it), type (4 bytes: 0
//! response, 1 error, 2 message), data. A message's data: timestamp (8 bytes, nanoseconds),
//! attempts (2 bytes), nsqd's message id (16 bytes), body.

// Each user reads what it needs of a message: the demo, only the body.
#![allow(dead_code)]

use std::io;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const RESPONSE: u32 = 0;
const ERROR: u32 = 1;
const MESSAGE: u32 = 2;

/// A frame larger than this is not nsqd's (its --max-msg-size is 1 MiB by default).
const MAX_FRAME: usize = 16 * 1024 * 1024;

/// One message as nsqd delivered it.
#[derive(Debug, Clone)]
pub struct Message {
    /// nsqd's id: a delivery of the same message again (after a requeue, or re-read after
    /// nsqd restarted) carries the same id; the same row published twice gets two.
    pub id: [u8; 16],
    /// Deliveries of this message by nsqd, this one included. Above 1, nsqd delivered it
    /// before and put it back in the channel's queue, which it does at the end of the queue.
    pub attempts: u16,
    /// When nsqd took the message (the publish).
    pub timestamp: SystemTime,
    pub body: Vec<u8>,
}

/// A subscription: one consumer of one channel. [`Subscription::next`] may be given up (a
/// timeout) and called again: bytes read and not yet a whole frame, and commands not yet
/// written, wait in the subscription's buffers.
pub struct Subscription {
    stream: TcpStream,
    read: Vec<u8>,
    write: Vec<u8>,
    /// A message whose FIN is not written yet.
    ready: Option<Message>,
}

fn protocol_error(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

impl Subscription {
    /// Connects to nsqd at `address` and subscribes to `channel` of `topic` (nsqd creates
    /// both; a topic keeps its messages until it has a channel, then gives each channel the
    /// messages published after it exists), with up to `ready` messages in flight; all within
    /// `timeout`. nsqd sends a heartbeat every second and writes each message at once, not
    /// buffered: what it wrote before a connection ended has left nsqd.
    pub async fn open(
        address: &str,
        topic: &str,
        channel: &str,
        ready: u32,
        timeout: Duration,
    ) -> io::Result<Self> {
        let open = async {
            let stream = TcpStream::connect(address).await?;
            stream.set_nodelay(true)?;
            let mut sub = Self {
                stream,
                read: Vec::new(),
                write: b"  V2".to_vec(),
                ready: None,
            };
            let identify = serde_json::json!({
                "client_id": "outbox-relay-consumer",
                "heartbeat_interval": 1000,
                "output_buffer_size": -1,
            })
            .to_string();
            sub.command("IDENTIFY", Some(identify.as_bytes()));
            sub.expect_ok("IDENTIFY").await?;
            sub.command(&format!("SUB {topic} {channel}"), None);
            sub.expect_ok("SUB").await?;
            sub.command(&format!("RDY {ready}"), None);
            sub.flush().await?;
            Ok(sub)
        };
        tokio::time::timeout(timeout, open)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "nsqd did not answer in time"))?
    }

    /// Queues a command: its line, and the size and body for those that have one.
    fn command(&mut self, line: &str, body: Option<&[u8]>) {
        self.write.extend(line.as_bytes());
        self.write.push(b'\n');
        if let Some(body) = body {
            self.write.extend((body.len() as u32).to_be_bytes());
            self.write.extend(body);
        }
    }

    /// Writes what is queued; whatever a cancelled write left stays queued.
    async fn flush(&mut self) -> io::Result<()> {
        while !self.write.is_empty() {
            let n = self.stream.write(&self.write).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.write.drain(..n);
        }
        Ok(())
    }

    async fn expect_ok(&mut self, command: &str) -> io::Result<()> {
        self.flush().await?;
        match self.frame().await? {
            (RESPONSE, data) if data == b"OK" => Ok(()),
            (_, data) => Err(protocol_error(format!(
                "{command}: {}",
                String::from_utf8_lossy(&data)
            ))),
        }
    }

    /// The next frame: (type, data).
    async fn frame(&mut self) -> io::Result<(u32, Vec<u8>)> {
        loop {
            if self.read.len() >= 8 {
                let size = u32::from_be_bytes(self.read[..4].try_into().expect("4 bytes")) as usize;
                if !(4..=MAX_FRAME).contains(&size) {
                    return Err(protocol_error(format!("a frame of {size} bytes")));
                }
                if self.read.len() >= 4 + size {
                    let kind = u32::from_be_bytes(self.read[4..8].try_into().expect("4 bytes"));
                    let data = self.read[8..4 + size].to_vec();
                    self.read.drain(..4 + size);
                    return Ok((kind, data));
                }
            }
            if self.stream.read_buf(&mut self.read).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// The next message, finished; heartbeats are answered on the way. An error when the
    /// connection fails, nsqd sends an error frame, or no message arrives by `deadline`
    /// (`TimedOut`; the subscription can go on).
    pub async fn next(&mut self, deadline: Instant) -> io::Result<Message> {
        let next = async {
            loop {
                self.flush().await?;
                if let Some(m) = self.ready.take() {
                    return Ok(m);
                }
                match self.frame().await? {
                    (RESPONSE, data) if data == b"_heartbeat_" => self.command("NOP", None),
                    (MESSAGE, data) if data.len() >= 26 => {
                        let mut id = [0; 16];
                        id.copy_from_slice(&data[10..26]);
                        self.write.extend(b"FIN ");
                        self.write.extend(id);
                        self.write.push(b'\n');
                        let nanos = u64::from_be_bytes(data[..8].try_into().expect("8 bytes"));
                        self.ready = Some(Message {
                            id,
                            attempts: u16::from_be_bytes([data[8], data[9]]),
                            timestamp: UNIX_EPOCH + Duration::from_nanos(nanos),
                            body: data[26..].to_vec(),
                        });
                    }
                    (ERROR, data) => {
                        return Err(protocol_error(String::from_utf8_lossy(&data).into()))
                    }
                    (kind, data) => {
                        return Err(protocol_error(format!(
                            "frame type {kind} of {} bytes while consuming",
                            data.len()
                        )))
                    }
                }
            }
        };
        tokio::time::timeout_at(deadline.into(), next)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no message from nsqd in time"))?
    }
}
