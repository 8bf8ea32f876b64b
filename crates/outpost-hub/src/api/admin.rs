//! The admin side of the API: organizations, runner tokens, runners, and jobs (submit, list,
//! details, log, cancel). Authenticated by the admin key or the organization's API key.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use outpost_protocol::{
    CancelResponse, CreateOrgRequest, CreateOrgResponse, CreateRunnerTokenRequest,
    CreateRunnerTokenResponse, ErrorCode, JobDetails, JobList, JobSpec, JobState, RunnerList,
    RunnerTokenList, SubmitJobRequest, SubmitJobResponse, Timestamp,
};
use serde::Deserialize;

use super::AppState;
use super::extract::{AdminAuth, ApiJson, ApiPath, ApiQuery};
use super::runner::clean_labels;
use crate::error::ApiError;
use crate::secret::new_id;
use crate::store::{NewJob, Org};
use crate::wait::Waiter;

/// Default and largest `limit` of a job list.
const DEFAULT_LIST_LIMIT: u32 = 50;
const MAX_LIST_LIMIT: u32 = 500;
/// Largest piece of log read from the store at once while streaming.
const LOG_READ_CHUNK: usize = 1024 * 1024;
/// The header that carries the number of log bytes the hub held when a log read began.
pub(crate) const LOG_BYTES_HEADER: &str = "x-outpost-log-bytes";

fn unprocessable(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::Unprocessable, message)
}

/// `POST /api/v1/orgs` (admin key only).
pub(crate) async fn create_org(
    State(state): State<AppState>,
    auth: AdminAuth,
    ApiJson(request): ApiJson<CreateOrgRequest>,
) -> Result<(StatusCode, Json<CreateOrgResponse>), ApiError> {
    if let AdminAuth::Org(_) = auth {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "only the admin key may create organizations",
        ));
    }
    let api_key = crate::admin::create_org(state.store.as_ref(), &request.name)
        .await
        .map_err(admin_error)?;
    Ok((
        StatusCode::CREATED,
        Json(CreateOrgResponse {
            name: request.name,
            api_key,
        }),
    ))
}

fn admin_error(e: crate::HubError) -> ApiError {
    match e {
        crate::HubError::Store(e) => e.into(),
        crate::HubError::OrgExists { .. } => ApiError::new(ErrorCode::AlreadyExists, e.to_string()),
        crate::HubError::OrgNotFound { .. } | crate::HubError::TokenNotFound { .. } => {
            ApiError::not_found(e.to_string())
        }
        crate::HubError::Invalid { .. } => unprocessable(e.to_string()),
        other => {
            tracing::error!(error = %other, "admin call failed");
            ApiError::new(ErrorCode::Internal, "the hub failed; see its log")
        }
    }
}

/// `POST /api/v1/orgs/{org}/runner-tokens`
pub(crate) async fn create_runner_token(
    State(state): State<AppState>,
    auth: AdminAuth,
    ApiPath(org): ApiPath<String>,
    ApiJson(request): ApiJson<CreateRunnerTokenRequest>,
) -> Result<(StatusCode, Json<CreateRunnerTokenResponse>), ApiError> {
    let org = auth.org(&state, &org).await?;
    let (id, token) =
        crate::admin::create_runner_token(state.store.as_ref(), &org, &request.description)
            .await
            .map_err(admin_error)?;
    Ok((
        StatusCode::CREATED,
        Json(CreateRunnerTokenResponse { id, token }),
    ))
}

/// `GET /api/v1/orgs/{org}/runner-tokens`
pub(crate) async fn list_runner_tokens(
    State(state): State<AppState>,
    auth: AdminAuth,
    ApiPath(org): ApiPath<String>,
) -> Result<Json<RunnerTokenList>, ApiError> {
    let org = auth.org(&state, &org).await?;
    let tokens = state.store.list_runner_tokens(org.id).await?;
    Ok(Json(RunnerTokenList { tokens }))
}

/// `DELETE /api/v1/orgs/{org}/runner-tokens/{id}`: revokes (idempotent); 204.
pub(crate) async fn revoke_runner_token(
    State(state): State<AppState>,
    auth: AdminAuth,
    ApiPath((org, id)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let org = auth.org(&state, &org).await?;
    state
        .store
        .revoke_runner_token(org.id, id.clone(), Timestamp::now())
        .await?;
    state.token_revoked();
    tracing::info!(org = %org.name, token = %id, "runner token revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/orgs/{org}/runners`
pub(crate) async fn list_runners(
    State(state): State<AppState>,
    auth: AdminAuth,
    ApiPath(org): ApiPath<String>,
) -> Result<Json<RunnerList>, ApiError> {
    let org = auth.org(&state, &org).await?;
    let runners = state.store.list_runners(org.id).await?;
    Ok(Json(RunnerList { runners }))
}

/// Checks an inline pipeline with the same parser the runner uses; the error names
/// `<inline>:line:col`.
fn validate_pipeline(text: &str) -> Result<(), String> {
    outpost_pipeline::parse("<inline>", text)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The most variables a job has.
const MAX_VARIABLES: usize = 256;
/// The longest variable name, in bytes.
const MAX_VARIABLE_NAME: usize = 256;
/// The longest variable value, in bytes (an environment string far below the kernel's 128 KiB).
const MAX_VARIABLE_VALUE: usize = 32 * 1024;
/// The most bytes of names and values together (well inside what `exec` takes).
const MAX_VARIABLES_BYTES: usize = 256 * 1024;

/// Checks a job's variables: each becomes an environment variable of every step, so what no
/// runner could set (a NUL, a `=` or nothing as the name, a value `exec` refuses) is refused
/// here, at submission, instead of failing the job later as `infrastructure`.
fn check_variables(variables: &BTreeMap<String, String>) -> Result<(), ApiError> {
    let bad = |name: &str, why: String| {
        unprocessable(format!(
            "invalid variable {:?}: {why}",
            name.chars().take(64).collect::<String>()
        ))
    };
    if variables.len() > MAX_VARIABLES {
        return Err(unprocessable(format!(
            "{} variables; at most {MAX_VARIABLES}",
            variables.len()
        )));
    }
    let mut total = 0;
    for (name, value) in variables {
        if name.is_empty() {
            return Err(unprocessable("invalid variable name: it is empty"));
        }
        if name.contains('\0') || name.contains('=') {
            return Err(bad(name, "a name has no NUL and no `=`".to_owned()));
        }
        if name.len() > MAX_VARIABLE_NAME {
            return Err(bad(
                name,
                format!(
                    "the name has {} bytes; at most {MAX_VARIABLE_NAME}",
                    name.len()
                ),
            ));
        }
        if value.contains('\0') {
            return Err(bad(name, "the value has a NUL byte".to_owned()));
        }
        if value.len() > MAX_VARIABLE_VALUE {
            return Err(bad(
                name,
                format!(
                    "the value has {} bytes; at most {MAX_VARIABLE_VALUE}",
                    value.len()
                ),
            ));
        }
        total += name.len() + value.len();
    }
    if total > MAX_VARIABLES_BYTES {
        return Err(unprocessable(format!(
            "the variables have {total} bytes in all; at most {MAX_VARIABLES_BYTES}"
        )));
    }
    Ok(())
}

/// `POST /api/v1/orgs/{org}/jobs` → `201 {job_id}`
pub(crate) async fn submit_job(
    State(state): State<AppState>,
    auth: AdminAuth,
    ApiPath(org): ApiPath<String>,
    ApiJson(request): ApiJson<SubmitJobRequest>,
) -> Result<(StatusCode, Json<SubmitJobResponse>), ApiError> {
    let org = auth.org(&state, &org).await?;
    let SubmitJobRequest {
        pipeline,
        source,
        labels,
        variables,
    } = request;
    let spec = JobSpec::from_parts(pipeline, source).map_err(unprocessable)?;
    match &spec {
        JobSpec::Inline { pipeline: text } => {
            let max = state.config.max_pipeline_bytes;
            if text.len() > max {
                return Err(ApiError::too_large(format!(
                    "inline pipeline of {} bytes exceeds the limit of {max} bytes",
                    text.len()
                )));
            }
            validate_pipeline(text).map_err(unprocessable)?;
        }
        JobSpec::Repo { source } => {
            if source.git.url.trim().is_empty() {
                return Err(unprocessable("source.git.url must not be empty"));
            }
            if source.path.trim().is_empty() {
                return Err(unprocessable("source.path must not be empty"));
            }
        }
    }
    check_variables(&variables)?;
    let labels = clean_labels("labels", labels)?;
    let job_id = new_id("j_");
    let job = NewJob {
        job_id: job_id.clone(),
        spec,
        labels: labels.clone(),
        variables,
        now: Timestamp::now(),
    };
    state.store.submit_job(org.id, job).await?;
    state.metrics.jobs_submitted.inc();
    tracing::info!(org = %org.name, job = %job_id, "job submitted");
    state.job_enqueued(org.id, &job_id, &labels);
    Ok((
        StatusCode::CREATED,
        Json(SubmitJobResponse {
            job_id: job_id.into(),
        }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    state: Option<String>,
    limit: Option<u32>,
}

/// `GET /api/v1/orgs/{org}/jobs?state=S&limit=N`, newest first.
pub(crate) async fn list_jobs(
    State(state): State<AppState>,
    auth: AdminAuth,
    ApiPath(org): ApiPath<String>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<JobList>, ApiError> {
    let org = auth.org(&state, &org).await?;
    let filter = query
        .state
        .as_deref()
        .map(str::parse::<JobState>)
        .transpose()
        .map_err(|e| ApiError::bad_request(format!("invalid `state`: {e}")))?;
    let limit = query.limit.unwrap_or(DEFAULT_LIST_LIMIT);
    if limit == 0 || limit > MAX_LIST_LIMIT {
        return Err(ApiError::bad_request(format!(
            "invalid `limit` {limit}: it must be between 1 and {MAX_LIST_LIMIT}"
        )));
    }
    let jobs = state.store.list_jobs(org.id, filter, limit).await?;
    Ok(Json(JobList { jobs }))
}

/// `GET /api/v1/orgs/{org}/jobs/{id}`
pub(crate) async fn job_details(
    State(state): State<AppState>,
    auth: AdminAuth,
    ApiPath((org, id)): ApiPath<(String, String)>,
) -> Result<Json<JobDetails>, ApiError> {
    let org = auth.org(&state, &org).await?;
    Ok(Json(state.store.job_details(org.id, id).await?))
}

/// `POST /api/v1/orgs/{org}/jobs/{id}/cancel`
pub(crate) async fn cancel_job(
    State(state): State<AppState>,
    auth: AdminAuth,
    ApiPath((org, id)): ApiPath<(String, String)>,
) -> Result<Json<CancelResponse>, ApiError> {
    let org = auth.org(&state, &org).await?;
    let outcome = state
        .store
        .cancel_job(org.id, id.clone(), Timestamp::now())
        .await?;
    if outcome.ended {
        tracing::info!(org = %org.name, job = %id, "queued job cancelled");
        state.job_ended(&id, outcome.state);
    }
    if let Some(runner) = &outcome.runner_id {
        tracing::info!(org = %org.name, job = %id, %runner, "cancel requested");
        state.heartbeats.wake(runner, |()| true);
    }
    Ok(Json(CancelResponse {
        job_id: id.into(),
        state: outcome.state,
        cancel_requested: outcome.cancel_requested,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogQuery {
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    follow: bool,
}

/// `GET /api/v1/orgs/{org}/jobs/{id}/log?offset=N&follow=true`: the log bytes from N as
/// `application/octet-stream`; with `follow`, new bytes stream as they are committed and the
/// answer ends once the job has ended and every byte is sent.
pub(crate) async fn read_log(
    State(state): State<AppState>,
    auth: AdminAuth,
    ApiPath((org, id)): ApiPath<(String, String)>,
    ApiQuery(query): ApiQuery<LogQuery>,
) -> Result<Response, ApiError> {
    let org = auth.org(&state, &org).await?;
    // Registered before the first read, so an append in between is not missed.
    let waiter = query
        .follow
        .then(|| state.followers.register(id.clone(), ()));
    let first = state
        .store
        .read_log(org.id, id.clone(), query.offset, LOG_READ_CHUNK)
        .await?;
    let total = first.total;
    let follow = LogStream {
        state: Arc::clone(&state),
        org,
        job_id: id,
        offset: query.offset,
        pending: Some(first),
        waiter,
        done: false,
    };
    let body = Body::from_stream(futures_util::stream::unfold(follow, LogStream::next));
    Ok((
        [
            (
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (
                HeaderName::from_static(LOG_BYTES_HEADER),
                HeaderValue::from(total),
            ),
        ],
        body,
    )
        .into_response())
}

/// The state of a streaming log read.
struct LogStream {
    state: AppState,
    org: Org,
    job_id: String,
    offset: u64,
    pending: Option<crate::store::LogSlice>,
    /// `Some` when following.
    waiter: Option<Waiter<String, ()>>,
    done: bool,
}

impl LogStream {
    async fn next(mut self) -> Option<(Result<Bytes, std::io::Error>, Self)> {
        loop {
            if self.done {
                return None;
            }
            let slice = match self.pending.take() {
                Some(slice) => slice,
                None => {
                    let read = self
                        .state
                        .store
                        .read_log(
                            self.org.id,
                            self.job_id.clone(),
                            self.offset,
                            LOG_READ_CHUNK,
                        )
                        .await;
                    match read {
                        Ok(slice) => slice,
                        Err(e) => {
                            self.done = true;
                            tracing::warn!(job = %self.job_id, error = %e, "log read failed mid-stream");
                            return Some((Err(std::io::Error::other(e.to_string())), self));
                        }
                    }
                }
            };
            if !slice.data.is_empty() {
                self.offset += slice.data.len() as u64;
                return Some((Ok(slice.data), self));
            }
            // Everything committed so far is sent.
            let Some(waiter) = &self.waiter else {
                return None;
            };
            if slice.ended {
                return None;
            }
            tokio::select! {
                () = waiter.woken() => {}
                () = self.state.stopping.cancelled() => return None,
            }
        }
    }
}
