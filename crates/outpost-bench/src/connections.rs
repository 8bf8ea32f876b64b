//! The hub under a flood of idle connections: a client opens as many TCP connections as its
//! open-files limit allows (20,000 at most) and sends nothing. What the bench looks at: the
//! hub holds at most its connection limit and closes the rest at once, `/healthz` keeps
//! answering, the hub's memory stays flat, and the idle connections are closed once the header
//! timeout has passed.

use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::procs::{Ctx, Hub, Metrics, rss_bytes};
use crate::table::{Row, Verdict, mib, ms};

/// The hub's `header_timeout` here: how long it keeps a connection that sends nothing. Longer
/// than the default 10 s, so that the flood is all open (a few seconds on a loaded 2-core
/// machine) before the first of its connections times out.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How many connects are in flight at once while flooding.
const CONNECTS_AT_ONCE: usize = 1024;

/// A kept-alive HTTP/1.1 connection opened before the flood, so that the bench can still ask the
/// hub while the flood holds every other place.
struct Probe {
    stream: TcpStream,
}

impl Probe {
    async fn open(hub: &Hub) -> anyhow::Result<Probe> {
        let stream = TcpStream::connect(hub.addr())
            .await
            .context("connecting the probe")?;
        Ok(Probe { stream })
    }

    /// `GET path` on the kept-alive connection: the status line and the body.
    async fn get(&mut self, path: &str) -> anyhow::Result<(String, String)> {
        let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n");
        self.stream.write_all(request.as_bytes()).await?;
        let mut received = Vec::new();
        let mut buf = [0u8; 64 * 1024];
        loop {
            if let Some(answer) = complete_answer(&received) {
                return Ok(answer);
            }
            let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut buf))
                .await
                .with_context(|| format!("GET {path}: no answer within 10 s"))??;
            if n == 0 {
                bail!("GET {path}: the hub closed the probe connection");
            }
            received.extend_from_slice(&buf[..n]);
        }
    }

    async fn metrics(&mut self) -> anyhow::Result<Metrics> {
        let (status, body) = self.get("/metrics").await?;
        if !status.contains(" 200") {
            bail!("GET /metrics answered {status}");
        }
        Ok(Metrics::from_text(body))
    }
}

/// The status line and body of a complete answer with a `content-length`, if `received` holds
/// one.
fn complete_answer(received: &[u8]) -> Option<(String, String)> {
    let text = String::from_utf8_lossy(received);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let length: usize = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())?
    })?;
    (body.len() >= length).then(|| {
        (
            head.lines().next().unwrap_or_default().to_owned(),
            body[..length].to_owned(),
        )
    })
}

/// Whether the hub closed `stream` (without sending anything), looking without waiting.
fn closed(stream: &TcpStream) -> bool {
    let mut buf = [0u8; 16];
    match stream.try_read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

/// Row: the hub and a flood of idle connections.
pub async fn idle_connections(ctx: &Ctx, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let wanted: usize = ctx.pick(20_000, 2_000);
    // The flood's sockets are all in this process: leave room for its other files.
    let budget = usize::try_from(ctx.fd_limit.saturating_sub(400)).unwrap_or(usize::MAX);
    let n = wanted.min(budget);
    let header_timeout = format!("{}s", HEADER_TIMEOUT.as_secs());
    let hub = Hub::start_with(
        ctx,
        &ctx.work,
        "connections",
        &[("OUTPOST_HUB_HEADER_TIMEOUT", &header_timeout)],
    )
    .await?;
    let mut probe = Probe::open(&hub).await?;
    let before = probe.metrics().await?;
    let limit = before.sum("outpost_hub_connections_limit", None) as usize;
    let rss_before = rss_bytes(hub.pid())?;

    // The flood: n connections, nothing sent on any.
    let started = Instant::now();
    let mut held: Vec<TcpStream> = Vec::with_capacity(n);
    let mut connecting = JoinSet::new();
    let mut connect_errors = 0usize;
    let addr = hub.addr();
    let mut launched = 0;
    while held.len() + connect_errors < n {
        while launched < n && connecting.len() < CONNECTS_AT_ONCE {
            connecting.spawn(TcpStream::connect(addr));
            launched += 1;
        }
        match connecting.join_next().await {
            Some(Ok(Ok(stream))) => held.push(stream),
            Some(Ok(Err(_))) => connect_errors += 1,
            Some(Err(e)) => bail!("a connect task failed: {e}"),
            None => break,
        }
    }
    let opened = started.elapsed();
    // Let the hub accept what is in its backlog: until what it has seen stops changing for a
    // second (connections the kernel still holds in its backlog come in later, or never).
    let settle = Instant::now() + Duration::from_secs(15);
    let mut last_seen = -1.0;
    let mut steady_since = Instant::now();
    let during = loop {
        let m = probe.metrics().await?;
        let seen = m.sum("outpost_hub_connections", None)
            + m.sum("outpost_hub_connections_refused_total", None);
        if seen != last_seen {
            last_seen = seen;
            steady_since = Instant::now();
        }
        if steady_since.elapsed() >= Duration::from_secs(1) || Instant::now() >= settle {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let open_during = during.sum("outpost_hub_connections", None) as usize;
    let refused = during.sum("outpost_hub_connections_refused_total", None) as usize;
    let rss_during = rss_bytes(hub.pid())?;
    let health_start = Instant::now();
    let (health, _) = probe.get("/healthz").await?;
    let health_took = health_start.elapsed();
    let healthy = health.contains(" 200");
    // A new connection while the limit is reached is closed at once, /healthz or not.
    let fresh_refused = {
        let mut fresh = TcpStream::connect(addr).await?;
        fresh
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n")
            .await?;
        let mut buf = [0u8; 256];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), fresh.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    };
    let refused_seen_by_client = held.iter().filter(|s| closed(s)).count();

    // The header timeout closes the rest; the probe, used every 50 ms, stays.
    let timeout_end = Instant::now() + HEADER_TIMEOUT * 3;
    let all_closed = loop {
        let m = probe.metrics().await?;
        if m.sum("outpost_hub_connections", None) <= 1.0 {
            break Some(started.elapsed());
        }
        if Instant::now() >= timeout_end {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let closed_by_client = held.iter().filter(|s| closed(s)).count();
    let after = probe.metrics().await?;
    let timed_out = after.sum("outpost_hub_connections_timed_out_total", None) as usize;
    drop(held);
    let rss_after = rss_bytes(hub.pid())?;
    let served_after = {
        let mut fresh = Probe::open(&hub).await?;
        fresh.get("/healthz").await?.0.contains(" 200")
    };
    hub.stop().await?;

    let scaled = if n < 20_000 {
        format!(
            "{n} connections (asked for {wanted}; the bench's open-files limit is {})",
            ctx.fd_limit
        )
    } else {
        format!("{n} connections, as in the target")
    };
    let expected_open = n.min(limit.saturating_sub(1)) + 1;
    rows.push(Row {
        bench: "connections",
        what: format!("hub with {n} idle TCP connections held by a client"),
        measured: format!(
            "{open_during} open (limit {limit}), {refused} closed at once; /healthz {} in {}; RSS {}",
            if healthy { "200" } else { "failed" },
            ms(health_took),
            mib(rss_during)
        ),
        target: "/healthz answers; beyond the limit closed at once".to_owned(),
        verdict: Verdict::of(
            healthy && open_during <= limit && open_during + refused >= expected_open.min(n + 1),
        ),
        notes: vec![
            scaled.clone(),
            format!(
                "opened in {:.2} s ({CONNECTS_AT_ONCE} connects at once, {connect_errors} failed \
                 to connect); the hub's limit is 80% of its open-files limit ({} inherited from \
                 the bench); the client saw {refused_seen_by_client} of its connections closed \
                 by the hub before the timeout",
                opened.as_secs_f64(),
                ctx.fd_limit
            ),
            format!(
                "/healthz asked on a connection kept alive from before the flood; a new \
                 connection while the limit is reached is {} (as documented: beyond the limit \
                 every new connection is closed at once)",
                if fresh_refused {
                    "closed at once"
                } else {
                    "served"
                }
            ),
            format!(
                "hub VmRSS {} before, {} holding the connections, {} after they were closed",
                mib(rss_before),
                mib(rss_during),
                mib(rss_after)
            ),
        ],
    });
    let within = HEADER_TIMEOUT + Duration::from_secs(2);
    rows.push(Row {
        bench: "connections",
        what: format!(
            "idle connections closed by the header timeout ({} s)",
            HEADER_TIMEOUT.as_secs()
        ),
        measured: match all_closed {
            Some(t) => format!("all closed {:.1} s after the flood began", t.as_secs_f64()),
            None => format!(
                "not all closed after {:.0} s",
                (HEADER_TIMEOUT * 3).as_secs_f64()
            ),
        },
        target: format!(
            "closed after {} s (≤ {} s after the last opened)",
            HEADER_TIMEOUT.as_secs(),
            within.as_secs()
        ),
        verdict: Verdict::of(all_closed.is_some_and(|t| t <= within + opened) && served_after),
        notes: vec![
            format!(
                "the hub counted {timed_out} connections timed out; the client saw \
                 {closed_by_client} of its {n} closed; a new connection was {} afterwards",
                if served_after {
                    "served"
                } else {
                    "still refused"
                }
            ),
            "the flood's connections all opened within the first seconds, so their header \
             timeouts end together; the clock runs from the first connect"
                .to_owned(),
        ],
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_complete_once_their_body_is_in() {
        let head = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n";
        assert_eq!(complete_answer(head.as_bytes()), None);
        assert_eq!(
            complete_answer(format!("{head}ok").as_bytes()),
            Some(("HTTP/1.1 200 OK".to_owned(), "ok".to_owned()))
        );
    }
}
