//! `runner-process`: an outpost runner whose steps are host processes (`sh -c`) in a per-job
//! workspace directory, for bare-metal builders. Flags, config and signals come from
//! outpost-agent; this file only names the backend and its `[executor]` section.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use clap::Parser;
use outpost_agent::{Backend, BackendContext, RunnerArgs};
use outpost_executor::Executor;
use outpost_process::{ProcessConfig, ProcessExecutor};
use serde::{Deserialize, Serialize};

#[derive(Debug, Parser)]
#[command(
    name = "runner-process",
    version,
    about = "outpost runner: steps as host processes"
)]
struct Cli {
    #[command(flatten)]
    runner: RunnerArgs,
}

/// The `[executor]` section of `runner-process`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Section {
    /// Time between SIGTERM and SIGKILL when a step is stopped; `0s` kills at once.
    #[serde(with = "humantime_str")]
    kill_grace: Duration,
    /// The shell that runs each step as `<shell> -c <run>`.
    shell: String,
}

impl Default for Section {
    fn default() -> Self {
        Self {
            kill_grace: outpost_process::DEFAULT_KILL_GRACE,
            shell: outpost_process::DEFAULT_SHELL.into(),
        }
    }
}

mod humantime_str {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration `{text}` ({e}); write it like 10s"
            ))
        })
    }
}

struct Process;

#[async_trait]
impl Backend for Process {
    const KIND: &'static str = outpost_process::KIND;
    type Config = Section;

    async fn start(config: &Section, ctx: &BackendContext) -> Result<Arc<dyn Executor>, String> {
        let mut c = ProcessConfig::new(ctx.state_dir.join("work"), ctx.state_dir.join("cache"));
        c.kill_grace = config.kill_grace;
        c.shell = config.shell.clone();
        Ok(Arc::new(ProcessExecutor::new(c)))
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match outpost_agent::run::<Process>(cli.runner).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("runner-process: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
