//! [`FaultProxy`]: a TCP proxy on `127.0.0.1` that forwards to a hub and can be switched to
//! refuse or swallow connections, so a test makes the hub unreachable for as long as it likes
//! without killing it.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::AsyncReadExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// What the proxy does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultMode {
    /// Forwards every byte both ways.
    Pass,
    /// Closes new connections as soon as they are accepted, and closes the open ones.
    Refuse,
    /// Accepts connections and reads what they send, but never answers (no byte, no close);
    /// open connections stop being forwarded and are swallowed the same way.
    Blackhole,
}

/// Connection counts of a [`FaultProxy`], since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections accepted, whatever happened to them.
    pub accepted: u64,
    /// Connections forwarded to the upstream (accepted in [`FaultMode::Pass`] and connected).
    pub passed: u64,
    /// Connections closed at once ([`FaultMode::Refuse`], or the upstream refused).
    pub refused: u64,
    /// Connections swallowed ([`FaultMode::Blackhole`], from the start or after a switch).
    pub blackholed: u64,
    /// Bytes received from clients while swallowing them.
    pub swallowed_bytes: u64,
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    passed: AtomicU64,
    refused: AtomicU64,
    blackholed: AtomicU64,
    swallowed_bytes: AtomicU64,
}

/// A fault-injecting TCP proxy in front of one upstream address. Its accept loop and every
/// connection are tasks of the runtime it was started on, aborted when it is dropped.
///
/// ```no_run
/// # async fn example(hub: &outpost_testkit::TestHub) {
/// use outpost_testkit::{FaultMode, FaultProxy};
///
/// let proxy = FaultProxy::to_url(hub.url()).await;
/// // point a runner at proxy.url() ...
/// proxy.set_mode(FaultMode::Refuse); // the hub is now unreachable for the runner
/// proxy.set_mode(FaultMode::Pass);
/// # }
/// ```
pub struct FaultProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    mode: watch::Sender<FaultMode>,
    counters: Arc<Counters>,
    accept_task: JoinHandle<()>,
}

impl fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("upstream", &self.upstream)
            .field("mode", &self.mode())
            .field("stats", &self.stats())
            .finish()
    }
}

impl FaultProxy {
    /// Starts a proxy in [`FaultMode::Pass`] on `127.0.0.1:0`, forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("the fault proxy cannot bind 127.0.0.1:0: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("the fault proxy's listener has no address: {e}"));
        let (mode, _) = watch::channel(FaultMode::Pass);
        let counters = Arc::new(Counters::default());
        let accept_task = tokio::spawn(accept_loop(
            listener,
            upstream,
            mode.clone(),
            Arc::clone(&counters),
        ));
        FaultProxy {
            addr,
            upstream,
            mode,
            counters,
            accept_task,
        }
    }

    /// Starts a proxy in front of the server at `url` (`http://127.0.0.1:PORT`, as
    /// [`TestHub::url`](crate::TestHub::url) gives it).
    pub async fn to_url(url: &str) -> FaultProxy {
        let authority = url
            .strip_prefix("http://")
            .unwrap_or_else(|| panic!("the fault proxy forwards plain http:// only, not `{url}`"))
            .trim_end_matches('/');
        let upstream: SocketAddr = authority
            .parse()
            .unwrap_or_else(|e| panic!("`{authority}` (from `{url}`) is not an ip:port: {e}"));
        Self::start(upstream).await
    }

    /// The proxy's own address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` of the proxy: what a runner is pointed at.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address it forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Switches the mode; open connections follow at once (see [`FaultMode`]). A connection
    /// swallowed in [`FaultMode::Blackhole`] is closed when the mode changes again, so clients
    /// reconnect instead of waiting on a dead stream.
    pub fn set_mode(&self, mode: FaultMode) {
        self.mode.send_if_modified(|current| {
            let changed = *current != mode;
            *current = mode;
            changed
        });
    }

    pub fn mode(&self) -> FaultMode {
        *self.mode.borrow()
    }

    /// The connection counts so far.
    pub fn stats(&self) -> ProxyStats {
        let c = &self.counters;
        ProxyStats {
            accepted: c.accepted.load(Ordering::SeqCst),
            passed: c.passed.load(Ordering::SeqCst),
            refused: c.refused.load(Ordering::SeqCst),
            blackholed: c.blackholed.load(Ordering::SeqCst),
            swallowed_bytes: c.swallowed_bytes.load(Ordering::SeqCst),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // The accept task owns the connection tasks: aborting it drops (aborts) them all.
        self.accept_task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    mode: watch::Sender<FaultMode>,
    counters: Arc<Counters>,
) {
    let mut connections = JoinSet::new();
    loop {
        let accepted = listener.accept().await;
        while connections.try_join_next().is_some() {}
        let Ok((client, _)) = accepted else { continue };
        counters.accepted.fetch_add(1, Ordering::SeqCst);
        // Subscribing marks the current mode as seen: `changed()` fires on the next switch.
        let rx = mode.subscribe();
        let now = *rx.borrow();
        let counters = Arc::clone(&counters);
        match now {
            FaultMode::Refuse => {
                counters.refused.fetch_add(1, Ordering::SeqCst);
                drop(client);
            }
            FaultMode::Blackhole => {
                counters.blackholed.fetch_add(1, Ordering::SeqCst);
                connections.spawn(blackhole(client, rx, counters));
            }
            FaultMode::Pass => {
                connections.spawn(pass(client, upstream, rx, counters));
            }
        }
    }
}

/// Forwards both ways until either side closes or the mode changes.
async fn pass(
    mut client: TcpStream,
    upstream: SocketAddr,
    mut mode: watch::Receiver<FaultMode>,
    counters: Arc<Counters>,
) {
    let mut server = match TcpStream::connect(upstream).await {
        Ok(server) => server,
        Err(_) => {
            // The upstream itself is down (a hub being restarted): the client sees a close.
            counters.refused.fetch_add(1, Ordering::SeqCst);
            return;
        }
    };
    counters.passed.fetch_add(1, Ordering::SeqCst);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => return,
        changed = mode.changed() => if changed.is_err() { return },
    }
    drop(server);
    if *mode.borrow_and_update() == FaultMode::Blackhole {
        counters.blackholed.fetch_add(1, Ordering::SeqCst);
        blackhole(client, mode, counters).await;
    }
}

/// Reads and discards what the client sends, never answering, until the client closes or the
/// mode changes (then the connection is closed).
async fn blackhole(
    mut client: TcpStream,
    mut mode: watch::Receiver<FaultMode>,
    counters: Arc<Counters>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            read = client.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    counters.swallowed_bytes.fetch_add(n as u64, Ordering::SeqCst);
                }
            },
            changed = mode.changed() => {
                if changed.is_err() || *mode.borrow_and_update() != FaultMode::Blackhole {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncWriteExt as _;

    use super::*;

    /// An upstream that answers every line it reads with `echo: <line>`.
    async fn echo_server(tasks: &mut JoinSet<()>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((mut s, _)) = listener.accept().await {
                conns.spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            return;
                        }
                        let mut out = b"echo: ".to_vec();
                        out.extend_from_slice(&buf[..n]);
                        if s.write_all(&out).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    /// Writes `msg` and reads the answer; `None` when the connection is closed instead.
    async fn roundtrip(s: &mut TcpStream, msg: &[u8]) -> Option<Vec<u8>> {
        s.write_all(msg).await.ok()?;
        let mut buf = vec![0u8; 1024];
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => None,
            Ok(n) => Some(buf[..n].to_vec()),
        }
    }

    #[tokio::test]
    async fn passes_refuses_and_swallows() {
        let mut tasks = JoinSet::new();
        let upstream = echo_server(&mut tasks).await;
        let proxy = FaultProxy::start(upstream).await;
        assert_eq!(proxy.url(), format!("http://{}", proxy.addr()));

        let mut open = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert_eq!(
            roundtrip(&mut open, b"hi").await.as_deref(),
            Some(&b"echo: hi"[..])
        );

        // Refuse closes the open connection and every new one.
        proxy.set_mode(FaultMode::Refuse);
        let mut buf = [0u8; 8];
        let closed = tokio::time::timeout(Duration::from_secs(10), open.read(&mut buf))
            .await
            .expect("the open connection is closed at once");
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
        let mut fresh = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert_eq!(roundtrip(&mut fresh, b"x").await, None);

        // Blackhole swallows: the write succeeds, no answer comes while the mode holds.
        proxy.set_mode(FaultMode::Blackhole);
        let mut swallowed = TcpStream::connect(proxy.addr()).await.expect("connect");
        swallowed.write_all(b"hello?").await.expect("write");
        crate::wait_until(
            "the proxy swallowed the bytes",
            Duration::from_secs(10),
            || std::future::ready(proxy.stats().swallowed_bytes >= 6),
        )
        .await;
        // Switching away closes the swallowed connection: its read ends without an answer.
        proxy.set_mode(FaultMode::Pass);
        let end = tokio::time::timeout(Duration::from_secs(10), swallowed.read(&mut buf))
            .await
            .expect("the swallowed connection is closed on the switch");
        assert!(matches!(end, Ok(0) | Err(_)), "{end:?}");

        let mut again = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert_eq!(
            roundtrip(&mut again, b"back").await.as_deref(),
            Some(&b"echo: back"[..])
        );
        let stats = proxy.stats();
        assert_eq!(stats.accepted, 4, "{stats:?}");
        assert_eq!(stats.passed, 2, "{stats:?}");
        assert_eq!(stats.refused, 1, "{stats:?}");
        assert_eq!(stats.blackholed, 1, "{stats:?}");
    }

    #[tokio::test]
    async fn an_open_connection_switched_to_blackhole_gets_no_answer() {
        let mut tasks = JoinSet::new();
        let upstream = echo_server(&mut tasks).await;
        let proxy = FaultProxy::start(upstream).await;
        let mut open = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert!(roundtrip(&mut open, b"a").await.is_some());
        proxy.set_mode(FaultMode::Blackhole);
        crate::wait_until(
            "the open connection is swallowed",
            Duration::from_secs(10),
            || std::future::ready(proxy.stats().blackholed == 1),
        )
        .await;
        open.write_all(b"more").await.expect("write");
        crate::wait_until(
            "the proxy swallowed the bytes",
            Duration::from_secs(10),
            || std::future::ready(proxy.stats().swallowed_bytes >= 4),
        )
        .await;
        // Nothing came back: the read would block (checked without waiting).
        let mut buf = [0u8; 8];
        assert!(
            matches!(open.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        );
    }

    #[tokio::test]
    #[should_panic(expected = "plain http:// only")]
    async fn to_url_refuses_https() {
        FaultProxy::to_url("https://127.0.0.1:1").await;
    }
}
