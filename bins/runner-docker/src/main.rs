//! `runner-docker`: an outpost runner whose steps are Docker containers (one network, workspace
//! volume and set of service containers per job). Connects to the engine through `DOCKER_HOST` or
//! the local socket. Flags, config and signals come from outpost-agent; the `[executor]` section
//! is outpost-docker's `DockerConfig`.

use std::process::ExitCode;

use clap::Parser;
use outpost_agent::RunnerArgs;
use outpost_docker::DockerBackend;

#[derive(Debug, Parser)]
#[command(
    name = "runner-docker",
    version,
    about = "outpost runner: steps as Docker containers"
)]
struct Cli {
    #[command(flatten)]
    runner: RunnerArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    outpost_agent::exit(
        "runner-docker",
        outpost_agent::run::<DockerBackend>(cli.runner).await,
    )
}
