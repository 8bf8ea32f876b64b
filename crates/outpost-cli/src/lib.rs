//! The outpost user CLI as a library (the `outpost` binary only parses flags and calls [`run`]):
//! `outpost run PIPELINE.yml`, the one-command first run (embedded hub, local runner, live view),
//! and `outpost submit | jobs | logs | cancel` against a hub.

mod local;
mod remote;
pub mod view;

use std::collections::BTreeMap;
use std::path::PathBuf;

use outpost_protocol::JobState;

/// `outpost`: run pipelines locally, or work with a hub.
#[derive(Debug, clap::Parser)]
#[command(name = "outpost", version, about = "outpost: a hybrid CI/CD runner")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Run a pipeline here and now: an embedded hub and a local runner, with a live view
    Run(RunArgs),
    /// Submit a job to a hub
    Submit {
        #[command(flatten)]
        hub: HubArgs,
        #[command(flatten)]
        args: SubmitArgs,
    },
    /// List a hub's jobs, newest first
    Jobs {
        #[command(flatten)]
        hub: HubArgs,
        /// Only jobs in this state (queued, running, success, failed, ...)
        #[arg(long)]
        state: Option<JobState>,
        /// At most this many
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Print a job's log
    Logs {
        #[command(flatten)]
        hub: HubArgs,
        job_id: String,
        /// Keep printing as the log grows, until the job ends
        #[arg(long, short)]
        follow: bool,
    },
    /// Cancel a job
    Cancel {
        #[command(flatten)]
        hub: HubArgs,
        job_id: String,
    },
}

/// Where the hub is and who we are there.
#[derive(Debug, Clone, clap::Args)]
pub struct HubArgs {
    /// The hub's URL
    #[arg(long, env = "OUTPOST_HUB")]
    pub hub: Option<String>,
    /// The organization
    #[arg(long, env = "OUTPOST_ORG")]
    pub org: Option<String>,
    /// The organization's API key
    #[arg(long = "api-key", env = "OUTPOST_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct SubmitArgs {
    /// A pipeline file, sent inline
    pub pipeline: Option<PathBuf>,
    /// Or: a git repository the runner clones
    #[arg(long, value_name = "URL")]
    pub git: Option<String>,
    /// The branch, tag or commit (with --git)
    #[arg(long = "ref", value_name = "REF")]
    pub git_ref: Option<String>,
    /// The pipeline file's path in the repository (with --git)
    #[arg(long)]
    pub path: Option<String>,
    /// A label the runner must have (repeatable)
    #[arg(long = "label", value_name = "LABEL")]
    pub labels: Vec<String>,
    /// A pipeline variable (repeatable)
    #[arg(long = "var", value_name = "KEY=VALUE")]
    pub vars: Vec<String>,
    /// Follow the job live until it ends
    #[arg(long, short)]
    pub follow: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The pipeline file
    pub pipeline: PathBuf,
    /// The backend: auto (docker when an engine answers, else process), process or docker
    #[arg(long, default_value = "auto")]
    pub executor: ExecutorChoice,
    /// A pipeline variable (repeatable)
    #[arg(long = "var", value_name = "KEY=VALUE")]
    pub vars: Vec<String>,
    /// Directory with one file per secret (also: OUTPOST_SECRET_<NAME> variables)
    #[arg(long, value_name = "DIR")]
    pub secrets_dir: Option<PathBuf>,
    /// Keep the embedded hub's database and the runner's state here instead of a temporary dir
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExecutorChoice {
    Auto,
    Process,
    Docker,
}

/// What can go wrong in the CLI.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A flag or argument is missing or wrong.
    #[error("{0}")]
    Usage(String),
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The pipeline file is invalid.
    #[error("{0}")]
    Pipeline(#[from] outpost_pipeline::PipelineError),
    /// The hub answered with an error or could not be reached.
    #[error("{0}")]
    Hub(#[from] outpost_client::ClientError),
    /// The embedded hub of `outpost run` could not start.
    #[error("embedded hub: {0}")]
    EmbeddedHub(#[from] outpost_hub::HubError),
    /// The local runner of `outpost run` could not start (its backend, its state directory).
    #[error("local runner: {0}")]
    Runner(#[from] outpost_agent::AgentError),
    /// A local file, directory or port of `outpost run` could not be used.
    #[error("cannot {action}: {source}")]
    Io {
        action: String,
        source: std::io::Error,
    },
}

impl CliError {
    /// The exit code of `outpost` for this error: 2 for usage and input errors, the runner's
    /// code (docs/runner.md) when the local runner cannot start, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) | CliError::Read { .. } | CliError::Pipeline(_) => 2,
            CliError::Runner(e) => e.exit_code(),
            _ => 1,
        }
    }
}

/// Runs a command; `Ok(true)` when it succeeded (for `run` and `submit --follow`: the job
/// succeeded), `Ok(false)` when the job ended otherwise.
pub async fn run(cli: Cli) -> Result<bool, CliError> {
    match cli.command {
        Command::Run(args) => local::run(args).await,
        Command::Submit { hub, args } => remote::submit(&hub, &args).await,
        Command::Jobs { hub, state, limit } => remote::jobs(&hub, state, limit).await,
        Command::Logs {
            hub,
            job_id,
            follow,
        } => remote::logs(&hub, &job_id, follow).await,
        Command::Cancel { hub, job_id } => remote::cancel(&hub, &job_id).await,
    }
}

/// `KEY=VALUE` pairs into a map; a pair without `=` is an error naming it.
pub fn parse_vars(vars: &[String]) -> Result<BTreeMap<String, String>, CliError> {
    vars.iter()
        .map(|v| match v.split_once('=') {
            Some((k, val)) if !k.is_empty() => Ok((k.to_owned(), val.to_owned())),
            _ => Err(CliError::Usage(format!(
                "--var `{v}` must look like KEY=VALUE"
            ))),
        })
        .collect()
}
