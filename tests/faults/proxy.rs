//! A TCP proxy on 127.0.0.1 between the relay and a service, whose behaviour the suite
//! switches while traffic flows: pass, added latency, stall, reset of every connection.
//! In front of a Kafka broker it also follows the protocol's frames, so that the suite can hold
//! new requests back and know when the broker has answered every request it was given.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    /// Every chunk read from either side waits this long before it is forwarded.
    Latency(Duration),
    /// Nothing is forwarded (connections stay open, as behind a black-holing firewall).
    Stall,
}

/// Kafka requests passed to the broker and not answered yet, and whether new ones are held.
#[derive(Debug, Default, Clone, Copy)]
struct Requests {
    held: bool,
    unanswered: u64,
}

pub struct Proxy {
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
    /// Set for a Kafka broker: the pumps forward whole frames and count them.
    requests: Option<watch::Sender<Requests>>,
    /// Cancelled to reset the connections accepted so far; replaced by a fresh token.
    generation: Arc<Mutex<CancellationToken>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Listens on `listen` (port 0 for any) and forwards to `target`.
    pub async fn start(listen: SocketAddr, target: SocketAddr) -> Self {
        Self::start_with(listen, target, None).await
    }

    /// As `start`, in front of a Kafka broker (see `hold_requests`).
    pub async fn start_kafka(listen: SocketAddr, target: SocketAddr) -> Self {
        Self::start_with(listen, target, Some(watch::channel(Requests::default()).0)).await
    }

    async fn start_with(
        listen: SocketAddr,
        target: SocketAddr,
        requests: Option<watch::Sender<Requests>>,
    ) -> Self {
        let listener = TcpListener::bind(listen)
            .await
            .unwrap_or_else(|e| panic!("proxy cannot listen on {listen}: {e}"));
        let addr = listener.local_addr().expect("proxy address");
        let (mode, _) = watch::channel(Mode::Pass);
        let generation = Arc::new(Mutex::new(CancellationToken::new()));
        let accept = tokio::spawn(accept_loop(
            listener,
            target,
            mode.clone(),
            requests.clone(),
            generation.clone(),
        ));
        Self {
            addr,
            mode,
            requests,
            generation,
            accept,
        }
    }

    /// On any free loopback port, to `port` on loopback.
    pub async fn to_local(port: u16) -> Self {
        Self::start(([127, 0, 0, 1], 0).into(), ([127, 0, 0, 1], port).into()).await
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// Stops passing new Kafka requests to the broker (each connection keeps the one it has
    /// read) and waits until the broker has answered every request passed before: from then on
    /// nothing from the clients can change the broker's logs until `release_requests`.
    pub async fn hold_requests(&self, deadline: Duration) {
        let requests = self.requests.as_ref().expect("a Kafka proxy");
        requests.send_modify(|r| r.held = true);
        let mut answered = requests.subscribe();
        let waited = tokio::time::timeout_at(
            Instant::now() + deadline,
            answered.wait_for(|r| r.unanswered == 0),
        )
        .await;
        assert!(
            matches!(waited, Ok(Ok(_))),
            "the broker behind {} answered no request for {deadline:?}",
            self.addr
        );
    }

    pub fn release_requests(&self) {
        if let Some(requests) = &self.requests {
            requests.send_modify(|r| r.held = false);
        }
    }

    /// Drops every open connection with a TCP reset; new connections are accepted as before.
    pub fn reset(&self) {
        let mut current = self.generation.lock().expect("proxy generation");
        current.cancel();
        *current = CancellationToken::new();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.reset();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    mode: watch::Sender<Mode>,
    requests: Option<watch::Sender<Requests>>,
    generation: Arc<Mutex<CancellationToken>>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let reset = generation.lock().expect("proxy generation").clone();
        tokio::spawn(serve(
            client,
            target,
            mode.subscribe(),
            requests.clone(),
            reset,
        ));
    }
}

async fn serve(
    mut client: TcpStream,
    target: SocketAddr,
    mode: watch::Receiver<Mode>,
    requests: Option<watch::Sender<Requests>>,
    reset: CancellationToken,
) {
    // A refused upstream closes the client's connection, as the service itself would.
    let Ok(mut server) = TcpStream::connect(target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let was_reset = {
        let (mut client_read, mut client_write) = client.split();
        let (mut server_read, mut server_write) = server.split();
        match &requests {
            None => tokio::select! {
                _ = reset.cancelled() => true,
                _ = async {
                    tokio::join!(
                        pump(&mut client_read, &mut server_write, mode.clone()),
                        pump(&mut server_read, &mut client_write, mode),
                    )
                } => false,
            },
            Some(requests) => {
                let open = Unanswered::new(requests);
                tokio::select! {
                    _ = reset.cancelled() => true,
                    _ = async {
                        tokio::join!(
                            pump_frames(&mut client_read, &mut server_write, mode.clone(), &open, Direction::Requests),
                            pump_frames(&mut server_read, &mut client_write, mode, &open, Direction::Responses),
                        )
                    } => false,
                }
            }
        }
    };
    if was_reset {
        let _ = client.set_zero_linger();
        let _ = server.set_zero_linger();
    }
}

async fn pump<R, W>(from: &mut R, to: &mut W, mut mode: watch::Receiver<Mode>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        hold(&mut mode).await;
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Requests,
    Responses,
}

/// One connection's unanswered requests, given back to the proxy's count when the connection
/// ends: a closed connection's requests are never answered.
struct Unanswered<'a> {
    requests: &'a watch::Sender<Requests>,
    open: std::sync::atomic::AtomicU64,
}

impl<'a> Unanswered<'a> {
    fn new(requests: &'a watch::Sender<Requests>) -> Self {
        Self {
            requests,
            open: 0.into(),
        }
    }

    /// Waits until requests are not held and counts one passed, in one step: a hold that
    /// starts after this returns waits for this request's answer.
    async fn pass_request(&self) {
        let mut held = self.requests.subscribe();
        loop {
            let passed = self.requests.send_if_modified(|r| {
                if r.held {
                    return false;
                }
                r.unanswered += 1;
                true
            });
            if passed {
                self.open.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                return;
            }
            if held.wait_for(|r| !r.held).await.is_err() {
                return;
            }
        }
    }

    fn answered(&self) {
        // A response the proxy did not see a request for (none in Kafka) must not wrap.
        let one = self
            .open
            .fetch_update(
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
                |n| n.checked_sub(1),
            )
            .is_ok();
        if one {
            self.requests.send_modify(|r| r.unanswered -= 1);
        }
    }
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        let open = *self.open.get_mut();
        if open > 0 {
            self.requests.send_modify(|r| r.unanswered -= open);
        }
    }
}

/// Forwards whole Kafka frames (a 4-byte big-endian size, then that many bytes).
async fn pump_frames<R, W>(
    from: &mut R,
    to: &mut W,
    mut mode: watch::Receiver<Mode>,
    open: &Unanswered<'_>,
    direction: Direction,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut frame = Vec::new();
    loop {
        let mut size = [0u8; 4];
        if from.read_exact(&mut size).await.is_err() {
            let _ = to.shutdown().await;
            return;
        }
        let len = u32::from_be_bytes(size) as usize;
        frame.clear();
        frame.extend_from_slice(&size);
        frame.resize(4 + len, 0);
        if from.read_exact(&mut frame[4..]).await.is_err() {
            let _ = to.shutdown().await;
            return;
        }
        match direction {
            Direction::Requests => {
                hold(&mut mode).await;
                open.pass_request().await;
            }
            Direction::Responses => {
                // Answered once read from the broker: a stopped client may not read it.
                open.answered();
                hold(&mut mode).await;
            }
        }
        if to.write_all(&frame).await.is_err() {
            return;
        }
    }
}

/// Waits as long as the current mode says before a chunk may pass.
async fn hold(mode: &mut watch::Receiver<Mode>) {
    loop {
        let current = *mode.borrow_and_update();
        match current {
            Mode::Pass => return,
            Mode::Latency(d) => {
                tokio::time::sleep(d).await;
                return;
            }
            Mode::Stall => {
                if mode.changed().await.is_err() {
                    return;
                }
            }
        }
    }
}
