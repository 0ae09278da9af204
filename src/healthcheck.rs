//! `outbox-relay healthcheck`: asks a running relay's `/livez`, for container health checks
//! in images that have no shell or HTTP client (the distroless image has neither).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

#[derive(Debug, thiserror::Error)]
pub enum HealthcheckError {
    #[error("no answer from {0} within {1:?}")]
    Timeout(SocketAddr, Duration),
    #[error("cannot ask {0}: {1}")]
    Unreachable(SocketAddr, String),
    #[error("/livez answered {0}: {1}")]
    NotLive(u16, String),
}

/// Where to reach a listener bound to `listen`: the unspecified address means every local
/// address, so ask loopback.
pub fn target(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// Ok when `/livez` at `addr` answers 200 within `timeout`.
pub async fn check(addr: SocketAddr, timeout: Duration) -> Result<(), HealthcheckError> {
    tokio::time::timeout(timeout, ask(addr))
        .await
        .map_err(|_| HealthcheckError::Timeout(addr, timeout))?
}

async fn ask(addr: SocketAddr) -> Result<(), HealthcheckError> {
    let (status, body) = get(addr, "/livez").await?;
    if status == hyper::StatusCode::OK {
        Ok(())
    } else {
        Err(HealthcheckError::NotLive(
            status.as_u16(),
            body.trim().to_string(),
        ))
    }
}

/// One plain HTTP/1.1 GET of `path` at `addr`, and the status and body of the answer (the
/// caller bounds it with a timeout). Also `top`'s scrape of `/metrics`.
pub async fn get(
    addr: SocketAddr,
    path: &str,
) -> Result<(hyper::StatusCode, String), HealthcheckError> {
    let unreachable =
        |e: &dyn std::fmt::Display| HealthcheckError::Unreachable(addr, e.to_string());
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| unreachable(&e))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unreachable(&e))?;
    tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|e| unreachable(&e))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| unreachable(&e))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| unreachable(&e))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
