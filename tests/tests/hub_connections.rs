//! The hub's connection limits and timeouts over real sockets (issue 10, finding 1): a
//! connection that sends nothing, or its header a byte at a time, is closed after the header
//! timeout; an idle keep-alive connection after the idle timeout; a slow body gets a `408`;
//! connections beyond the limit are closed at once while `/healthz` still answers; and the
//! long-polls, whose hold is the hub's own, outlive the idle timeout.

use std::time::Duration;

use outpost_e2e::{PROMPTLY, assigned_job, org_with_runner};
use outpost_protocol::paths;
use outpost_testkit::{TestHub, held};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Short timeouts (the defaults are seconds), so that the tests wait little.
async fn hub_with(header: &str, idle: &str, max_connections: usize) -> TestHub {
    TestHub::builder()
        .heartbeat_interval_s(1)
        .env("OUTPOST_HUB_HEADER_TIMEOUT", header)
        .env("OUTPOST_HUB_IDLE_TIMEOUT", idle)
        .env("OUTPOST_HUB_BODY_TIMEOUT", "300ms")
        .env("OUTPOST_HUB_MAX_CONNECTIONS", max_connections.to_string())
        .start()
        .await
}

async fn connect(hub: &TestHub) -> TcpStream {
    let addr = hub.url().trim_start_matches("http://");
    TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the hub at {addr}: {e}"))
}

/// What the hub did with a connection within `within`: `Closed` with what it sent before, or
/// `Open` (still open, nothing more sent) when the time ran out.
#[derive(Debug, PartialEq, Eq)]
enum Fate {
    Closed(Vec<u8>),
    Open,
}

async fn fate(stream: &mut TcpStream, within: Duration) -> Fate {
    let end = Instant::now() + within;
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(end, stream.read(&mut buf)).await {
            Err(_) => return Fate::Open,
            Ok(Ok(0)) | Ok(Err(_)) => return Fate::Closed(received),
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    }
}

/// Sends `GET /healthz` on a keep-alive connection and reads its whole answer.
async fn healthz_on(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: hub\r\n\r\n")
        .await
        .expect("send GET /healthz");
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    // `ok` is the whole body: read until it is in.
    while !answer.ends_with(b"ok") {
        let n = tokio::time::timeout(PROMPTLY, stream.read(&mut buf))
            .await
            .expect("an answer to GET /healthz in time")
            .expect("read the answer");
        assert!(
            n > 0,
            "the hub closed the connection instead of answering: {answer:?}"
        );
        answer.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_header_timeout() {
    let hub = hub_with("300ms", "60s", 0).await;
    let mut silent = connect(&hub).await;
    assert_eq!(fate(&mut silent, PROMPTLY).await, Fate::Closed(Vec::new()));
}

#[tokio::test]
async fn a_header_sent_a_byte_at_a_time_is_cut_at_the_header_timeout() {
    let hub = hub_with("500ms", "60s", 0).await;
    let mut slow = connect(&hub).await;
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: hub\r\nX-Slow: ")
        .await
        .expect("write");
    // A byte every 100 ms: each comes well within the timeout, the header never ends.
    let end = Instant::now() + PROMPTLY;
    let closed = loop {
        if Instant::now() >= end {
            break false;
        }
        if slow.write_all(b"a").await.is_err() {
            break true;
        }
        if let Fate::Closed(_) = fate(&mut slow, Duration::from_millis(100)).await {
            break true;
        }
    };
    assert!(
        closed,
        "the slow header was still being read after {PROMPTLY:?}"
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let hub = hub_with("60s", "300ms", 0).await;
    let mut kept = connect(&hub).await;
    let answer = healthz_on(&mut kept).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(fate(&mut kept, PROMPTLY).await, Fate::Closed(Vec::new()));
}

#[tokio::test]
async fn a_body_that_does_not_come_gets_408() {
    let hub = hub_with("60s", "60s", 0).await;
    let (_org, runner) = org_with_runner(&hub).await;
    let mut stream = connect(&hub).await;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: hub\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"runner_id\"",
        paths::ACQUIRE,
        runner.token
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    let Fate::Closed(answer) = fate(&mut stream, PROMPTLY).await else {
        panic!("the hub still waits for the body after {PROMPTLY:?}");
    };
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
}

#[tokio::test]
async fn connections_beyond_the_limit_are_closed_at_once_and_healthz_still_answers() {
    const LIMIT: usize = 4;
    let hub = hub_with("60s", "60s", LIMIT).await;
    // One keep-alive connection the test asks /healthz on, and idle ones up to the limit.
    let mut health = connect(&hub).await;
    assert!(healthz_on(&mut health).await.starts_with("HTTP/1.1 200"));
    let mut idle = Vec::new();
    for _ in 1..LIMIT {
        idle.push(connect(&hub).await);
    }
    // Each one more is accepted and closed at once, without a byte.
    for _ in 0..20 {
        let mut extra = connect(&hub).await;
        assert_eq!(fate(&mut extra, PROMPTLY).await, Fate::Closed(Vec::new()));
    }
    assert!(healthz_on(&mut health).await.starts_with("HTTP/1.1 200"));
    let metrics = healthz_metrics(&mut health).await;
    assert!(
        metrics.contains("outpost_hub_connections_refused_total 20"),
        "{metrics}"
    );
    // One line per burst of refusals in the hub's log, not one per connection.
    let log = std::fs::read_to_string(hub.stderr_path()).expect("hub stderr");
    let lines = log.matches("connection limit reached").count();
    assert!(
        (1..20).contains(&lines),
        "{lines} log lines for 20 refusals:\n{log}"
    );

    // A slot freed is a connection served again.
    drop(idle.pop());
    let end = Instant::now() + PROMPTLY;
    loop {
        let mut next = connect(&hub).await;
        next.write_all(b"GET /healthz HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        if let Fate::Closed(answer) = fate(&mut next, PROMPTLY).await
            && answer.starts_with(b"HTTP/1.1 200")
        {
            break;
        }
        assert!(
            Instant::now() < end,
            "no connection was served after one closed"
        );
    }
}

/// `GET /metrics` on a keep-alive connection; the whole answer as text.
async fn healthz_metrics(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: hub\r\n\r\n")
        .await
        .expect("send GET /metrics");
    let mut answer = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    while !answer.ends_with(b"# EOF\n") {
        let n = tokio::time::timeout(PROMPTLY, stream.read(&mut buf))
            .await
            .expect("an answer to GET /metrics in time")
            .expect("read the answer");
        assert!(n > 0, "the hub closed the connection instead of answering");
        answer.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn long_polls_outlive_the_idle_and_header_timeouts() {
    let hub = hub_with("200ms", "200ms", 0).await;
    let (org, runner) = org_with_runner(&hub).await;
    let job = assigned_job(&hub, &org, &runner).await;
    runner.append_log_ok(&job, 0, "one\n").await;
    let mut follow = hub
        .as_org(&org)
        .get_streaming(&paths::job_log_read(&org.name, &job.job_id, 0, true))
        .await;
    follow.read_until_len(4, PROMPTLY).await;

    // Held by the hub for 2 s and 1 s, ten and five times the idle timeout: they answer.
    runner.acquire_response(2).await.expect(204);
    let beat = runner.heartbeat(&[held(&job)], 1).await;
    assert!(!beat.jobs[0].lease_lost, "{beat:?}");
    // The follow held meanwhile still streams.
    runner.append_log_ok(&job, 4, "two\n").await;
    follow.read_until_len(8, PROMPTLY).await;
    assert_eq!(follow.received(), b"one\ntwo\n");
}
