//! Composition of an outpost runner, generic over its backend: command line and configuration
//! (file, `OUTPOST_*` environment, flags), tracing, the local `/metrics`, `/healthz` and `/readyz`
//! listener, signal handling (the drain contract of DESIGN.md §6.4), and the scheduler.
//!
//! A runner binary is a few lines: parse [`RunnerArgs`], call [`run`] with its [`Backend`], map the
//! error to an exit code with [`AgentError::exit_code`].

mod compose;
mod config;
mod health;
mod runner;

pub use crate::compose::{RunnerParts, compose, start_backend};
pub use crate::config::{
    AgentConfig, DEFAULT_STATE_DIR, GitSection, LogFormat, ProxyConfig, RunnerArgs, TlsConfig,
    load_config,
};
pub use crate::runner::run;
pub use outpost_executor::{Backend, BackendEnv};

use std::error::Error as _;
use std::path::PathBuf;

use outpost_client::ClientError;
use outpost_executor::ExecutorError;
use outpost_scheduler::SchedulerError;

/// Why a runner stopped other than by a completed drain. Each cause keeps its type up to the
/// binary, which maps it to an exit code ([`AgentError::exit_code`], docs/runner.md).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The configuration is invalid: a bad key or value, a missing setting, a missing file.
    #[error("configuration: {0}")]
    Config(String),
    /// The runner token file could not be read.
    #[error("cannot read the runner token file {path}: {source}")]
    TokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The hub client cannot be set up from the configuration (URL, CA file, client
    /// certificate, proxy).
    #[error("hub connection settings: {0}")]
    Client(#[source] ClientError),
    /// The backend could not be started (e.g. the Docker engine is unreachable).
    #[error("the {kind} backend is not available: {source}")]
    Backend {
        kind: &'static str,
        #[source]
        source: ExecutorError,
    },
    /// A directory or file of the runner's own could not be created or written.
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The metrics listener could not bind.
    #[error("cannot listen for metrics on {addr}: {source}")]
    MetricsListen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    /// Signal handlers could not be installed.
    #[error("cannot watch {signal}: {source}")]
    Signals {
        signal: &'static str,
        source: std::io::Error,
    },
    /// The scheduler refused its settings, could not use its state directory, or stopped
    /// because the hub refused the runner token.
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
}

/// Exit code: the configuration is invalid.
pub const EXIT_CONFIG: u8 = 2;
/// Exit code: the hub refused the runner token (revoked or wrong).
pub const EXIT_UNAUTHORIZED: u8 = 3;
/// Exit code: the backend (Docker engine, Kubernetes API) is not available.
pub const EXIT_BACKEND: u8 = 4;
/// Exit code: the runner's own files (state directory, token file) or ports cannot be used.
pub const EXIT_IO: u8 = 5;

impl AgentError {
    /// The exit code of a runner binary for this error: 2 configuration, 3 token refused, 4
    /// backend unavailable, 5 local I/O, 1 anything else. A hub that cannot be reached is
    /// never a reason to exit: the runner retries (and says so) until it answers.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Client(ClientError::Config { .. }) => EXIT_CONFIG,
            Self::Backend {
                source: ExecutorError::Config { .. },
                ..
            } => EXIT_CONFIG,
            Self::Backend { .. } => EXIT_BACKEND,
            Self::Config(_) | Self::TokenFile { .. } => EXIT_CONFIG,
            Self::Io { .. } | Self::MetricsListen { .. } => EXIT_IO,
            Self::Scheduler(SchedulerError::Config { .. }) => EXIT_CONFIG,
            Self::Scheduler(SchedulerError::Unauthorized { .. }) => EXIT_UNAUTHORIZED,
            Self::Scheduler(SchedulerError::State { .. }) => EXIT_IO,
            Self::Client(_) | Self::Signals { .. } => 1,
        }
    }
}

/// What a runner binary's `main` answers: success, or the error on stderr (prefixed with the
/// binary's name) and its exit code.
pub fn exit(binary: &str, result: Result<(), AgentError>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let mut message = e.to_string();
            let mut source = e.source();
            // The causes a message does not already carry (thiserror's `#[source]` fields).
            while let Some(cause) = source {
                let text = cause.to_string();
                if !message.contains(&text) {
                    message.push_str(": ");
                    message.push_str(&text);
                }
                source = cause.source();
            }
            eprintln!("{binary}: {message}");
            std::process::ExitCode::from(e.exit_code())
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
