//! `runner-docker`: an outpost runner whose steps are Docker containers (one network, workspace
//! volume and set of service containers per job). Connects to the engine through `DOCKER_HOST` or
//! the local socket. Flags, config and signals come from outpost-agent; the `[executor]` section
//! is outpost-docker's `DockerConfig`.

use std::process::ExitCode;
use std::sync::Arc;

use async_trait::async_trait;
use clap::Parser;
use outpost_agent::{Backend, BackendContext, RunnerArgs};
use outpost_docker::{DockerConfig, DockerExecutor};
use outpost_executor::Executor;

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

struct Docker;

#[async_trait]
impl Backend for Docker {
    const KIND: &'static str = "docker";
    type Config = DockerConfig;

    async fn start(
        config: &DockerConfig,
        ctx: &BackendContext,
    ) -> Result<Arc<dyn Executor>, String> {
        let mut config = config.clone();
        // The cache-use index lives with the rest of the runner's state unless configured.
        config
            .state_dir
            .get_or_insert_with(|| ctx.state_dir.clone());
        let executor = DockerExecutor::connect(config)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Arc::new(executor))
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match outpost_agent::run::<Docker>(cli.runner).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("runner-docker: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
