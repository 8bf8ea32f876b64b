//! The composition root: the one place that builds a runner — backend, hub client, scheduler
//! and its metrics — from an [`AgentConfig`]. The runner binaries (through [`crate::run`]) and
//! `outpost run` both build their runner here, so they cannot differ in how.

use std::sync::Arc;

use outpost_client::{ClientConfig, HubClient};
use outpost_executor::{Backend, BackendEnv, Executor};
use outpost_scheduler::{GitConfig, Scheduler, SchedulerConfig, SchedulerHandle};
use prometheus_client::registry::Registry;

use crate::AgentError;
use crate::config::AgentConfig;

/// A runner ready to run: `scheduler.run()` until it drains; `handle` drains it and answers
/// `/readyz`; `metrics` holds its Prometheus metrics.
#[derive(Debug)]
pub struct RunnerParts {
    pub scheduler: Scheduler,
    pub handle: SchedulerHandle,
    pub metrics: Registry,
}

/// Creates the state directory of `config` and starts backend `B` with `section` (a runner's
/// `[executor]`, or the backend's defaults).
pub async fn start_backend<B: Backend, E>(
    config: &AgentConfig<E>,
    section: &B::Config,
) -> Result<Arc<dyn Executor>, AgentError> {
    std::fs::create_dir_all(&config.state_dir).map_err(|source| AgentError::Io {
        action: "create the state directory",
        path: config.state_dir.clone(),
        source,
    })?;
    let env = BackendEnv {
        state_dir: config.state_dir.clone(),
        runner_name: config.name.clone(),
    };
    B::start(section, &env)
        .await
        .map_err(|source| AgentError::Backend {
            kind: B::KIND,
            source,
        })
}

/// Builds the hub client and the scheduler around `executor`. Blocking (the scheduler opens
/// its state directory): call it at startup.
pub fn compose<E>(
    config: &AgentConfig<E>,
    token: String,
    executor: Arc<dyn Executor>,
) -> Result<RunnerParts, AgentError> {
    let client = HubClient::new(client_config(config, token)).map_err(AgentError::Client)?;
    let mut metrics = Registry::default();
    let scheduler = Scheduler::new(scheduler_config(config), client, executor, &mut metrics)?;
    let handle = scheduler.handle();
    Ok(RunnerParts {
        scheduler,
        handle,
        metrics,
    })
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
    s.git = GitConfig {
        credential_helper: config.git.credential_helper.clone(),
        timeout: config.git.timeout,
        ..GitConfig::default()
    };
    s
}
