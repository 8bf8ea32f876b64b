//! A small HTTP/1.1 client for tests on hyper-util's legacy client: base URL, optional bearer
//! token, whole-body answers ([`Response`]) and streamed ones ([`Streaming`]).

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use outpost_protocol::{ErrorBody, ErrorCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;

/// How long a request may take by default; above the longest long-poll tests use.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(150);

/// An HTTP client bound to one base URL (`http://127.0.0.1:PORT`), optionally with a bearer
/// token. Cheap to clone. Connections are not pooled, so a hub restarted on the same port never
/// meets a stale connection.
#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    base_url: String,
    token: Option<String>,
    timeout: Duration,
}

impl fmt::Debug for Http {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Http")
            .field("base_url", &self.base_url)
            .field("bearer", &self.token.is_some())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Http {
    /// A client for `base_url` (no trailing slash needed), without credentials.
    pub fn new(base_url: impl Into<String>) -> Self {
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build_http::<Full<Bytes>>();
        let base_url = base_url.into().trim_end_matches('/').to_owned();
        Self {
            client,
            base_url,
            token: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The same client, sending `Authorization: Bearer <token>`.
    pub fn bearer(&self, token: impl Into<String>) -> Self {
        Self {
            token: Some(token.into()),
            ..self.clone()
        }
    }

    /// The same client, without credentials.
    pub fn anonymous(&self) -> Self {
        Self {
            token: None,
            ..self.clone()
        }
    }

    /// The same client with another per-request timeout.
    pub fn timeout(&self, timeout: Duration) -> Self {
        Self {
            timeout,
            ..self.clone()
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `GET path`; panics when no answer arrives.
    pub async fn get(&self, path: &str) -> Response {
        self.must(Method::GET, path, None).await
    }

    /// `DELETE path`; panics when no answer arrives.
    pub async fn delete(&self, path: &str) -> Response {
        self.must(Method::DELETE, path, None).await
    }

    /// `POST path` with `value` as JSON; panics when no answer arrives.
    pub async fn post_json<T: Serialize + ?Sized>(&self, path: &str, value: &T) -> Response {
        let body = serde_json::to_vec(value).expect("test values serialize to JSON");
        self.must(Method::POST, path, Some(("application/json", body.into())))
            .await
    }

    /// `POST path` with raw bytes (`application/octet-stream`, as log appends send them).
    pub async fn post_bytes(&self, path: &str, body: impl Into<Bytes>) -> Response {
        self.must(
            Method::POST,
            path,
            Some(("application/octet-stream", body.into())),
        )
        .await
    }

    /// `POST path` with any body and content type, e.g. malformed JSON.
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &'static str,
        body: impl Into<Bytes>,
    ) -> Response {
        self.must(Method::POST, path, Some((content_type, body.into())))
            .await
    }

    /// Sends one request and reads the whole answer; `Err` when the request or the body
    /// fails or the timeout passes (e.g. while the hub is down).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(&'static str, Bytes)>,
    ) -> Result<Response, Error> {
        let url = self.url(path);
        let timeout_err = || Error::Timeout {
            method: method.to_string(),
            url: url.clone(),
            after: self.timeout,
        };
        let work = async {
            let answer = self.start(method.clone(), path, body).await?;
            let (parts, body) = answer.into_parts();
            let body = body.collect().await.map_err(|source| Error::Body {
                method: method.to_string(),
                url: url.clone(),
                source,
            })?;
            Ok(Response {
                method: method.clone(),
                url: url.clone(),
                status: parts.status,
                headers: parts.headers,
                body: body.to_bytes(),
            })
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| timeout_err())?
    }

    /// `GET path` answered as a stream: the status and headers, then the body chunk by chunk
    /// as the server sends it (a log with `follow=true`).
    pub async fn get_streaming(&self, path: &str) -> Streaming {
        let url = self.url(path);
        let answer = tokio::time::timeout(self.timeout, self.start(Method::GET, path, None))
            .await
            .unwrap_or_else(|_| panic!("GET {url}: no answer within {:?}", self.timeout))
            .unwrap_or_else(|e| panic!("{e}"));
        let (parts, body) = answer.into_parts();
        Streaming {
            url,
            status: parts.status,
            headers: parts.headers,
            body,
            received: Vec::new(),
        }
    }

    async fn must(
        &self,
        method: Method,
        path: &str,
        body: Option<(&'static str, Bytes)>,
    ) -> Response {
        match self.send(method, path, body).await {
            Ok(response) => response,
            Err(e) => panic!("{e}"),
        }
    }

    async fn start(
        &self,
        method: Method,
        path: &str,
        body: Option<(&'static str, Bytes)>,
    ) -> Result<hyper::Response<Incoming>, Error> {
        let url = self.url(path);
        let uri: http::Uri = url.parse().map_err(|source| Error::InvalidUrl {
            url: url.clone(),
            source,
        })?;
        let mut request = Request::builder().method(method.clone()).uri(uri);
        if let Some(token) = &self.token {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match body {
            Some((content_type, bytes)) => {
                request = request.header(CONTENT_TYPE, content_type);
                Full::new(bytes)
            }
            None => Full::new(Bytes::new()),
        };
        let request = request.body(body).map_err(|source| Error::BuildRequest {
            method: method.to_string(),
            url: url.clone(),
            source,
        })?;
        self.client
            .request(request)
            .await
            .map_err(|source| Error::Request {
                method: method.to_string(),
                url,
                source,
            })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }
}

/// A whole answer: status, headers and body.
pub struct Response {
    /// The request's method and URL, for messages.
    pub method: Method,
    pub url: String,
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} -> {} {}",
            self.method,
            self.url,
            self.status,
            self.text()
        )
    }
}

impl Response {
    /// The body as text (lossy), for messages and text endpoints.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The status as a number.
    pub fn code(&self) -> u16 {
        self.status.as_u16()
    }

    /// Panics unless the status is `status`; returns `self` for chaining.
    #[track_caller]
    pub fn expect(&self, status: u16) -> &Self {
        assert_eq!(self.status.as_u16(), status, "unexpected status: {self:?}");
        self
    }

    /// Parses the body as `T`; panics with the status and body when it does not parse.
    #[track_caller]
    pub fn json<T: DeserializeOwned>(&self) -> T {
        match serde_json::from_slice(&self.body) {
            Ok(value) => value,
            Err(e) => panic!(
                "body is not a {}: {e}: {self:?}",
                std::any::type_name::<T>()
            ),
        }
    }

    /// Parses the body as the API's error body; panics when it is not one.
    #[track_caller]
    pub fn error_body(&self) -> ErrorBody {
        self.json()
    }

    /// Panics unless this is the error answer `status` with `code`, a non-empty message, and a
    /// status that agrees with the code; returns the error body.
    #[track_caller]
    pub fn expect_error(&self, status: u16, code: ErrorCode) -> ErrorBody {
        self.expect(status);
        let body = self.error_body();
        assert_eq!(body.error.code, code, "unexpected error code: {self:?}");
        assert!(
            !body.error.message.is_empty(),
            "error without a message: {self:?}"
        );
        body
    }

    /// Panics unless this is a 4xx answer with the API's error body whose code agrees with the
    /// status; returns the error body. For bad input where several 4xx codes are fair.
    #[track_caller]
    pub fn expect_client_error(&self) -> ErrorBody {
        assert!(
            self.status.is_client_error(),
            "expected a 4xx answer: {self:?}"
        );
        let body = self.error_body();
        assert_eq!(
            body.error.code.status(),
            self.status.as_u16(),
            "error code disagrees with the status: {self:?}"
        );
        assert!(
            !body.error.message.is_empty(),
            "error without a message: {self:?}"
        );
        body
    }
}

/// An answer whose body is read as it arrives.
pub struct Streaming {
    url: String,
    pub status: StatusCode,
    pub headers: HeaderMap,
    body: Incoming,
    received: Vec<u8>,
}

impl fmt::Debug for Streaming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "GET {} -> {} (received so far: {:?})",
            self.url,
            self.status,
            String::from_utf8_lossy(&self.received)
        )
    }
}

impl Streaming {
    /// Every byte received so far.
    pub fn received(&self) -> &[u8] {
        &self.received
    }

    /// The next chunk of data, or `None` at the end of the body. Panics on a body error.
    pub async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            match self.body.frame().await {
                None => return None,
                Some(Err(e)) => panic!("reading the streamed body of GET {} failed: {e}", self.url),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.received.extend_from_slice(&data);
                        return Some(data);
                    }
                }
            }
        }
    }

    /// Reads until at least `len` bytes have been received in all; panics when the body ends
    /// first or `deadline` passes.
    pub async fn read_until_len(&mut self, len: usize, deadline: Duration) {
        let work = async {
            while self.received.len() < len {
                if self.next_chunk().await.is_none() {
                    panic!("stream ended before {len} bytes: {self:?}");
                }
            }
        };
        if tokio::time::timeout(deadline, work).await.is_err() {
            panic!("timed out after {deadline:?} waiting for {len} bytes: {self:?}");
        }
    }

    /// Reads to the end of the body; panics when it has not ended within `deadline`.
    pub async fn read_to_end(&mut self, deadline: Duration) -> Vec<u8> {
        let work = async { while self.next_chunk().await.is_some() {} };
        if tokio::time::timeout(deadline, work).await.is_err() {
            panic!("timed out after {deadline:?} waiting for the stream to end: {self:?}");
        }
        self.received.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use hyper_util::server::conn::auto;
    use tokio::net::TcpListener;
    use tokio::task::JoinSet;

    use super::*;

    /// Echoes the method, path, authorization and body back as JSON.
    async fn echo(
        request: hyper::Request<Incoming>,
    ) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
        let method = request.method().to_string();
        let path = request.uri().to_string();
        let auth = request
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = request
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let value = serde_json::json!({
            "method": method,
            "path": path,
            "auth": auth,
            "body": String::from_utf8_lossy(&body),
        });
        let status = if path == "/missing" { 404 } else { 200 };
        let response = hyper::Response::builder()
            .status(status)
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(value.to_string())))
            .expect("static response");
        Ok(response)
    }

    async fn echo_server(tasks: &mut JoinSet<()>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("bound address");
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                connections.spawn(async move {
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service_fn(echo))
                        .await;
                });
            }
        });
        format!("http://{addr}/")
    }

    #[tokio::test]
    async fn sends_method_path_bearer_and_body() {
        let mut tasks = JoinSet::new();
        let http = Http::new(echo_server(&mut tasks).await);
        let answer = http
            .bearer("t0k")
            .post_json("/a?x=1", &serde_json::json!({"k": 1}))
            .await;
        let echoed: serde_json::Value = answer.expect(200).json();
        assert_eq!(echoed["method"], "POST");
        assert_eq!(echoed["path"], "/a?x=1");
        assert_eq!(echoed["auth"], "Bearer t0k");
        assert_eq!(echoed["body"], r#"{"k":1}"#);

        let echoed: serde_json::Value = http.delete("/b").await.expect(200).json();
        assert_eq!(echoed["method"], "DELETE");
        assert_eq!(echoed["auth"], serde_json::Value::Null);
        assert_eq!(http.get("/missing").await.code(), 404);
    }

    #[tokio::test]
    #[should_panic(expected = "unexpected status")]
    async fn expect_panics_with_the_status() {
        let mut tasks = JoinSet::new();
        let http = Http::new(echo_server(&mut tasks).await);
        http.get("/missing").await.expect(200);
    }

    #[tokio::test]
    #[should_panic(expected = "body is not a")]
    async fn json_panics_with_the_body_on_mismatch() {
        let mut tasks = JoinSet::new();
        let http = Http::new(echo_server(&mut tasks).await);
        let _: ErrorBody = http.get("/x").await.json();
    }

    #[tokio::test]
    async fn send_fails_when_nothing_listens() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("bound address");
        drop(listener);
        let result = Http::new(format!("http://{addr}"))
            .send(Method::GET, "/", None)
            .await;
        assert!(matches!(result, Err(Error::Request { .. })), "{result:?}");
    }
}
