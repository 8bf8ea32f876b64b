//! A backend as a runner starts it: its name, its configuration section (`[executor]` in the
//! runner's file, `OUTPOST_EXECUTOR__*` in the environment) and how it connects. Each backend
//! crate implements it next to its own config, so that the runner binaries and `outpost run`
//! start a backend the same way.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Executor, ExecutorError};

/// What a backend may need from the runner around it.
#[derive(Debug, Clone)]
pub struct BackendEnv {
    /// The runner's state directory (a backend keeps its own files below it).
    pub state_dir: PathBuf,
    /// The runner's name at the hub.
    pub runner_name: String,
}

/// A backend a runner is built around.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// The backend's name, as registered with the hub.
    const KIND: &'static str;
    /// The backend's configuration section, with its documented defaults.
    type Config: Default
        + Serialize
        + DeserializeOwned
        + Clone
        + Send
        + Sync
        + std::fmt::Debug
        + 'static;

    /// Checks the section, connects to the engine (if any) and returns the executor. The
    /// error says what is wrong in words a person can act on (e.g. how to point the runner at
    /// the Docker engine).
    async fn start(
        config: &Self::Config,
        env: &BackendEnv,
    ) -> Result<Arc<dyn Executor>, ExecutorError>;
}
