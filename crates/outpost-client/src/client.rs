//! [`HubClient`]: every call of the hub API (DESIGN.md §3), runner and admin side, with
//! timeouts, retries and the bookkeeping the runner's metrics need.

use std::borrow::Cow;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::Stream;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, PROXY_AUTHORIZATION, USER_AGENT};
use http::uri::Scheme;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body as _, Incoming};
use hyper_util::client::legacy;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use outpost_protocol::{
    AcquireRequest, AcquireResponse, CancelResponse, CompleteRequest, CompleteResponse,
    CreateOrgRequest, CreateOrgResponse, CreateRunnerTokenRequest, CreateRunnerTokenResponse,
    ErrorBody, ErrorCode, HeartbeatRequest, HeartbeatResponse, JobAssignment, JobDetails, JobId,
    JobList, JobState, JobSummary, LeaseId, LogAppendResponse, RegisterRequest, RegisterResponse,
    RunnerInfo, RunnerList, RunnerTokenInfo, RunnerTokenList, StepUpdate, SubmitJobRequest,
    SubmitJobResponse, paths,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::config::ClientConfig;
use crate::connect::{self, Connector, Route};
use crate::error::{BoxError, ClientError, is_retryable_status, synthesize_body};
use crate::retry::{Budget, retry_after};

/// Largest JSON answer the client reads; more is a transport error, not a memory spike.
const MAX_JSON_ANSWER: usize = 16 * 1024 * 1024;
/// How long an idle pooled connection is kept: well within the hub's own `idle_timeout` (60 s
/// by default), so the client drops a connection before the hub closes it under a request.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The outcome of [`HubClient::append_log`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogAppend {
    /// The hub holds this many bytes of the job's log (the chunk is in).
    Committed(u64),
    /// The offset was past the hub's end (`409 log_gap`): resend from `committed`.
    Gap {
        /// Bytes the hub holds.
        committed: u64,
    },
}

/// The outcome of [`HubClient::complete`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    /// The hub recorded the completion (or had already: completion is idempotent).
    Done(CompleteResponse),
    /// The hub holds fewer log bytes than announced (`409 log_incomplete`): upload from
    /// `committed`, then complete again.
    LogIncomplete {
        /// Bytes the hub holds.
        committed: u64,
    },
}

/// A client of one hub. Cheap to clone (an `Arc` inside); clones share connections, the
/// last-success time and the retry counter.
#[derive(Clone)]
pub struct HubClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: legacy::Client<Connector, Full<Bytes>>,
    /// `scheme://authority[/prefix]`, no trailing slash; paths are appended.
    base: String,
    authorization: HeaderValue,
    user_agent: HeaderValue,
    /// Sent on every request when requests go to a forward proxy (http hubs).
    proxy_authorization: Option<HeaderValue>,
    proxy: Option<String>,
    request_timeout: Duration,
    retry: crate::RetryPolicy,
    last_success: Mutex<Option<Instant>>,
    retries: AtomicU64,
    /// Whether the hub answers, for all clones: an outage is said once when it begins and once
    /// when it ends.
    outage: Mutex<Reachability>,
}

/// Whether the hub answers.
#[derive(Debug, Clone, Copy, Default)]
enum Reachability {
    #[default]
    Answers,
    /// One attempt found it unreachable at `since`: a blip (a connection the hub closed just
    /// as it was reused) until a second one in a row makes it an outage.
    Failing { since: Instant },
    /// An outage, said.
    Down { since: Instant },
}

impl fmt::Debug for HubClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubClient")
            .field("base", &self.inner.base)
            .field("proxy", &self.inner.proxy)
            .finish_non_exhaustive()
    }
}

impl HubClient {
    /// A client configured by `config`, with the proxy environment of this process.
    pub fn new(config: ClientConfig) -> Result<Self, ClientError> {
        Self::with_env(config, |name| std::env::var(name).ok())
    }

    /// A client whose proxy environment (`HTTPS_PROXY`, `NO_PROXY`, …) is read through `env`
    /// instead of the process environment, so tests and embedders can inject it.
    ///
    /// Reads the CA bundle, client certificate and key (and, for an https hub without
    /// `ca_file`, the system's roots) before returning: call it at startup, not in a hot path.
    pub fn with_env(
        config: ClientConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ClientError> {
        let (base_uri, base) = parse_base_url(&config.base_url)?;
        let https = base_uri.scheme() == Some(&Scheme::HTTPS);

        let token = config.token.trim();
        if token.is_empty() {
            return Err(ClientError::config("token", "is empty"));
        }
        let mut authorization = HeaderValue::try_from(format!("Bearer {token}"))
            .map_err(|_| ClientError::config("token", "contains characters not allowed"))?;
        authorization.set_sensitive(true);
        let user_agent = HeaderValue::try_from(config.user_agent.as_str())
            .map_err(|_| ClientError::config("user_agent", "contains characters not allowed"))?;

        let wants_tls_files =
            config.ca_file.is_some() || config.client_cert.is_some() || config.client_key.is_some();
        let tls = if https || wants_tls_files {
            Some(connect::tls_config(&config, https)?)
        } else {
            None
        };
        let route = connect::route(&config, &base_uri, &env)?;
        let proxy = route.proxy_display();
        let proxy_authorization = match &route {
            Route::Forward { auth, .. } => auth.clone(),
            Route::Direct | Route::Tunnel { .. } => None,
        };
        let connector = Connector::new(route, tls, config.connect_timeout);
        let http = legacy::Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(connector);

        Ok(Self {
            inner: Arc::new(Inner {
                http,
                base,
                authorization,
                user_agent,
                proxy_authorization,
                proxy,
                request_timeout: config.request_timeout,
                retry: config.retry,
                last_success: Mutex::new(None),
                retries: AtomicU64::new(0),
                outage: Mutex::new(Reachability::Answers),
            }),
        })
    }

    /// The hub's base URL as used (no trailing slash).
    pub fn base_url(&self) -> &str {
        &self.inner.base
    }

    /// The proxy requests go through (without its password), if any.
    pub fn proxy(&self) -> Option<&str> {
        self.inner.proxy.as_deref()
    }

    /// When a call last succeeded (any `Ok` outcome, `LogAppend::Gap`, `None` from acquire and
    /// `Completion::LogIncomplete` included), for "seconds since the last successful hub call".
    pub fn last_success(&self) -> Option<Instant> {
        *self
            .inner
            .last_success
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// How many retries this client (and its clones) made so far, for a metric.
    pub fn retries(&self) -> u64 {
        self.inner.retries.load(Ordering::Relaxed)
    }

    // -----------------------------------------------------------------------------------------
    // Runner side
    // -----------------------------------------------------------------------------------------

    /// `POST /api/v1/runner/register`. Registering the same name again returns the same id.
    pub async fn register(&self, req: &RegisterRequest) -> Result<RegisterResponse, ClientError> {
        let call = Call::json(
            Method::POST,
            paths::REGISTER.to_owned(),
            req,
            self.timeout(),
        );
        self.json_call(&call).await
    }

    /// `POST /api/v1/runner/acquire`, a long-poll of up to `wait_s` (the attempt's timeout is
    /// `request_timeout + wait_s`). `None` when no job came within `wait_s` (204).
    pub async fn acquire(
        &self,
        req: &AcquireRequest,
    ) -> Result<Option<JobAssignment>, ClientError> {
        let call = Call::json(
            Method::POST,
            paths::ACQUIRE.to_owned(),
            req,
            self.long_poll(req.wait_s),
        );
        let answer = self.send(&call).await?;
        let outcome = match answer.status {
            StatusCode::NO_CONTENT => Ok(None),
            _ => decode::<AcquireResponse>(&call, answer).map(|r| Some(r.job)),
        };
        self.record(outcome)
    }

    /// `POST /api/v1/runner/heartbeat`, a long-poll of up to `wait_s` that answers early when a
    /// job is cancelled.
    pub async fn heartbeat(
        &self,
        req: &HeartbeatRequest,
    ) -> Result<HeartbeatResponse, ClientError> {
        let call = Call::json(
            Method::POST,
            paths::HEARTBEAT.to_owned(),
            req,
            self.long_poll(req.wait_s),
        );
        self.json_call(&call).await
    }

    /// `POST /api/v1/runner/jobs/{id}/log?offset=N&lease_id=L`: appends `bytes` (≤ 1 MiB) at
    /// `offset`, as the holder of `lease_id`. A gap (`409 log_gap`) is an outcome, not an error;
    /// a job that has ended is `409 job_ended`, an [`ClientError::Api`] error.
    pub async fn append_log(
        &self,
        job_id: &JobId,
        lease_id: &LeaseId,
        offset: u64,
        bytes: Bytes,
    ) -> Result<LogAppend, ClientError> {
        let call = Call {
            method: Method::POST,
            path: paths::job_log(
                &segment(job_id.as_str()),
                &segment(lease_id.as_str()),
                offset,
            ),
            body: Some((bytes, "application/octet-stream")),
            idempotent: true,
            timeout: self.timeout(),
        };
        let answer = self.send(&call).await?;
        let outcome = match committed_of(&answer, ErrorCode::LogGap) {
            Some(committed) => Ok(LogAppend::Gap { committed }),
            None => decode::<LogAppendResponse>(&call, answer)
                .map(|r| LogAppend::Committed(r.committed)),
        };
        self.record(outcome)
    }

    /// `POST /api/v1/runner/jobs/{id}/steps?lease_id=L`: upserts one step's state, as the holder
    /// of `lease_id`.
    pub async fn step_update(
        &self,
        job_id: &JobId,
        lease_id: &LeaseId,
        update: &StepUpdate,
    ) -> Result<(), ClientError> {
        let call = Call::json(
            Method::POST,
            paths::job_steps(&segment(job_id.as_str()), &segment(lease_id.as_str())),
            update,
            self.timeout(),
        );
        let answer = self.send(&call).await?;
        self.record(expect_success(&call, answer))
    }

    /// `POST /api/v1/runner/jobs/{id}/complete`. `409 log_incomplete` is an outcome.
    pub async fn complete(
        &self,
        job_id: &JobId,
        req: &CompleteRequest,
    ) -> Result<Completion, ClientError> {
        let call = Call::json(
            Method::POST,
            paths::job_complete(&segment(job_id.as_str())),
            req,
            self.timeout(),
        );
        let answer = self.send(&call).await?;
        let outcome = match committed_of(&answer, ErrorCode::LogIncomplete) {
            Some(committed) => Ok(Completion::LogIncomplete { committed }),
            None => decode::<CompleteResponse>(&call, answer).map(Completion::Done),
        };
        self.record(outcome)
    }

    // -----------------------------------------------------------------------------------------
    // Admin side
    // -----------------------------------------------------------------------------------------

    /// `POST /api/v1/orgs` (admin key). Not retried once the request may have reached the hub.
    pub async fn create_org(&self, name: &str) -> Result<CreateOrgResponse, ClientError> {
        let req = CreateOrgRequest {
            name: name.to_owned(),
        };
        let call = Call::json(Method::POST, paths::ORGS.to_owned(), &req, self.timeout()).creates();
        self.json_call(&call).await
    }

    /// `POST /api/v1/orgs/{org}/runner-tokens`. Not retried once the request may have reached
    /// the hub.
    pub async fn create_runner_token(
        &self,
        org: &str,
        description: &str,
    ) -> Result<CreateRunnerTokenResponse, ClientError> {
        let req = CreateRunnerTokenRequest {
            description: description.to_owned(),
        };
        let path = paths::runner_tokens(&segment(org));
        let call = Call::json(Method::POST, path, &req, self.timeout()).creates();
        self.json_call(&call).await
    }

    /// `GET /api/v1/orgs/{org}/runner-tokens`.
    pub async fn list_runner_tokens(&self, org: &str) -> Result<Vec<RunnerTokenInfo>, ClientError> {
        let call = Call::get(paths::runner_tokens(&segment(org)), self.timeout());
        self.json_call::<RunnerTokenList>(&call)
            .await
            .map(|list| list.tokens)
    }

    /// `DELETE /api/v1/orgs/{org}/runner-tokens/{id}`.
    pub async fn revoke_runner_token(&self, org: &str, id: &str) -> Result<(), ClientError> {
        let call = Call {
            method: Method::DELETE,
            path: paths::runner_token(&segment(org), &segment(id)),
            body: None,
            idempotent: true,
            timeout: self.timeout(),
        };
        let answer = self.send(&call).await?;
        self.record(expect_success(&call, answer))
    }

    /// `GET /api/v1/orgs/{org}/runners`.
    pub async fn list_runners(&self, org: &str) -> Result<Vec<RunnerInfo>, ClientError> {
        let call = Call::get(paths::runners(&segment(org)), self.timeout());
        self.json_call::<RunnerList>(&call)
            .await
            .map(|list| list.runners)
    }

    /// `POST /api/v1/orgs/{org}/jobs`. Not retried once the request may have reached the hub.
    pub async fn submit_job(
        &self,
        org: &str,
        req: &SubmitJobRequest,
    ) -> Result<SubmitJobResponse, ClientError> {
        let call = Call::json(
            Method::POST,
            paths::jobs(&segment(org)),
            req,
            self.timeout(),
        )
        .creates();
        self.json_call(&call).await
    }

    /// `GET /api/v1/orgs/{org}/jobs[?state=S][&limit=N]`, newest first.
    pub async fn list_jobs(
        &self,
        org: &str,
        state: Option<JobState>,
        limit: Option<u32>,
    ) -> Result<Vec<JobSummary>, ClientError> {
        let mut path = paths::jobs(&segment(org));
        let mut sep = '?';
        if let Some(state) = state {
            path.push_str(&format!("{sep}state={state}"));
            sep = '&';
        }
        if let Some(limit) = limit {
            path.push_str(&format!("{sep}limit={limit}"));
        }
        let call = Call::get(path, self.timeout());
        self.json_call::<JobList>(&call).await.map(|list| list.jobs)
    }

    /// `GET /api/v1/orgs/{org}/jobs/{id}`.
    pub async fn get_job(&self, org: &str, id: &str) -> Result<JobDetails, ClientError> {
        let call = Call::get(paths::job(&segment(org), &segment(id)), self.timeout());
        self.json_call(&call).await
    }

    /// `GET /api/v1/orgs/{org}/jobs/{id}/log?offset=N`: the log bytes the hub holds from
    /// `offset` on (no size limit).
    pub async fn read_log(&self, org: &str, id: &str, offset: u64) -> Result<Bytes, ClientError> {
        let call = Call::get(
            paths::job_log_read(&segment(org), &segment(id), offset, false),
            self.timeout(),
        );
        let answer = self.send_limited(&call, usize::MAX).await?;
        let outcome = if answer.status.is_success() {
            Ok(answer.body)
        } else {
            Err(error_of(&call, &answer))
        };
        self.record(outcome)
    }

    /// `GET /api/v1/orgs/{org}/jobs/{id}/log?offset=N&follow=true`: the log from `offset`, then
    /// new bytes as the hub commits them, until the job ends. The request timeout covers the
    /// answer's head only: chunks may be minutes apart. A broken stream is an error from
    /// [`LogStream::next_chunk`]; follow again from [`LogStream::offset`] to resume.
    pub async fn follow_log(
        &self,
        org: &str,
        id: &str,
        offset: u64,
    ) -> Result<LogStream, ClientError> {
        let call = Call::get(
            paths::job_log_read(&segment(org), &segment(id), offset, true),
            self.timeout(),
        );
        let endpoint = call.endpoint();
        let head = self
            .with_retries(&call, || self.attempt_head(&call))
            .await?;
        let outcome = match head {
            Head::Stream(body) => Ok(LogStream {
                body,
                offset,
                endpoint,
                done: false,
            }),
            Head::Answer(answer) => Err(error_of(&call, &answer)),
        };
        self.record(outcome)
    }

    /// `POST /api/v1/orgs/{org}/jobs/{id}/cancel` (idempotent: cancelling twice is harmless).
    pub async fn cancel_job(&self, org: &str, id: &str) -> Result<CancelResponse, ClientError> {
        let call = Call {
            method: Method::POST,
            path: paths::job_cancel(&segment(org), &segment(id)),
            body: None,
            idempotent: true,
            timeout: self.timeout(),
        };
        self.json_call(&call).await
    }

    /// `GET /healthz`: whether the hub answers at all.
    pub async fn healthz(&self) -> Result<(), ClientError> {
        let call = Call::get(paths::HEALTHZ.to_owned(), self.timeout());
        let answer = self.send(&call).await?;
        self.record(expect_success(&call, answer))
    }

    // -----------------------------------------------------------------------------------------
    // Machinery
    // -----------------------------------------------------------------------------------------

    fn timeout(&self) -> Duration {
        self.inner.request_timeout
    }

    fn long_poll(&self, wait_s: u64) -> Duration {
        self.inner
            .request_timeout
            .saturating_add(Duration::from_secs(wait_s))
    }

    fn record<T>(&self, outcome: Result<T, ClientError>) -> Result<T, ClientError> {
        if outcome.is_ok() {
            let mut last = self
                .inner
                .last_success
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            *last = Some(Instant::now());
        }
        outcome
    }

    async fn json_call<T: DeserializeOwned>(&self, call: &Call) -> Result<T, ClientError> {
        let answer = self.send(call).await?;
        self.record(decode(call, answer))
    }

    /// Sends `call` with retries; any answer that is not retried comes back as it is.
    async fn send(&self, call: &Call) -> Result<Answer, ClientError> {
        self.send_limited(call, MAX_JSON_ANSWER).await
    }

    async fn send_limited(&self, call: &Call, limit: usize) -> Result<Answer, ClientError> {
        self.with_retries(call, || self.attempt_full(call, limit))
            .await
    }

    async fn with_retries<T, F, Fut>(&self, call: &Call, mut attempt: F) -> Result<T, ClientError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let mut budget = Budget::start(&self.inner.retry);
        loop {
            budget.attempt();
            let failure = match attempt().await {
                Ok(value) => {
                    self.hub_answered();
                    return Ok(value);
                }
                Err(failure) => failure,
            };
            if failure.unreachable() {
                self.hub_unreachable(&failure.error);
            } else {
                self.hub_answered();
            }
            let may_retry = failure.retryable && (call.idempotent || !failure.sent);
            let delay = if may_retry {
                budget.next_delay(failure.retry_after)
            } else {
                None
            };
            let Some(delay) = delay else {
                return Err(failure.error);
            };
            tracing::debug!(error = %failure.error, ?delay, "hub call failed, retrying");
            self.inner.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(delay).await;
        }
    }

    /// An attempt found the hub unreachable: the second in a row begins an outage, and says so
    /// with its cause.
    fn hub_unreachable(&self, error: &ClientError) {
        let mut state = self.inner.outage.lock().unwrap_or_else(|p| p.into_inner());
        *state = match *state {
            Reachability::Answers => Reachability::Failing {
                since: Instant::now(),
            },
            Reachability::Failing { since } => {
                tracing::warn!(hub = %self.inner.base, %error, "the hub is unreachable; retrying until it answers");
                Reachability::Down { since }
            }
            down @ Reachability::Down { .. } => down,
        };
    }

    /// The hub answered (whatever it said): the end of an outage says so.
    fn hub_answered(&self) {
        let mut state = self.inner.outage.lock().unwrap_or_else(|p| p.into_inner());
        if let Reachability::Down { since } = *state {
            tracing::warn!(
                hub = %self.inner.base,
                after = %outpost_time::format(since.elapsed()),
                "the hub answers again"
            );
        }
        *state = Reachability::Answers;
    }

    fn request(&self, call: &Call) -> Result<Request<Full<Bytes>>, Failure> {
        let mut builder = Request::builder()
            .method(call.method.clone())
            .uri(format!("{}{}", self.inner.base, call.path))
            .header(AUTHORIZATION, self.inner.authorization.clone())
            .header(USER_AGENT, self.inner.user_agent.clone())
            .header(ACCEPT, "application/json");
        if let Some(auth) = &self.inner.proxy_authorization {
            builder = builder.header(PROXY_AUTHORIZATION, auth.clone());
        }
        let body = match &call.body {
            Some((bytes, content_type)) => {
                builder = builder.header(CONTENT_TYPE, *content_type);
                bytes.clone()
            }
            None => Bytes::new(),
        };
        builder.body(Full::new(body)).map_err(|e| Failure {
            error: ClientError::Transport {
                endpoint: call.endpoint(),
                source: Box::new(e),
            },
            sent: false,
            retryable: false,
            retry_after: None,
        })
    }

    /// One attempt: send, read the whole answer, all within the call's timeout.
    async fn attempt_full(&self, call: &Call, limit: usize) -> Result<Answer, Failure> {
        let req = self.request(call)?;
        let exchange = async {
            let response = self
                .inner
                .http
                .request(req)
                .await
                .map_err(|e| transport(call, e))?;
            read_answer(call, response, limit).await
        };
        let answer = match tokio::time::timeout(call.timeout, exchange).await {
            Ok(result) => result?,
            Err(_elapsed) => return Err(timed_out(call)),
        };
        check_status(call, answer)
    }

    /// One attempt that returns a successful answer's body unread, for streaming.
    async fn attempt_head(&self, call: &Call) -> Result<Head, Failure> {
        let req = self.request(call)?;
        let exchange = async {
            let response = self
                .inner
                .http
                .request(req)
                .await
                .map_err(|e| transport(call, e))?;
            if response.status().is_success() {
                return Ok(Head::Stream(response.into_body()));
            }
            read_answer(call, response, MAX_JSON_ANSWER)
                .await
                .map(Head::Answer)
        };
        match tokio::time::timeout(call.timeout, exchange).await {
            Ok(Ok(Head::Answer(answer))) => check_status(call, answer).map(Head::Answer),
            Ok(result) => result,
            Err(_elapsed) => Err(timed_out(call)),
        }
    }
}

/// A byte stream of a followed log; see [`HubClient::follow_log`].
pub struct LogStream {
    body: Incoming,
    offset: u64,
    endpoint: String,
    done: bool,
}

impl fmt::Debug for LogStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogStream")
            .field("endpoint", &self.endpoint)
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

impl LogStream {
    /// The next chunk of log bytes, or `None` when the hub ended the stream (the job ended).
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, ClientError> {
        futures_util::StreamExt::next(self).await.transpose()
    }

    /// The log offset after the bytes returned so far: where to follow again from.
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

/// The chunks as a stream; it ends after the first error.
impl Stream for LogStream {
    type Item = Result<Bytes, ClientError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            let frame = match ready!(Pin::new(&mut this.body).poll_frame(cx)) {
                None => {
                    this.done = true;
                    return Poll::Ready(None);
                }
                Some(Err(e)) => {
                    this.done = true;
                    let endpoint = this.endpoint.clone();
                    return Poll::Ready(Some(Err(ClientError::Transport {
                        endpoint,
                        source: Box::new(e),
                    })));
                }
                Some(Ok(frame)) => frame,
            };
            if let Ok(data) = frame.into_data()
                && !data.is_empty()
            {
                this.offset += data.len() as u64;
                return Poll::Ready(Some(Ok(data)));
            }
        }
    }
}

/// One call: what to send and how to treat failures.
struct Call {
    method: Method,
    /// Path and query, appended to the base URL.
    path: String,
    body: Option<(Bytes, &'static str)>,
    /// Whether sending it twice is harmless; if not, it is retried only when it surely was not
    /// sent.
    idempotent: bool,
    /// The timeout of one attempt.
    timeout: Duration,
}

impl Call {
    fn get(path: String, timeout: Duration) -> Self {
        Self {
            method: Method::GET,
            path,
            body: None,
            idempotent: true,
            timeout,
        }
    }

    fn json(method: Method, path: String, body: &impl Serialize, timeout: Duration) -> Self {
        let bytes = serde_json::to_vec(body).expect("wire types always serialize to JSON");
        Self {
            method,
            path,
            body: Some((Bytes::from(bytes), "application/json")),
            idempotent: true,
            timeout,
        }
    }

    /// Marks a call that creates something: not idempotent.
    fn creates(mut self) -> Self {
        self.idempotent = false;
        self
    }

    /// `METHOD /path`, without the query.
    fn endpoint(&self) -> String {
        let path = self
            .path
            .split_once('?')
            .map_or(self.path.as_str(), |(path, _)| path);
        format!("{} {path}", self.method)
    }
}

/// A complete answer.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

/// The head of a streaming answer: a successful body to stream, or a complete error answer.
enum Head {
    Stream(Incoming),
    Answer(Answer),
}

/// A failed attempt, with what the retry loop needs to know about it.
struct Failure {
    error: ClientError,
    /// Whether the request may have reached the hub.
    sent: bool,
    retryable: bool,
    retry_after: Option<Duration>,
}

impl Failure {
    /// Whether the hub did not answer at all: no connection, a broken one, no answer in
    /// time, or a proxy saying it cannot reach the hub (502, 504).
    fn unreachable(&self) -> bool {
        match &self.error {
            ClientError::Transport { .. } | ClientError::Timeout { .. } => true,
            ClientError::Api { status, .. } => {
                *status == StatusCode::BAD_GATEWAY || *status == StatusCode::GATEWAY_TIMEOUT
            }
            _ => false,
        }
    }
}

fn transport(call: &Call, err: legacy::Error) -> Failure {
    // A connect error means the request never left; anything later may have reached the hub.
    let sent = !err.is_connect();
    Failure {
        error: ClientError::Transport {
            endpoint: call.endpoint(),
            source: Box::new(err),
        },
        sent,
        retryable: true,
        retry_after: None,
    }
}

fn timed_out(call: &Call) -> Failure {
    Failure {
        error: ClientError::Timeout {
            endpoint: call.endpoint(),
            after: call.timeout,
        },
        sent: true,
        retryable: true,
        retry_after: None,
    }
}

async fn read_answer(
    call: &Call,
    response: Response<Incoming>,
    limit: usize,
) -> Result<Answer, Failure> {
    let (parts, body) = response.into_parts();
    let body = Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e: BoxError| {
            let too_large = e.is::<http_body_util::LengthLimitError>();
            Failure {
                error: ClientError::Transport {
                    endpoint: call.endpoint(),
                    source: e,
                },
                sent: true,
                retryable: !too_large,
                retry_after: None,
            }
        })?;
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.to_bytes(),
    })
}

/// Turns a retryable status (408, 429, 5xx) into a failure; passes any other answer through.
fn check_status(call: &Call, answer: Answer) -> Result<Answer, Failure> {
    if !is_retryable_status(answer.status) {
        return Ok(answer);
    }
    let retry_after = match answer.status {
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
            retry_after(&answer.headers, SystemTime::now())
        }
        _ => None,
    };
    Err(Failure {
        error: error_of(call, &answer),
        sent: true,
        retryable: true,
        retry_after,
    })
}

/// The error for a non-success answer: 401 is [`ClientError::Unauthorized`].
fn error_of(call: &Call, answer: &Answer) -> ClientError {
    let endpoint = call.endpoint();
    if answer.status == StatusCode::UNAUTHORIZED {
        return ClientError::Unauthorized { endpoint };
    }
    let body = serde_json::from_slice::<ErrorBody>(&answer.body)
        .unwrap_or_else(|_| synthesize_body(answer.status, &answer.body));
    ClientError::Api {
        endpoint,
        status: answer.status,
        body,
    }
}

/// The `committed` of a `409` answer with error code `code`.
fn committed_of(answer: &Answer, code: ErrorCode) -> Option<u64> {
    if answer.status != StatusCode::CONFLICT {
        return None;
    }
    let body = serde_json::from_slice::<ErrorBody>(&answer.body).ok()?;
    if body.error.code == code {
        body.committed
    } else {
        None
    }
}

fn decode<T: DeserializeOwned>(call: &Call, answer: Answer) -> Result<T, ClientError> {
    if !answer.status.is_success() {
        return Err(error_of(call, &answer));
    }
    serde_json::from_slice(&answer.body).map_err(|source| ClientError::Decode {
        endpoint: call.endpoint(),
        source,
    })
}

fn expect_success(call: &Call, answer: Answer) -> Result<(), ClientError> {
    if answer.status.is_success() {
        Ok(())
    } else {
        Err(error_of(call, &answer))
    }
}

/// Validates the hub's URL; returns it parsed and as the prefix paths are appended to.
fn parse_base_url(url: &str) -> Result<(Uri, String), ClientError> {
    let url = url.trim();
    let what = format!("base_url `{url}`");
    if url.is_empty() {
        return Err(ClientError::config("base_url", "is empty"));
    }
    let uri: Uri = url.parse().map_err(|e| ClientError::config(&what, e))?;
    let scheme = match uri.scheme_str() {
        Some(scheme @ ("http" | "https")) => scheme,
        Some(other) => {
            return Err(ClientError::config(
                what,
                format!("scheme `{other}` is not http or https"),
            ));
        }
        None => {
            return Err(ClientError::config(
                what,
                "needs a scheme, http:// or https://",
            ));
        }
    };
    let Some(authority) = uri.authority() else {
        return Err(ClientError::config(what, "has no host"));
    };
    if authority.as_str().contains('@') {
        return Err(ClientError::config(
            what,
            "must not carry credentials; use token",
        ));
    }
    if uri.query().is_some() {
        return Err(ClientError::config(what, "must not have a query"));
    }
    let prefix = uri.path().trim_end_matches('/');
    let base = format!("{scheme}://{authority}{prefix}");
    Ok((uri, base))
}

/// Percent-encodes one path segment or query value (an org name, a job, lease or token id).
fn segment(value: &str) -> Cow<'_, str> {
    let unreserved = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
    if value.bytes().all(unreserved) {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() * 3);
    for b in value.bytes() {
        if unreserved(b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        let check = |url: &str, expected: Result<&str, &str>| {
            let got = parse_base_url(url)
                .map(|(_, base)| base)
                .map_err(|e| e.to_string());
            match (got, expected) {
                (Ok(base), Ok(want)) => assert_eq!(base, want, "{url}"),
                (Err(err), Err(want)) => assert!(err.contains(want), "{url}: {err}"),
                (got, want) => panic!("{url}: got {got:?}, expected {want:?}"),
            }
        };
        check("https://hub.example", Ok("https://hub.example"));
        check("https://hub.example/", Ok("https://hub.example"));
        check(
            "http://127.0.0.1:8080/outpost/",
            Ok("http://127.0.0.1:8080/outpost"),
        );
        check(" https://[::1]:443 ", Ok("https://[::1]:443"));
        check("", Err("base_url: is empty"));
        check("hub.example", Err("needs a scheme"));
        check("ftp://hub", Err("scheme `ftp`"));
        check("https://u:p@hub", Err("must not carry credentials"));
        check("https://hub/?x=1", Err("must not have a query"));
        check("https://hub example", Err("base_url `https://hub example`"));
    }

    #[test]
    fn segments_are_percent_encoded() {
        let check = |input: &str, expected: &str| assert_eq!(segment(input), expected);
        check("acme", "acme");
        check("job-1.a_b~", "job-1.a_b~");
        check("a/b", "a%2Fb");
        check("a b?c#", "a%20b%3Fc%23");
        check("é", "%C3%A9");
    }

    #[test]
    fn endpoints_drop_the_query() {
        let call = Call::get(
            "/api/v1/orgs/a/jobs/j/log?offset=3&follow=true".into(),
            Duration::ZERO,
        );
        assert_eq!(call.endpoint(), "GET /api/v1/orgs/a/jobs/j/log");
    }

    #[test]
    fn config_errors_name_the_thing_at_fault() {
        let check = |config: ClientConfig, expected: &str| {
            let err = HubClient::with_env(config, |_| None).expect_err("an error");
            assert!(err.to_string().contains(expected), "{err}");
        };
        check(ClientConfig::new("http://hub", " "), "token: is empty");
        check(ClientConfig::new("http://hub", "a\nb"), "token: contains");
        check(ClientConfig::new("mailto:x", "t"), "base_url `mailto:x`");
        let mut config = ClientConfig::new("https://hub", "t");
        config.ca_file = Some("/nonexistent/ca.pem".into());
        check(config, "ca_file /nonexistent/ca.pem: cannot read");
        let mut config = ClientConfig::new("https://hub", "t");
        config.client_cert = Some("/nonexistent/cert.pem".into());
        check(config, "client_key: must be set along with client_cert");
        let mut config = ClientConfig::new("https://hub", "t");
        config.proxy = Some("socks5://p:1".into());
        check(config, "proxy: `socks5://p:1`: unsupported proxy scheme");
    }

    #[test]
    fn committed_only_from_the_matching_conflict() {
        let answer = |status: u16, body: &ErrorBody| Answer {
            status: StatusCode::from_u16(status).expect("status"),
            headers: HeaderMap::new(),
            body: Bytes::from(serde_json::to_vec(body).expect("json")),
        };
        let gap = ErrorBody::new(ErrorCode::LogGap, "gap").with_committed(42);
        assert_eq!(
            committed_of(&answer(409, &gap), ErrorCode::LogGap),
            Some(42)
        );
        assert_eq!(
            committed_of(&answer(409, &gap), ErrorCode::LogIncomplete),
            None
        );
        assert_eq!(committed_of(&answer(400, &gap), ErrorCode::LogGap), None);
        let mismatch = ErrorBody::new(ErrorCode::LeaseMismatch, "no");
        assert_eq!(
            committed_of(&answer(409, &mismatch), ErrorCode::LogGap),
            None
        );
    }
}
