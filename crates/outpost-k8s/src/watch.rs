//! The one watch of the runner's pods: a reflector over a watcher of every pod in the namespace
//! labelled `app.kubernetes.io/managed-by=outpost`, started when the executor starts. Jobs read
//! their pod from its store and wait for a change through one notification (a generation
//! counter bumped after every event), never by polling the API.

use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::names::labels;

/// The shared pod watch. Aborts its task when dropped.
pub struct PodWatch {
    store: Store<Pod>,
    namespace: String,
    changed: watch::Receiver<u64>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for PodWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodWatch")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl Drop for PodWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PodWatch {
    /// Starts watching the managed pods of `api`'s namespace.
    pub fn start(api: Api<Pod>, namespace: &str) -> Self {
        let (reader, writer) = reflector::store();
        let (tx, rx) = watch::channel(0u64);
        let config = watcher::Config::default().labels(&format!(
            "{}={}",
            labels::MANAGED_BY,
            labels::MANAGED_BY_VALUE
        ));
        let stream = reflector::reflector(writer, watcher(api, config).default_backoff());
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(item) = stream.next().await {
                if let Err(e) = item {
                    // The watcher backs off and lists again by itself.
                    tracing::warn!(error = %e, "the watch of the job pods failed; retrying");
                    continue;
                }
                tx.send_modify(|g| *g += 1);
            }
        });
        Self {
            store: reader,
            namespace: namespace.to_owned(),
            changed: rx,
            task,
        }
    }

    /// Waits until the first list is in the store.
    pub async fn ready(&self) {
        // Only fails when the writer is dropped, which ends the task: nothing to wait for then.
        let _ = self.store.wait_until_ready().await;
    }

    /// The pod named `name`, as last seen.
    pub fn get(&self, name: &str) -> Option<Arc<Pod>> {
        self.store
            .get(&ObjectRef::new(name).within(&self.namespace))
    }

    /// Every managed pod in the namespace, as last seen.
    pub fn all(&self) -> Vec<Arc<Pod>> {
        self.store.state()
    }

    /// A receiver that sees every change after it was made (`changed()`).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        let mut rx = self.changed.clone();
        rx.mark_unchanged();
        rx
    }
}
