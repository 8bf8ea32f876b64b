//! Request extractors that answer every rejection with the JSON error body: JSON bodies with a
//! size limit and strict parsing, raw log bodies, query strings, path segments, and the two
//! kinds of credentials (runner token; org API key or admin key).

use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use outpost_protocol::ErrorCode;
use serde::de::DeserializeOwned;

use super::AppState;
use crate::error::ApiError;
use crate::secret;
use crate::server::PeerAddr;
use crate::store::{Org, SecretHash};
use crate::throttle::Presenter;

/// A JSON body, at most `max_json_body_bytes`, parsed strictly (unknown fields refused).
pub(crate) struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        if let Some(value) = req.headers().get(CONTENT_TYPE) {
            let ok = value
                .to_str()
                .ok()
                .and_then(|v| v.split(';').next())
                .is_some_and(|mime| {
                    let mime = mime.trim().to_ascii_lowercase();
                    mime == "application/json"
                        || (mime.starts_with("application/") && mime.ends_with("+json"))
                });
            if !ok {
                return Err(ApiError::with_status(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    ErrorCode::BadRequest,
                    format!(
                        "expected a JSON body (content-type application/json), got content-type {:?}",
                        value.to_str().unwrap_or("<not text>")
                    ),
                ));
            }
        }
        let bytes = read_body(req, state.config.max_json_body_bytes, state).await?;
        serde_json::from_slice(&bytes)
            .map(ApiJson)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
    }
}

/// A raw body (log bytes), at most `max_log_chunk_bytes`.
pub(crate) struct LogBody(pub Bytes);

impl FromRequest<AppState> for LogBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        read_body(req, state.config.max_log_chunk_bytes, state)
            .await
            .map(LogBody)
    }
}

/// Reads a whole body of at most `limit` bytes, within `body_timeout` (a `408` past it, so a
/// client trickling a body does not hold the request open).
async fn read_body(req: Request, limit: usize, state: &AppState) -> Result<Bytes, ApiError> {
    let too_large = |what: String| {
        ApiError::too_large(format!(
            "request body {what} exceeds the limit of {limit} bytes"
        ))
    };
    if let Some(len) = req.headers().get(CONTENT_LENGTH) {
        let len = len
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| ApiError::bad_request("invalid content-length header"))?;
        if len > limit as u64 {
            return Err(too_large(format!("of {len} bytes")));
        }
    }
    let timeout = state.config.body_timeout;
    let collected = tokio::time::timeout(timeout, Limited::new(req.into_body(), limit).collect())
        .await
        .map_err(|_| {
            ApiError::with_status(
                StatusCode::REQUEST_TIMEOUT,
                ErrorCode::BadRequest,
                format!(
                    "the request body did not arrive within {}",
                    outpost_time::format(timeout)
                ),
            )
        })?;
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large(String::new())),
        Err(e) => Err(ApiError::bad_request(format!(
            "failed to read the request body: {e}"
        ))),
    }
}

/// A query string parsed into `T`.
pub(crate) struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        Query::<T>::try_from_uri(&parts.uri)
            .map(|Query(q)| ApiQuery(q))
            .map_err(|e| {
                ApiError::bad_request(format!(
                    "invalid query string: {}",
                    inner_text(&e.body_text())
                ))
            })
    }
}

/// Path parameters parsed into `T`.
pub(crate) struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(p)| ApiPath(p))
            .map_err(|e| {
                ApiError::bad_request(format!("invalid path: {}", inner_text(&e.body_text())))
            })
    }
}

/// axum's rejection texts start with a capitalised summary; keep what follows it.
fn inner_text(text: &str) -> String {
    match text.split_once(": ") {
        Some((_, rest)) if !rest.is_empty() => rest.to_owned(),
        _ => text.to_owned(),
    }
}

/// The secret of the `Authorization: Bearer` header.
fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers
        .get(AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing `authorization: Bearer <token>` header"))?;
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthorized("malformed authorization header"))?;
    let (scheme, token) = value.split_once(' ').ok_or_else(|| {
        ApiError::unauthorized("malformed authorization header: expected `Bearer <token>`")
    })?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(ApiError::unauthorized(
            "malformed authorization header: expected `Bearer <token>`",
        ));
    }
    Ok(token)
}

/// Checks a presented secret with `lookup`. A wrong one counts against its source address and
/// key prefix, and is `401` (`wrong`), or `429` with `Retry-After` past a burst of them; a right
/// one always passes.
async fn authenticate<T, F, Fut>(
    parts: &Parts,
    state: &AppState,
    wrong: &str,
    lookup: F,
) -> Result<(T, SecretHash), ApiError>
where
    F: FnOnce(SecretHash) -> Fut,
    Fut: Future<Output = Result<Option<T>, ApiError>>,
{
    let secret = bearer(&parts.headers)?;
    let hash = secret::hash(secret);
    if let Some(found) = lookup(hash).await? {
        return Ok((found, hash));
    }
    let addr = parts.extensions.get::<PeerAddr>().map(|p| p.0.ip());
    match state.auth_throttle.failed(&Presenter::new(addr, secret)) {
        None => Err(ApiError::unauthorized(wrong)),
        Some(wait) => {
            let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
            Err(ApiError::new(
                ErrorCode::RateLimited,
                format!(
                    "too many wrong credentials from this address or with this key; try again \
                     in {seconds} s"
                ),
            )
            .retry_after(seconds))
        }
    }
}

/// A runner token that is valid now: its organization. Looked up on every call (no cache), so a
/// revoked token is refused on its very next call.
pub(crate) struct RunnerAuth(pub Org, pub SecretHash);

impl FromRequestParts<AppState> for RunnerAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let wrong = "unknown or revoked runner token";
        let (org, hash) = authenticate(parts, state, wrong, |hash| async move {
            Ok(state.store.org_by_runner_token(hash).await?)
        })
        .await?;
        Ok(RunnerAuth(org, hash))
    }
}

/// The admin key, or an organization's API key.
pub(crate) enum AdminAuth {
    Admin,
    Org(Org),
}

impl FromRequestParts<AppState> for AdminAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let (auth, _) = authenticate(parts, state, "unknown API key", |hash| async move {
            if hash == state.admin_key_hash {
                return Ok(Some(AdminAuth::Admin));
            }
            Ok(state.store.org_by_api_key(hash).await?.map(AdminAuth::Org))
        })
        .await?;
        Ok(auth)
    }
}

impl AdminAuth {
    /// The organization `name`, if this credential may see it; another org's key gets the same
    /// 404 as a missing org, so nothing leaks whether it exists.
    pub(crate) async fn org(&self, state: &AppState, name: &str) -> Result<Org, ApiError> {
        let not_found = || ApiError::not_found(format!("organization `{name}` not found"));
        match self {
            AdminAuth::Org(org) if org.name == name => Ok(org.clone()),
            AdminAuth::Org(_) => Err(not_found()),
            AdminAuth::Admin => state
                .store
                .org_by_name(name.to_owned())
                .await?
                .ok_or_else(not_found),
        }
    }
}
