//! The runner's local HTTP listener: `/metrics` (Prometheus text), `/healthz` (the process is
//! alive), `/readyz` (it takes jobs: false while draining or after the token was refused).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves the endpoints on `listener` until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    ready: Arc<dyn Fn() -> bool + Send + Sync>,
    shutdown: CancellationToken,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else { continue };
        let registry = registry.clone();
        let ready = ready.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let registry = registry.clone();
                let ready = ready.clone();
                async move { Ok::<_, Infallible>(respond(&req, &registry, ready.as_ref())) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        while connections.try_join_next().is_some() {}
    }
    connections.abort_all();
}

fn respond(
    req: &Request<Incoming>,
    registry: &Registry,
    ready: &(dyn Fn() -> bool + Send + Sync),
) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    };
    match req.uri().path() {
        "/metrics" => {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, registry) {
                Ok(()) => {
                    let mut r = text(StatusCode::OK, body);
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        header::HeaderValue::from_static(
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        ),
                    );
                    r
                }
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot encode metrics: {e}\n"),
                ),
            }
        }
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" if ready() => text(StatusCode::OK, "ready\n".into()),
        "/readyz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: draining or not taking jobs\n".into(),
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}

/// Binds the listener (so that a busy port is a startup error, not a silent absence).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, crate::AgentError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| crate::AgentError::MetricsListen { addr, source })
}
