//! The HTTP listener: `/livez`, `/readyz`, `/metrics`. Nothing else is served.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use serde::{Deserialize, Serialize};

use crate::config::{Checks, DAY};
use crate::health::Health;
use crate::telemetry::instruments::Exporter;

#[derive(Clone)]
struct AppState {
    health: Arc<Health>,
    metrics: Option<Exporter>,
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

pub async fn serve(
    listener: TcpListener,
    health: Arc<Health>,
    metrics: Option<Exporter>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(AppState { health, metrics });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

async fn livez(State(s): State<AppState>) -> (StatusCode, String) {
    match s.health.live() {
        Ok(()) => (StatusCode::OK, "ok\n".into()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

async fn readyz(State(s): State<AppState>) -> (StatusCode, String) {
    match s.health.ready() {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

async fn render_metrics(
    State(s): State<AppState>,
) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    let content_type = [("content-type", "text/plain; version=0.0.4")];
    match s.metrics {
        Some(exporter) => {
            match tokio::task::spawn_blocking(move || exporter.render_blocking()).await {
                Ok(text) => (StatusCode::OK, content_type, text),
                Err(e) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    content_type,
                    format!("cannot render metrics: {e}\n"),
                ),
            }
        }
        None => (
            StatusCode::NOT_FOUND,
            content_type,
            "metrics are not enabled\n".into(),
        ),
    }
}

/// The `[http]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// `/livez` fails once a task is this much later than the turn it announced.
    #[serde(with = "humantime_serde")]
    pub livez_stall_timeout: std::time::Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 9464)),
            livez_stall_timeout: std::time::Duration::from_secs(300),
        }
    }
}

impl HttpConfig {
    pub(crate) fn check(&self, c: &mut Checks) {
        c.duration("http.livez_stall_timeout", self.livez_stall_timeout, DAY);
    }
}
