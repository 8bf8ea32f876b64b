//! Errors of the Kubernetes backend's own parts (configuration, the cursor files); failures of
//! API calls during a job become `ExecutorError`s that name the job, the object and the call.

use std::path::PathBuf;

use outpost_executor::{ExecutorError, JobId};

/// What can go wrong in the backend outside of a job's steps.
#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    /// A configuration value is invalid.
    #[error("invalid kubernetes backend setting `{key}`: {message}")]
    Config { key: &'static str, message: String },
    /// No client configuration could be found or loaded (kubeconfig, in-cluster).
    #[error("cannot configure the kubernetes client: {message}")]
    ClientConfig { message: String },
    /// A log cursor file in the state directory cannot be read or written.
    #[error("log cursor {path}: {source}")]
    Cursor {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl From<K8sError> for ExecutorError {
    fn from(e: K8sError) -> Self {
        match e {
            K8sError::Config { .. } => ExecutorError::Config {
                backend: crate::KIND,
                message: e.to_string(),
            },
            other => ExecutorError::Backend {
                backend: crate::KIND,
                action: "start".to_owned(),
                message: other.to_string(),
            },
        }
    }
}

/// What the API said, for a person: the `Status` message and reason when it sent one.
pub fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({} {})", s.message, s.code, s.reason),
        other => other.to_string(),
    }
}

/// The HTTP status of an API error, if it was one.
pub fn status_of(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// An API call made for a job failed: which call, on which object.
pub fn job_error(job_id: &JobId, action: impl Into<String>, e: &kube::Error) -> ExecutorError {
    ExecutorError::Engine {
        backend: crate::KIND,
        action: action.into(),
        job_id: job_id.clone(),
        message: api_message(e),
    }
}

/// An API call made outside of any job (listing, sweeping) failed.
pub fn backend_error(action: impl Into<String>, e: &kube::Error) -> ExecutorError {
    ExecutorError::Backend {
        backend: crate::KIND,
        action: action.into(),
        message: api_message(e),
    }
}
