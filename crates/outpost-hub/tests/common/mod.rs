//! Test support for the hub's own tests: the hub library served on a real `127.0.0.1:0`
//! listener with a SQLite file in a temporary directory, and a small hyper-util client.
#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use outpost_hub::{Hub, HubConfig, HubError};
use outpost_protocol::{
    AcquireRequest, AcquireResponse, CreateOrgRequest, CreateOrgResponse, CreateRunnerTokenRequest,
    CreateRunnerTokenResponse, ErrorBody, ErrorCode, JobAssignment, JobDetails, RegisterRequest,
    RegisterResponse, SubmitJobRequest, SubmitJobResponse, paths,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A pipeline the parser accepts.
pub const PIPELINE: &str = "version: 1\nsteps:\n  - name: hello\n    run: echo hello\n";

/// Longest a test waits for anything.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A hub served in-process.
pub struct TestHub {
    pub url: String,
    pub admin_key: String,
    pub dir: Arc<TempDir>,
    pub config: HubConfig,
    pub hub: Hub,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), HubError>>>,
}

impl TestHub {
    /// A hub on a fresh database, with `tweak` applied to the default configuration.
    pub async fn start(tweak: impl FnOnce(&mut HubConfig)) -> TestHub {
        let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
        let mut config = HubConfig {
            database: dir.path().join("hub.db"),
            ..HubConfig::default()
        };
        tweak(&mut config);
        Self::start_with(dir, config).await
    }

    /// A hub on the database in `dir` (a restart).
    pub async fn start_with(dir: Arc<TempDir>, config: HubConfig) -> TestHub {
        let hub = Hub::open(config.clone()).await.expect("hub opens");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(hub.clone().serve(listener, shutdown.clone()));
        TestHub {
            url: format!("http://{addr}"),
            admin_key: hub.admin_key().to_owned(),
            dir,
            config,
            hub,
            shutdown,
            task: Some(task),
        }
    }

    /// Shuts the hub down and waits for `serve` to return.
    pub async fn stop(mut self) -> (Arc<TempDir>, HubConfig) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(DEADLINE, task)
                .await
                .expect("serve returns after shutdown")
                .expect("serve task")
                .expect("serve ends without error");
        }
        (Arc::clone(&self.dir), self.config.clone())
    }

    pub fn db(&self) -> PathBuf {
        self.config.database.clone()
    }

    pub fn api(&self, token: &str) -> Api {
        Api::new(&self.url, Some(token))
    }

    pub fn admin(&self) -> Api {
        self.api(&self.admin_key)
    }

    pub fn anonymous(&self) -> Api {
        Api::new(&self.url, None)
    }

    /// Creates an organization and a runner token over the API.
    pub async fn org(&self, name: &str) -> TestOrg {
        let created: CreateOrgResponse = self
            .admin()
            .post_json(
                paths::ORGS,
                &CreateOrgRequest {
                    name: name.to_owned(),
                },
            )
            .await
            .expect_status(StatusCode::CREATED)
            .json();
        let api = self.api(&created.api_key);
        let token: CreateRunnerTokenResponse = api
            .post_json(
                &paths::runner_tokens(name),
                &CreateRunnerTokenRequest {
                    description: "test".into(),
                },
            )
            .await
            .expect_status(StatusCode::CREATED)
            .json();
        TestOrg {
            name: name.to_owned(),
            api_key: created.api_key,
            api,
            token_id: token.id,
            runner_token: token.token.clone(),
            runner_api: self.api(&token.token),
        }
    }

    /// The value of a metric without labels, from `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self
            .anonymous()
            .get(paths::METRICS)
            .await
            .expect_status(StatusCode::OK)
            .text();
        text.lines()
            .find_map(|line| {
                line.strip_prefix(name)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("metric {name} not in:\n{text}"))
    }

    /// Waits until `/metrics` shows `name` at `value`.
    pub async fn wait_metric(&self, name: &str, value: f64) {
        wait_until(&format!("{name} == {value}"), || async {
            self.metric(name).await == value
        })
        .await;
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// An organization with its API key and one runner token.
pub struct TestOrg {
    pub name: String,
    pub api_key: String,
    pub api: Api,
    pub token_id: String,
    pub runner_token: String,
    pub runner_api: Api,
}

impl TestOrg {
    pub async fn submit(&self, labels: &[&str]) -> String {
        let request = SubmitJobRequest {
            pipeline: Some(PIPELINE.to_owned()),
            labels: labels.iter().map(|l| (*l).to_owned()).collect(),
            ..SubmitJobRequest::default()
        };
        let answer: SubmitJobResponse = self
            .api
            .post_json(&paths::jobs(&self.name), &request)
            .await
            .expect_status(StatusCode::CREATED)
            .json();
        answer.job_id.into_string()
    }

    pub async fn job(&self, job_id: &str) -> JobDetails {
        self.api
            .get(&paths::job(&self.name, job_id))
            .await
            .expect_status(StatusCode::OK)
            .json()
    }

    pub async fn register(&self, name: &str, labels: &[&str]) -> String {
        let request = RegisterRequest {
            name: name.to_owned(),
            labels: labels.iter().map(|l| (*l).to_owned()).collect(),
            executor: "process".into(),
            version: "0.0.0".into(),
            capacity: 4,
        };
        let answer: RegisterResponse = self
            .runner_api
            .post_json(paths::REGISTER, &request)
            .await
            .expect_status(StatusCode::OK)
            .json();
        answer.runner_id.into_string()
    }

    /// Acquires with `wait_s`: `Some` on 200, `None` on 204.
    pub async fn acquire(&self, runner_id: &str, wait_s: u64) -> Option<JobAssignment> {
        acquire(&self.runner_api, runner_id, wait_s).await
    }
}

pub async fn acquire(api: &Api, runner_id: &str, wait_s: u64) -> Option<JobAssignment> {
    let request = AcquireRequest {
        runner_id: runner_id.into(),
        free_slots: 1,
        wait_s,
    };
    let answer = api.post_json(paths::ACQUIRE, &request).await;
    match answer.status {
        StatusCode::OK => Some(answer.json::<AcquireResponse>().job),
        StatusCode::NO_CONTENT => {
            assert!(answer.body.is_empty(), "204 with a body");
            None
        }
        other => panic!("acquire answered {other}: {}", answer.text()),
    }
}

/// A small HTTP client with an optional bearer token.
#[derive(Clone)]
pub struct Api {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    token: Option<String>,
}

/// A complete answer.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    #[track_caller]
    pub fn expect_status(self, status: StatusCode) -> Answer {
        assert_eq!(self.status, status, "unexpected answer: {}", self.text());
        self
    }

    #[track_caller]
    pub fn json<T: DeserializeOwned>(&self) -> T {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("answer is not the expected JSON ({e}): {}", self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Checks an error answer: status, JSON error body, code; returns the body.
    #[track_caller]
    pub fn expect_error(&self, status: StatusCode, code: ErrorCode) -> ErrorBody {
        assert_eq!(self.status, status, "unexpected answer: {}", self.text());
        let content_type = self
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        assert_eq!(
            content_type,
            Some("application/json"),
            "error body not JSON: {}",
            self.text()
        );
        let body: ErrorBody = self.json();
        assert_eq!(body.error.code, code, "unexpected error: {}", self.text());
        body
    }
}

impl Api {
    pub fn new(base: &str, token: Option<&str>) -> Api {
        Api {
            client: Client::builder(TokioExecutor::new()).build_http(),
            base: base.to_owned(),
            token: token.map(str::to_owned),
        }
    }

    pub fn with_token(&self, token: &str) -> Api {
        Api {
            token: Some(token.to_owned()),
            ..self.clone()
        }
    }

    pub fn request(&self, method: Method, path: &str) -> http::request::Builder {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            builder = builder.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        builder
    }

    /// Sends a request and returns the response with its body still streaming.
    pub async fn send_streaming(
        &self,
        request: Request<Full<Bytes>>,
    ) -> http::Response<hyper::body::Incoming> {
        tokio::time::timeout(DEADLINE, self.client.request(request))
            .await
            .expect("answer within the deadline")
            .expect("request succeeds")
    }

    pub async fn send(&self, request: Request<Full<Bytes>>) -> Answer {
        let response = self.send_streaming(request).await;
        let (parts, body) = response.into_parts();
        let body = tokio::time::timeout(DEADLINE, body.collect())
            .await
            .expect("body within the deadline")
            .expect("body reads")
            .to_bytes();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<Bytes>,
    ) -> Answer {
        let mut builder = self.request(method, path);
        if let Some(ct) = content_type {
            builder = builder.header(http::header::CONTENT_TYPE, ct);
        }
        self.send(builder.body(Full::new(body.into())).expect("request"))
            .await
    }

    pub async fn post_json<T: Serialize>(&self, path: &str, body: &T) -> Answer {
        let body = serde_json::to_vec(body).expect("serializable");
        self.raw(Method::POST, path, Some("application/json"), body)
            .await
    }

    pub async fn post_bytes(&self, path: &str, body: impl Into<Bytes>) -> Answer {
        self.raw(Method::POST, path, Some("application/octet-stream"), body)
            .await
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.raw(Method::GET, path, None, Bytes::new()).await
    }

    pub async fn delete(&self, path: &str) -> Answer {
        self.raw(Method::DELETE, path, None, Bytes::new()).await
    }
}

/// Checks `f` every 10 ms until it holds; panics naming `what` after [`DEADLINE`].
pub async fn wait_until<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        if f().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A name unique within the test process.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}-{}", N.fetch_add(1, Ordering::Relaxed))
}
