//! `outpost run PIPELINE.yml`: an embedded hub on a loopback port with a temporary database, a
//! runner with the best available backend, the pipeline submitted inline, and the live view.
//! Ctrl-C cancels the job (and still shows how it ended).

use std::sync::Arc;
use std::time::Duration;

use outpost_agent::{AgentConfig, Backend, RunnerParts};
use outpost_client::{ClientConfig, HubClient};
use outpost_docker::DockerBackend;
use outpost_executor::Executor;
use outpost_hub::{Hub, HubConfig};
use outpost_pipeline::Pipeline;
use outpost_process::ProcessBackend;
use outpost_protocol::{JobState, SubmitJobRequest};
use tokio_util::sync::CancellationToken;

use crate::{CliError, ExecutorChoice, RunArgs};

const ORG: &str = "local";

pub async fn run(args: RunArgs) -> Result<bool, CliError> {
    let text = crate::remote::read_pipeline(&args.pipeline)?;
    let pipeline = outpost_pipeline::parse(&args.pipeline.display().to_string(), &text)?;
    let variables = crate::parse_vars(&args.vars)?;
    init_quiet_tracing();

    let temp;
    let dir = match &args.state_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|source| CliError::Io {
                action: format!("create {}", dir.display()),
                source,
            })?;
            dir.clone()
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("outpost-run-")
                .tempdir()
                .map_err(|source| CliError::Io {
                    action: "create a temporary directory".to_owned(),
                    source,
                })?;
            temp.path().to_owned()
        }
    };

    // The local runner's settings: a runner's defaults (outpost-agent), with its state in the
    // run's directory and no drain grace.
    let runner_config = AgentConfig::<()> {
        name: "outpost-run".to_owned(),
        state_dir: dir.join("runner"),
        secrets_dir: args.secrets_dir.clone(),
        drain_grace: Duration::ZERO,
        ..AgentConfig::default()
    };
    let (executor, why) = choose_backend(args.executor, &pipeline, &runner_config).await?;
    eprintln!(
        "outpost: running {} with the {} backend ({why})",
        args.pipeline.display(),
        executor.kind()
    );

    // The embedded hub, on a loopback port nobody else needs to know.
    let config = HubConfig {
        database: dir.join("hub.db"),
        ..HubConfig::default()
    };
    let hub = Hub::open(config).await?;
    // A kept --state-dir already has the org; the hub's admin key reaches it either way.
    let _ = hub.create_org(ORG).await;
    let api_key = hub.admin_key().to_owned();
    let (_, runner_token) = hub.create_runner_token(ORG, "outpost run").await?;
    let loopback = |source| CliError::Io {
        action: "listen on a loopback port".to_owned(),
        source,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(loopback)?;
    let url = format!("http://{}", listener.local_addr().map_err(loopback)?);
    let hub_shutdown = CancellationToken::new();
    let hub_task = tokio::spawn(hub.serve(listener, hub_shutdown.clone()));

    // The local runner, built as the runner binaries build theirs.
    let runner_config = AgentConfig {
        hub: Some(url.clone()),
        ..runner_config
    };
    let RunnerParts {
        scheduler,
        handle: runner,
        ..
    } = outpost_agent::compose(&runner_config, runner_token, executor)?;
    let runner_task = tokio::spawn(scheduler.run());

    // Submit and watch; Ctrl-C asks the hub to cancel, and the view shows how the job ended.
    let admin = HubClient::new(ClientConfig::new(&url, api_key))?;
    let request = SubmitJobRequest {
        pipeline: Some(text),
        source: None,
        labels: Vec::new(),
        variables,
    };
    let job = admin.submit_job(ORG, &request).await?;
    let canceller = {
        let admin = admin.clone();
        let job_id = job.job_id.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("\noutpost: cancelling job {job_id} (Ctrl-C)");
                let _ = admin.cancel_job(ORG, job_id.as_str()).await;
            }
        })
    };
    let outcome = crate::view::watch(&admin, ORG, job.job_id.as_str()).await;
    canceller.abort();

    runner.drain();
    let _ = runner_task.await;
    hub_shutdown.cancel();
    let _ = hub_task.await;
    Ok(outcome?.state == JobState::Success)
}

async fn choose_backend(
    choice: ExecutorChoice,
    pipeline: &Pipeline,
    config: &AgentConfig<()>,
) -> Result<(Arc<dyn Executor>, &'static str), CliError> {
    let all_images = pipeline
        .steps
        .iter()
        .all(|s| s.effective_image(pipeline).is_some());
    match choice {
        ExecutorChoice::Process => Ok((
            start::<ProcessBackend>(config).await?,
            "chosen with --executor",
        )),
        ExecutorChoice::Docker => Ok((
            start::<DockerBackend>(config).await?,
            "chosen with --executor",
        )),
        ExecutorChoice::Auto if !all_images => Ok((
            start::<ProcessBackend>(config).await?,
            "not every step names an image; use --executor docker to insist",
        )),
        ExecutorChoice::Auto => match start::<DockerBackend>(config).await {
            Ok(d) => Ok((d, "a docker engine answered")),
            Err(_) => Ok((
                start::<ProcessBackend>(config).await?,
                "no docker engine answered",
            )),
        },
    }
}

/// Starts backend `B` with its default section, as a runner binary with no `[executor]` would.
async fn start<B: Backend>(config: &AgentConfig<()>) -> Result<Arc<dyn Executor>, CliError> {
    Ok(outpost_agent::start_backend::<B, _>(config, &B::Config::default()).await?)
}

/// The embedded hub and runner log only warnings unless RUST_LOG asks for more, so the live
/// view stays readable.
fn init_quiet_tracing() {
    let filter = tracing_subscriber_filter();
    outpost_agent::init_tracing_with(outpost_agent::LogFormat::Human, &filter);
}

fn tracing_subscriber_filter() -> String {
    std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_owned())
}
