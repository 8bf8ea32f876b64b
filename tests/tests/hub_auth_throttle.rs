//! Wrong credentials are throttled (issue 10, finding 7): after a burst of failures from one
//! source address, or with one key prefix, the hub answers a wrong credential with `429` and
//! `Retry-After` instead of `401`, and says so in its log once per burst, not once per request.
//! A right credential passes all the same (others behind the same address are not locked out).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use outpost_e2e::PROMPTLY;
use outpost_protocol::{ErrorCode, paths};
use outpost_testkit::{TestHub, random_secret};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

/// `GET /api/v1/orgs/x/jobs` with `key`, from local address `from`; the status and the
/// `retry-after` header, if any.
async fn call_from(hub: &TestHub, from: Ipv4Addr, key: &str) -> (u16, Option<u64>) {
    let addr: SocketAddr = hub
        .url()
        .trim_start_matches("http://")
        .parse()
        .expect("hub address");
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(IpAddr::V4(from), 0))
        .expect("bind a loopback address");
    let mut stream = socket.connect(addr).await.expect("connect");
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: hub\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n",
        paths::jobs("x")
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(PROMPTLY, stream.read_to_end(&mut answer))
        .await
        .expect("an answer in time")
        .expect("read");
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    let retry_after = text.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("retry-after")
            .then(|| value.trim().parse().ok())?
    });
    (status, retry_after)
}

fn log_lines(hub: &TestHub, needle: &str) -> usize {
    let log = std::fs::read_to_string(hub.stderr_path()).expect("hub stderr");
    log.lines().filter(|l| l.contains(needle)).count()
}

#[tokio::test]
async fn wrong_credentials_from_one_address_are_throttled() {
    let hub = TestHub::start().await;
    let attacker = Ipv4Addr::new(127, 0, 0, 1);
    let mut statuses = Vec::new();
    for _ in 0..30 {
        statuses.push(call_from(&hub, attacker, &random_secret()).await);
    }
    let refused = statuses.iter().filter(|(s, _)| *s == 401).count();
    let throttled: Vec<_> = statuses.iter().filter(|(s, _)| *s == 429).collect();
    assert!(
        (1..30).contains(&refused) && !throttled.is_empty(),
        "401s, then 429s: {statuses:?}"
    );
    assert!(
        throttled
            .iter()
            .all(|(_, after)| after.is_some_and(|s| s >= 1)),
        "each 429 says when to come back: {statuses:?}"
    );
    // A right key from the throttled address passes (org x does not exist: 404)...
    let (status, _) = call_from(&hub, attacker, hub.admin_key()).await;
    assert_eq!(status, 404, "a right credential is never locked out");
    // ...and a wrong one from another address is a plain 401.
    let (status, _) = call_from(&hub, Ipv4Addr::new(127, 0, 0, 2), &random_secret()).await;
    assert_eq!(status, 401);
    // The JSON error body of a 429.
    let answer = hub
        .http()
        .bearer(random_secret())
        .get(&paths::jobs("x"))
        .await;
    answer.expect_error(429, ErrorCode::RateLimited);
    assert_eq!(
        log_lines(&hub, "wrong credentials"),
        1,
        "one log line for the burst"
    );
}

#[tokio::test]
async fn wrong_credentials_with_one_key_prefix_are_throttled_from_any_address() {
    let hub = TestHub::start().await;
    let prefix = "opk_0123abcd";
    let mut statuses = Vec::new();
    for i in 0..30u8 {
        let from = Ipv4Addr::new(127, 0, 1, i + 1);
        let key = format!("{prefix}{}", random_secret());
        statuses.push(call_from(&hub, from, &key).await.0);
    }
    assert!(
        statuses.contains(&401) && statuses.ends_with(&[429]),
        "each address once, the same prefix every time: {statuses:?}"
    );
    let (status, after) = call_from(
        &hub,
        Ipv4Addr::new(127, 0, 2, 1),
        &format!("{prefix}{}", random_secret()),
    )
    .await;
    assert_eq!((status, after.is_some()), (429, true));
    // Another prefix from a fresh address is answered as before.
    let (status, _) = call_from(&hub, Ipv4Addr::new(127, 0, 2, 2), &random_secret()).await;
    assert_eq!(status, 401);
    assert_eq!(log_lines(&hub, "wrong credentials"), 1);
}
