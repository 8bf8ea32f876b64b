//! `runner-process`: an outpost runner whose steps are host processes (`sh -c`) in a per-job
//! workspace directory, for bare-metal builders. Flags, config and signals come from
//! outpost-agent; the `[executor]` section is outpost-process's `ProcessSection`.

use std::process::ExitCode;

use clap::Parser;
use outpost_agent::RunnerArgs;
use outpost_process::ProcessBackend;

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

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    outpost_agent::exit(
        "runner-process",
        outpost_agent::run::<ProcessBackend>(cli.runner).await,
    )
}
