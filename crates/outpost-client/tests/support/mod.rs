//! Real servers for the client's tests: an HTTP/1.1 + HTTP/2 hub stand-in (plain or TLS, with
//! optional client-certificate checking) that records what it received, a CONNECT / forward
//! proxy that records what it was asked, and a throwaway PKI made with rcgen.

#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use outpost_client::{ClientConfig, HubClient, RetryPolicy};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::Serialize;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

pub type Body = BoxBody<Bytes, Infallible>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type Handler = Arc<dyn Fn(Seen) -> BoxFuture<Response<Body>> + Send + Sync>;

/// One request as the test hub received it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// 0 for the first request the server got, and so on.
    pub index: usize,
    /// When the server got the request's head (the server's clock).
    pub at: Instant,
    pub method: Method,
    /// Path and query.
    pub target: String,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A hub stand-in on 127.0.0.1; stops when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    tls: bool,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    /// A plain-HTTP server answering with `handler`.
    pub async fn start<F, Fut>(handler: F) -> Self
    where
        F: Fn(Seen) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind test server");
        Self::serve(listener, None, handler)
    }

    /// A TLS server (HTTP/2 or HTTP/1.1 by ALPN) answering with `handler`.
    pub async fn start_tls<F, Fut>(tls: Arc<rustls::ServerConfig>, handler: F) -> Self
    where
        F: Fn(Seen) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind test server");
        Self::serve(listener, Some(tls), handler)
    }

    /// Serves on an already bound listener.
    pub fn serve<F, Fut>(
        listener: TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
        handler: F,
    ) -> Self
    where
        F: Fn(Seen) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let addr = listener.local_addr().expect("local addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Handler = Arc::new(move |s| Box::pin(handler(s)));
        let is_tls = tls.is_some();
        let task = tokio::spawn(accept_loop(listener, tls, handler, seen.clone()));
        Self {
            addr,
            tls: is_tls,
            seen,
            task,
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Everything received so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen lock").clone()
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    handler: Handler,
    seen: Arc<Mutex<Vec<Seen>>>,
) {
    // The connections are owned here: aborting this task drops the set, which aborts them.
    let mut connections = JoinSet::new();
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let handler = handler.clone();
                let seen = seen.clone();
                let acceptor = acceptor.clone();
                connections.spawn(async move {
                    match acceptor {
                        Some(acceptor) => {
                            // A failed handshake (e.g. no client certificate) ends the connection.
                            if let Ok(stream) = acceptor.accept(stream).await {
                                serve_connection(TokioIo::new(stream), handler, seen).await;
                            }
                        }
                        None => serve_connection(TokioIo::new(stream), handler, seen).await,
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection<I>(io: I, handler: Handler, seen: Arc<Mutex<Vec<Seen>>>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service_fn(move |req: Request<Incoming>| {
        let handler = handler.clone();
        let seen = seen.clone();
        async move {
            let at = Instant::now();
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let record = {
                let mut seen = seen.lock().expect("seen lock");
                let record = Seen {
                    index: seen.len(),
                    at,
                    method: parts.method,
                    target: parts
                        .uri
                        .path_and_query()
                        .map_or_else(String::new, |p| p.to_string()),
                    version: parts.version,
                    headers: parts.headers,
                    body,
                };
                seen.push(record.clone());
                record
            };
            Ok::<_, Infallible>(handler(record).await)
        }
    });
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection(io, service)
        .await;
}

// ---------------------------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------------------------

pub fn json(status: u16, value: &impl Serialize) -> Response<Body> {
    let bytes = serde_json::to_vec(value).expect("json");
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(bytes)).boxed())
        .expect("response")
}

pub fn text(status: u16, body: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::from(body.to_owned())).boxed())
        .expect("response")
}

pub fn empty(status: u16) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(status).expect("status"))
        .body(Full::new(Bytes::new()).boxed())
        .expect("response")
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/// A retry policy with tiny delays, so retries do not slow tests down.
pub fn fast_retries(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        max_elapsed: Duration::from_secs(30),
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
    }
}

pub fn config(url: &str) -> ClientConfig {
    let mut config = ClientConfig::new(url, "test-token");
    config.retry = fast_retries(5);
    config
}

/// A client that sees an empty proxy environment, whatever the process's is.
pub fn client(config: ClientConfig) -> HubClient {
    HubClient::with_env(config, |_| None).expect("client")
}

/// Waits for `condition`, checking every few milliseconds, failing after 10 s.
pub async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Proxy
// ---------------------------------------------------------------------------------------------

/// What the proxy was asked on one connection (only the first request of a connection).
#[derive(Debug, Clone)]
pub struct ProxySeen {
    /// `CONNECT 127.0.0.1:1234 HTTP/1.1` or `GET http://127.0.0.1:1234/healthz HTTP/1.1`.
    pub request_line: String,
    pub proxy_authorization: Option<String>,
}

/// A tiny HTTP proxy: `CONNECT` tunnels bytes both ways; an absolute-form request is
/// forwarded as it is to its host and the connection then spliced. Stops when dropped.
pub struct TestProxy {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<ProxySeen>>>,
    task: JoinHandle<()>,
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestProxy {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(proxy_loop(listener, seen.clone()));
        Self { addr, seen, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<ProxySeen> {
        self.seen.lock().expect("proxy lock").clone()
    }
}

async fn proxy_loop(listener: TcpListener, seen: Arc<Mutex<Vec<ProxySeen>>>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                connections.spawn(proxy_connection(stream, seen.clone()));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn proxy_connection(mut client: TcpStream, seen: Arc<Mutex<Vec<ProxySeen>>>) {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        let mut chunk = [0u8; 4096];
        match client.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 64 * 1024 {
            return;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_owned();
    let proxy_authorization = lines.find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("proxy-authorization")
            .then(|| value.trim().to_owned())
    });
    seen.lock().expect("proxy lock").push(ProxySeen {
        request_line: request_line.clone(),
        proxy_authorization,
    });

    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    let upstream_addr = if method == "CONNECT" {
        target.to_owned()
    } else {
        let Ok(uri) = target.parse::<http::Uri>() else {
            return;
        };
        let Some(authority) = uri.authority() else {
            return;
        };
        authority.to_string()
    };
    let Ok(mut upstream) = TcpStream::connect(&upstream_addr).await else {
        let _ = client
            .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
            .await;
        return;
    };
    if method == "CONNECT" {
        if client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await
            .is_err()
        {
            return;
        }
        if upstream.write_all(&buf[head_end..]).await.is_err() {
            return;
        }
    } else if upstream.write_all(&buf).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

// ---------------------------------------------------------------------------------------------
// PKI
// ---------------------------------------------------------------------------------------------

/// A CA, a server certificate for `localhost` and `127.0.0.1`, and a client certificate, with
/// the client-side files written to a temporary directory.
pub struct Pki {
    _dir: TempDir,
    pub ca_file: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    ca_der: CertificateDer<'static>,
    server_cert: CertificateDer<'static>,
    server_key: PrivatePkcs8KeyDer<'static>,
}

impl Pki {
    pub fn generate() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");

        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "outpost test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate().expect("server key");
        let mut server_params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("server params");
        server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = server_params
            .signed_by(&server_key, &issuer)
            .expect("server cert");

        let client_key = KeyPair::generate().expect("client key");
        let mut client_params =
            CertificateParams::new(vec!["runner.test".to_owned()]).expect("client params");
        client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_cert = client_params
            .signed_by(&client_key, &issuer)
            .expect("client cert");

        let ca_file = dir.path().join("ca.pem");
        let client_cert_file = dir.path().join("client.pem");
        let client_key_file = dir.path().join("client.key");
        std::fs::write(&ca_file, ca_cert.pem()).expect("write ca");
        std::fs::write(&client_cert_file, client_cert.pem()).expect("write client cert");
        std::fs::write(&client_key_file, client_key.serialize_pem()).expect("write client key");

        Self {
            _dir: dir,
            ca_file,
            client_cert: client_cert_file,
            client_key: client_key_file,
            ca_der: ca_cert.der().clone(),
            server_cert: server_cert.der().clone(),
            server_key: PrivatePkcs8KeyDer::from(server_key.serialize_der()),
        }
    }

    /// The server's TLS config; with `require_client_cert`, a client without a certificate
    /// signed by this CA is refused during the handshake.
    pub fn server_config(&self, require_client_cert: bool) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("protocol versions");
        let builder = if require_client_cert {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(self.ca_der.clone()).expect("ca root");
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder
            .with_single_cert(
                vec![self.server_cert.clone()],
                PrivateKeyDer::Pkcs8(self.server_key.clone_key()),
            )
            .expect("server cert");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }
}
