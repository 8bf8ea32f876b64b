//! Composition of an outpost runner, generic over its backend: command line and configuration
//! (file, `OUTPOST_*` environment, flags), tracing, the local `/metrics`, `/healthz` and `/readyz`
//! listener, signal handling (the drain contract of DESIGN.md §6.4), and the scheduler.
//!
//! A runner binary is a few lines: parse [`RunnerArgs`], call [`run`] with its [`Backend`], map the
//! error to an exit code with [`AgentError::exit_code`].

mod config;
mod health;
mod runner;

pub use crate::config::{
    AgentConfig, GitSection, LogFormat, ProxyConfig, RunnerArgs, TlsConfig, load_config,
};
pub use crate::runner::{Backend, BackendContext, run};

use std::path::PathBuf;

/// Why a runner stopped other than by a completed drain.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The configuration is invalid: a bad key or value, a missing setting, an unreadable file.
    #[error("configuration: {0}")]
    Config(String),
    /// The runner token file could not be read.
    #[error("cannot read the runner token file {path}: {source}")]
    TokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The backend could not be started (e.g. the Docker engine is unreachable).
    #[error("the {kind} backend could not start: {message}")]
    Backend { kind: &'static str, message: String },
    /// The metrics listener could not bind.
    #[error("cannot listen for metrics on {addr}: {source}")]
    MetricsListen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    /// The hub refused the runner token: it was revoked or is wrong.
    #[error("the hub refused the runner token (revoked or invalid): {0}")]
    Unauthorized(String),
    /// The scheduler failed.
    #[error("runner failed: {0}")]
    Runner(String),
}

impl AgentError {
    /// Exit codes: 2 for configuration errors, 3 for a refused token, 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Config(_) | Self::TokenFile { .. } => 2,
            Self::Unauthorized(_) => 3,
            _ => 1,
        }
    }
}

/// Initialises tracing to stderr, human-readable or JSON; `RUST_LOG` overrides the default level
/// (`info`).
pub fn init_tracing(format: LogFormat) {
    let directives = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned());
    init_tracing_with(format, &directives);
}

/// Initialises tracing to stderr with explicit filter directives (e.g. `warn`).
pub fn init_tracing_with(format: LogFormat, directives: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(directives).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second initialisation (tests, embedded use) is harmless: keep the first subscriber.
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Human => builder.try_init(),
    };
}
