//! Errors of the Docker backend's own parts (configuration, registry credentials, the cache
//! index); engine failures during a job are reported as `ExecutorError`s.

use std::path::PathBuf;

/// What can go wrong in the backend outside of a job's steps.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// A configuration value is invalid.
    #[error("invalid docker backend setting `{key}`: {message}")]
    Config { key: &'static str, message: String },
    /// The Docker client config file (registry credentials) exists but cannot be used.
    #[error("registry credentials file {path}: {message}")]
    Credentials { path: PathBuf, message: String },
    /// The cache-use index in the state directory cannot be read or written.
    #[error("cache index {path}: {source}")]
    CacheIndex {
        path: PathBuf,
        source: std::io::Error,
    },
}
