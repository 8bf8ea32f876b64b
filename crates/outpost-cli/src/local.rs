//! `outpost run PIPELINE.yml`: an embedded hub on a loopback port with a temporary database, a
//! runner with the best available backend, the pipeline submitted inline, and the live view.
//! Ctrl-C cancels the job (and still shows how it ended).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use outpost_client::{ClientConfig, HubClient};
use outpost_executor::Executor;
use outpost_hub::{Hub, HubConfig};
use outpost_pipeline::Pipeline;
use outpost_protocol::{JobState, SubmitJobRequest};
use outpost_scheduler::{Scheduler, SchedulerConfig};
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
            std::fs::create_dir_all(dir)
                .map_err(|e| local(format!("cannot create {}: {e}", dir.display())))?;
            dir.clone()
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("outpost-run-")
                .tempdir()
                .map_err(|e| local(format!("cannot create a temporary directory: {e}")))?;
            temp.path().to_owned()
        }
    };

    let (executor, why) = choose_backend(args.executor, &pipeline, &dir).await?;
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
    let hub = Hub::open(config)
        .await
        .map_err(|e| local(format!("embedded hub: {e}")))?;
    // A kept --state-dir already has the org; the hub's admin key reaches it either way.
    let _ = hub.create_org(ORG).await;
    let api_key = hub.admin_key().to_owned();
    let (_, runner_token) = hub
        .create_runner_token(ORG, "outpost run")
        .await
        .map_err(|e| local(format!("embedded hub: {e}")))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| local(format!("cannot listen on a loopback port: {e}")))?;
    let url = format!(
        "http://{}",
        listener.local_addr().map_err(|e| local(e.to_string()))?
    );
    let hub_shutdown = CancellationToken::new();
    let hub_task = tokio::spawn(hub.serve(listener, hub_shutdown.clone()));

    // The local runner.
    let runner_client = HubClient::new(ClientConfig::new(&url, runner_token))?;
    let mut scheduler_config = SchedulerConfig::new("outpost-run", dir.join("runner"));
    scheduler_config.secrets_dir = args.secrets_dir.clone();
    scheduler_config.drain_grace = Duration::ZERO;
    scheduler_config.version = env!("CARGO_PKG_VERSION").to_owned();
    let mut registry = prometheus_client::registry::Registry::default();
    let scheduler = Scheduler::new(scheduler_config, runner_client, executor, &mut registry)
        .map_err(|e| local(format!("local runner: {e}")))?;
    let runner = scheduler.handle();
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
    dir: &Path,
) -> Result<(Arc<dyn Executor>, &'static str), CliError> {
    let all_images = pipeline
        .steps
        .iter()
        .all(|s| s.effective_image(pipeline).is_some());
    let docker = || async {
        let config = outpost_docker::DockerConfig {
            state_dir: Some(dir.join("runner")),
            ..Default::default()
        };
        outpost_docker::DockerExecutor::connect(config).await
    };
    match choice {
        ExecutorChoice::Process => Ok((process(dir), "chosen with --executor")),
        ExecutorChoice::Docker => match docker().await {
            Ok(d) => Ok((Arc::new(d), "chosen with --executor")),
            Err(e) => Err(local(format!("the docker backend is not available: {e}"))),
        },
        ExecutorChoice::Auto if !all_images => Ok((
            process(dir),
            "not every step names an image; use --executor docker to insist",
        )),
        ExecutorChoice::Auto => match docker().await {
            Ok(d) => Ok((Arc::new(d), "a docker engine answered")),
            Err(_) => Ok((process(dir), "no docker engine answered")),
        },
    }
}

fn process(dir: &Path) -> Arc<dyn Executor> {
    let runner = dir.join("runner");
    Arc::new(outpost_process::ProcessExecutor::new(
        outpost_process::ProcessConfig::new(runner.join("work"), runner.join("cache")),
    ))
}

fn local(message: String) -> CliError {
    CliError::Local(message)
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
