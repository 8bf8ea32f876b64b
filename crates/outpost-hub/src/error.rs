//! The library's error ([`HubError`]) and the HTTP error answer ([`ApiError`]): every failure a
//! client can cause becomes a 4xx with the JSON error body of `outpost-protocol`.

use std::path::PathBuf;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use outpost_protocol::{ErrorBody, ErrorCode};

use crate::store::StoreError;

/// What can go wrong opening, administering or serving a hub.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// A configuration key or value is invalid; the message names the key.
    #[error("invalid configuration: {message}")]
    Config { message: String },
    /// The store failed (opening, migrating or querying the database).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The admin key file could not be read or written.
    #[error("admin key file {path}: {source}")]
    AdminKeyFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The TLS certificate or key could not be loaded.
    #[error("tls: {message}")]
    Tls { message: String },
    /// Accepting connections failed.
    #[error("listener on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// The organization named in an admin call does not exist.
    #[error("organization `{org}` not found")]
    OrgNotFound { org: String },
    /// The organization to create exists already.
    #[error("organization `{org}` exists already")]
    OrgExists { org: String },
    /// The runner token to revoke does not exist in this organization.
    #[error("runner token `{id}` not found in organization `{org}`")]
    TokenNotFound { org: String, id: String },
    /// An argument of an admin call is invalid (e.g. an empty organization name).
    #[error("invalid {what}: {message}")]
    Invalid { what: &'static str, message: String },
}

/// An error answer: status code plus the JSON error body.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with the status code that goes with its code.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let status =
            StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Self {
            status,
            body: ErrorBody::new(code, message),
            retry_after: None,
        }
    }

    /// An error with an explicit status (for statuses outside the error codes' own, like 405).
    pub fn with_status(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody::new(code, message),
            retry_after: None,
        }
    }

    /// Adds a `Retry-After` header of `seconds`.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthorized, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::PayloadTooLarge, message)
    }

    /// Adds `committed` to the body (log gap, incomplete log).
    pub fn committed(mut self, committed: u64) -> Self {
        self.body = self.body.with_committed(committed);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { .. } => ApiError::not_found(e.to_string()),
            StoreError::AlreadyExists { .. } => {
                ApiError::new(ErrorCode::AlreadyExists, e.to_string())
            }
            StoreError::InvalidState { .. } => {
                ApiError::new(ErrorCode::InvalidState, e.to_string())
            }
            StoreError::LeaseMismatch { .. } => {
                ApiError::new(ErrorCode::LeaseMismatch, e.to_string())
            }
            StoreError::JobEnded { committed, .. } => {
                let error = ApiError::new(ErrorCode::JobEnded, e.to_string());
                match committed {
                    Some(committed) => error.committed(committed),
                    None => error,
                }
            }
            StoreError::LogGap { committed, .. } => {
                ApiError::new(ErrorCode::LogGap, e.to_string()).committed(committed)
            }
            StoreError::LogIncomplete { committed, .. } => {
                ApiError::new(ErrorCode::LogIncomplete, e.to_string()).committed(committed)
            }
            StoreError::OffsetPastEnd { .. } => ApiError::bad_request(e.to_string()),
            StoreError::Busy { .. } => ApiError::new(ErrorCode::Unavailable, e.to_string()),
            StoreError::Database { .. }
            | StoreError::Open { .. }
            | StoreError::Task { .. }
            | StoreError::LogFile(_) => {
                tracing::error!(error = %e, "store failure");
                ApiError::new(
                    ErrorCode::Internal,
                    "the hub's store failed; see the hub's log",
                )
            }
        }
    }
}
