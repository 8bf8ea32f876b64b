//! Connection timeouts over TLS (issue 10, finding 1): a client that never finishes its TLS
//! handshake, one that stops within a request head after it, and an idle HTTP/2 connection are
//! all closed; the hub counts each by reason.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{DEADLINE, TestHub, wait_until};
use http_body_util::{BodyExt, Full};
use outpost_protocol::paths;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct TlsHub {
    hub: TestHub,
    addr: String,
    connector: tokio_rustls::TlsConnector,
    _dir: tempfile::TempDir,
}

/// A hub serving HTTPS with a fresh self-signed certificate and short timeouts.
async fn tls_hub() -> TlsHub {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).expect("write cert");
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).expect("write key");
    let hub = TestHub::start(|c| {
        c.tls_cert = Some(cert_path.clone());
        c.tls_key = Some(key_path.clone());
        c.tls_handshake_timeout = Duration::from_millis(300);
        c.header_timeout = Duration::from_millis(300);
        c.idle_timeout = Duration::from_millis(300);
    })
    .await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    TlsHub {
        addr: hub.url.trim_start_matches("http://").to_owned(),
        hub,
        connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        _dir: dir,
    }
}

impl TlsHub {
    async fn tls(&self, alpn: &[u8]) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tcp = TcpStream::connect(&self.addr).await.expect("connect");
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let tls = self
            .connector
            .connect(name, tcp)
            .await
            .expect("tls handshake");
        assert_eq!(
            tls.get_ref().1.alpn_protocol(),
            Some(alpn),
            "the hub picked h2"
        );
        tls
    }

    /// How many connections the hub closed for timeout `reason` (0 before the first), from
    /// `/metrics` over a connection of its own.
    async fn timed_out(&self, reason: &str) -> f64 {
        let io = hyper_util::rt::TokioIo::new(self.tls(b"h2").await);
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .expect("h2 handshake");
        let driver = tokio::spawn(conn);
        let request = http::Request::get(format!("https://localhost{}", paths::METRICS))
            .body(Full::new(Bytes::new()))
            .expect("request");
        let response = send.send_request(request).await.expect("GET /metrics");
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        driver.abort();
        let text = String::from_utf8_lossy(&body);
        let name = format!("outpost_hub_connections_timed_out_total{{reason=\"{reason}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&name)?.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

/// Sends `request` (JSON) with `token` on an HTTP/2 connection; the status and body.
async fn call(
    send: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    token: &str,
    path: &str,
    body: serde_json::Value,
) -> (http::StatusCode, Bytes) {
    let request = http::Request::post(format!("https://localhost{path}"))
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    let response = send.send_request(request).await.expect("h2 request");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, body)
}

/// Waits until the hub closes the stream, which it must do without a byte; panics if it is still
/// open after [`DEADLINE`].
async fn closed<S: AsyncReadExt + Unpin>(stream: &mut S) {
    let mut buf = [0u8; 1024];
    match tokio::time::timeout(DEADLINE, stream.read(&mut buf)).await {
        Err(_) => panic!("the hub kept the connection open for {DEADLINE:?}"),
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!("the hub answered: {:?}", String::from_utf8_lossy(&buf[..n])),
    }
}

#[tokio::test]
async fn a_tls_handshake_that_never_comes_is_cut() {
    let hub = tls_hub().await;
    let mut silent = TcpStream::connect(&hub.addr).await.expect("connect");
    closed(&mut silent).await;
    // Half a ClientHello is no better.
    let mut half = TcpStream::connect(&hub.addr).await.expect("connect");
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .expect("write");
    closed(&mut half).await;
    assert_eq!(hub.timed_out("tls_handshake").await, 2.0);
}

#[tokio::test]
async fn a_partial_request_head_after_the_handshake_is_cut() {
    let hub = tls_hub().await;
    let mut tls = {
        let tcp = TcpStream::connect(&hub.addr).await.expect("connect");
        let mut config = rustls::ClientConfig::clone(hub.connector.config());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        connector.connect(name, tcp).await.expect("tls handshake")
    };
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localh")
        .await
        .expect("write");
    closed(&mut tls).await;
    assert_eq!(hub.timed_out("header").await, 1.0);
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_and_a_long_poll_on_it_is_not() {
    let hub = tls_hub().await;
    hub.hub.hub.create_org("h2").await.expect("org");
    let (_, token) = hub
        .hub
        .hub
        .create_runner_token("h2", "test")
        .await
        .expect("token");
    let io = hyper_util::rt::TokioIo::new(hub.tls(b"h2").await);
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .expect("h2 handshake");
    let driver = tokio::spawn(conn);
    let register = serde_json::json!({
        "name": "r", "labels": [], "executor": "process", "version": "0", "capacity": 1
    });
    let (status, body) = call(&mut send, &token, paths::REGISTER, register).await;
    assert_eq!(status, http::StatusCode::OK, "{body:?}");
    let registered: outpost_protocol::RegisterResponse =
        serde_json::from_slice(&body).expect("json");
    // Held by the hub for 1 s, three times the idle timeout: it answers on this connection.
    let acquire =
        serde_json::json!({"runner_id": registered.runner_id, "free_slots": 1, "wait_s": 1});
    let (status, _) = call(&mut send, &token, paths::ACQUIRE, acquire).await;
    assert_eq!(status, http::StatusCode::NO_CONTENT);
    // Then nothing: the hub closes the connection, which ends the client's driver.
    tokio::time::timeout(DEADLINE, driver)
        .await
        .expect("the idle h2 connection was closed")
        .expect("driver task")
        .ok();
    wait_until("the idle close is counted", || async {
        hub.timed_out("idle").await == 1.0
    })
    .await;
}
