//! The admin HTTP port: `/metrics` (Prometheus text format), `/healthz` (liveness: the process
//! answers) and `/readyz` (readiness: every gRPC service of the process is SERVING), beside the
//! gRPC port so scrapers and probes never touch the public API.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use tokio_util::sync::CancellationToken;

/// `[admin]`: where the admin HTTP port listens (port 0 picks a free one).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub listen: SocketAddr,
}

impl AdminConfig {
    /// Listening on 127.0.0.1:`port`.
    pub fn on(port: u16) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }
}

/// Readiness of each gRPC service of this process, as its health watcher last found it.
fn readiness() -> &'static Mutex<BTreeMap<String, bool>> {
    static READINESS: OnceLock<Mutex<BTreeMap<String, bool>>> = OnceLock::new();
    READINESS.get_or_init(Default::default)
}

/// Records whether `service` can do its job now (what `/readyz` reports).
pub fn set_ready(service: &str, ready: bool) {
    if let Ok(mut readiness) = readiness().lock() {
        readiness.insert(service.to_string(), ready);
    }
}

/// Whether every service of this process reported ready (false before any reported).
fn all_ready() -> (bool, String) {
    let Ok(readiness) = readiness().lock() else {
        return (false, "readiness unknown\n".into());
    };
    let text: String = readiness
        .iter()
        .map(|(service, ready)| {
            format!("{service} {}\n", if *ready { "ready" } else { "not ready" })
        })
        .collect();
    (
        !readiness.is_empty() && readiness.values().all(|ready| *ready),
        text,
    )
}

/// An admin address reserved at start, so a port in use is a start-up error.
#[derive(Debug)]
pub struct AdminListener {
    listener: std::net::TcpListener,
    address: SocketAddr,
}

impl AdminListener {
    /// Binds `address` (port 0 picks a free port); the error names the address.
    pub fn bind(address: SocketAddr) -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind(address)
            .map_err(|error| anyhow::anyhow!("cannot listen on {address}: {error}"))?;
        listener.set_nonblocking(true)?;
        let address = listener.local_addr()?;
        Ok(Self { listener, address })
    }

    /// The bound address, with the port chosen when 0 was asked.
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }
}

/// Serves the admin port until `shutdown`.
pub async fn serve(listener: AdminListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener.listener)?;
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "admin port: accepting a connection failed");
                    continue;
                }
            },
        };
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new().serve_connection(
                hyper_util::rt::TokioIo::new(stream),
                hyper::service::service_fn(answer),
            );
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "admin connection ended");
                    }
                }
                _ = shutdown.cancelled() => connection.as_mut().graceful_shutdown(),
            }
        });
    }
}

async fn answer<B>(request: Request<B>) -> Result<Response<Full<Bytes>>, Infallible> {
    let text = |status: StatusCode, content_type: &'static str, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(content_type),
        );
        response
    };
    const PLAIN: &str = "text/plain; charset=utf-8";
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return Ok(text(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            "GET only\n".into(),
        ));
    }
    Ok(match request.uri().path() {
        "/metrics" => text(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            crate::telemetry::render_prometheus(),
        ),
        "/healthz" => text(StatusCode::OK, PLAIN, "ok\n".into()),
        "/readyz" => {
            let (ready, detail) = all_ready();
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            text(status, PLAIN, detail)
        }
        _ => text(
            StatusCode::NOT_FOUND,
            PLAIN,
            "not found: /metrics, /healthz and /readyz are served here\n".into(),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str) -> Request<()> {
        Request::builder().uri(path).body(()).expect("request")
    }

    #[tokio::test]
    async fn readiness_follows_every_service_of_the_process() {
        set_ready("whistle.test.v1.A", true);
        set_ready("whistle.test.v1.B", false);
        let answer_for = |path| async move { answer(get(path)).await.expect("answer") };
        assert_eq!(
            answer_for("/readyz").await.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        set_ready("whistle.test.v1.B", true);
        assert_eq!(answer_for("/readyz").await.status(), StatusCode::OK);
        assert_eq!(answer_for("/healthz").await.status(), StatusCode::OK);
        assert_eq!(answer_for("/metrics").await.status(), StatusCode::OK);
        assert_eq!(answer_for("/other").await.status(), StatusCode::NOT_FOUND);
    }
}
