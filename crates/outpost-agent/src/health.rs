//! The runner's local HTTP listener: `/metrics` (Prometheus text), `/healthz` (the process is
//! alive), `/readyz` (it takes jobs: false while draining or after the token was refused).
//! HTTP/1 only, each connection bounded: a request head (and the idle time before it) gets 10 s,
//! and at most 64 connections are open (one more is closed as soon as it is accepted).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The bounds of the listener's connections.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// How long a request head may take, and how long a connection may idle between requests.
    header_timeout: Duration,
    /// The most connections open at once; one more is closed as soon as it is accepted.
    max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: HEADER_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
        }
    }
}

/// How long a scraper may take to send a request head, and may keep a connection idle.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The most connections open at once: scrapers and probes are few.
const MAX_CONNECTIONS: usize = 64;

/// Serves the endpoints on `listener` until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    ready: Arc<dyn Fn() -> bool + Send + Sync>,
    shutdown: CancellationToken,
) {
    serve_with(listener, registry, ready, shutdown, Limits::default()).await;
}

async fn serve_with(
    listener: TcpListener,
    registry: Arc<Registry>,
    ready: Arc<dyn Fn() -> bool + Send + Sync>,
    shutdown: CancellationToken,
    limits: Limits,
) {
    // HTTP/1 only (scrapers and probes speak it), with hyper's header timer: it bounds the
    // first request head from the connection's start, and every later one (so the idle time
    // between requests) from the end of the answer before.
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let open = Arc::new(AtomicUsize::new(0));
    let mut warned: Option<Instant> = None;
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                if warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                    warned = Some(Instant::now());
                    tracing::warn!(error = %e, "the metrics listener cannot accept connections");
                }
                // Out of file descriptors and the like: back off instead of spinning.
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        if open.fetch_add(1, Ordering::AcqRel) >= limits.max_connections {
            open.fetch_sub(1, Ordering::AcqRel);
            // Closed at once.
            drop(stream);
            if warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                warned = Some(Instant::now());
                tracing::warn!(
                    limit = limits.max_connections,
                    "the metrics listener has its most connections open; closing new ones at once"
                );
            }
            continue;
        }
        let slot = Slot(Arc::clone(&open));
        let registry = registry.clone();
        let ready = ready.clone();
        let builder = builder.clone();
        connections.spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req| {
                let registry = registry.clone();
                let ready = ready.clone();
                async move { Ok::<_, Infallible>(respond(&req, &registry, ready.as_ref())) }
            });
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        while connections.try_join_next().is_some() {}
    }
    connections.abort_all();
}

/// How often the listener says it refuses or cannot accept connections, at most.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// A connection's place under the cap, given back when it ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
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

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    const DEADLINE: Duration = Duration::from_secs(30);

    async fn listener(limits: Limits) -> (std::net::SocketAddr, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        tokio::spawn(serve_with(
            listener,
            Arc::new(Registry::default()),
            Arc::new(|| true),
            shutdown.clone(),
            limits,
        ));
        (addr, shutdown)
    }

    /// Whether the listener closes `stream` within the deadline (what it sent before, if any).
    async fn closed(stream: &mut TcpStream) -> Option<Vec<u8>> {
        let mut received = Vec::new();
        let mut buf = [0u8; 1024];
        let end = tokio::time::Instant::now() + DEADLINE;
        loop {
            match tokio::time::timeout_at(end, stream.read(&mut buf)).await {
                Err(_) => return None,
                Ok(Ok(0)) | Ok(Err(_)) => return Some(received),
                Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            }
        }
    }

    async fn healthz(stream: &mut TcpStream) -> String {
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: runner\r\n\r\n")
            .await
            .expect("write");
        let mut answer = Vec::new();
        let mut buf = [0u8; 1024];
        while !answer.ends_with(b"ok\n") {
            let n = tokio::time::timeout(DEADLINE, stream.read(&mut buf))
                .await
                .expect("an answer in time")
                .expect("read");
            assert!(n > 0, "closed instead of answering");
            answer.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&answer).into_owned()
    }

    fn short(max_connections: usize) -> Limits {
        Limits {
            header_timeout: Duration::from_millis(300),
            max_connections,
        }
    }

    #[tokio::test]
    async fn silent_slow_and_idle_connections_are_closed() {
        let (addr, _stop) = listener(short(8)).await;
        let mut silent = TcpStream::connect(addr).await.expect("connect");
        assert_eq!(
            closed(&mut silent).await,
            Some(Vec::new()),
            "a silent connection"
        );

        let mut slow = TcpStream::connect(addr).await.expect("connect");
        slow.write_all(b"GET /metrics HTTP/1.1\r\nX-Slow: ")
            .await
            .expect("write");
        let end = tokio::time::Instant::now() + DEADLINE;
        let cut = loop {
            if tokio::time::Instant::now() >= end {
                break false;
            }
            if slow.write_all(b"a").await.is_err() {
                break true;
            }
            let mut buf = [0u8; 64];
            match tokio::time::timeout(Duration::from_millis(100), slow.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break true,
                _ => {}
            }
        };
        assert!(cut, "a header sent a byte at a time was never cut");

        let mut kept = TcpStream::connect(addr).await.expect("connect");
        assert!(healthz(&mut kept).await.starts_with("HTTP/1.1 200"));
        assert_eq!(
            closed(&mut kept).await,
            Some(Vec::new()),
            "an idle keep-alive connection"
        );
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_are_closed_at_once() {
        let (addr, _stop) = listener(Limits {
            header_timeout: DEADLINE * 2,
            max_connections: 2,
        })
        .await;
        let mut kept = TcpStream::connect(addr).await.expect("connect");
        assert!(healthz(&mut kept).await.starts_with("HTTP/1.1 200"));
        let _idle = TcpStream::connect(addr).await.expect("connect");
        for _ in 0..5 {
            let mut extra = TcpStream::connect(addr).await.expect("connect");
            assert_eq!(
                closed(&mut extra).await,
                Some(Vec::new()),
                "one past the cap"
            );
        }
        assert!(healthz(&mut kept).await.starts_with("HTTP/1.1 200"));
    }
}
