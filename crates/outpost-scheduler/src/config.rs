//! The scheduler's settings. Plain typed values: the agent loads and validates the file,
//! environment and flags, and hands the result here. Defaults live in one place,
//! [`SchedulerConfig::new`] and [`GitConfig::default`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use outpost_time::Backoff;

/// The environment-variable prefix of the built-in secret provider (`OUTPOST_SECRET_<NAME>`).
pub const DEFAULT_SECRET_ENV_PREFIX: &str = "OUTPOST_SECRET_";
/// Where container backends mount the workspace inside step containers.
pub const DEFAULT_CONTAINER_WORKSPACE: &str = "/workspace";
/// Default of [`SchedulerConfig::log_cap_bytes`]: 256 MiB.
pub const DEFAULT_LOG_CAP_BYTES: u64 = 256 * 1024 * 1024;

/// How registration, acquire and outbox deliveries back off after a failed hub call.
pub(crate) const HUB_RETRY: Backoff =
    Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
/// How the heartbeat backs off: never long, since leases run out.
pub(crate) const HEARTBEAT_RETRY: Backoff =
    Backoff::new(Duration::from_millis(250), Duration::from_secs(5));

/// Everything the scheduler needs to know besides the hub client and the backend.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// The runner's name at the hub; registering the same name again keeps the same runner id.
    pub name: String,
    /// The runner's labels; it takes jobs whose labels are a subset of these.
    pub labels: Vec<String>,
    /// How many jobs run at once (at least 1).
    pub concurrency: u32,
    /// Journal, outbox, spools and workspaces live here; keep it across restarts.
    pub state_dir: PathBuf,
    /// How long one acquire long-poll is held open by the hub (`wait_s`).
    pub acquire_wait: Duration,
    /// How long one heartbeat long-poll is held open; `None` takes the hub's
    /// `heartbeat_interval_s` from registration. Never longer than the hub's interval.
    pub heartbeat_wait: Option<Duration>,
    /// After the first drain request, how long running jobs may go on before they are cancelled.
    pub drain_grace: Duration,
    /// Directory with one file per secret, named after it (the file's one trailing newline is
    /// trimmed). `None` disables this provider.
    pub secrets_dir: Option<PathBuf>,
    /// Prefix of the environment variables that provide secrets (`OUTPOST_SECRET_` + name).
    pub secret_env_prefix: String,
    /// Largest spool file of one job, in bytes; output past it is dropped with a note.
    pub log_cap_bytes: u64,
    /// Where step containers see the workspace (container backends).
    pub container_workspace: String,
    /// How often the backend's leftovers are swept (also once at start).
    pub sweep_interval: Duration,
    /// How source checkouts are done.
    pub git: GitConfig,
    /// The runner's version, sent at registration.
    pub version: String,
}

impl SchedulerConfig {
    /// A configuration with the documented defaults: concurrency 1, acquire wait 30 s, the
    /// hub's heartbeat interval, drain grace 10 min, secrets from `OUTPOST_SECRET_*` only,
    /// log cap 256 MiB, container workspace `/workspace`, sweep every 10 min.
    pub fn new(name: impl Into<String>, state_dir: impl Into<PathBuf>) -> Self {
        Self {
            name: name.into(),
            labels: Vec::new(),
            concurrency: 1,
            state_dir: state_dir.into(),
            acquire_wait: Duration::from_secs(30),
            heartbeat_wait: None,
            drain_grace: Duration::from_secs(600),
            secrets_dir: None,
            secret_env_prefix: DEFAULT_SECRET_ENV_PREFIX.to_owned(),
            log_cap_bytes: DEFAULT_LOG_CAP_BYTES,
            container_workspace: DEFAULT_CONTAINER_WORKSPACE.to_owned(),
            sweep_interval: Duration::from_secs(600),
            git: GitConfig::default(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }
}

/// How the runner checks out git sources. Credentials come only from here (and the runner
/// host's own git configuration), never from the hub. Its `Debug` hides the `env` values.
#[derive(Clone)]
pub struct GitConfig {
    /// The git program.
    pub program: PathBuf,
    /// A credential helper passed as `-c credential.helper=<helper>`, e.g.
    /// `store --file=/etc/outpost/git-credentials` or `!/usr/local/bin/outpost-git-creds`.
    pub credential_helper: Option<String>,
    /// Extra environment of every git command, e.g. `GIT_SSH_COMMAND`. Every value of 4 bytes
    /// or more is treated as secret and masked out of git's messages.
    pub env: BTreeMap<String, String>,
    /// Transports git may use (`GIT_ALLOW_PROTOCOL`); `ext` is never allowed.
    pub allowed_protocols: Vec<String>,
    /// Limit for the whole checkout of one job.
    pub timeout: Duration,
}

impl Default for GitConfig {
    fn default() -> Self {
        Self {
            program: PathBuf::from("git"),
            credential_helper: None,
            env: BTreeMap::new(),
            allowed_protocols: ["https", "http", "ssh", "git", "file"]
                .map(str::to_owned)
                .to_vec(),
            timeout: Duration::from_secs(600),
        }
    }
}

impl std::fmt::Debug for GitConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitConfig")
            .field("program", &self.program)
            .field("credential_helper", &self.credential_helper)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("allowed_protocols", &self.allowed_protocols)
            .field("timeout", &self.timeout)
            .finish()
    }
}
