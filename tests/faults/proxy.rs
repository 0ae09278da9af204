//! A TCP proxy on 127.0.0.1 between the relay and a service, whose behaviour the suite
//! switches while traffic flows: pass, added latency, stall, reset of every connection.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    /// Every chunk read from either side waits this long before it is forwarded.
    Latency(Duration),
    /// Nothing is forwarded (connections stay open, as behind a black-holing firewall).
    Stall,
}

pub struct Proxy {
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
    /// Cancelled to reset the connections accepted so far; replaced by a fresh token.
    generation: Arc<Mutex<CancellationToken>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Listens on `listen` (port 0 for any) and forwards to `target`.
    pub async fn start(listen: SocketAddr, target: SocketAddr) -> Self {
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
            generation.clone(),
        ));
        Self {
            addr,
            mode,
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
    generation: Arc<Mutex<CancellationToken>>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let reset = generation.lock().expect("proxy generation").clone();
        tokio::spawn(serve(client, target, mode.subscribe(), reset));
    }
}

async fn serve(
    mut client: TcpStream,
    target: SocketAddr,
    mode: watch::Receiver<Mode>,
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
        tokio::select! {
            _ = reset.cancelled() => true,
            _ = async {
                tokio::join!(
                    pump(&mut client_read, &mut server_write, mode.clone()),
                    pump(&mut server_read, &mut client_write, mode),
                )
            } => false,
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
