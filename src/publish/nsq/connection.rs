//! One TCP connection to nsqd, owned by a task: commands go in through a bounded channel, and
//! each gets the frame nsqd answered it with. nsqd answers a connection's commands in order,
//! so the task keeps the waiting callers in a FIFO and hands each frame to the oldest.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;
use tokio_util::codec::{FramedRead, FramedWrite};

use super::protocol::{Command, Frame, NsqCodec, ProtocolError, HEARTBEAT, MAGIC, OK};

/// Asked of nsqd in `IDENTIFY`: it sends `_heartbeat_` this often, and drops a client that
/// sends nothing in twice this long.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);

/// Without any frame for this long the connection is taken as dead: nsqd sends a heartbeat
/// every `HEARTBEAT_INTERVAL`, so only a half-open connection stays silent this long.
const SILENCE: Duration = Duration::from_secs(65);

/// Commands queued for the task at once. A publish waits for room (backpressure); the relay
/// bounds its publishes in flight itself, so this only smooths bursts.
const QUEUE: usize = 256;

/// How a command ended, for the caller to classify.
#[derive(Debug)]
pub enum Reply {
    Ok,
    /// nsqd's error frame, `E_CODE description`. nsqd closes the connection after any error
    /// to a publishing command.
    Error(String),
}

/// Why a command got no reply.
#[derive(Debug, thiserror::Error)]
pub enum Lost {
    #[error("no answer from nsqd within {0:?}")]
    Timeout(Duration),
    #[error("the connection to nsqd failed")]
    Io(#[source] ProtocolError),
    #[error("nsqd closed the connection")]
    Closed,
    #[error("nsqd sent a frame nobody waited for")]
    Unexpected,
    #[error("nsqd refused the connection: {0}")]
    Refused(String),
}

struct Request {
    command: Command,
    reply: oneshot::Sender<Reply>,
}

/// A handle on the connection's task; cloning shares the connection.
#[derive(Clone)]
pub struct Connection {
    requests: mpsc::Sender<Request>,
}

/// What nsqd said to `IDENTIFY` with feature negotiation.
#[derive(Debug, Default, serde::Deserialize)]
pub struct ServerInfo {
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub auth_required: bool,
    /// The connection is upgraded to TLS next.
    #[serde(default)]
    pub tls_v1: bool,
}

/// Any stream the connection runs on: plain TCP, or TLS over it after the upgrade.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}
type Io = Box<dyn Stream>;
type Reader = FramedRead<ReadHalf<Io>, NsqCodec>;
type Writer = FramedWrite<WriteHalf<Io>, NsqCodec>;

/// How to upgrade to TLS: the client settings and the name nsqd's certificate must carry.
#[derive(Clone)]
pub struct Tls {
    pub connector: TlsConnector,
    pub name: ServerName<'static>,
}

fn framed(io: Io) -> (Reader, Writer) {
    let (read, write) = tokio::io::split(io);
    (
        FramedRead::new(read, NsqCodec),
        FramedWrite::new(write, NsqCodec),
    )
}

/// The next frame, which must be a response.
async fn response(reader: &mut Reader) -> Result<Bytes, Lost> {
    match reader.next().await {
        Some(Ok(Frame::Response(data))) => Ok(data),
        Some(Ok(Frame::Error(data))) => Err(Lost::Refused(String::from_utf8_lossy(&data).into())),
        Some(Ok(Frame::Message(_))) => Err(Lost::Unexpected),
        Some(Err(e)) => Err(Lost::Io(e)),
        None => Err(Lost::Closed),
    }
}

impl Connection {
    /// Connects, sends the magic and `IDENTIFY`, upgrades to TLS when `tls` is given, and
    /// starts the task; all within `timeout`.
    pub async fn open(
        address: &str,
        tls: Option<&Tls>,
        auth_secret: &str,
        timeout: Duration,
        write_timeout: Duration,
    ) -> Result<(Self, ServerInfo), Lost> {
        let io = |e| Lost::Io(ProtocolError::Io(e));
        let handshake = async {
            let stream = TcpStream::connect(address).await.map_err(io)?;
            stream.set_nodelay(true).map_err(io)?;
            let (mut reader, mut writer) = framed(Box::new(stream));
            writer.get_mut().write_all(MAGIC).await.map_err(io)?;
            let identify = serde_json::json!({
                "client_id": "outbox-relay",
                "user_agent": concat!("outbox-relay/", env!("CARGO_PKG_VERSION")),
                "feature_negotiation": true,
                "heartbeat_interval": HEARTBEAT_INTERVAL.as_millis() as u64,
                "tls_v1": tls.is_some(),
            });
            writer
                .send(Command::Identify(Bytes::from(identify.to_string())))
                .await
                .map_err(Lost::Io)?;
            let data = response(&mut reader).await?;
            let info: ServerInfo = if data == OK {
                ServerInfo::default()
            } else {
                serde_json::from_slice(&data).unwrap_or_default()
            };
            let Some(tls) = tls else {
                return Ok((reader, writer, info));
            };
            if !info.tls_v1 {
                return Err(Lost::Refused(
                    "nsqd does not offer TLS (it needs --tls-cert and --tls-key)".into(),
                ));
            }
            // nsqd waits for the client's TLS hello now, so nothing of it is buffered yet.
            if !reader.read_buffer().is_empty() {
                return Err(Lost::Unexpected);
            }
            let plain = reader.into_inner().unsplit(writer.into_inner());
            let secured = tls
                .connector
                .connect(tls.name.clone(), plain)
                .await
                .map_err(io)?;
            let (mut reader, writer) = framed(Box::new(secured));
            // nsqd confirms the upgrade with an OK over TLS.
            if response(&mut reader).await? != OK {
                return Err(Lost::Unexpected);
            }
            Ok((reader, writer, info))
        };
        let authorised = async {
            let (mut reader, mut writer, info) = handshake.await?;
            if info.auth_required {
                if auth_secret.is_empty() {
                    return Err(Lost::Refused(
                        "nsqd requires AUTH and broker.nsq.auth_secret is empty".into(),
                    ));
                }
                writer
                    .send(Command::Auth(Bytes::copy_from_slice(
                        auth_secret.as_bytes(),
                    )))
                    .await
                    .map_err(Lost::Io)?;
                // The identity and permission count; an error frame is a refusal.
                response(&mut reader).await?;
            }
            Ok((reader, writer, info))
        };
        let (reader, writer, info) = tokio::time::timeout(timeout, authorised)
            .await
            .map_err(|_| Lost::Timeout(timeout))??;
        let (requests, queue) = mpsc::channel(QUEUE);
        tokio::spawn(run(reader, writer, queue, write_timeout));
        Ok((Self { requests }, info))
    }

    /// False once the task ended (the connection failed or nsqd closed it).
    pub fn is_open(&self) -> bool {
        !self.requests.is_closed()
    }

    /// Sends `command` and waits for nsqd's answer, all within `timeout`.
    pub async fn call(&self, command: Command, timeout: Duration) -> Result<Reply, Lost> {
        let call = async {
            let (reply, answer) = oneshot::channel();
            self.requests
                .send(Request { command, reply })
                .await
                .map_err(|_| Lost::Closed)?;
            answer.await.map_err(|_| Lost::Closed)
        };
        tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| Lost::Timeout(timeout))?
    }
}

/// The connection's loop: writes commands in the order they came, answers heartbeats, and
/// hands every answer to the oldest caller waiting. It ends on the first failure or error
/// frame (nsqd closes the connection after one anyway); the callers still waiting then see
/// their reply dropped, and `Connection::is_open` turns false.
async fn run(
    mut reader: Reader,
    mut writer: Writer,
    mut queue: mpsc::Receiver<Request>,
    write_timeout: Duration,
) {
    let mut waiting: VecDeque<oneshot::Sender<Reply>> = VecDeque::new();
    let ended = loop {
        tokio::select! {
            request = queue.recv() => {
                let Some(Request { command, reply }) = request else {
                    break None; // every handle dropped: the publisher closed
                };
                waiting.push_back(reply);
                match tokio::time::timeout(write_timeout, writer.send(command)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        answer_what_came(&mut reader, &mut waiting).await;
                        break Some(Lost::Io(e));
                    }
                    Err(_) => break Some(Lost::Timeout(write_timeout)),
                }
            }
            frame = tokio::time::timeout(SILENCE, reader.next()) => match frame {
                Err(_) => break Some(Lost::Timeout(SILENCE)),
                Ok(None) => break Some(Lost::Closed),
                Ok(Some(Err(e))) => break Some(Lost::Io(e)),
                Ok(Some(Ok(Frame::Response(data)))) if data == HEARTBEAT => {
                    match tokio::time::timeout(write_timeout, writer.send(Command::Nop)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => break Some(Lost::Io(e)),
                        Err(_) => break Some(Lost::Timeout(write_timeout)),
                    }
                }
                Ok(Some(Ok(Frame::Response(data)))) => {
                    let Some(caller) = waiting.pop_front() else {
                        break Some(Lost::Unexpected);
                    };
                    let reply = if data == OK {
                        Reply::Ok
                    } else {
                        Reply::Error(format!("unexpected response {:?}", String::from_utf8_lossy(&data)))
                    };
                    let _ = caller.send(reply); // the caller may have timed out
                }
                Ok(Some(Ok(Frame::Error(data)))) => {
                    if let Some(caller) = waiting.pop_front() {
                        let _ = caller.send(Reply::Error(String::from_utf8_lossy(&data).into()));
                    }
                    break None;
                }
                Ok(Some(Ok(Frame::Message(_)))) => break Some(Lost::Unexpected),
            }
        }
    };
    // Closing the queue first makes `is_open` false before the waiting callers wake up, so
    // the relay's next `ready` connects again.
    queue.close();
    if let Some(lost) = ended {
        tracing::warn!(error = %lost, waiting = waiting.len(), "connection to nsqd lost");
    }
}

/// After a failed write, the answers nsqd sent before it closed the connection: nsqd refuses
/// an oversize PUB before reading its body and closes at once, so the write of the body fails
/// while the error frame that says why may already be here. When the close came as a reset,
/// the kernel dropped it, and the callers see a lost connection instead.
async fn answer_what_came(reader: &mut Reader, waiting: &mut VecDeque<oneshot::Sender<Reply>>) {
    const GRACE: Duration = Duration::from_millis(200);
    while let Ok(Some(Ok(frame))) = tokio::time::timeout(GRACE, reader.next()).await {
        if matches!(&frame, Frame::Response(data) if data == HEARTBEAT) {
            continue;
        }
        let Some(caller) = waiting.pop_front() else {
            return;
        };
        match frame {
            Frame::Response(data) if data == OK => {
                let _ = caller.send(Reply::Ok);
            }
            Frame::Error(data) => {
                let _ = caller.send(Reply::Error(String::from_utf8_lossy(&data).into()));
                return;
            }
            _ => return,
        }
    }
}
