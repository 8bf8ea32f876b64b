//! Job networks, and the spare that keeps their creation off a job's critical path.
//!
//! Creating a bridge network costs the engine a tenth of a second or more (a bridge device and
//! its iptables rules), as much as a fifth of a trivial step. So once a job has ended, the backend
//! creates a spare network for the next job of the same runner, and a new job takes it (waiting
//! for it if its creation is under way, else creating its own). Every job still gets a network
//! that no other job ever used: isolation is that of one network per job.
//!
//! A network's labels cannot change once it exists, so a network carries no job id; the job it
//! serves is recorded on that job's workspace volume and containers (label
//! [`labels::NETWORK`](crate::labels::NETWORK)), which is how a restarted runner and a sweep find it. While this process
//! holds a network (a spare, or the network of a run in progress), a sweep never removes it.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bollard::Docker;
use bollard::models::NetworkCreateRequest;
use outpost_executor::RunnerId;
use tokio::sync::oneshot;

use crate::DockerConfig;
use crate::names::{Kind, runner_labels};
use crate::util::{engine_message, status_of, unix_now};

/// The networks this process holds, and the spare of each runner id.
#[derive(Debug, Default)]
pub(crate) struct Networks {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// At most one spare per runner id, ready or being created.
    spares: HashMap<RunnerId, Spare>,
    /// The names of the spares and of the networks of runs in progress: never swept.
    held: HashSet<String>,
}

#[derive(Debug)]
struct Spare {
    name: String,
    /// The outcome of the spare's creation: `Err` with the engine's words if it failed.
    created: oneshot::Receiver<Result<(), String>>,
}

/// A network a run holds from [`Networks::take`] until [`Networks::release`]. Its name is known
/// at once (so the workspace volume can record it while the network is still being made); it
/// exists once [`Lease::ready`] returned.
#[derive(Debug)]
pub(crate) struct Lease {
    pub(crate) name: String,
    /// The spare's creation, when the lease is a spare; `None`: the run creates it.
    spare: Option<oneshot::Receiver<Result<(), String>>>,
    labels: HashMap<String, String>,
}

fn lock(m: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    // A panic while holding the lock leaves two plain collections behind: still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A name no other network of this engine has: prefix, then time and a process-wide counter.
fn new_name(config: &DockerConfig) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{}net-{:x}-{:x}{n:x}",
        config.network_prefix,
        std::process::id(),
        nanos & 0xffff_ffff_ffff
    )
}

fn network_labels(config: &DockerConfig, runner_id: &RunnerId) -> HashMap<String, String> {
    let expires_at = unix_now() + config.default_expiry.as_secs();
    runner_labels(runner_id.as_str(), expires_at, Kind::Network)
}

async fn create(
    docker: &Docker,
    name: &str,
    labels: HashMap<String, String>,
) -> Result<(), bollard::errors::Error> {
    docker
        .create_network(NetworkCreateRequest {
            name: name.to_owned(),
            driver: Some("bridge".to_owned()),
            labels: Some(labels),
            ..Default::default()
        })
        .await
        .map(|_| ())
}

impl Networks {
    /// A network for a new run of a job of `runner_id`: the runner's spare if there is one, else
    /// a new name. Held until [`release`](Networks::release).
    pub(crate) fn take(&self, config: &DockerConfig, runner_id: &RunnerId) -> Lease {
        let mut inner = lock(&self.inner);
        match inner.spares.remove(runner_id) {
            Some(spare) => Lease {
                name: spare.name,
                spare: Some(spare.created),
                labels: network_labels(config, runner_id),
            },
            None => {
                let name = new_name(config);
                inner.held.insert(name.clone());
                Lease {
                    name,
                    spare: None,
                    labels: network_labels(config, runner_id),
                }
            }
        }
    }

    /// Holds a network a resumed run found (named on its workspace volume).
    pub(crate) fn hold(&self, name: &str) {
        lock(&self.inner).held.insert(name.to_owned());
    }

    /// Gives up a network (its run's cleanup removed it, or left it to a later process).
    pub(crate) fn release(&self, name: &str) {
        lock(&self.inner).held.remove(name);
    }

    /// Whether this process holds the network `name` (a sweep leaves it alone).
    pub(crate) fn is_held(&self, name: &str) -> bool {
        lock(&self.inner).held.contains(name)
    }

    /// The names of the spares (ready or being created).
    pub(crate) fn spares(&self) -> Vec<String> {
        lock(&self.inner)
            .spares
            .values()
            .map(|s| s.name.clone())
            .collect()
    }

    /// Creates a spare for `runner_id` unless it has one. Errors are logged: the next job then
    /// creates its own network.
    pub(crate) async fn refill(
        &self,
        docker: &Docker,
        config: &DockerConfig,
        runner_id: &RunnerId,
    ) {
        let name = new_name(config);
        let (tx, created) = oneshot::channel();
        {
            let mut inner = lock(&self.inner);
            if inner.spares.contains_key(runner_id) {
                return;
            }
            inner.held.insert(name.clone());
            inner.spares.insert(
                runner_id.clone(),
                Spare {
                    name: name.clone(),
                    created,
                },
            );
        }
        let result = create(docker, &name, network_labels(config, runner_id))
            .await
            .map_err(|e| engine_message(&e));
        if let Err(e) = &result {
            tracing::warn!(network = %name, error = %e, "cannot create a spare network");
        }
        // No receiver: the spare was taken and its run gave up waiting (dropped); the network
        // is then removed by that run's cleanup or by a sweep.
        let _ = tx.send(result);
    }

    /// Removes every spare (when the executor shuts down): a spare serves only this process.
    pub(crate) async fn remove_spares(&self, docker: &Docker) {
        let spares: Vec<Spare> = lock(&self.inner).spares.drain().map(|(_, s)| s).collect();
        for spare in spares {
            // Wait for a creation under way, so that the removal does not precede it.
            let created = spare.created.await;
            if matches!(created, Ok(Ok(()))) {
                remove(docker, &spare.name).await;
            }
            self.release(&spare.name);
        }
    }
}

impl Lease {
    /// Waits until the network exists: the spare's creation, or creating it now. A spare that
    /// could not be created is replaced by a network made now, under the same name.
    pub(crate) async fn ready(&mut self, docker: &Docker) -> Result<(), String> {
        if let Some(created) = self.spare.take()
            && let Ok(Ok(())) = created.await
        {
            return Ok(());
        }
        create(docker, &self.name, self.labels.clone())
            .await
            .map_err(|e| engine_message(&e))
    }
}

/// Removes a network; a missing one is fine. Errors are logged: a sweep catches what is left.
pub(crate) async fn remove(docker: &Docker, name: &str) {
    match docker.remove_network(name).await {
        Ok(()) => {}
        Err(e) if status_of(&e) == Some(404) => {}
        Err(e) => tracing::warn!(network = %name, error = %engine_message(&e),
            "cannot remove a job network"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::labels;

    #[test]
    fn a_taken_spare_stays_held_and_a_new_name_is_unique() {
        let config = DockerConfig::default();
        let networks = Networks::default();
        let runner = RunnerId::from("r_1");
        let (_tx, created) = oneshot::channel();
        {
            let mut inner = lock(&networks.inner);
            inner.held.insert("spare".to_owned());
            inner.spares.insert(
                runner.clone(),
                Spare {
                    name: "spare".to_owned(),
                    created,
                },
            );
        }
        let lease = networks.take(&config, &runner);
        assert_eq!(lease.name, "spare");
        assert!(
            networks.is_held("spare"),
            "a spare taken by a run is still held"
        );
        assert!(networks.spares().is_empty());
        let own = networks.take(&config, &runner);
        assert_ne!(own.name, "spare");
        assert!(own.name.starts_with("outpost-net-"), "{}", own.name);
        assert!(networks.is_held(&own.name));
        networks.release(&own.name);
        assert!(!networks.is_held(&own.name));
        let labels = &own.labels;
        assert_eq!(
            labels.get(labels::KIND).map(String::as_str),
            Some("network")
        );
        assert!(
            !labels.contains_key(labels::JOB_ID),
            "a network names no job"
        );
    }
}
