//! The runner side of the API: register, the acquire and heartbeat long-polls, log append, step
//! upserts and completion. Every call is authenticated by a runner token and confined to the
//! token's organization (anything of another org answers 404).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use outpost_protocol::{
    AcquireRequest, AcquireResponse, CompleteRequest, CompleteResponse, Failure, HeartbeatRequest,
    HeartbeatResponse, LogAppendResponse, MAX_INTEGER, RegisterRequest, RegisterResponse, StepInfo,
    StepUpdate, Timestamp, text,
};
use serde::Deserialize;
use tokio::time::Instant;

use super::AppState;
use super::extract::{ApiJson, ApiPath, ApiQuery, LogBody, RunnerAuth};
use crate::error::ApiError;
use crate::secret::new_id;
use crate::store::{HeartbeatOutcome, NewLease, Org, SecretHash};
use crate::wait::AfterClaim;

fn check_wait(state: &AppState, wait_s: u64) -> Result<(), ApiError> {
    let max = state.config.max_wait_s;
    if wait_s > max {
        return Err(ApiError::bad_request(format!(
            "wait_s {wait_s} exceeds the maximum of {max} seconds"
        )));
    }
    Ok(())
}

/// Checks again that a runner token is valid (a long-poll may outlive its token).
async fn check_token(state: &AppState, token: SecretHash) -> Result<(), ApiError> {
    match state.store.org_by_runner_token(token).await? {
        Some(_) => Ok(()),
        None => Err(ApiError::unauthorized("unknown or revoked runner token")),
    }
}

fn unprocessable(message: impl Into<String>) -> ApiError {
    ApiError::new(outpost_protocol::ErrorCode::Unprocessable, message)
}

/// A `422` naming the field and what is wrong with it.
pub(crate) fn invalid(field: &str, problem: impl std::fmt::Display) -> ApiError {
    unprocessable(format!("invalid `{field}`: {problem}"))
}

/// Checks a list of labels (`field`) and removes duplicates, keeping the first occurrence.
pub(crate) fn clean_labels(field: &str, labels: Vec<String>) -> Result<Vec<String>, ApiError> {
    if labels.len() > text::MAX_LABELS {
        return Err(invalid(
            field,
            format!("{} labels; at most {}", labels.len(), text::MAX_LABELS),
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(labels.len());
    for label in labels {
        text::check_label(&label).map_err(|problem| invalid(field, problem))?;
        if !out.contains(&label) {
            out.push(label);
        }
    }
    Ok(out)
}

/// Checks that an integer a client sent (`field`) is within the protocol's range.
pub(crate) fn check_integer(field: &str, value: u64) -> Result<(), ApiError> {
    if value > MAX_INTEGER {
        return Err(ApiError::bad_request(format!(
            "`{field}` {value} is beyond the largest integer the protocol carries \
             ({MAX_INTEGER}, 2^63-1)"
        )));
    }
    Ok(())
}

/// Checks a failure message a runner sent (`field`).
fn check_failure(field: &str, failure: Option<&Failure>) -> Result<(), ApiError> {
    match failure {
        Some(f) => text::check_message(&f.message).map_err(|problem| invalid(field, problem)),
        None => Ok(()),
    }
}

/// `POST /api/v1/runner/register`
pub(crate) async fn register(
    State(state): State<AppState>,
    RunnerAuth(org, _): RunnerAuth,
    ApiJson(mut request): ApiJson<RegisterRequest>,
) -> Result<Json<RegisterResponse>, ApiError> {
    for (field, value) in [
        ("name", &request.name),
        ("executor", &request.executor),
        ("version", &request.version),
    ] {
        text::check_name(value).map_err(|problem| invalid(field, problem))?;
    }
    if request.capacity == 0 {
        return Err(invalid("capacity", "must be at least 1"));
    }
    request.labels = clean_labels("labels", request.labels)?;
    let name = request.name.clone();
    let runner_id = state
        .store
        .register_runner(org.id, new_id("r_"), request, Timestamp::now())
        .await?;
    // Debug-quoted: whatever a runner calls itself stays inside one field of one log line.
    tracing::info!(org = %org.name, runner = %runner_id, name = ?name, "runner registered");
    Ok(Json(RegisterResponse {
        runner_id: runner_id.into(),
        lease_ttl_s: state.config.lease_ttl_s,
        heartbeat_interval_s: state.config.advertised_heartbeat_interval_s(),
    }))
}

/// `POST /api/v1/runner/acquire`: answers `200 {job}` as soon as a matching job is queued, or
/// `204` after `wait_s`.
pub(crate) async fn acquire(
    State(state): State<AppState>,
    RunnerAuth(org, token): RunnerAuth,
    ApiJson(request): ApiJson<AcquireRequest>,
) -> Result<Response, ApiError> {
    check_wait(&state, request.wait_s)?;
    let runner = state
        .store
        .touch_runner(org.id, request.runner_id.into_string(), Timestamp::now())
        .await?;
    if request.free_slots == 0 {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let deadline = Instant::now() + Duration::from_secs(request.wait_s);
    // Registered before the first look at the queue, so an enqueue in between is not missed.
    let waiter = state.acquire.register(org.id, &runner.labels);
    let mut revoked = state.revocations.subscribe();
    let mut first = true;
    loop {
        // A long-poll may outlive its token: a revoked token gets no job, however long ago the
        // request arrived.
        if !std::mem::take(&mut first) {
            check_token(&state, token).await?;
        }
        // Woken for a job: the claim asks for it; either way it skips jobs reserved for
        // others (see `Acquirers`).
        let woken = waiter.woken_for();
        let reserved = waiter.reserved();
        let now = Timestamp::now();
        let lease = NewLease {
            lease_id: new_id("l_"),
            now,
            expires_at: Timestamp::from_unix_millis(
                now.unix_millis()
                    .saturating_add(state.config.lease_ttl_ms() as i64),
            ),
        };
        let claim = state
            .store
            .claim_job(org.id, runner.clone(), lease, woken.clone(), reserved)
            .await?;
        let claimed_id = claim.as_ref().map(|c| c.assignment.job_id.as_str());
        let next = waiter.after_claim(woken.as_deref(), claimed_id);
        let claimed = match (next, claim) {
            (AfterClaim::Done, Some(claimed)) => claimed,
            (AfterClaim::LookAgain, _) => continue,
            (AfterClaim::Wait | AfterClaim::Done, _) => {
                tokio::select! {
                    () = waiter.woken() => {}
                    Ok(()) = revoked.changed() => {}
                    () = tokio::time::sleep_until(deadline) => break,
                    () = state.stopping.cancelled() => break,
                }
                continue;
            }
        };
        // A wake-up for another job that came during the claim is handed on here.
        drop(waiter);
        let waited = now
            .unix_millis()
            .saturating_sub(claimed.enqueued_at.unix_millis());
        state
            .metrics
            .pickup_latency
            .observe(waited.max(0) as f64 / 1000.0);
        tracing::debug!(
            org = %org.name, runner = %runner.runner_id, job = %claimed.assignment.job_id,
            "job assigned"
        );
        return Ok(Json(AcquireResponse {
            job: claimed.assignment,
        })
        .into_response());
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn renew(
    state: &AppState,
    org: &Org,
    request: &HeartbeatRequest,
) -> Result<HeartbeatOutcome, ApiError> {
    let now = Timestamp::now();
    let expires_at = Timestamp::from_unix_millis(
        now.unix_millis()
            .saturating_add(state.config.lease_ttl_ms() as i64),
    );
    let outcome = state
        .store
        .heartbeat(
            org.id,
            request.runner_id.as_str().to_owned(),
            request.jobs.clone(),
            now,
            expires_at,
        )
        .await?;
    state.leases_expired(&outcome.expired);
    Ok(outcome)
}

/// `POST /api/v1/runner/heartbeat`: renews the leases, then holds until a listed job gets a
/// cancel request (or a lease is lost), a token is revoked, or the hold ends; then checks the
/// token again (a revoked one gets 401 and renews nothing) and renews again.
pub(crate) async fn heartbeat(
    State(state): State<AppState>,
    RunnerAuth(org, token): RunnerAuth,
    ApiJson(request): ApiJson<HeartbeatRequest>,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    check_wait(&state, request.wait_s)?;
    let hold = Duration::from_millis(state.config.heartbeat_hold_ms(request.wait_s));
    let waiter = (!hold.is_zero()).then(|| {
        state
            .heartbeats
            .register(request.runner_id.as_str().to_owned(), ())
    });
    let mut revoked = state.revocations.subscribe();
    let outcome = renew(&state, &org, &request).await?;
    let Some(waiter) = waiter else {
        return Ok(Json(HeartbeatResponse {
            jobs: outcome.statuses,
        }));
    };
    if outcome.news {
        return Ok(Json(HeartbeatResponse {
            jobs: outcome.statuses,
        }));
    }
    let deadline = Instant::now() + hold;
    loop {
        tokio::select! {
            () = waiter.woken() => break,
            // Some token was revoked: this one? If not, hold on.
            Ok(()) = revoked.changed() => check_token(&state, token).await?,
            () = tokio::time::sleep_until(deadline) => break,
            () = state.stopping.cancelled() => break,
        }
    }
    drop(waiter);
    // The hold may have outlived the token (revoked without a wake-up, e.g. by `outpost-hub
    // token revoke` on the database file): a revoked one renews nothing.
    check_token(&state, token).await?;
    let outcome = renew(&state, &org, &request).await?;
    Ok(Json(HeartbeatResponse {
        jobs: outcome.statuses,
    }))
}

/// The query of a log append: where the bytes go, and the writer's lease.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogQuery {
    offset: u64,
    lease_id: String,
}

/// The query of a step update: the writer's lease.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LeaseQuery {
    lease_id: String,
}

/// `POST /api/v1/runner/jobs/{id}/log?offset=N&lease_id=L`: raw bytes at offset N, from the
/// holder of lease L.
pub(crate) async fn append_log(
    State(state): State<AppState>,
    RunnerAuth(org, _): RunnerAuth,
    ApiPath(job_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<LogQuery>,
    LogBody(body): LogBody,
) -> Result<Json<LogAppendResponse>, ApiError> {
    check_integer("offset", query.offset)?;
    let appended = state
        .store
        .append_log(
            org.id,
            job_id.clone(),
            query.lease_id,
            query.offset,
            body,
            Timestamp::now(),
        )
        .await?;
    if appended.added > 0 {
        state.metrics.log_bytes.inc_by(appended.added);
        state.followers.wake(&job_id, |()| true);
    }
    Ok(Json(LogAppendResponse {
        committed: appended.committed,
    }))
}

/// `POST /api/v1/runner/jobs/{id}/steps?lease_id=L`: upserts one step, from the holder of
/// lease L; answers the step as stored.
pub(crate) async fn upsert_step(
    State(state): State<AppState>,
    RunnerAuth(org, _): RunnerAuth,
    ApiPath(job_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<LeaseQuery>,
    ApiJson(step): ApiJson<StepUpdate>,
) -> Result<Json<StepInfo>, ApiError> {
    text::check_name(&step.name).map_err(|problem| invalid("name", problem))?;
    if let Some(offset) = step.log_offset {
        check_integer("log_offset", offset)?;
    }
    check_failure("failure.message", step.failure.as_ref())?;
    state
        .store
        .upsert_step(
            org.id,
            job_id,
            query.lease_id,
            step.clone(),
            Timestamp::now(),
        )
        .await?;
    Ok(Json(StepInfo::from(step)))
}

/// `POST /api/v1/runner/jobs/{id}/complete` (idempotent).
pub(crate) async fn complete(
    State(state): State<AppState>,
    RunnerAuth(org, _): RunnerAuth,
    ApiPath(job_id): ApiPath<String>,
    ApiJson(request): ApiJson<CompleteRequest>,
) -> Result<Json<CompleteResponse>, ApiError> {
    check_failure("failure.message", request.failure.as_ref())?;
    check_integer("log_bytes", request.log_bytes)?;
    let completed = state
        .store
        .complete_job(org.id, job_id.clone(), request, Timestamp::now())
        .await?;
    if completed.newly {
        tracing::info!(org = %org.name, job = %job_id, state = %completed.state, "job completed");
        state.job_ended(&job_id, completed.state);
    }
    Ok(Json(CompleteResponse {
        job_id: job_id.into(),
        state: completed.state,
    }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_follow_the_pipelines_rule_for_step_names() {
        assert_eq!(
            outpost_protocol::text::MAX_NAME_CHARS,
            outpost_pipeline::MAX_STEP_NAME_CHARS
        );
    }
}
