//! The process backend as a runner starts it: the `[executor]` section of `runner-process` and
//! `outpost run`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use outpost_executor::{Backend, BackendEnv, Executor, ExecutorError};
use serde::{Deserialize, Serialize};

use crate::{DEFAULT_KILL_GRACE, DEFAULT_SHELL, KIND, ProcessConfig, ProcessExecutor};

/// The `[executor]` section of a process runner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessSection {
    /// Time between SIGTERM and SIGKILL when a step is stopped; `0s` kills at once.
    #[serde(with = "outpost_time::serde_duration")]
    pub kill_grace: Duration,
    /// The shell that runs each step as `<shell> -c <run>`.
    pub shell: String,
}

impl Default for ProcessSection {
    fn default() -> Self {
        Self {
            kill_grace: DEFAULT_KILL_GRACE,
            shell: DEFAULT_SHELL.into(),
        }
    }
}

/// Steps as host processes; workspaces in `<state>/work`, caches in `<state>/cache`.
#[derive(Debug)]
pub struct ProcessBackend;

#[async_trait]
impl Backend for ProcessBackend {
    const KIND: &'static str = KIND;
    type Config = ProcessSection;

    async fn start(
        config: &ProcessSection,
        env: &BackendEnv,
    ) -> Result<Arc<dyn Executor>, ExecutorError> {
        if config.shell.trim().is_empty() {
            return Err(ExecutorError::Config {
                backend: KIND,
                message: "`shell` must not be empty".to_owned(),
            });
        }
        let mut c = ProcessConfig::new(env.state_dir.join("work"), env.state_dir.join("cache"));
        c.kill_grace = config.kill_grace;
        c.shell = config.shell.clone();
        Ok(Arc::new(ProcessExecutor::new(c)))
    }
}
