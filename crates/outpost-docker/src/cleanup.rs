//! Removing a job's containers, network and workspace volume once its run has returned its
//! outcome: spawned, so that the outcome does not wait for the engine, and owned by the executor,
//! so that [`DockerExecutor::wait_for_cleanups`](crate::DockerExecutor::wait_for_cleanups) (and
//! `Executor::shutdown`) can await it. While a job's cleanup is pending, the executor treats the
//! job's resources as the cleanup's: `running_jobs` does not list the job, a sweep leaves them
//! alone, and a new run of the same job waits for it first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bollard::Docker;
use outpost_executor::JobId;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::job::{force_remove, list_containers};
use crate::names::{labels, runner_filter};
use crate::util::{engine_message, status_of};

/// The cleanups of this executor.
#[derive(Debug, Default)]
pub(crate) struct Cleanups {
    tracker: TaskTracker,
    /// The jobs whose cleanup has not finished. The receiver reports an error once the cleanup's
    /// task has ended (its sender dropped), however it ended.
    pending: Arc<Mutex<HashMap<JobId, watch::Receiver<()>>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The map stays consistent whatever panicked while holding it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Cleanups {
    /// Runs `work` as the cleanup of `job_id`.
    pub(crate) fn spawn(&self, job_id: JobId, work: impl Future<Output = ()> + Send + 'static) {
        let (done, rx) = watch::channel(());
        lock(&self.pending).insert(job_id.clone(), rx);
        let pending = self.pending.clone();
        self.tracker.spawn(async move {
            let started = Instant::now();
            work.await;
            crate::timing::log_cleanup(&job_id, started.elapsed());
            let mut map = lock(&pending);
            // A later cleanup of the same job may have replaced this entry: leave that one.
            if map
                .get(&job_id)
                .is_some_and(|rx| rx.same_channel(&done.subscribe()))
            {
                map.remove(&job_id);
            }
            drop(done);
        });
    }

    /// Whether the cleanup of `job_id` is still running.
    pub(crate) fn is_pending(&self, job_id: &str) -> bool {
        lock(&self.pending).contains_key(job_id)
    }

    /// Waits until the cleanup of `job_id` (if one is running) has finished.
    pub(crate) async fn wait_for(&self, job_id: &str) {
        let rx = lock(&self.pending).get(job_id).cloned();
        if let Some(mut rx) = rx {
            // Resolves with an error once the sender is dropped, i.e. the cleanup is over.
            let _ = rx.changed().await;
        }
    }

    /// Waits until every cleanup started so far has finished.
    pub(crate) async fn wait_all(&self) {
        self.tracker.close();
        self.tracker.wait().await;
        self.tracker.reopen();
    }
}

/// Removes a job's containers (found by label: whichever process created them), then its network
/// and workspace volume by name (never its caches). Errors are logged: a sweep catches what is
/// left. `quiet` is for the reset before a fresh run.
pub(crate) async fn remove_job_resources(
    docker: &Docker,
    runner_id: &str,
    job_id: &str,
    network: Option<&str>,
    workspace: Option<&str>,
    quiet: bool,
) {
    let filters = runner_filter(runner_id, &[(labels::JOB_ID, job_id)]);
    let report = |what: &str, e: &bollard::errors::Error| {
        if !quiet {
            tracing::warn!(job_id, error = %engine_message(e), "cleanup could not remove {what}");
        }
    };
    match list_containers(docker, filters).await {
        Ok(containers) => {
            let removals = containers
                .into_iter()
                .filter_map(|c| c.id)
                .map(|id| async move {
                    if let Some(e) = force_remove(docker, &id).await {
                        report(&format!("container {id}"), &e);
                    }
                });
            futures_util::future::join_all(removals).await;
        }
        Err(e) => report("containers", &e),
    }
    if let Some(network) = network.filter(|n| !n.is_empty()) {
        crate::network::remove(docker, network).await;
    }
    if let Some(volume) = workspace
        && let Err(e) = docker
            .remove_volume(
                volume,
                None::<bollard::query_parameters::RemoveVolumeOptions>,
            )
            .await
        && status_of(&e) != Some(404)
    {
        report(&format!("volume {volume}"), &e);
    }
}
