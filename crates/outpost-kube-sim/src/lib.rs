//! A stand-in for a Kubernetes cluster, for tests: an HTTP API server on a loopback port that
//! speaks the subset of the core/v1 REST API the outpost Kubernetes backend uses (pods with
//! `log` and `attach`, persistent volume claims, secrets, events; list and watch with
//! selectors, resource versions, bookmarks and `410 Expired`; strict schema validation;
//! `Status` errors; garbage collection), and a node that runs the pods on the real Docker
//! engine (sandbox, init containers, native sidecars, probes, volumes, memory limits, image
//! pull failures, deadlines, graceful deletion, CRI log files with rotation).
//!
//! ```no_run
//! # async fn demo() -> Result<(), outpost_kube_sim::SimError> {
//! let sim = outpost_kube_sim::KubeSim::start(outpost_kube_sim::SimConfig::default()).await?;
//! sim.write_kubeconfig(std::path::Path::new("/tmp/kubeconfig"))?;
//! // … drive it with kube-rs, then look at what was asked:
//! let verbs: Vec<String> = sim.requests().iter().map(|r| r.verb.clone()).collect();
//! sim.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Test support only: never a dependency of a shipped crate.

mod api;
mod cluster;
mod controllers;
mod error;
mod meta;
mod node;
mod quantity;
mod requests;
mod selector;
mod store;
mod validate;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

pub use error::SimError;
pub use requests::ApiRequest;
pub use store::Resource;

use cluster::{Cluster, lock};
use node::NodeMsg;

/// How a stand-in is set up. The defaults are a kubelet's where one applies.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Where the API listens; port 0 picks a free one.
    pub bind: SocketAddr,
    /// The bearer token clients must present; random when `None`.
    pub token: Option<String>,
    /// Namespaces that exist (more with [`KubeSim::create_namespace`]).
    pub namespaces: Vec<String>,
    /// The node's name (`spec.nodeName`, event sources).
    pub node_name: String,
    /// The node's allocatable CPU, in millicores.
    pub allocatable_cpu_millis: u64,
    /// The node's allocatable memory, in bytes.
    pub allocatable_memory_bytes: u64,
    /// Pods the node takes at most.
    pub max_pods: usize,
    /// Size at which a container's log file is rotated (kubelet: 10 MiB).
    pub log_rotation_bytes: u64,
    /// Changes kept for watches; a watch from an older version gets `410 Expired`.
    pub watch_history: usize,
    /// How often a watch that allows bookmarks gets one (the apiserver: about a minute).
    pub bookmark_interval: Duration,
    /// The image of each pod's sandbox container (needs `sleep`, `nc` and `wget`).
    pub sandbox_image: String,
    /// The Docker network sandboxes join (`bridge`, or `none` for loopback only).
    pub network: String,
    /// The first image pull back-off (kubelet: 10 s, doubling to 5 min).
    pub image_pull_backoff: Duration,
    /// The first restart back-off of a sidecar that exited (kubelet: 10 s).
    pub restart_backoff: Duration,
    /// The storage class a claim without one gets (as from a default StorageClass).
    pub default_storage_class: Option<String>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            token: None,
            namespaces: vec!["default".into()],
            node_name: "outpost-kube-sim-node".into(),
            allocatable_cpu_millis: 4000,
            allocatable_memory_bytes: 8 * 1024 * 1024 * 1024,
            max_pods: 110,
            log_rotation_bytes: 10 * 1024 * 1024,
            watch_history: 10_000,
            bookmark_interval: Duration::from_secs(60),
            sandbox_image: "outpost-test/busybox:1".into(),
            network: "bridge".into(),
            image_pull_backoff: Duration::from_secs(10),
            restart_backoff: Duration::from_secs(10),
            default_storage_class: Some("standard".into()),
        }
    }
}

/// A running stand-in. Dropping it removes what it created on the engine; [`KubeSim::shutdown`]
/// does the same and waits for its tasks.
pub struct KubeSim {
    cluster: Arc<Cluster>,
    addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _log_dir: tempfile::TempDir,
    shut_down: bool,
}

impl KubeSim {
    /// Connects to the Docker engine (from the environment, as the docker CLI does), binds the
    /// API and starts the node and the controllers.
    pub async fn start(mut cfg: SimConfig) -> Result<KubeSim, SimError> {
        let docker =
            bollard::Docker::connect_with_defaults().map_err(|source| SimError::Docker {
                action: "connect".into(),
                source,
            })?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|source| SimError::Docker {
                action: "negotiate the API version".into(),
                source,
            })?;
        docker.ping().await.map_err(|source| SimError::Docker {
            action: "ping".into(),
            source,
        })?;
        let token = cfg
            .token
            .clone()
            .unwrap_or_else(|| format!("oks-{:032x}", rand::random::<u128>()));
        cfg.token = Some(token);
        let instance = format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
        let log_dir = tempfile::Builder::new()
            .prefix("outpost-kube-sim-logs-")
            .tempdir()
            .map_err(|source| SimError::Io {
                path: std::env::temp_dir(),
                source,
            })?;
        let listener = tokio::net::TcpListener::bind(cfg.bind)
            .await
            .map_err(|source| SimError::Bind {
                addr: cfg.bind,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| SimError::Bind {
            addr: cfg.bind,
            source,
        })?;
        let (node_tx, node_rx) = mpsc::unbounded_channel();
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        let cluster = Arc::new(Cluster {
            store: Mutex::new(store::Store::new(cfg.watch_history)),
            namespaces: Mutex::new(cfg.namespaces.iter().cloned().collect::<BTreeSet<_>>()),
            requests: Mutex::new(Vec::new()),
            docker,
            log_dir: log_dir.path().to_owned(),
            node_tx,
            ctl_tx,
            runtimes: Mutex::new(Default::default()),
            cancel: CancellationToken::new(),
            instance,
            cfg: Config::from(cfg),
        });
        let app = api::router(cluster.clone());
        let cancel = cluster.cancel.clone();
        let server = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { cancel.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "the stand-in's API server stopped");
            }
        });
        let node = tokio::spawn(node::run(cluster.clone(), node_rx));
        let controllers = tokio::spawn(controllers::run(cluster.clone(), ctl_rx));
        tracing::info!(%addr, instance = %cluster.instance, "outpost-kube-sim started");
        Ok(KubeSim {
            cluster,
            addr,
            tasks: vec![server, node, controllers],
            _log_dir: log_dir,
            shut_down: false,
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bearer token clients must send.
    pub fn token(&self) -> &str {
        &self.cluster.cfg.token
    }

    /// The label value on everything this stand-in creates on the engine (label
    /// `outpost-kube-sim`).
    pub fn instance_id(&self) -> &str {
        &self.cluster.instance
    }

    /// A kubeconfig naming this stand-in (plain HTTP on loopback, the bearer token).
    pub fn kubeconfig(&self) -> String {
        let ns = self
            .cluster
            .cfg
            .namespaces
            .first()
            .cloned()
            .unwrap_or_else(|| "default".into());
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: outpost-kube-sim\n  cluster:\n    server: \"{}\"\ncontexts:\n- name: outpost-kube-sim\n  context:\n    cluster: outpost-kube-sim\n    user: outpost-kube-sim\n    namespace: \"{ns}\"\ncurrent-context: outpost-kube-sim\nusers:\n- name: outpost-kube-sim\n  user:\n    token: \"{}\"\n",
            self.url(),
            self.token()
        )
    }

    pub fn write_kubeconfig(&self, path: &Path) -> Result<(), SimError> {
        std::fs::write(path, self.kubeconfig()).map_err(|source| SimError::Io {
            path: path.to_owned(),
            source,
        })
    }

    /// Every API request so far, in order.
    pub fn requests(&self) -> Vec<ApiRequest> {
        lock(&self.cluster.requests).clone()
    }

    /// Forgets the requests so far (to count one job's).
    pub fn clear_requests(&self) {
        lock(&self.cluster.requests).clear();
    }

    /// Makes a namespace exist.
    pub fn create_namespace(&self, name: &str) {
        lock(&self.cluster.namespaces).insert(name.to_owned());
    }

    /// The kubelet's eviction of a running pod: its containers are killed, it ends `Failed`
    /// with reason `Evicted` and a `DisruptionTarget` condition.
    pub async fn evict(&self, namespace: &str, pod: &str) -> Result<(), SimError> {
        let (reply, rx) = oneshot::channel();
        self.cluster
            .node_tx
            .send(NodeMsg::Evict {
                namespace: namespace.into(),
                name: pod.into(),
                message: "The node was low on resource: memory. Threshold quantity: 100Mi, available: 0Ki. ".into(),
                reply,
            })
            .map_err(|_| SimError::ShutDown)?;
        rx.await.map_err(|_| SimError::ShutDown)?
    }

    /// The node is lost for good: its containers die, and every pod bound to it is failed
    /// (`DisruptionTarget`, reason `DeletionByPodGC`) and deleted, as the pod garbage collector
    /// does once the node object is gone. New pods stay Pending.
    pub async fn lose_node(&self) -> Result<(), SimError> {
        let (reply, rx) = oneshot::channel();
        self.cluster
            .node_tx
            .send(NodeMsg::LoseNode { reply })
            .map_err(|_| SimError::ShutDown)?;
        rx.await.map_err(|_| SimError::ShutDown)
    }

    /// Stops the API, the node and the controllers, and removes every container and volume
    /// this stand-in created.
    pub async fn shutdown(mut self) {
        self.cluster.cancel.cancel();
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        node::engine::purge(&self.cluster.docker, &self.cluster.instance).await;
        self.shut_down = true;
    }
}

impl Drop for KubeSim {
    fn drop(&mut self) {
        if self.shut_down {
            return;
        }
        self.cluster.cancel.cancel();
        for t in &self.tasks {
            t.abort();
        }
        node::engine::purge_blocking(&self.cluster.instance);
    }
}

/// [`SimConfig`] with the token resolved.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub token: String,
    pub namespaces: Vec<String>,
    pub node_name: String,
    pub allocatable_cpu_millis: u64,
    pub allocatable_memory_bytes: u64,
    pub max_pods: usize,
    pub log_rotation_bytes: u64,
    pub bookmark_interval: Duration,
    pub sandbox_image: String,
    pub network: String,
    pub image_pull_backoff: Duration,
    pub restart_backoff: Duration,
    pub default_storage_class: Option<String>,
}

impl From<SimConfig> for Config {
    fn from(c: SimConfig) -> Self {
        Config {
            token: c.token.unwrap_or_default(),
            namespaces: c.namespaces,
            node_name: c.node_name,
            allocatable_cpu_millis: c.allocatable_cpu_millis,
            allocatable_memory_bytes: c.allocatable_memory_bytes,
            max_pods: c.max_pods,
            log_rotation_bytes: c.log_rotation_bytes,
            bookmark_interval: c.bookmark_interval,
            sandbox_image: c.sandbox_image,
            network: c.network,
            image_pull_backoff: c.image_pull_backoff,
            restart_backoff: c.restart_backoff,
            default_storage_class: c.default_storage_class,
        }
    }
}
