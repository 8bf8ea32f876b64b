//! The HTTP API (DESIGN.md §3): the router, the state shared by handlers, request metrics, and
//! the JSON answers for unknown routes, wrong methods and panics.

mod admin;
mod extract;
mod runner;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use futures_util::FutureExt;
use outpost_protocol::{ErrorCode, JobState};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::HubConfig;
use crate::error::ApiError;
use crate::metrics::{HttpLabels, Metrics};
use crate::store::{ExpiredLease, OrgId, SecretHash, Store};
use crate::throttle::AuthThrottle;
use crate::wait::{Acquirers, Waitlist, Wake};

/// Everything a handler reaches.
pub(crate) struct Shared {
    pub config: HubConfig,
    pub store: Arc<dyn Store>,
    pub admin_key_hash: SecretHash,
    /// Held acquires, by org and label set.
    pub acquire: Arc<Acquirers>,
    /// Held heartbeats, by runner id.
    pub heartbeats: Arc<Waitlist<String, ()>>,
    /// Log reads that follow a job, by job id.
    pub followers: Arc<Waitlist<String, ()>>,
    pub metrics: Metrics,
    /// Cancelled when the hub begins to shut down: held long-polls answer at once.
    pub stopping: CancellationToken,
    /// Bumped on every runner-token revocation: held long-polls check their token again.
    pub revocations: watch::Sender<u64>,
    /// Wrong credentials, per source address and key prefix.
    pub auth_throttle: AuthThrottle,
}

pub(crate) type AppState = Arc<Shared>;

impl Shared {
    /// A job entered the queue: wake one held acquire of its org that can take it.
    pub(crate) fn job_enqueued(&self, org: OrgId, job_id: &str, labels: &[String]) {
        self.acquire.wake_one(
            org,
            Wake {
                job_id: job_id.to_owned(),
                labels: labels.to_vec(),
            },
        );
    }

    /// A runner token was revoked: every held acquire and heartbeat checks its token again
    /// (the revoked one answers 401), instead of finding out only when its hold ends.
    pub(crate) fn token_revoked(&self) {
        self.revocations.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A job ended: its followers finish their streams.
    pub(crate) fn job_ended(&self, job_id: &str, state: JobState) {
        self.metrics.job_finished(state);
        self.followers.wake(&job_id.to_owned(), |()| true);
    }

    /// Applies the wake-ups for leases the store expired.
    pub(crate) fn leases_expired(&self, expired: &[ExpiredLease]) {
        for lease in expired {
            if lease.new_state == JobState::Queued {
                tracing::info!(job = %lease.job_id, "lease expired before the job started; requeued");
                self.job_enqueued(lease.org, &lease.job_id, &lease.labels);
            } else {
                tracing::warn!(job = %lease.job_id, state = %lease.new_state, "lease expired");
                self.job_ended(&lease.job_id, lease.new_state);
            }
        }
    }
}

/// The hub's router.
pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/v1/runner/register", post(runner::register))
        .route("/api/v1/runner/acquire", post(runner::acquire))
        .route("/api/v1/runner/heartbeat", post(runner::heartbeat))
        .route("/api/v1/runner/jobs/{id}/log", post(runner::append_log))
        .route("/api/v1/runner/jobs/{id}/steps", post(runner::upsert_step))
        .route("/api/v1/runner/jobs/{id}/complete", post(runner::complete))
        .route("/api/v1/orgs", post(admin::create_org))
        .route(
            "/api/v1/orgs/{org}/runner-tokens",
            post(admin::create_runner_token).get(admin::list_runner_tokens),
        )
        .route(
            "/api/v1/orgs/{org}/runner-tokens/{id}",
            delete(admin::revoke_runner_token),
        )
        .route("/api/v1/orgs/{org}/runners", get(admin::list_runners))
        .route(
            "/api/v1/orgs/{org}/jobs",
            post(admin::submit_job).get(admin::list_jobs),
        )
        .route("/api/v1/orgs/{org}/jobs/{id}", get(admin::job_details))
        .route("/api/v1/orgs/{org}/jobs/{id}/log", get(admin::read_log))
        .route(
            "/api/v1/orgs/{org}/jobs/{id}/cancel",
            post(admin::cancel_job),
        )
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(Arc::clone(&state), observe))
        .with_state(state)
}

/// Counts every answer by route and status, and turns a handler panic into a JSON 500.
async fn observe(
    State(state): State<AppState>,
    matched: Option<MatchedPath>,
    req: Request,
    next: Next,
) -> Response {
    let route = matched.map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    let response = match AssertUnwindSafe(next.run(req)).catch_unwind().await {
        Ok(response) => response,
        Err(_) => {
            tracing::error!(%route, %method, "handler panicked");
            ApiError::new(ErrorCode::Internal, "the hub failed handling this request")
                .into_response()
        }
    };
    let labels = HttpLabels {
        route,
        method,
        status: response.status().as_u16(),
    };
    state.metrics.http_requests.get_or_create(&labels).inc();
    response
}

async fn unknown_route(req: Request) -> ApiError {
    ApiError::not_found(format!(
        "no such route: {} {}",
        req.method(),
        req.uri().path()
    ))
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::with_status(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::BadRequest,
        format!(
            "method {} is not allowed on {}",
            req.method(),
            req.uri().path()
        ),
    )
}

/// `GET /healthz`: 200 `ok` when the store answers.
async fn healthz(State(state): State<AppState>) -> Response {
    match state.store.check_health().await {
        Ok(()) => (StatusCode::OK, "ok").into_response(),
        Err(e) => {
            tracing::error!(error = %e, "health check failed");
            ApiError::new(ErrorCode::Unavailable, "the store does not answer").into_response()
        }
    }
}

/// `GET /metrics`: Prometheus text.
async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let counts = state.store.job_counts().await?;
    let m = &state.metrics;
    m.set_job_counts(&counts);
    m.acquire_waiting
        .set(i64::try_from(state.acquire.len()).unwrap_or(i64::MAX));
    m.heartbeat_waiting
        .set(i64::try_from(state.heartbeats.len()).unwrap_or(i64::MAX));
    m.log_followers
        .set(i64::try_from(state.followers.len()).unwrap_or(i64::MAX));
    let text = m
        .encode()
        .map_err(|_| ApiError::new(ErrorCode::Internal, "failed to encode the metrics"))?;
    Ok((
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}
