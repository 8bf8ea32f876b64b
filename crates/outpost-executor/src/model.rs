//! The prepared job a backend receives, and the events and outcomes it reports.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use outpost_protocol::{Failure, JobId, JobResult, RunnerId, StepState};

/// A job ready to run: the pipeline resolved against the hub's variables and the runner's secrets
/// and workspace. Built by the scheduler; read-only for backends.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedJob {
    pub job_id: JobId,
    /// The runner's id at the hub; backends label what they create with it. The only way a
    /// backend learns it for a job.
    pub runner_id: RunnerId,
    /// Cache volumes are shared between jobs with the same scope and cache name (e.g. the org and
    /// pipeline source); a string safe for volume names.
    pub cache_scope: String,
    /// A host directory holding the checked-out tree (or empty for inline pipelines). The process
    /// backend runs steps in it; container backends copy it into the job's workspace volume.
    pub workspace: PathBuf,
    /// Path where steps see the workspace inside a container (container backends).
    pub container_workspace: String,
    /// The image of steps that name none (ignored by the process backend).
    pub default_image: Option<String>,
    /// Job-wide environment: pipeline variables overlaid by the hub's job variables.
    pub env: BTreeMap<String, String>,
    /// Secrets resolved on the runner; exported to every step as environment variables.
    pub secrets: Vec<Secret>,
    pub services: Vec<ServiceSpec>,
    pub caches: Vec<CacheSpec>,
    pub steps: Vec<StepSpec>,
    /// The whole job's time limit.
    pub timeout: Option<Duration>,
}

impl PreparedJob {
    /// The environment of one step: job env, then the step's own env, then secrets (which win, so
    /// that a pipeline cannot shadow a secret with a plain value by accident).
    pub fn step_env(&self, step: &StepSpec) -> BTreeMap<String, String> {
        let mut env = self.env.clone();
        env.extend(step.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env.extend(
            self.secrets
                .iter()
                .map(|s| (s.name.clone(), s.value.clone())),
        );
        env
    }

    /// The image a step runs in: its own, else the job's default.
    pub fn step_image<'a>(&'a self, step: &'a StepSpec) -> Option<&'a str> {
        step.image.as_deref().or(self.default_image.as_deref())
    }
}

/// One step of a prepared job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepSpec {
    /// Position in the pipeline, from 0; also the step's index on the wire.
    pub index: u32,
    pub name: String,
    pub image: Option<String>,
    /// The script, run as `sh -c <run>`.
    pub run: String,
    pub env: BTreeMap<String, String>,
    pub timeout: Option<Duration>,
    pub when: When,
}

/// When a step runs, given how the steps before it went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum When {
    /// Only while no earlier step failed (the default).
    #[default]
    OnSuccess,
    /// Only once an earlier step failed.
    OnFailure,
    /// Whatever happened before (but not after a cancel).
    Always,
}

/// A service container reachable from steps by its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    pub name: String,
    pub image: String,
    pub env: BTreeMap<String, String>,
    /// Arguments replacing the image's command; `None` keeps the image's own.
    pub command: Option<Vec<String>>,
}

/// A cache directory kept between jobs of the same scope and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSpec {
    pub name: String,
    /// Absolute path where steps see the cache.
    pub path: String,
}

/// A secret resolved by the runner. Its `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    pub name: String,
    pub value: String,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("name", &self.name)
            .field("value", &"<redacted>")
            .finish()
    }
}

/// Where a restarted runner takes a job over: the step that was running and how many raw output
/// bytes of that step the previous runner process had already consumed (so none is doubled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    pub step_index: u32,
    pub output_bytes: u64,
}

/// Which output stream bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// What a backend reports while it runs a job.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecEvent {
    /// A step's process or container has started.
    StepStarted { index: u32, at: SystemTime },
    /// Raw (unmasked) output of a step, in the order produced.
    Output {
        index: u32,
        stream: OutputStream,
        data: Bytes,
    },
    /// A step ended (or was skipped, without a `StepStarted` before it).
    StepFinished {
        index: u32,
        at: SystemTime,
        outcome: StepOutcome,
    },
}

/// How one step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepOutcome {
    pub state: StepState,
    pub exit_code: Option<i32>,
    pub failure: Option<Failure>,
}

impl StepOutcome {
    pub fn success() -> Self {
        Self {
            state: StepState::Success,
            exit_code: Some(0),
            failure: None,
        }
    }

    pub fn skipped() -> Self {
        Self {
            state: StepState::Skipped,
            exit_code: None,
            failure: None,
        }
    }

    /// A non-zero exit: `script` failure.
    pub fn exited(code: i32, step: &str) -> Self {
        if code == 0 {
            return Self::success();
        }
        Self {
            state: StepState::Failed,
            exit_code: Some(code),
            failure: Some(Failure::new(
                outpost_protocol::FailureClass::Script,
                format!("step `{step}` exited with code {code}"),
            )),
        }
    }

    pub fn failed(failure: Failure, exit_code: Option<i32>) -> Self {
        Self {
            state: StepState::Failed,
            exit_code,
            failure: Some(failure),
        }
    }

    pub fn cancelled(step: &str) -> Self {
        Self {
            state: StepState::Cancelled,
            exit_code: None,
            failure: Some(Failure::new(
                outpost_protocol::FailureClass::Cancelled,
                format!("step `{step}` was cancelled"),
            )),
        }
    }

    /// Stopped because the whole job ran out of time (see [`crate::job_timeout_failure`]).
    pub fn stopped_by_job_timeout(step: &str, after: Duration, exit_code: Option<i32>) -> Self {
        Self {
            state: StepState::TimedOut,
            exit_code,
            failure: Some(Failure::new(
                outpost_protocol::FailureClass::Timeout,
                format!(
                    "step `{step}` was stopped because the job timed out after {}",
                    outpost_time::format(after)
                ),
            )),
        }
    }

    pub fn timed_out(step: &str, after: Duration) -> Self {
        Self {
            state: StepState::TimedOut,
            exit_code: None,
            failure: Some(Failure::new(
                outpost_protocol::FailureClass::Timeout,
                format!(
                    "step `{step}` timed out after {}",
                    outpost_time::format(after)
                ),
            )),
        }
    }
}

/// How a job ended, as the runner reports it to the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobOutcome {
    pub result: JobResult,
    pub failure: Option<Failure>,
}
