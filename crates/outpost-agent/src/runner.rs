//! Starting a runner: configuration → backend → hub client → scheduler, with the metrics
//! listener and the signals that drive the drain contract (DESIGN.md §6.4).

use std::collections::HashMap;
use std::sync::Arc;

use outpost_executor::Backend;
use outpost_scheduler::DrainStage;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::compose::{RunnerParts, compose, start_backend};
use crate::config::{AgentConfig, RunnerArgs, load_config};
use crate::{AgentError, health, init_tracing};

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
    let executor = start_backend::<B, _>(&config, &config.executor).await?;
    let RunnerParts {
        scheduler,
        handle,
        metrics,
    } = compose(&config, token, executor)?;

    let shutdown = CancellationToken::new();
    let mut metrics_task = None;
    if let Some(addr) = config.metrics_listen {
        let listener = health::bind(addr).await?;
        tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
        let ready_handle = handle.clone();
        metrics_task = Some(tokio::spawn(health::serve(
            listener,
            Arc::new(metrics),
            Arc::new(move || ready_handle.is_ready()),
            shutdown.clone(),
        )));
    }

    let signals = {
        let handle = handle.clone();
        let mut term = signal(SignalKind::terminate()).map_err(|source| AgentError::Signals {
            signal: "SIGTERM",
            source,
        })?;
        let mut int = signal(SignalKind::interrupt()).map_err(|source| AgentError::Signals {
            signal: "SIGINT",
            source,
        })?;
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
    result?;
    tracing::info!("runner stopped");
    Ok(())
}
