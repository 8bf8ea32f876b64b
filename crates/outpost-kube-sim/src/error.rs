//! Errors: [`SimError`] for the stand-in's own life (start, hooks, shutdown), and `ApiError`, an
//! answer to an API client in the form of a Kubernetes `Status` with its HTTP code.

use std::path::PathBuf;

use serde_json::{Value, json};

/// What can go wrong starting, driving or stopping the stand-in.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The API listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The Docker engine refused or failed a call.
    #[error("docker engine: {action}: {source}")]
    Docker {
        /// What the stand-in was doing.
        action: String,
        /// The engine's error.
        source: bollard::errors::Error,
    },
    /// A file of the stand-in (kubeconfig, log directory) could not be written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A hook named a pod the stand-in does not have.
    #[error("no pod {namespace}/{name}")]
    NoSuchPod {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// A hook named a pod that is not running on the node (not scheduled, or already ended).
    #[error("pod {namespace}/{name} is not running on the node")]
    PodNotOnNode {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// The stand-in was shut down.
    #[error("the stand-in is shut down")]
    ShutDown,
}

/// One cause inside an `Invalid` status.
#[derive(Debug, Clone)]
pub(crate) struct Cause {
    pub field: String,
    /// `FieldValueRequired`, `FieldValueInvalid`, `FieldValueNotFound`, `FieldValueDuplicate`,
    /// `FieldValueForbidden`, `FieldValueNotSupported`, `FieldValueTooLong`.
    pub reason: &'static str,
    /// The part after the field: `Required value`, `Invalid value: "x": why`, …
    pub message: String,
}

impl Cause {
    pub fn required(field: impl Into<String>) -> Cause {
        Cause {
            field: field.into(),
            reason: "FieldValueRequired",
            message: "Required value".into(),
        }
    }

    pub fn required_why(field: impl Into<String>, why: &str) -> Cause {
        Cause {
            field: field.into(),
            reason: "FieldValueRequired",
            message: format!("Required value: {why}"),
        }
    }

    pub fn invalid(field: impl Into<String>, value: &Value, why: &str) -> Cause {
        let shown = match value {
            Value::String(s) => format!("{s:?}"),
            other => other.to_string(),
        };
        Cause {
            field: field.into(),
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {shown}: {why}"),
        }
    }

    pub fn not_found(field: impl Into<String>, value: &str) -> Cause {
        Cause {
            field: field.into(),
            reason: "FieldValueNotFound",
            message: format!("Not found: {value:?}"),
        }
    }

    pub fn duplicate(field: impl Into<String>, value: &str) -> Cause {
        Cause {
            field: field.into(),
            reason: "FieldValueDuplicate",
            message: format!("Duplicate value: {value:?}"),
        }
    }

    pub fn forbidden(field: impl Into<String>, why: &str) -> Cause {
        Cause {
            field: field.into(),
            reason: "FieldValueForbidden",
            message: format!("Forbidden: {why}"),
        }
    }

    pub fn not_supported(field: impl Into<String>, value: &str, supported: &[&str]) -> Cause {
        let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        Cause {
            field: field.into(),
            reason: "FieldValueNotSupported",
            message: format!(
                "Unsupported value: {value:?}: supported values: {}",
                list.join(", ")
            ),
        }
    }
}

/// An API answer other than success: rendered as a `Status` body with `code` as HTTP status.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: String, details: Option<Value>) -> Self {
        ApiError {
            code,
            reason,
            message,
            details,
        }
    }

    /// `pods "x" not found`.
    pub fn not_found(plural: &str, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{plural} {name:?} not found"),
            Some(json!({"name": name, "kind": plural})),
        )
    }

    pub fn already_exists(plural: &str, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{plural} {name:?} already exists"),
            Some(json!({"name": name, "kind": plural})),
        )
    }

    /// The optimistic-concurrency failure of an update or patch.
    pub fn conflict_modified(plural: &str, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {plural} {name:?}: the object has been modified; \
                 please apply your changes to the latest version and try again"
            ),
            Some(json!({"name": name, "kind": plural})),
        )
    }

    /// A failed delete precondition.
    pub fn conflict_precondition(plural: &str, name: &str, what: String) -> Self {
        Self::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {plural} {name:?}: {what}"),
            Some(json!({"name": name, "kind": plural})),
        )
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message.into(), None)
    }

    /// 422 with field causes, formatted as the apiserver does.
    pub fn invalid(kind: &str, name: &str, causes: Vec<Cause>) -> Self {
        let parts: Vec<String> = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        let joined = if parts.len() == 1 {
            parts[0].clone()
        } else {
            format!("[{}]", parts.join(", "))
        };
        let causes: Vec<Value> = causes
            .iter()
            .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
            .collect();
        Self::new(
            422,
            "Invalid",
            format!("{kind} {name:?} is invalid: {joined}"),
            Some(json!({"name": name, "kind": kind, "causes": causes})),
        )
    }

    pub fn expired(message: String) -> Self {
        Self::new(410, "Expired", message, None)
    }

    pub fn method_not_allowed(what: String) -> Self {
        Self::new(405, "MethodNotAllowed", what, None)
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/merge-patch+json (got {content_type:?})"
            ),
            None,
        )
    }

    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized".into(), None)
    }

    pub fn namespace_not_found(namespace: &str) -> Self {
        Self::not_found("namespaces", namespace)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message.into(), None)
    }

    /// The `Status` object.
    pub fn to_status(&self) -> Value {
        let mut v = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            v["details"] = d.clone();
        }
        v
    }
}

impl axum::response::IntoResponse for ApiError {
    fn into_response(self) -> axum::response::Response {
        let code = axum::http::StatusCode::from_u16(self.code)
            .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
        (code, axum::Json(self.to_status())).into_response()
    }
}
