//! Starting a runner: configuration → backend → hub client → scheduler, with the metrics
//! listener and the signals that drive the drain contract (DESIGN.md §6.4).

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use outpost_client::{ClientConfig, HubClient};
use outpost_executor::Executor;
use outpost_scheduler::{DrainStage, GitConfig, Scheduler, SchedulerConfig, SchedulerError};
use prometheus_client::registry::Registry;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::config::{AgentConfig, RunnerArgs, load_config};
use crate::{AgentError, health, init_tracing};

/// A backend a runner binary is built around.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// The backend's name, as registered with the hub.
    const KIND: &'static str;
    /// The backend's own configuration section (`[executor]`).
    type Config: Default
        + Serialize
        + DeserializeOwned
        + Clone
        + Send
        + Sync
        + std::fmt::Debug
        + 'static;

    /// Connects to the engine (if any) and returns the executor. The error says what is wrong
    /// in words a person can act on (e.g. how to point the runner at the Docker engine).
    async fn start(
        config: &Self::Config,
        ctx: &BackendContext,
    ) -> Result<Arc<dyn Executor>, String>;
}

/// What a backend may need from the runner's configuration.
#[derive(Debug, Clone)]
pub struct BackendContext {
    pub state_dir: std::path::PathBuf,
    pub runner_name: String,
}

/// Runs a runner until it has drained after SIGTERM/SIGINT, or fails.
pub async fn run<B: Backend>(args: RunnerArgs) -> Result<(), AgentError> {
    let env: HashMap<String, String> = std::env::vars().collect();
    let config: AgentConfig<B::Config> = load_config(&args, &env)?;
    if args.print_config {
        print!("{}", config.to_toml());
        return Ok(());
    }
    init_tracing(config.log_format);
    let token = config.resolve_token()?;
    std::fs::create_dir_all(&config.state_dir).map_err(|e| {
        AgentError::Config(format!(
            "cannot create state_dir {}: {e}",
            config.state_dir.display()
        ))
    })?;

    let ctx = BackendContext {
        state_dir: config.state_dir.clone(),
        runner_name: config.name.clone(),
    };
    let executor =
        B::start(&config.executor, &ctx)
            .await
            .map_err(|message| AgentError::Backend {
                kind: B::KIND,
                message,
            })?;

    let client = HubClient::new(client_config(&config, token))
        .map_err(|e| AgentError::Config(e.to_string()))?;
    let mut registry = Registry::default();
    let scheduler = Scheduler::new(scheduler_config(&config), client, executor, &mut registry)
        .map_err(|e| AgentError::Config(e.to_string()))?;
    let handle = scheduler.handle();

    let shutdown = CancellationToken::new();
    let mut metrics_task = None;
    if let Some(addr) = config.metrics_listen {
        let listener = health::bind(addr).await?;
        tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
        let ready_handle = handle.clone();
        metrics_task = Some(tokio::spawn(health::serve(
            listener,
            Arc::new(registry),
            Arc::new(move || ready_handle.is_ready()),
            shutdown.clone(),
        )));
    }

    let signals = {
        let handle = handle.clone();
        let mut term = signal(SignalKind::terminate())
            .map_err(|e| AgentError::Runner(format!("cannot watch SIGTERM: {e}")))?;
        let mut int = signal(SignalKind::interrupt())
            .map_err(|e| AgentError::Runner(format!("cannot watch SIGINT: {e}")))?;
        tokio::spawn(async move {
            loop {
                let name = tokio::select! {
                    Some(()) = term.recv() => "SIGTERM",
                    Some(()) = int.recv() => "SIGINT",
                    else => return,
                };
                match handle.drain() {
                    DrainStage::Graceful => tracing::info!(
                        signal = name,
                        "draining: no new jobs; running jobs may finish (send it again to cancel them now)"
                    ),
                    stage => tracing::warn!(signal = name, ?stage, "cancelling running jobs now"),
                }
            }
        })
    };

    tracing::info!(name = %config.name, executor = B::KIND, hub = config.hub.as_deref().unwrap_or_default(), "runner starting");
    let result = scheduler.run().await;
    signals.abort();
    shutdown.cancel();
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    match result {
        Ok(()) => {
            tracing::info!("runner stopped");
            Ok(())
        }
        Err(e @ SchedulerError::Unauthorized { .. }) => {
            Err(AgentError::Unauthorized(e.to_string()))
        }
        Err(e) => Err(AgentError::Runner(e.to_string())),
    }
}

fn client_config<E>(config: &AgentConfig<E>, token: String) -> ClientConfig {
    let mut c = ClientConfig::new(config.hub.clone().unwrap_or_default(), token);
    c.ca_file = config.tls.ca_file.clone();
    c.client_cert = config.tls.client_cert.clone();
    c.client_key = config.tls.client_key.clone();
    c.proxy = config.proxy.url.clone();
    c.no_proxy = config.proxy.no_proxy.clone();
    c.use_env_proxy = config.proxy.from_env;
    c.user_agent = format!("outpost-runner/{}", env!("CARGO_PKG_VERSION"));
    c
}

fn scheduler_config<E>(config: &AgentConfig<E>) -> SchedulerConfig {
    let mut s = SchedulerConfig::new(config.name.clone(), config.state_dir.clone());
    s.labels = config.labels.clone();
    s.concurrency = config.concurrency;
    s.acquire_wait = config.acquire_wait;
    s.drain_grace = config.drain_grace;
    s.secrets_dir = config.secrets_dir.clone();
    s.log_cap_bytes = config.log_cap_bytes;
    s.version = env!("CARGO_PKG_VERSION").to_owned();
    s.git = GitConfig {
        credential_helper: config.git.credential_helper.clone(),
        timeout: config.git.timeout,
        ..GitConfig::default()
    };
    s
}
