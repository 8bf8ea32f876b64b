//! The accept loop: HTTP/1.1 and HTTP/2 (hyper-util's auto builder) over plain TCP or rustls
//! (ring provider), with graceful shutdown: stop accepting, let in-flight requests finish within
//! the grace period, then drop what is left.
//!
//! Every connection is bounded, so that a client cannot hold the hub's sockets for free: at most
//! `max_connections` are open (one more is closed as soon as it is accepted), a TLS handshake
//! gets `tls_handshake_timeout`, a request head `header_timeout` (from the connection's start,
//! or from the first byte after an idle time), and a connection with no request in flight
//! `idle_timeout`. A request in flight is never cut by these: a held long-poll is as long as the
//! hub holds it. (Request bodies have their own `body_timeout`, in the extractors.)

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use http::Request;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::HubError;
use crate::config::{AUTO_MAX_CONNECTIONS_PERCENT, HubConfig};
use crate::metrics::ConnectionMetrics;

/// How often the accept loop says that it refuses connections, or that accepting fails: once
/// per this period, with how many it saw since, never once per connection.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// `max_connections` when the open-files limit cannot be read.
const FALLBACK_MAX_CONNECTIONS: usize = 10_000;

/// The bounds of every connection, from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    pub max_connections: usize,
}

impl Limits {
    /// The limits of `config`; `max_connections = 0` becomes 80 % of the open-files limit.
    pub(crate) fn of(config: &HubConfig) -> Limits {
        let max_connections = match config.max_connections {
            0 => auto_max_connections(),
            n => n,
        };
        Limits {
            header_timeout: config.header_timeout,
            idle_timeout: config.idle_timeout,
            tls_handshake_timeout: config.tls_handshake_timeout,
            max_connections,
        }
    }
}

/// 80 % of the soft open-files limit: the rest stays for the database, the log files, and the
/// socket of a connection being refused.
fn auto_max_connections() -> usize {
    match open_files_limit() {
        Some(limit) => usize::try_from(limit.saturating_mul(AUTO_MAX_CONNECTIONS_PERCENT) / 100)
            .unwrap_or(usize::MAX)
            .max(1),
        None => FALLBACK_MAX_CONNECTIONS,
    }
}

/// The soft limit of open files of this process.
pub(crate) fn open_files_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        use nix::sys::resource::{Resource, getrlimit};
        getrlimit(Resource::RLIMIT_NOFILE)
            .ok()
            .map(|(soft, _)| soft)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Loads the PEM certificate chain and key into a TLS acceptor offering h2 and http/1.1.
pub(crate) fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, HubError> {
    let tls_err = |message: String| HubError::Tls { message };
    let open = |path: &Path| {
        File::open(path)
            .map(BufReader::new)
            .map_err(|e| tls_err(format!("cannot read {}: {e}", path.display())))
    };
    let certs = rustls_pemfile::certs(&mut open(cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_err(format!("invalid PEM in {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(tls_err(format!("no certificate in {}", cert.display())));
    }
    let key_der = rustls_pemfile::private_key(&mut open(key)?)
        .map_err(|e| tls_err(format!("invalid PEM in {}: {e}", key.display())))?
        .ok_or_else(|| tls_err(format!("no private key in {}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| {
            tls_err(format!(
                "certificate {} and key {}: {e}",
                cert.display(),
                key.display()
            ))
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// What [`run`] serves with.
pub(crate) struct Serving {
    pub tls: Option<TlsAcceptor>,
    pub router: Router,
    pub limits: Limits,
    pub metrics: ConnectionMetrics,
    /// Cancelled to begin the shutdown.
    pub shutdown: CancellationToken,
    /// Cancelled by [`run`] when it stops accepting: held long-polls answer.
    pub stopping: CancellationToken,
    pub grace: Duration,
}

/// Serves on `listener` until `shutdown` is cancelled; then cancels `stopping` (held long-polls
/// answer), waits up to `grace` for open requests, and returns.
pub(crate) async fn run(listener: TcpListener, serving: Serving) -> Result<(), HubError> {
    let Serving {
        tls,
        router,
        limits,
        metrics,
        shutdown,
        stopping,
        grace,
    } = serving;
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".to_owned());
    let graceful = GracefulShutdown::new();
    // hyper's own HTTP/1 header timer is off (it has no timer): the watch below times heads
    // and idle connections alike for HTTP/1 and HTTP/2.
    let builder = auto::Builder::new(TokioExecutor::new());
    let open = Arc::new(AtomicUsize::new(0));
    let mut refusals = Throttled::new(WARN_EVERY);
    let mut accept_errors = Throttled::new(WARN_EVERY);
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                if let Some(seen) = accept_errors.hit() {
                    tracing::warn!(%addr, error = %e, errors = seen, "accepting connections fails (counted since the last such line)");
                }
                // Out of file descriptors and the like: back off instead of spinning.
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    () = shutdown.cancelled() => break,
                }
            }
        };
        let Some(slot) = Slot::take(&open, limits.max_connections, &metrics) else {
            // Closed at once: its socket is all it costs, and only for this instant.
            drop(stream);
            metrics.refused.inc();
            if let Some(refused) = refusals.hit() {
                tracing::warn!(%addr, limit = limits.max_connections, refused, "connection limit reached: closing new connections at once (counted since the last such line)");
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            router: router.clone(),
            builder: builder.clone(),
            limits,
            metrics: metrics.clone(),
            watcher: graceful.watcher(),
            peer,
            _slot: slot,
        };
        match &tls {
            None => {
                connections.spawn(connection.serve(stream));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                connections.spawn(async move {
                    let handshake = acceptor.accept(stream);
                    match tokio::time::timeout(limits.tls_handshake_timeout, handshake).await {
                        Ok(Ok(stream)) => connection.serve(stream).await,
                        Ok(Err(e)) => {
                            tracing::debug!(peer = %connection.peer, error = %e, "tls handshake failed");
                        }
                        Err(_) => {
                            connection.metrics.timed_out("tls_handshake");
                            tracing::debug!(peer = %connection.peer, "tls handshake timed out");
                        }
                    }
                });
            }
        }
    }
    drop(listener);
    tracing::info!(%addr, "shutting down: no new connections");
    stopping.cancel();
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "open requests did not finish within the grace period; dropping them"
        );
    }
    connections.shutdown().await;
    Ok(())
}

/// The address a request came from, in its extensions (for throttling wrong credentials).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerAddr(pub std::net::SocketAddr);

/// One accepted connection, holding its place under `max_connections` until it ends.
struct Connection {
    router: Router,
    builder: auto::Builder<TokioExecutor>,
    limits: Limits,
    metrics: ConnectionMetrics,
    watcher: hyper_util::server::graceful::Watcher,
    peer: std::net::SocketAddr,
    _slot: Slot,
}

impl Connection {
    /// Serves HTTP on `io` until the client closes it, the hub shuts down, or a timeout
    /// closes it (by dropping it).
    async fn serve<IO>(self, io: IO)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Activity::new();
        let io = TokioIo::new(Watched {
            io,
            activity: Arc::clone(&activity),
        });
        let router = self.router;
        let requests = Arc::clone(&activity);
        let peer = PeerAddr(self.peer);
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            let busy = Busy::begin(&requests);
            request.extensions_mut().insert(peer);
            let answer = router.clone().oneshot(request);
            async move {
                let response = answer.await?;
                Ok::<_, std::convert::Infallible>(
                    response.map(|body| Body::new(Guarded { body, _busy: busy })),
                )
            }
        });
        let conn = self.builder.serve_connection_with_upgrades(io, service);
        let conn = self.watcher.watch(conn.into_owned());
        tokio::pin!(conn);
        loop {
            let deadline = activity.deadline(&self.limits);
            tokio::select! {
                served = &mut conn => {
                    if let Err(e) = served {
                        tracing::debug!(peer = %self.peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                () = sleep_until(deadline.map(|(at, _)| at)) => {
                    // Closed by dropping it, unless a request began meanwhile.
                    if let Some((at, reason)) = activity.deadline(&self.limits)
                        && at <= Instant::now()
                    {
                        self.metrics.timed_out(reason);
                        tracing::debug!(peer = %self.peer, reason, "connection closed: timed out");
                        return;
                    }
                }
                () = activity.changed.notified() => {}
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A place under `max_connections`, given back when dropped.
struct Slot {
    open: Arc<AtomicUsize>,
    metrics: ConnectionMetrics,
}

impl Slot {
    fn take(open: &Arc<AtomicUsize>, max: usize, metrics: &ConnectionMetrics) -> Option<Slot> {
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .ok()?;
        metrics.open.inc();
        Some(Slot {
            open: Arc::clone(open),
            metrics: metrics.clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.metrics.open.dec();
    }
}

/// Where a connection is between requests, for its timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A request head is on its way since `since`: the connection's start, or the first byte
    /// after an idle time. Bounded by `header_timeout`.
    Head { since: Instant },
    /// No request in flight since `since`, and no byte of a next one. Bounded by
    /// `idle_timeout`.
    Idle { since: Instant },
    /// `requests` in flight (their answers not wholly sent): not bounded here.
    Busy { requests: usize },
}

/// The phase of one connection, shared by its reads, its requests and its watch.
struct Activity {
    phase: Mutex<Phase>,
    /// Wakes the watch when a deadline moved later or came back (not when a request begins:
    /// the watch finds that out when its old deadline passes).
    changed: Notify,
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            phase: Mutex::new(Phase::Head {
                since: Instant::now(),
            }),
            changed: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes arrived: on an idle connection, a request head begins.
    fn bytes_read(&self) {
        let mut phase = self.lock();
        if let Phase::Idle { .. } = *phase {
            *phase = Phase::Head {
                since: Instant::now(),
            };
            drop(phase);
            self.changed.notify_one();
        }
    }

    /// When the connection times out if nothing happens, and which timeout that is.
    fn deadline(&self, limits: &Limits) -> Option<(Instant, &'static str)> {
        match *self.lock() {
            Phase::Head { since } => Some((since + limits.header_timeout, "header")),
            Phase::Idle { since } => Some((since + limits.idle_timeout, "idle")),
            Phase::Busy { .. } => None,
        }
    }
}

/// A request in flight, from its head's arrival until its answer is wholly sent (or dropped).
struct Busy {
    activity: Arc<Activity>,
}

impl Busy {
    fn begin(activity: &Arc<Activity>) -> Busy {
        let mut phase = activity.lock();
        *phase = match *phase {
            Phase::Busy { requests } => Phase::Busy {
                requests: requests + 1,
            },
            Phase::Head { .. } | Phase::Idle { .. } => Phase::Busy { requests: 1 },
        };
        Busy {
            activity: Arc::clone(activity),
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut phase = self.activity.lock();
        let idle = match *phase {
            Phase::Busy { requests } if requests > 1 => {
                *phase = Phase::Busy {
                    requests: requests - 1,
                };
                false
            }
            _ => {
                *phase = Phase::Idle {
                    since: Instant::now(),
                };
                true
            }
        };
        drop(phase);
        if idle {
            self.activity.changed.notify_one();
        }
    }
}

/// An answer's body that keeps its request counted as in flight until it is sent or dropped.
struct Guarded {
    body: Body,
    _busy: Busy,
}

impl hyper::body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A connection's byte stream, telling its [`Activity`] when bytes arrive.
struct Watched<IO> {
    io: IO,
    activity: Arc<Activity>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.bytes_read();
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// A warning said at most once per period: [`Throttled::hit`] answers how many hits the line
/// stands for when it is time to say it.
struct Throttled {
    every: Duration,
    last: Option<Instant>,
    hits: u64,
}

impl Throttled {
    fn new(every: Duration) -> Throttled {
        Throttled {
            every,
            last: None,
            hits: 0,
        }
    }

    fn hit(&mut self) -> Option<u64> {
        self.hits += 1;
        let now = Instant::now();
        if self.last.is_some_and(|last| now < last + self.every) {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.hits))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttled_warning_is_said_once_per_period_with_its_count() {
        let mut warn = Throttled::new(Duration::from_secs(3600));
        assert_eq!(warn.hit(), Some(1));
        assert_eq!(warn.hit(), None);
        assert_eq!(warn.hit(), None);
        warn.last = warn.last.map(|t| t - Duration::from_secs(3600));
        assert_eq!(warn.hit(), Some(3), "the line says how many it stands for");
    }

    #[test]
    fn slots_stop_at_the_limit_and_come_back() {
        let open = Arc::new(AtomicUsize::new(0));
        let metrics = ConnectionMetrics::default();
        let a = Slot::take(&open, 2, &metrics).expect("first");
        let b = Slot::take(&open, 2, &metrics).expect("second");
        assert!(Slot::take(&open, 2, &metrics).is_none());
        assert_eq!(metrics.open.get(), 2);
        drop(a);
        let c = Slot::take(&open, 2, &metrics).expect("a freed place");
        drop((b, c));
        assert_eq!(open.load(Ordering::Acquire), 0);
        assert_eq!(metrics.open.get(), 0);
    }

    #[test]
    fn phases_move_with_bytes_and_requests() {
        let limits = Limits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            tls_handshake_timeout: Duration::from_secs(10),
            max_connections: 1,
        };
        let activity = Activity::new();
        let reason = |a: &Activity| a.deadline(&limits).map(|(_, r)| r);
        assert_eq!(
            reason(&activity),
            Some("header"),
            "a new connection waits for a head"
        );
        let first = Busy::begin(&activity);
        let second = Busy::begin(&activity);
        activity.bytes_read();
        assert_eq!(reason(&activity), None, "requests in flight are not timed");
        drop(first);
        assert_eq!(reason(&activity), None);
        drop(second);
        assert_eq!(reason(&activity), Some("idle"));
        activity.bytes_read();
        assert_eq!(
            reason(&activity),
            Some("header"),
            "a byte begins the next head"
        );
    }
}
