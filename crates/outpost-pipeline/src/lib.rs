//! The outpost pipeline file (`.outpost.yml`): its model, and [`parse`], which reads and
//! validates it with errors that name the file, line and column.
//!
//! # The file format, version 1
//!
//! A pipeline file is one YAML document (YAML 1.2) whose top level is a mapping:
//!
//! ```yaml
//! version: 1
//! image: alpine:3.20            # default image of steps (ignored by the process backend)
//! variables: { RUST_LOG: info }
//! secrets: [DEPLOY_TOKEN]       # names only; values are resolved by the runner, locally
//! timeout: 30m
//! services:                     # reachable from steps by name
//!   - { name: db, image: postgres:16, env: { POSTGRES_PASSWORD: test } }
//! caches:                       # volumes kept between jobs of the same pipeline and cache name
//!   - { name: cargo, path: /cache/cargo }
//! steps:
//!   - name: build
//!     image: rust:1.80
//!     run: cargo build --release
//!     env: { CARGO_HOME: /cache/cargo }
//!     timeout: 10m
//!   - name: notify
//!     run: echo done
//!     when: always              # on_success (default) | on_failure | always
//! ```
//!
//! ## Top level
//!
//! | key | type | default | rules |
//! | --- | --- | --- | --- |
//! | `version` | number | required | must be `1` |
//! | `image` | image | none | default image of every step without its own `image` |
//! | `variables` | env mapping | empty | given to every step; a step's `env` overrides them |
//! | `secrets` | list of names | empty | env names, unique; no variable or step `env` key may use one |
//! | `timeout` | duration | none (the runner's limit) | limit for the whole job |
//! | `services` | list of services | empty | see below |
//! | `caches` | list of caches | empty | see below |
//! | `steps` | list of steps | required | at least one; run in order |
//!
//! ## A step
//!
//! | key | type | default | rules |
//! | --- | --- | --- | --- |
//! | `name` | string | required | unique in the pipeline; 1 to 100 characters, one line, no control characters, no leading or trailing whitespace |
//! | `run` | string | required | shell script, run with `sh -c`; may span several lines (`run: \|`); not blank |
//! | `image` | image | top-level `image` | |
//! | `env` | env mapping | empty | added to (and overriding) `variables` for this step |
//! | `timeout` | duration | none | limit for this step |
//! | `when` | `on_success`, `on_failure` or `always` | `on_success` | `on_success`: runs while no earlier step failed; `on_failure`: only once one has; `always`: in both cases |
//! | `resources` | mapping | none (the runner's defaults) | CPU and memory the step asks for, see below |
//!
//! ## A service
//!
//! | key | type | default | rules |
//! | --- | --- | --- | --- |
//! | `name` | string | required | unique; the host name steps reach it by, so an RFC 1123 label: 1 to 63 of `a-z`, `0-9`, `-`, not starting or ending with `-` |
//! | `image` | image | required | |
//! | `env` | env mapping | empty | |
//! | `command` | list of strings | the image's own | arguments replacing the image's command, like `[redis-server, --port, "6380"]` |
//! | `ready` | mapping | none (ready once started) | how the runner tells that the service is ready before the first step starts, see below |
//!
//! ## Resources of a step
//!
//! ```yaml
//! resources: { cpu: 500m, memory: 512Mi }
//! ```
//!
//! | key | type | default | rules |
//! | --- | --- | --- | --- |
//! | `cpu` | CPU quantity | none | more than zero, in whole millicores |
//! | `memory` | memory quantity | none | at least `1Mi` |
//!
//! Both are optional; an empty mapping means none. The runner holds them to its own maxima, and
//! each backend applies them its way (a container's limits, a pod's requests and limits).
//!
//! ## Readiness of a service
//!
//! ```yaml
//! services:
//!   - { name: db, image: postgres:16, ready: { command: "pg_isready -U postgres", timeout: 60s } }
//!   - { name: cache, image: redis:7, ready: { tcp: 6379, timeout: 30s, interval: 2s } }
//! ```
//!
//! | key | type | default | rules |
//! | --- | --- | --- | --- |
//! | `command` | string | | a shell command run inside the service's container (`sh -c`); ready once it exits 0 |
//! | `tcp` | number | | a port of the service, 1 to 65535; ready once a TCP connection to it is accepted |
//! | `timeout` | duration | `60s` | how long the service may take; past it, the job fails |
//! | `interval` | duration | `1s` | the pause between two tries; not longer than `timeout` |
//!
//! Exactly one of `command` and `tcp`. Without `ready`, a service counts as ready once started.
//!
//! ## A cache
//!
//! | key | type | default | rules |
//! | --- | --- | --- | --- |
//! | `name` | string | required | unique; 1 to 63 of `a-z`, `0-9`, `_`, `.`, `-`, starting with a letter or digit (it becomes part of a volume name) |
//! | `path` | string | required | absolute, not `/`, no `..` component, unique among caches |
//!
//! ## Value types
//!
//! - **string**: any scalar. Numbers and booleans are read as the text written (`name: 2024`
//!   is the string `2024`; `1.10` stays `1.10`). An empty value (`key:` or `~`) is an error,
//!   except for the list and mapping keys above, where it means empty. No NUL characters.
//! - **image**: a non-empty string without whitespace or control characters, like
//!   `alpine:3.20` or `registry.example.com/team/app@sha256:…`.
//! - **duration**: whole hours, minutes and seconds in that order, each at most once: `90s`,
//!   `10m`, `1h`, `1h30m`, `1h30m15s`. Zero, negative, fractional, unit-less (`90`) and
//!   longer than `168h` (7 days) are errors.
//! - **CPU quantity**: Kubernetes' syntax: a number of CPUs (`2`, `1.5`, `0.25`) or of
//!   millicores (`500m`), stored in millicores. Exponents (`1e3`) and anything finer than `1m`
//!   are errors.
//! - **memory quantity**: Kubernetes' syntax: a number of bytes with an optional unit, `k`, `M`,
//!   `G`, `T`, `P`, `E` (powers of 1000) or `Ki`, `Mi`, `Gi`, `Ti`, `Pi`, `Ei` (powers of 1024):
//!   `512Mi`, `1Gi`, `1.5Gi`, `100M`; stored in bytes, which must come out whole. `512MB`,
//!   `512m` (thousandths of a byte) and a bare `512` (bytes, under the `1Mi` minimum) are errors
//!   that suggest the likely meaning.
//! - **env mapping**: a mapping from names to values. Names match `[A-Za-z_][A-Za-z0-9_]*`
//!   (lowercase is allowed, as POSIX shells allow it); values are strings, numbers or booleans
//!   (read as written), never lists, mappings or empty. Secret names follow the same rule.
//!
//! ## General rules
//!
//! - Every mapping accepts only the keys listed above; an unknown key is an error naming the
//!   allowed ones. A key given twice is an error.
//! - Anchors and aliases (`&x`, `*x`) may be used; merge keys (`<<`) are not supported.
//!   Tags other than `!!str` are refused.
//! - Limits, for untrusted input: at most 1 MiB of text ([`MAX_PIPELINE_BYTES`]), 50,000 YAML
//!   nodes (each use of an alias counting its whole subtree), and 64 levels of nesting.
//! - Errors read `file:line:column: message` (1-based, columns in characters). All problems
//!   found are reported, up to 20, in file order; YAML syntax errors and limits stop at the
//!   first.

mod decode;
mod duration;
mod error;
mod quantity;
mod tree;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

pub use crate::error::PipelineError;
pub use crate::quantity::{MIN_MEMORY, parse_cpu, parse_memory};

/// The file the runner reads from a repository when none is named.
pub const DEFAULT_FILE_NAME: &str = ".outpost.yml";

/// The largest pipeline text [`parse`] accepts, in bytes (1 MiB).
pub const MAX_PIPELINE_BYTES: usize = tree::MAX_BYTES;

/// The longest step name, in characters.
pub const MAX_STEP_NAME_CHARS: usize = 100;

/// The most problems one [`PipelineError::Multiple`] keeps.
const MAX_ERRORS: usize = 20;

/// A validated pipeline file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pipeline {
    /// Format version; always 1.
    pub version: u32,
    /// Default image of the steps that name none.
    pub image: Option<String>,
    /// Environment of every step (a step's `env` overrides it).
    pub variables: BTreeMap<String, String>,
    /// Names of the secrets the runner resolves locally, in file order.
    pub secrets: Vec<String>,
    /// Limit for the whole job.
    #[serde(serialize_with = "duration::serialize_opt")]
    pub timeout: Option<Duration>,
    /// Containers started beside the steps, reachable by name.
    pub services: Vec<Service>,
    /// Volumes kept between jobs.
    pub caches: Vec<Cache>,
    /// The steps, in order; never empty.
    pub steps: Vec<Step>,
}

/// A service container started for the job's duration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Service {
    /// Host name under which steps reach the service (an RFC 1123 label).
    pub name: String,
    /// Image of the service.
    pub image: String,
    /// Environment of the service.
    pub env: BTreeMap<String, String>,
    /// Arguments replacing the image's command, if given.
    pub command: Option<Vec<String>>,
    /// How to tell that the service is ready; `None`: it is taken as ready once started.
    pub ready: Option<Readiness>,
}

/// A cache volume, kept between jobs of the same pipeline and cache name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cache {
    /// Name, safe as part of a volume or directory name (`[a-z0-9][a-z0-9_.-]*`).
    pub name: String,
    /// Absolute path where steps see the cache.
    pub path: String,
}

/// One step of the pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    /// Unique name, one line of printable characters.
    pub name: String,
    /// Image of this step; see [`Step::effective_image`].
    pub image: Option<String>,
    /// Shell script, run with `sh -c`; may span several lines.
    pub run: String,
    /// Environment added to (and overriding) the pipeline's `variables`.
    pub env: BTreeMap<String, String>,
    /// Limit for this step.
    #[serde(serialize_with = "duration::serialize_opt")]
    pub timeout: Option<Duration>,
    /// When the step runs, given the outcome of the steps before it.
    pub when: When,
    /// CPU and memory the step asks for; `None` leaves it to the runner's defaults.
    pub resources: Option<Resources>,
}

/// CPU and memory a step asks for, as Kubernetes quantities in the file (`cpu: 500m`,
/// `memory: 512Mi`). The runner holds them to its maxima; what a backend makes of them (a
/// container's limit, a pod's requests and limits) is the backend's to say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Resources {
    /// CPU in millicores (`2` is 2000, `1.5` is 1500, `500m` is 500); never 0.
    pub cpu_millis: Option<u64>,
    /// Memory in bytes (`512Mi` is 536870912, `100M` is 100000000); at least 1 MiB.
    pub memory_bytes: Option<u64>,
}

/// How the runner tells that a service is ready, before the first step starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Readiness {
    /// What is tried.
    #[serde(flatten)]
    pub check: ReadyCheck,
    /// How long the service may take to become ready; past it, the job fails.
    #[serde(serialize_with = "duration::serialize")]
    pub timeout: Duration,
    /// The pause between two tries.
    #[serde(serialize_with = "duration::serialize")]
    pub interval: Duration,
}

/// One readiness check of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadyCheck {
    /// A shell command run inside the service's container (`sh -c`); ready once it exits 0.
    Command(String),
    /// Ready once a TCP connection to this port of the service is accepted.
    Tcp(u16),
}

/// The readiness `timeout` when the file gives none.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// The readiness `interval` when the file gives none.
pub const DEFAULT_READY_INTERVAL: Duration = Duration::from_secs(1);

/// When a step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum When {
    /// While no earlier step has failed (the default).
    #[default]
    OnSuccess,
    /// Only once an earlier step has failed.
    OnFailure,
    /// Whether or not an earlier step failed.
    Always,
}

impl When {
    /// Whether a step with this condition runs, given whether an earlier step failed; the rule
    /// every backend applies (`outpost_steprules`), asked here rather than written again.
    pub fn runs(self, earlier_failed: bool) -> bool {
        use outpost_steprules::{Decision, History, Outcome};
        let mut history = History::new();
        if earlier_failed {
            history.record(Outcome::Failed);
        }
        let rule = match self {
            When::OnSuccess => outpost_steprules::When::OnSuccess,
            When::OnFailure => outpost_steprules::When::OnFailure,
            When::Always => outpost_steprules::When::Always,
        };
        history.decide(rule) == Decision::Run
    }

    /// The spelling in the file: `on_success`, `on_failure` or `always`.
    pub fn as_str(self) -> &'static str {
        match self {
            When::OnSuccess => "on_success",
            When::OnFailure => "on_failure",
            When::Always => "always",
        }
    }
}

impl Step {
    /// The step's own image, else the pipeline's default image.
    pub fn effective_image<'a>(&'a self, pipeline: &'a Pipeline) -> Option<&'a str> {
        self.image.as_deref().or(pipeline.image.as_deref())
    }

    /// The step's environment: the pipeline's `variables` overridden by the step's `env`.
    /// Secrets are not included; the runner adds them.
    pub fn effective_env(&self, pipeline: &Pipeline) -> BTreeMap<String, String> {
        let mut env = pipeline.variables.clone();
        env.extend(self.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env
    }
}

impl Pipeline {
    /// The step called `name`.
    pub fn step(&self, name: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.name == name)
    }
}

/// Parses and validates a pipeline file.
///
/// `source_name` is the file name shown in errors (`.outpost.yml`, `<inline>`). Never panics,
/// whatever `text` holds; see the crate documentation for the format, the rules and the limits.
///
/// # Errors
///
/// [`PipelineError`] with the position of each problem found.
pub fn parse(source_name: &str, text: &str) -> Result<Pipeline, PipelineError> {
    let at = |pos: tree::Pos| (source_name.to_owned(), pos.line, pos.column);
    let root = match tree::load(text) {
        Ok(Some(root)) => root,
        Ok(None) => {
            let (file, line, column) = at(tree::Pos::START);
            return Err(PipelineError::Invalid {
                file,
                line,
                column,
                message: "the pipeline file is empty; it needs `version: 1` and `steps`".to_owned(),
            });
        }
        Err(tree::TreeError::Syntax(pos, message)) => {
            let (file, line, column) = at(pos);
            return Err(PipelineError::Syntax {
                file,
                line,
                column,
                message,
            });
        }
        Err(tree::TreeError::Limit(pos, message)) => {
            let (file, line, column) = at(pos);
            return Err(PipelineError::TooLarge {
                file,
                line,
                column,
                message,
            });
        }
    };
    decode::decode(&root).map_err(|mut problems| {
        problems.sort_by_key(|(pos, _)| *pos);
        let mut errors: Vec<PipelineError> = problems
            .into_iter()
            .map(|(pos, message)| {
                let (file, line, column) = at(pos);
                PipelineError::Invalid {
                    file,
                    line,
                    column,
                    message,
                }
            })
            .collect();
        if errors.len() == 1 {
            return errors.remove(0);
        }
        let omitted = errors.len().saturating_sub(MAX_ERRORS);
        errors.truncate(MAX_ERRORS);
        PipelineError::Multiple { errors, omitted }
    })
}

#[cfg(test)]
mod tests;
