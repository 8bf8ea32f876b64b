//! One pod on the node, as the kubelet runs it on the Docker engine: volumes, a sandbox holding
//! the pod's network namespace, init containers in order, native sidecars kept running (the next
//! container waits for their startup probe), step containers together, then the sidecars
//! stopped; status and events written as the kubelet writes them; termination on deletion,
//! deadline, eviction or node loss.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType};
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, WaitContainerOptions,
};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::engine;
use super::logs::{LogFile, LogStream};
use super::probe;
use crate::cluster::{Cluster, lock};
use crate::meta;
use crate::quantity;
use crate::store::Resource;

/// Why the node stops a pod.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Stop {
    Run,
    /// Graceful deletion with this grace period (seconds).
    Delete {
        grace: i64,
    },
    /// The object is gone (grace 0, or deleted by someone else): kill and clean up.
    Removed,
    /// The kubelet's eviction (hard: no grace).
    Evict {
        message: String,
    },
    /// The node is gone: its containers with it, no more status from this kubelet.
    NodeLost,
}

/// What `pods/log` and `pods/attach` need of a started container.
pub(crate) struct ContainerRt {
    pub docker_id: String,
    pub log: Arc<LogFile>,
    pub exit: watch::Receiver<Option<i64>>,
}

/// The node's view of one pod, shared with the API for logs and attach.
pub(crate) struct PodRuntime {
    /// The current instance of each started container, by name.
    pub containers: Mutex<HashMap<String, Arc<ContainerRt>>>,
}

#[derive(Debug, Clone, PartialEq)]
enum St {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: String,
    },
    Terminated {
        exit_code: i64,
        reason: String,
        message: Option<String>,
        started_at: String,
        finished_at: String,
        container_id: String,
    },
}

impl St {
    fn waiting(reason: &str, message: Option<String>) -> St {
        St::Waiting {
            reason: reason.into(),
            message,
        }
    }

    fn to_json(&self) -> Value {
        match self {
            St::Waiting { reason, message } => {
                let mut w = json!({"reason": reason});
                if let Some(m) = message {
                    w["message"] = json!(m);
                }
                json!({"waiting": w})
            }
            St::Running { started_at } => json!({"running": {"startedAt": started_at}}),
            St::Terminated {
                exit_code,
                reason,
                message,
                started_at,
                finished_at,
                container_id,
            } => {
                let mut t = json!({
                    "exitCode": exit_code,
                    "reason": reason,
                    "startedAt": started_at,
                    "finishedAt": finished_at,
                    "containerID": container_id,
                });
                if let Some(m) = message {
                    t["message"] = json!(m);
                }
                json!({"terminated": t})
            }
        }
    }
}

struct CState {
    name: String,
    init: bool,
    sidecar: bool,
    image: String,
    state: St,
    last: Option<St>,
    restart_count: i32,
    started: bool,
    ready: bool,
    image_id: String,
    container_id: String,
}

struct PodState {
    phase: &'static str,
    reason: Option<String>,
    message: Option<String>,
    start_time: String,
    pod_ip: Option<String>,
    host_ip: Option<String>,
    sandbox_ready: bool,
    initialized: bool,
    disruption: Option<(String, String)>,
    transitions: HashMap<&'static str, (bool, String)>,
    containers: Vec<CState>,
    qos: String,
}

/// How a termination ends the pod's status.
enum Ending {
    Deleted,
    Deadline,
    Evicted(String),
}

pub(crate) struct Worker {
    cluster: Arc<Cluster>,
    pod: Pod,
    ns: String,
    name: String,
    uid: String,
    /// Init containers first, then the main ones, as `PodState::containers`.
    specs: Vec<(Container, bool)>,
    rt: Arc<PodRuntime>,
    state: Mutex<PodState>,
    stop: watch::Receiver<Stop>,
    sandbox: Mutex<Option<String>>,
    /// Volume name → Docker volume name, and read-only.
    volumes: Mutex<HashMap<String, (String, bool)>>,
    /// The log forwarders; they outlive an aborted lifecycle so that output written while a
    /// container is being stopped is still logged.
    log_tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    exit_txs: Mutex<HashMap<String, watch::Sender<Option<i64>>>>,
    sidecars_stopping: std::sync::atomic::AtomicBool,
}

fn field_path(c: &CState) -> String {
    if c.init {
        format!("spec.initContainers{{{}}}", c.name)
    } else {
        format!("spec.containers{{{}}}", c.name)
    }
}

async fn sleep_or_forever(d: Option<Instant>) {
    match d {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn next_stop(rx: &mut watch::Receiver<Stop>) -> Stop {
    loop {
        let cur = rx.borrow_and_update().clone();
        if cur != Stop::Run {
            return cur;
        }
        if rx.changed().await.is_err() {
            return Stop::Removed;
        }
    }
}

impl Worker {
    pub fn new(
        cluster: Arc<Cluster>,
        obj: &Value,
        stop: watch::Receiver<Stop>,
    ) -> Option<Arc<Worker>> {
        let pod: Pod = serde_json::from_value(obj.clone()).ok()?;
        let spec = pod.spec.clone()?;
        let ns = pod.metadata.namespace.clone()?;
        let name = pod.metadata.name.clone()?;
        let uid = pod.metadata.uid.clone()?;
        let specs: Vec<(Container, bool)> = spec
            .init_containers
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|c| (c, true))
            .chain(spec.containers.iter().cloned().map(|c| (c, false)))
            .collect();
        let containers = specs
            .iter()
            .map(|(c, init)| CState {
                name: c.name.clone(),
                init: *init,
                sidecar: *init && c.restart_policy.as_deref() == Some("Always"),
                image: c.image.clone().unwrap_or_default(),
                state: St::waiting("ContainerCreating", None),
                last: None,
                restart_count: 0,
                started: false,
                ready: false,
                image_id: String::new(),
                container_id: String::new(),
            })
            .collect();
        let qos = obj
            .pointer("/status/qosClass")
            .and_then(Value::as_str)
            .unwrap_or("BestEffort")
            .to_owned();
        Some(Arc::new(Worker {
            cluster,
            pod,
            ns,
            name,
            uid,
            specs,
            rt: Arc::new(PodRuntime {
                containers: Mutex::new(HashMap::new()),
            }),
            state: Mutex::new(PodState {
                phase: "Pending",
                reason: None,
                message: None,
                start_time: meta::now(),
                pod_ip: None,
                host_ip: None,
                sandbox_ready: false,
                initialized: false,
                disruption: None,
                transitions: HashMap::new(),
                containers,
                qos,
            }),
            stop,
            sandbox: Mutex::new(None),
            volumes: Mutex::new(HashMap::new()),
            log_tasks: Mutex::new(Vec::new()),
            exit_txs: Mutex::new(HashMap::new()),
            sidecars_stopping: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    pub fn uid(&self) -> &str {
        &self.uid
    }

    pub fn runtime(&self) -> Arc<PodRuntime> {
        self.rt.clone()
    }

    fn spec(&self) -> &k8s_openapi::api::core::v1::PodSpec {
        self.pod
            .spec
            .as_ref()
            .expect("a worker is only made for a pod with a spec")
    }

    fn grace(&self) -> i64 {
        self.spec().termination_grace_period_seconds.unwrap_or(30)
    }

    /// The whole life: run, then terminate when asked (or at the deadline), then wait for the
    /// deletion and clean up.
    pub async fn run(self: Arc<Self>) {
        self.publish();
        let deadline = self
            .spec()
            .active_deadline_seconds
            .map(|s| Instant::now() + Duration::from_secs(u64::try_from(s).unwrap_or(0)));
        let mut stop = self.stop.clone();
        let mut life = Box::pin(self.clone().lifecycle());
        let interrupted = tokio::select! {
            () = &mut life => None,
            s = next_stop(&mut stop) => Some(s),
            () = sleep_or_forever(deadline) => Some(Stop::Run),
        };
        // Dropping the lifecycle aborts its container tasks; the containers are stopped below.
        drop(life);
        match interrupted {
            None => {}
            Some(Stop::Run) => {
                self.event(
                    None,
                    "Normal",
                    "DeadlineExceeded",
                    "Pod was active on the node longer than the specified deadline",
                );
                self.terminate(self.grace(), Ending::Deadline).await;
            }
            Some(Stop::Delete { grace }) => self.terminate(grace, Ending::Deleted).await,
            Some(Stop::Evict { message }) => {
                self.event(None, "Warning", "Evicted", &message);
                self.terminate(0, Ending::Evicted(message)).await;
            }
            Some(Stop::Removed | Stop::NodeLost) => {}
        }
        // Terminal (or gone): wait for the deletion, then clean up.
        loop {
            let s = next_stop(&mut stop).await;
            match s {
                Stop::Delete { grace } => {
                    // A running pod being deleted got its termination above; this is a
                    // terminal pod's deletion, or a second, shorter one.
                    if !self.terminal() {
                        self.terminate(grace, Ending::Deleted).await;
                    }
                    self.cleanup().await;
                    self.cluster
                        .finish_pod_deletion(&self.ns, &self.name, &self.uid);
                    return;
                }
                Stop::Removed | Stop::NodeLost => {
                    self.cleanup().await;
                    return;
                }
                Stop::Evict { .. } | Stop::Run => {
                    if stop.changed().await.is_err() {
                        self.cleanup().await;
                        return;
                    }
                }
            }
        }
    }

    fn terminal(&self) -> bool {
        matches!(lock(&self.state).phase, "Succeeded" | "Failed")
    }

    async fn lifecycle(self: Arc<Self>) {
        self.prepare().await;
        let mut sidecars: JoinSet<()> = JoinSet::new();
        let n_init = self.specs.iter().filter(|(_, init)| *init).count();
        for idx in 0..n_init {
            let sidecar = lock(&self.state).containers[idx].sidecar;
            if sidecar {
                let (tx, mut rx) = watch::channel(false);
                sidecars.spawn(self.clone().supervise_sidecar(idx, tx));
                while !*rx.borrow_and_update() {
                    if rx.changed().await.is_err() {
                        return;
                    }
                }
            } else {
                let code = self.clone().run_to_exit(idx).await;
                if code != 0 {
                    self.stop_sidecars().await;
                    self.finish("Failed");
                    return;
                }
            }
        }
        {
            let mut s = lock(&self.state);
            s.initialized = true;
            for c in s.containers.iter_mut().filter(|c| !c.init) {
                c.state = St::waiting("ContainerCreating", None);
            }
        }
        self.publish();
        let mut mains = JoinSet::new();
        for idx in n_init..self.specs.len() {
            mains.spawn(self.clone().run_to_exit(idx));
        }
        let mut all_zero = true;
        while let Some(code) = mains.join_next().await {
            all_zero &= code.unwrap_or(-1) == 0;
        }
        self.stop_sidecars().await;
        drop(sidecars);
        self.finish(if all_zero { "Succeeded" } else { "Failed" });
    }

    fn finish(&self, phase: &'static str) {
        lock(&self.state).phase = phase;
        self.publish();
        self.stop_sandbox();
    }

    fn stop_sandbox(&self) {
        lock(&self.state).sandbox_ready = false;
        self.publish();
        if let Some(id) = lock(&self.sandbox).clone() {
            let docker = self.cluster.docker.clone();
            tokio::spawn(async move { engine::stop(&docker, &id, 0).await });
        }
    }

    /// Claims, Docker volumes, the sandbox; retried until they work (or the pod is stopped).
    async fn prepare(&self) {
        let mut backoff = Duration::from_millis(500);
        loop {
            match self.volumes_ready() {
                Ok(()) => break,
                Err(msg) => {
                    self.event(None, "Warning", "FailedMount", &msg);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(8));
                }
            }
        }
        let docker = &self.cluster.docker;
        let instance = &self.cluster.instance;
        let mut mounts = HashMap::new();
        for v in self.spec().volumes.iter().flatten() {
            let (docker_name, memory, read_only, claim_uid) = if let Some(e) = &v.empty_dir {
                let memory = (e.medium.as_deref() == Some("Memory"))
                    .then(|| e.size_limit.as_ref().and_then(|q| quantity::bytes(&q.0)));
                (
                    engine::empty_dir_volume(instance, &self.uid, &v.name),
                    memory,
                    false,
                    None,
                )
            } else if v.persistent_volume_claim.is_some() || v.ephemeral.is_some() {
                let claim = self.claim_name(v);
                let obj =
                    self.cluster
                        .store()
                        .get(Resource::PersistentVolumeClaims, &self.ns, &claim);
                let cuid = obj
                    .and_then(|o| o["metadata"]["uid"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                let ro = v
                    .persistent_volume_claim
                    .as_ref()
                    .and_then(|p| p.read_only)
                    .unwrap_or(false);
                (engine::claim_volume(instance, &cuid), None, ro, Some(cuid))
            } else {
                let msg = format!(
                    "MountVolume.SetUp failed for volume {:?} : this volume type is not supported by outpost-kube-sim",
                    v.name
                );
                self.event(None, "Warning", "FailedMount", &msg);
                std::future::pending::<()>().await;
                return;
            };
            let labels = match &claim_uid {
                Some(c) => engine::labels(instance, &[("claim-uid", c)]),
                None => engine::labels(instance, &[("pod-uid", &self.uid)]),
            };
            let mut backoff = Duration::from_millis(500);
            while let Err(e) =
                engine::create_volume(docker, &docker_name, labels.clone(), memory).await
            {
                self.event(
                    None,
                    "Warning",
                    "FailedMount",
                    &format!(
                        "MountVolume.SetUp failed for volume {:?} : {}",
                        v.name,
                        engine::message_of(&e)
                    ),
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(8));
            }
            mounts.insert(v.name.clone(), (docker_name, read_only));
        }
        *lock(&self.volumes) = mounts;
        let mut backoff = Duration::from_millis(500);
        loop {
            match self.create_sandbox().await {
                Ok(()) => break,
                Err(msg) => {
                    self.event(
                        None,
                        "Warning",
                        "FailedCreatePodSandBox",
                        &format!("Failed to create pod sandbox: {msg}"),
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(8));
                }
            }
        }
        {
            let mut s = lock(&self.state);
            s.sandbox_ready = true;
            let any_init = s.containers.iter().any(|c| c.init);
            for c in s.containers.iter_mut() {
                if matches!(c.state, St::Waiting { .. }) && (c.init || any_init) {
                    c.state = St::waiting("PodInitializing", None);
                }
            }
        }
        self.publish();
    }

    fn claim_name(&self, v: &k8s_openapi::api::core::v1::Volume) -> String {
        match &v.persistent_volume_claim {
            Some(p) => p.claim_name.clone(),
            None => format!("{}-{}", self.name, v.name),
        }
    }

    fn volumes_ready(&self) -> Result<(), String> {
        for v in self.spec().volumes.iter().flatten() {
            if v.persistent_volume_claim.is_none() && v.ephemeral.is_none() {
                continue;
            }
            let claim = self.claim_name(v);
            let Some(obj) =
                self.cluster
                    .store()
                    .get(Resource::PersistentVolumeClaims, &self.ns, &claim)
            else {
                return Err(format!(
                    "Unable to attach or mount volumes: unmounted volumes=[{}]: persistentvolumeclaim {claim:?} not found",
                    v.name
                ));
            };
            if v.ephemeral.is_some() {
                let owned = obj
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .is_some_and(|r| {
                        r.iter()
                            .any(|o| o["uid"].as_str() == Some(self.uid.as_str()))
                    });
                if !owned {
                    return Err(format!(
                        "PVC {}/{claim} was not created for pod {}/{} (pod is not owner)",
                        self.ns, self.ns, self.name
                    ));
                }
            }
            if obj.pointer("/metadata/deletionTimestamp").is_some() {
                return Err(format!("persistentvolumeclaim {claim:?} is being deleted"));
            }
            if obj.pointer("/status/phase").and_then(Value::as_str) != Some("Bound") {
                return Err(format!("persistentvolumeclaim {claim:?} is not bound"));
            }
        }
        Ok(())
    }

    async fn create_sandbox(&self) -> Result<(), String> {
        let docker = &self.cluster.docker;
        let cfg = &self.cluster.cfg;
        let spec = self.spec();
        let name = engine::container_name(
            &self.cluster.instance,
            "POD",
            &self.name,
            &self.ns,
            &self.uid,
            0,
        );
        let hostname: String = spec
            .hostname
            .clone()
            .unwrap_or_else(|| self.name.clone())
            .chars()
            .take(63)
            .collect();
        let hostname = hostname.trim_end_matches(['-', '.']).to_owned();
        let extra_hosts: Vec<String> = spec
            .host_aliases
            .iter()
            .flatten()
            .flat_map(|h| {
                h.hostnames
                    .iter()
                    .flatten()
                    .map(|n| format!("{n}:{}", h.ip))
                    .collect::<Vec<_>>()
            })
            .collect();
        let body = ContainerCreateBody {
            image: Some(cfg.sandbox_image.clone()),
            entrypoint: Some(vec!["sleep".into()]),
            cmd: Some(vec!["2147483647".into()]),
            hostname: Some(hostname),
            labels: Some(engine::labels(
                &self.cluster.instance,
                &[
                    ("pod-uid", &self.uid),
                    ("role", "sandbox"),
                    ("pod", &self.name),
                    ("namespace", &self.ns),
                ],
            )),
            host_config: Some(HostConfig {
                network_mode: Some(cfg.network.clone()),
                extra_hosts: Some(extra_hosts),
                ipc_mode: Some("shareable".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        engine::force_remove(docker, &name).await;
        let created = docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.clone()),
                    ..Default::default()
                }),
                body,
            )
            .await
            .map_err(|e| engine::message_of(&e))?;
        *lock(&self.sandbox) = Some(created.id.clone());
        docker
            .start_container(
                &created.id,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
            .map_err(|e| engine::message_of(&e))?;
        let inspected = docker
            .inspect_container(
                &created.id,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .map_err(|e| engine::message_of(&e))?;
        let net = inspected
            .network_settings
            .and_then(|n| n.networks)
            .and_then(|n| n.get(&cfg.network).cloned());
        let ip = net
            .as_ref()
            .and_then(|n| n.ip_address.clone())
            .filter(|s| !s.is_empty());
        let gw = net.and_then(|n| n.gateway).filter(|s| !s.is_empty());
        let mut s = lock(&self.state);
        s.pod_ip = Some(ip.unwrap_or_else(|| "127.0.0.1".into()));
        s.host_ip = Some(gw.unwrap_or_else(|| "127.0.0.1".into()));
        Ok(())
    }

    /// Starts a container and waits for its exit; the exit code (-1 when it could not start).
    async fn run_to_exit(self: Arc<Self>, idx: usize) -> i64 {
        let Some(h) = self.start_container(idx).await else {
            return -1;
        };
        let probes = self.clone().probes(idx, h.clone(), None);
        tokio::pin!(probes);
        let exit = self.wait_exit(idx, &h);
        tokio::pin!(exit);
        tokio::select! {
            code = &mut exit => code,
            started = &mut probes => {
                if !started {
                    // A failed startup probe kills the container; with restartPolicy Never
                    // that is its end.
                    engine::stop(&self.cluster.docker, &h.docker_id, self.grace()).await;
                }
                exit.await
            }
        }
    }

    /// A native sidecar: started, kept running (restarted with back-off when it exits), and
    /// `started` set once its startup probe passed.
    async fn supervise_sidecar(self: Arc<Self>, idx: usize, started: watch::Sender<bool>) {
        let started = Arc::new(started);
        let mut backoff = self.cluster.cfg.restart_backoff;
        loop {
            let Some(h) = self.start_container(idx).await else {
                return;
            };
            let probes = self.clone().probes(idx, h.clone(), Some(started.clone()));
            tokio::pin!(probes);
            let exit = self.wait_exit(idx, &h);
            tokio::pin!(exit);
            let mut probing = true;
            loop {
                tokio::select! {
                    _ = &mut exit => break,
                    ok = &mut probes, if probing => {
                        probing = false;
                        if !ok {
                            engine::stop(&self.cluster.docker, &h.docker_id, self.grace()).await;
                        }
                    }
                }
            }
            if self
                .sidecars_stopping
                .load(std::sync::atomic::Ordering::SeqCst)
            {
                return;
            }
            let msg = {
                let mut s = lock(&self.state);
                let c = &mut s.containers[idx];
                let last = c.state.clone();
                c.last = Some(last);
                c.restart_count += 1;
                c.started = false;
                c.ready = false;
                let msg = format!(
                    "back-off {}s restarting failed container={} pod={}_{}({})",
                    backoff.as_secs(),
                    c.name,
                    self.name,
                    self.ns,
                    self.uid
                );
                c.state = St::waiting("CrashLoopBackOff", Some(msg));
                format!(
                    "Back-off restarting failed container {} in pod {}_{}({})",
                    c.name, self.name, self.ns, self.uid
                )
            };
            self.publish();
            self.event(Some(idx), "Warning", "BackOff", &msg);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(300));
        }
    }

    /// Startup then readiness probing. Returns `false` when the startup probe failed (the
    /// caller kills the container); otherwise runs as long as the container does.
    async fn probes(
        self: Arc<Self>,
        idx: usize,
        h: Arc<ContainerRt>,
        on_started: Option<Arc<watch::Sender<bool>>>,
    ) -> bool {
        let c = self.specs[idx].0.clone();
        let sandbox = lock(&self.sandbox).clone().unwrap_or_default();
        let ports = c.ports.clone().unwrap_or_default();
        if let Some(p) = &c.startup_probe
            && !self
                .probe_until(idx, p, &h, &sandbox, &ports, "Startup")
                .await
        {
            let name = c.name.clone();
            self.event(
                Some(idx),
                "Normal",
                "Killing",
                &format!("Container {name} failed startup probe, will be restarted"),
            );
            return false;
        }
        {
            let mut s = lock(&self.state);
            s.containers[idx].started = true;
            if c.readiness_probe.is_none() {
                s.containers[idx].ready = true;
            }
        }
        self.publish();
        if let Some(tx) = on_started {
            let _ = tx.send(true);
        }
        let Some(p) = &c.readiness_probe else {
            std::future::pending::<()>().await;
            return true;
        };
        tokio::time::sleep(secs(p.initial_delay_seconds.unwrap_or(0))).await;
        loop {
            let ok = matches!(
                probe::run(&self.cluster.docker, p, &h.docker_id, &sandbox, &ports).await,
                probe::Outcome::Success
            );
            let changed = {
                let mut s = lock(&self.state);
                let was = s.containers[idx].ready;
                s.containers[idx].ready = ok;
                was != ok
            };
            if changed {
                self.publish();
            }
            tokio::time::sleep(secs(p.period_seconds.unwrap_or(10))).await;
        }
    }

    /// Runs `p` until it succeeds (`true`) or fails `failureThreshold` times in a row.
    async fn probe_until(
        &self,
        idx: usize,
        p: &Probe,
        h: &ContainerRt,
        sandbox: &str,
        ports: &[k8s_openapi::api::core::v1::ContainerPort],
        kind: &str,
    ) -> bool {
        tokio::time::sleep(secs(p.initial_delay_seconds.unwrap_or(0))).await;
        let threshold = p.failure_threshold.unwrap_or(3).max(1);
        let mut failures = 0;
        loop {
            match probe::run(&self.cluster.docker, p, &h.docker_id, sandbox, ports).await {
                probe::Outcome::Success => return true,
                probe::Outcome::Failure(msg) => {
                    failures += 1;
                    self.event(
                        Some(idx),
                        "Warning",
                        "Unhealthy",
                        &format!("{kind} probe failed: {msg}"),
                    );
                    if failures >= threshold {
                        return false;
                    }
                }
            }
            tokio::time::sleep(secs(p.period_seconds.unwrap_or(10))).await;
        }
    }

    fn set_state(&self, idx: usize, st: St) {
        lock(&self.state).containers[idx].state = st;
        self.publish();
    }

    /// Image, environment, create, attach for output, start. Retries what the kubelet retries;
    /// `None` when the container could not start (its status says why).
    async fn start_container(&self, idx: usize) -> Option<Arc<ContainerRt>> {
        let (c, _) = self.specs[idx].clone();
        self.ensure_image(idx, &c).await;
        let mut backoff = Duration::from_millis(500);
        let env = loop {
            match self.resolve_env(&c) {
                Ok(env) => break env,
                Err(msg) => {
                    self.set_state(
                        idx,
                        St::waiting("CreateContainerConfigError", Some(msg.clone())),
                    );
                    self.event(Some(idx), "Warning", "Failed", &format!("Error: {msg}"));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        };
        if c.volume_mounts
            .iter()
            .flatten()
            .any(|m| m.sub_path.is_some() || m.sub_path_expr.is_some())
        {
            let msg = "subPath is not supported by outpost-kube-sim".to_owned();
            self.set_state(
                idx,
                St::waiting("CreateContainerConfigError", Some(msg.clone())),
            );
            self.event(Some(idx), "Warning", "Failed", &format!("Error: {msg}"));
            std::future::pending::<()>().await;
        }
        let docker = &self.cluster.docker;
        let attempt = lock(&self.state).containers[idx].restart_count;
        let dname = engine::container_name(
            &self.cluster.instance,
            &c.name,
            &self.name,
            &self.ns,
            &self.uid,
            attempt,
        );
        let body = self.container_body(&c, env);
        let mut backoff = Duration::from_millis(500);
        let id = loop {
            engine::force_remove(docker, &dname).await;
            match docker
                .create_container(
                    Some(CreateContainerOptions {
                        name: Some(dname.clone()),
                        ..Default::default()
                    }),
                    body.clone(),
                )
                .await
            {
                Ok(r) => break r.id,
                Err(e) => {
                    let msg = engine::message_of(&e);
                    self.set_state(idx, St::waiting("CreateContainerError", Some(msg.clone())));
                    self.event(Some(idx), "Warning", "Failed", &format!("Error: {msg}"));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        };
        self.event(
            Some(idx),
            "Normal",
            "Created",
            &format!("Created container: {}", c.name),
        );
        let dir = self
            .cluster
            .log_dir
            .join(format!("{}_{}_{}", self.ns, self.name, self.uid))
            .join(&c.name)
            .join(attempt.to_string());
        let log = match LogFile::create(&dir, self.cluster.cfg.log_rotation_bytes) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot create a container log");
                return None;
            }
        };
        // Attached before the start, so that no output is missed.
        let attached = docker
            .attach_container(
                &id,
                Some(AttachContainerOptions {
                    stream: true,
                    stdout: true,
                    stderr: true,
                    ..Default::default()
                }),
            )
            .await;
        let (tx, writer) = log.writer();
        match attached {
            Ok(a) => {
                let mut output = a.output;
                let forward = tokio::spawn(async move {
                    while let Some(frame) = output.next().await {
                        let (stream, data) = match frame {
                            Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                                (LogStream::Stdout, message)
                            }
                            Ok(LogOutput::StdErr { message }) => (LogStream::Stderr, message),
                            Ok(LogOutput::StdIn { .. }) => continue,
                            Err(_) => break,
                        };
                        if tx.send((stream, data)).is_err() {
                            break;
                        }
                    }
                    drop(tx);
                    let _ = writer.await;
                });
                lock(&self.log_tasks).push(forward);
            }
            Err(e) => {
                tracing::warn!(container = %dname, error = %engine::message_of(&e), "cannot attach for logs");
                drop(tx);
            }
        }
        let (exit_tx, exit_rx) = watch::channel(None);
        lock(&self.exit_txs).insert(c.name.clone(), exit_tx);
        let rt = Arc::new(ContainerRt {
            docker_id: id.clone(),
            log,
            exit: exit_rx,
        });
        lock(&self.rt.containers).insert(c.name.clone(), rt.clone());
        if let Err(e) = docker
            .start_container(
                &id,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
        {
            let msg = engine::message_of(&e);
            let now = meta::now();
            self.set_state(
                idx,
                St::Terminated {
                    exit_code: 128,
                    reason: "StartError".into(),
                    message: Some(msg.clone()),
                    started_at: now.clone(),
                    finished_at: now,
                    container_id: format!("docker://{id}"),
                },
            );
            self.event(Some(idx), "Warning", "Failed", &format!("Error: {msg}"));
            if let Some(tx) = lock(&self.exit_txs).get(&c.name) {
                let _ = tx.send(Some(128));
            }
            return None;
        }
        let started_at = match docker
            .inspect_container(
                &id,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
        {
            Ok(i) => i
                .state
                .and_then(|s| s.started_at)
                .and_then(|t| meta::parse_time(&t))
                .map(meta::time)
                .unwrap_or_else(meta::now),
            Err(_) => meta::now(),
        };
        let image_id = engine::image_id(docker, &c.image.clone().unwrap_or_default()).await;
        {
            let mut s = lock(&self.state);
            let cs = &mut s.containers[idx];
            cs.state = St::Running { started_at };
            cs.container_id = format!("docker://{id}");
            cs.image_id = image_id;
        }
        self.publish();
        self.event(
            Some(idx),
            "Normal",
            "Started",
            &format!("Started container {}", c.name),
        );
        Some(rt)
    }

    /// Waits for the image to be on the engine, reporting pull failures and back-off as a
    /// kubelet does. Never pulls.
    async fn ensure_image(&self, idx: usize, c: &Container) {
        let image = c.image.clone().unwrap_or_default();
        if !engine::valid_reference(&image) {
            let msg = format!(
                "Failed to apply default image tag {image:?}: couldn't parse image name {image:?}: invalid reference format"
            );
            self.set_state(idx, St::waiting("InvalidImageName", Some(msg.clone())));
            self.event(Some(idx), "Warning", "InspectFailed", &msg);
            self.event(Some(idx), "Warning", "Failed", "Error: InvalidImageName");
            std::future::pending::<()>().await;
        }
        let never = c.image_pull_policy.as_deref() == Some("Never");
        let mut backoff = self.cluster.cfg.image_pull_backoff;
        loop {
            match engine::image_present(&self.cluster.docker, &image).await {
                Ok(true) => {
                    self.event(
                        Some(idx),
                        "Normal",
                        "Pulled",
                        &format!("Container image {image:?} already present on machine"),
                    );
                    return;
                }
                Ok(false) if never => {
                    let msg = format!(
                        "Container image {image:?} is not present with pull policy of Never"
                    );
                    self.set_state(idx, St::waiting("ErrImageNeverPull", Some(msg.clone())));
                    self.event(Some(idx), "Warning", "ErrImageNeverPull", &msg);
                    tokio::time::sleep(backoff).await;
                }
                found => {
                    let why = match found {
                        Err(e) => e,
                        _ => format!(
                            "rpc error: code = NotFound desc = failed to pull and unpack image {image:?}: not found (outpost-kube-sim never pulls: build the image on the engine)"
                        ),
                    };
                    self.event(
                        Some(idx),
                        "Normal",
                        "Pulling",
                        &format!("Pulling image {image:?}"),
                    );
                    self.event(
                        Some(idx),
                        "Warning",
                        "Failed",
                        &format!("Failed to pull image {image:?}: {why}"),
                    );
                    self.event(Some(idx), "Warning", "Failed", "Error: ErrImagePull");
                    self.set_state(idx, St::waiting("ErrImagePull", Some(why.clone())));
                    tokio::time::sleep(backoff.min(Duration::from_secs(1))).await;
                    let msg = format!("Back-off pulling image {image:?}: ErrImagePull: {why}");
                    self.set_state(idx, St::waiting("ImagePullBackOff", Some(msg)));
                    self.event(
                        Some(idx),
                        "Normal",
                        "BackOff",
                        &format!("Back-off pulling image {image:?}"),
                    );
                    self.event(Some(idx), "Warning", "Failed", "Error: ImagePullBackOff");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(300));
                }
            }
        }
    }

    /// The container's environment: `envFrom`, then `env` (later wins), with `$(VAR)`
    /// references expanded against what came before.
    fn resolve_env(&self, c: &Container) -> Result<Vec<String>, String> {
        let mut vars: Vec<(String, String)> = Vec::new();
        let set = |vars: &mut Vec<(String, String)>, k: String, v: String| {
            if let Some(e) = vars.iter_mut().find(|(n, _)| *n == k) {
                e.1 = v;
            } else {
                vars.push((k, v));
            }
        };
        for from in c.env_from.iter().flatten() {
            let prefix = from.prefix.clone().unwrap_or_default();
            if let Some(s) = &from.secret_ref {
                match self.secret_data(&s.name) {
                    Some(data) => {
                        for (k, v) in data {
                            set(&mut vars, format!("{prefix}{k}"), v);
                        }
                    }
                    None if s.optional == Some(true) => {}
                    None => return Err(format!("secret {:?} not found", s.name)),
                }
            }
            if let Some(cm) = &from.config_map_ref
                && cm.optional != Some(true)
            {
                return Err(format!("configmap {:?} not found", cm.name));
            }
        }
        for e in c.env.iter().flatten() {
            let value = match &e.value_from {
                None => expand(e.value.as_deref().unwrap_or(""), &vars),
                Some(from) => {
                    if let Some(s) = &from.secret_key_ref {
                        match self.secret_data(&s.name) {
                            None if s.optional == Some(true) => continue,
                            None => return Err(format!("secret {:?} not found", s.name)),
                            Some(data) => match data.get(&s.key) {
                                Some(v) => v.clone(),
                                None if s.optional == Some(true) => continue,
                                None => {
                                    return Err(format!(
                                        "couldn't find key {} in Secret {}/{}",
                                        s.key, self.ns, s.name
                                    ));
                                }
                            },
                        }
                    } else if let Some(f) = &from.field_ref {
                        self.field_value(&f.field_path)
                    } else if let Some(r) = &from.resource_field_ref {
                        self.resource_value(c, &r.resource)
                    } else if let Some(cm) = &from.config_map_key_ref {
                        if cm.optional == Some(true) {
                            continue;
                        }
                        return Err(format!("configmap {:?} not found", cm.name));
                    } else {
                        String::new()
                    }
                }
            };
            set(&mut vars, e.name.clone(), value);
        }
        Ok(vars.into_iter().map(|(k, v)| format!("{k}={v}")).collect())
    }

    fn secret_data(&self, name: &str) -> Option<BTreeMap<String, String>> {
        let obj = self
            .cluster
            .store()
            .get(Resource::Secrets, &self.ns, name)?;
        let mut out = BTreeMap::new();
        for (k, v) in obj
            .get("data")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            use base64::Engine as _;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v.as_str().unwrap_or(""))
                .unwrap_or_default();
            out.insert(k.clone(), String::from_utf8_lossy(&bytes).into_owned());
        }
        Some(out)
    }

    fn field_value(&self, path: &str) -> String {
        let obj = self
            .cluster
            .store()
            .get(Resource::Pods, &self.ns, &self.name);
        let Some(obj) = obj else { return String::new() };
        let s = lock(&self.state);
        let from_map = |m: &str, p: &str| -> Option<String> {
            let key = p
                .strip_prefix(&format!("metadata.{m}['"))?
                .strip_suffix("']")?;
            obj.pointer(&format!("/metadata/{m}"))?
                .get(key)?
                .as_str()
                .map(str::to_owned)
        };
        match path {
            "metadata.name" => self.name.clone(),
            "metadata.namespace" => self.ns.clone(),
            "metadata.uid" => self.uid.clone(),
            "spec.nodeName" => self.cluster.cfg.node_name.clone(),
            "spec.serviceAccountName" => {
                self.spec().service_account_name.clone().unwrap_or_default()
            }
            "status.podIP" | "status.podIPs" => s.pod_ip.clone().unwrap_or_default(),
            "status.hostIP" | "status.hostIPs" => s.host_ip.clone().unwrap_or_default(),
            p => from_map("labels", p)
                .or_else(|| from_map("annotations", p))
                .unwrap_or_default(),
        }
    }

    fn resource_value(&self, c: &Container, resource: &str) -> String {
        let (kind, name) = resource.split_once('.').unwrap_or(("limits", resource));
        let r = c.resources.as_ref();
        let map = if kind == "requests" {
            r.and_then(|r| r.requests.as_ref())
        } else {
            r.and_then(|r| r.limits.as_ref())
        };
        let q = map.and_then(|m| m.get(name)).map(|q| q.0.clone());
        match name {
            "cpu" => {
                let m = q
                    .as_deref()
                    .and_then(quantity::millis)
                    .unwrap_or(self.cluster.cfg.allocatable_cpu_millis);
                m.div_ceil(1000).max(1).to_string()
            }
            "memory" => q
                .as_deref()
                .and_then(quantity::bytes)
                .unwrap_or(self.cluster.cfg.allocatable_memory_bytes)
                .to_string(),
            _ => q.unwrap_or_default(),
        }
    }

    fn container_body(&self, c: &Container, env: Vec<String>) -> ContainerCreateBody {
        let vars: Vec<(String, String)> = env
            .iter()
            .filter_map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
            })
            .collect();
        let spec = self.spec();
        let sandbox = lock(&self.sandbox).clone().unwrap_or_default();
        let volumes = lock(&self.volumes).clone();
        let mut mounts: Vec<Mount> = c
            .volume_mounts
            .iter()
            .flatten()
            .filter_map(|m| {
                let (source, ro) = volumes.get(&m.name)?.clone();
                Some(Mount {
                    target: Some(m.mount_path.clone()),
                    source: Some(source),
                    typ: Some(MountType::VOLUME),
                    read_only: Some(m.read_only.unwrap_or(false) || ro),
                    ..Default::default()
                })
            })
            .collect();
        // As the kubelet does: a file of the node bind-mounted at terminationMessagePath, read
        // into `state.terminated.message` when the container ends.
        if let Some(file) = self.termination_file(c) {
            mounts.push(Mount {
                target: Some(termination_path(c)),
                source: Some(file.display().to_string()),
                typ: Some(MountType::BIND),
                read_only: Some(false),
                ..Default::default()
            });
        }
        let limits = c.resources.as_ref().and_then(|r| r.limits.as_ref());
        let requests = c.resources.as_ref().and_then(|r| r.requests.as_ref());
        let memory = limits
            .and_then(|l| l.get("memory"))
            .and_then(|q| quantity::bytes(&q.0))
            .and_then(|b| i64::try_from(b).ok());
        let nano_cpus = limits
            .and_then(|l| l.get("cpu"))
            .and_then(|q| quantity::millis(&q.0))
            .and_then(|m| i64::try_from(m * 1_000_000).ok());
        let cpu_shares = requests
            .and_then(|l| l.get("cpu"))
            .and_then(|q| quantity::millis(&q.0))
            .map(|m| i64::try_from((m * 1024 / 1000).max(2)).unwrap_or(2));
        let sc = c.security_context.clone().unwrap_or_default();
        let psc = spec.security_context.clone().unwrap_or_default();
        let uid = sc.run_as_user.or(psc.run_as_user);
        let gid = sc.run_as_group.or(psc.run_as_group);
        let user = uid.map(|u| match gid {
            Some(g) => format!("{u}:{g}"),
            None => u.to_string(),
        });
        let caps = sc.capabilities.clone().unwrap_or_default();
        let shared = |mode: &str| Some(format!("{mode}:{sandbox}"));
        let stdin = c.stdin.unwrap_or(false);
        ContainerCreateBody {
            image: c.image.clone(),
            entrypoint: c
                .command
                .as_ref()
                .map(|v| v.iter().map(|a| expand(a, &vars)).collect()),
            cmd: c
                .args
                .as_ref()
                .map(|v| v.iter().map(|a| expand(a, &vars)).collect()),
            env: Some(env),
            working_dir: c.working_dir.clone(),
            user,
            tty: Some(c.tty.unwrap_or(false)),
            open_stdin: Some(stdin),
            stdin_once: Some(c.stdin_once.unwrap_or(false)),
            attach_stdin: Some(stdin),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            labels: Some(engine::labels(
                &self.cluster.instance,
                &[
                    ("pod-uid", &self.uid),
                    ("container", &c.name),
                    ("pod", &self.name),
                    ("namespace", &self.ns),
                ],
            )),
            host_config: Some(HostConfig {
                network_mode: shared("container"),
                ipc_mode: shared("container"),
                pid_mode: if spec.share_process_namespace == Some(true) {
                    shared("container")
                } else {
                    None
                },
                mounts: Some(mounts),
                memory,
                memory_swap: memory,
                nano_cpus,
                cpu_shares,
                privileged: sc.privileged,
                readonly_rootfs: sc.read_only_root_filesystem,
                cap_add: caps.add,
                cap_drop: caps.drop,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The node's file behind container `c`'s termination message, made empty and writable by
    /// any user; `None` when it cannot be made (the container then has no message).
    fn termination_file(&self, c: &Container) -> Option<std::path::PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let dir = self
            .cluster
            .log_dir
            .join(format!("{}_{}_{}", self.ns, self.name, self.uid))
            .join(&c.name);
        let file = dir.join("termination-log");
        let made = std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(&file, b""))
            .and_then(|()| std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)));
        match made {
            Ok(()) => Some(file),
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "cannot make a termination message file");
                None
            }
        }
    }

    /// What container `name` wrote to its termination message file (at most 4096 bytes, as
    /// the kubelet keeps), if anything.
    fn termination_message(&self, name: &str) -> Option<String> {
        let file = self
            .cluster
            .log_dir
            .join(format!("{}_{}_{}", self.ns, self.name, self.uid))
            .join(name)
            .join("termination-log");
        let mut bytes = std::fs::read(file).ok()?;
        bytes.truncate(4096);
        (!bytes.is_empty()).then(|| String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Waits for the container's exit; records it (with `OOMKilled` from inspect) once its
    /// output is all logged.
    async fn wait_exit(&self, idx: usize, h: &ContainerRt) -> i64 {
        let docker = &self.cluster.docker;
        let mut wait = docker.wait_container(
            &h.docker_id,
            Some(WaitContainerOptions {
                condition: "not-running".into(),
            }),
        );
        let mut code = match wait.next().await {
            Some(Ok(r)) => r.status_code,
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
            _ => -1,
        };
        self.record_exit(idx, h, &mut code).await;
        code
    }

    async fn record_exit(&self, idx: usize, h: &ContainerRt, code: &mut i64) {
        // The output ends when the container does; give the log its last bytes first.
        let mut rx = h.log.subscribe();
        let drained = async {
            while !h.log.finished() {
                if rx.changed().await.is_err() {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), drained).await;
        let inspected = self
            .cluster
            .docker
            .inspect_container(
                &h.docker_id,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .ok()
            .and_then(|i| i.state);
        let oom = inspected
            .as_ref()
            .and_then(|s| s.oom_killed)
            .unwrap_or(false);
        if let Some(c) = inspected.as_ref().and_then(|s| s.exit_code) {
            *code = c;
        }
        let time_of = |t: Option<String>| {
            t.and_then(|t| meta::parse_time(&t))
                .filter(|t| t.as_second() > 0)
                .map(meta::time)
                .unwrap_or_else(meta::now)
        };
        let started_at = time_of(inspected.as_ref().and_then(|s| s.started_at.clone()));
        let finished_at = time_of(inspected.as_ref().and_then(|s| s.finished_at.clone()));
        let reason = if oom {
            "OOMKilled"
        } else if *code == 0 {
            "Completed"
        } else {
            "Error"
        };
        let name = lock(&self.state).containers[idx].name.clone();
        let message = self.termination_message(&name);
        self.set_state(
            idx,
            St::Terminated {
                exit_code: *code,
                reason: reason.into(),
                message,
                started_at,
                finished_at,
                container_id: format!("docker://{}", h.docker_id),
            },
        );
        {
            let mut s = lock(&self.state);
            s.containers[idx].ready = false;
        }
        self.publish();
        let name = self.specs[idx].0.name.clone();
        if let Some(tx) = lock(&self.exit_txs).get(&name) {
            let _ = tx.send(Some(*code));
        }
    }

    /// Sidecars are stopped after the main containers, in reverse order.
    async fn stop_sidecars(&self) {
        self.sidecars_stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let grace = self.grace();
        let idxs: Vec<usize> = {
            let s = lock(&self.state);
            s.containers
                .iter()
                .enumerate()
                .filter(|(_, c)| c.sidecar && matches!(c.state, St::Running { .. }))
                .map(|(i, _)| i)
                .collect()
        };
        for idx in idxs.into_iter().rev() {
            self.stop_one(idx, grace).await;
        }
    }

    /// Stops one running container and waits until its exit is recorded.
    async fn stop_one(&self, idx: usize, grace: i64) {
        let name = self.specs[idx].0.name.clone();
        let Some(h) = lock(&self.rt.containers).get(&name).cloned() else {
            return;
        };
        self.event(
            Some(idx),
            "Normal",
            "Killing",
            &format!("Stopping container {name}"),
        );
        engine::stop(&self.cluster.docker, &h.docker_id, grace).await;
        let mut exit = h.exit.clone();
        let recorded = async {
            while exit.borrow_and_update().is_none() {
                if exit.changed().await.is_err() {
                    break;
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(5), recorded)
            .await
            .is_err()
        {
            // Nobody is waiting on it (its task was aborted): record it here.
            let mut code = -1;
            self.record_exit(idx, &h, &mut code).await;
        }
    }

    /// Stops what runs (main and init containers together, then sidecars in reverse), records
    /// their ends, and writes the terminal status.
    async fn terminate(&self, grace: i64, ending: Ending) {
        let running: Vec<(usize, bool)> = {
            let s = lock(&self.state);
            s.containers
                .iter()
                .enumerate()
                .filter(|(_, c)| matches!(c.state, St::Running { .. }))
                .map(|(i, c)| (i, c.sidecar))
                .collect()
        };
        self.sidecars_stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let mut stop = self.stop.clone();
        let stopping = async {
            let firsts = running
                .iter()
                .filter(|(_, s)| !s)
                .map(|(i, _)| self.stop_one(*i, grace));
            futures_util::future::join_all(firsts).await;
            for (i, _) in running.iter().filter(|(_, s)| *s).rev() {
                self.stop_one(*i, grace).await;
            }
        };
        tokio::pin!(stopping);
        tokio::select! {
            () = &mut stopping => {}
            () = async {
                // A later, shorter deletion (or the object's removal) cuts the grace short.
                loop {
                    if stop.changed().await.is_err() { return; }
                    match &*stop.borrow() {
                        Stop::Delete { grace: g } if *g < grace => return,
                        Stop::Removed | Stop::NodeLost => return,
                        _ => {}
                    }
                }
            } => {
                for (i, _) in &running {
                    let name = &self.specs[*i].0.name;
                    let h = lock(&self.rt.containers).get(name).cloned();
                    if let Some(h) = h {
                        let _ = self.cluster.docker.kill_container(&h.docker_id, None::<bollard::query_parameters::KillContainerOptions>).await;
                    }
                }
                stopping.await;
            }
        }
        {
            let mut s = lock(&self.state);
            let mains_ok = s
                .containers
                .iter()
                .filter(|c| !c.init)
                .all(|c| matches!(c.state, St::Terminated { exit_code: 0, .. }));
            match ending {
                Ending::Deleted => s.phase = if mains_ok { "Succeeded" } else { "Failed" },
                Ending::Deadline => {
                    s.phase = "Failed";
                    s.reason = Some("DeadlineExceeded".into());
                    s.message = Some(
                        "Pod was active on the node longer than the specified deadline".into(),
                    );
                }
                Ending::Evicted(message) => {
                    s.phase = "Failed";
                    s.reason = Some("Evicted".into());
                    s.message = Some(message.clone());
                    s.disruption = Some(("TerminationByKubelet".into(), message));
                }
            }
        }
        self.publish();
        self.stop_sandbox();
    }

    /// Removes the pod's containers, sandbox, emptyDir volumes and logs.
    async fn cleanup(&self) {
        let docker = &self.cluster.docker;
        for id in engine::containers_with(docker, engine::POD_UID_LABEL, &self.uid).await {
            engine::force_remove(docker, &id).await;
        }
        for name in engine::volumes_with(docker, engine::POD_UID_LABEL, &self.uid).await {
            engine::remove_volume(docker, &name).await;
        }
        for t in lock(&self.log_tasks).drain(..) {
            t.abort();
        }
        let dir = self
            .cluster
            .log_dir
            .join(format!("{}_{}_{}", self.ns, self.name, self.uid));
        let _ = tokio::fs::remove_dir_all(&dir).await;
        lock(&self.cluster.runtimes).remove(&self.uid);
        // A claim freed by this pod may now be collected.
        let _ = self
            .cluster
            .ctl_tx
            .send(crate::controllers::CtlMsg::PvcProtection {
                namespace: self.ns.clone(),
            });
        let _ = self
            .cluster
            .ctl_tx
            .send(crate::controllers::CtlMsg::RetryVolumes);
    }

    /// Records an event about the pod (or one of its containers).
    fn event(&self, idx: Option<usize>, type_: &str, reason: &str, message: &str) {
        let Some(obj) = self
            .cluster
            .store()
            .get(Resource::Pods, &self.ns, &self.name)
        else {
            return;
        };
        if obj["metadata"]["uid"].as_str() != Some(self.uid.as_str()) {
            return;
        }
        let fp = idx.map(|i| field_path(&lock(&self.state).containers[i]));
        self.cluster
            .event(&obj, fp.as_deref(), type_, reason, message, "kubelet");
    }

    /// Writes the status the model describes (conditions the kubelet does not own are kept).
    fn publish(&self) {
        let mut s = lock(&self.state);
        let now = meta::now();
        let terminal = matches!(s.phase, "Succeeded" | "Failed");
        let unready: Vec<String> = s
            .containers
            .iter()
            .filter(|c| (!c.init || c.sidecar) && !c.ready)
            .map(|c| c.name.clone())
            .collect();
        let uninit: Vec<String> = s
            .containers
            .iter()
            .filter(|c| c.init)
            .filter(|c| {
                if c.sidecar {
                    !c.started
                } else {
                    !matches!(c.state, St::Terminated { exit_code: 0, .. })
                }
            })
            .map(|c| c.name.clone())
            .collect();
        let initialized = s.initialized || uninit.is_empty();
        let ready = !terminal && unready.is_empty() && initialized;
        let list = |v: &[String]| format!("[{}]", v.join(" "));
        let mut conds: Vec<(&'static str, bool, Option<&str>, Option<String>)> = vec![
            ("PodReadyToStartContainers", s.sandbox_ready, None, None),
            (
                "Initialized",
                initialized,
                (!initialized).then_some("ContainersNotInitialized"),
                (!initialized)
                    .then(|| format!("containers with incomplete status: {}", list(&uninit))),
            ),
        ];
        let (not_ready_reason, not_ready_msg) = if s.phase == "Succeeded" {
            (Some("PodCompleted"), None)
        } else {
            (
                Some("ContainersNotReady"),
                Some(format!(
                    "containers with unready status: {}",
                    list(&unready)
                )),
            )
        };
        for t in ["Ready", "ContainersReady"] {
            if ready {
                conds.push((t, true, None, None));
            } else {
                conds.push((t, false, not_ready_reason, not_ready_msg.clone()));
            }
        }
        let mut out = Vec::new();
        for (t, status, reason, message) in conds {
            let at = match s.transitions.get(t) {
                Some((was, at)) if *was == status => at.clone(),
                _ => {
                    s.transitions.insert(t, (status, now.clone()));
                    now.clone()
                }
            };
            let mut c = json!({
                "type": t,
                "status": if status { "True" } else { "False" },
                "lastProbeTime": null,
                "lastTransitionTime": at,
            });
            if let Some(r) = reason {
                c["reason"] = json!(r);
            }
            if let Some(m) = message {
                c["message"] = json!(m);
            }
            out.push(c);
        }
        if let Some((reason, message)) = &s.disruption {
            out.push(json!({
                "type": "DisruptionTarget", "status": "True", "lastProbeTime": null,
                "lastTransitionTime": now, "reason": reason, "message": message,
            }));
        }
        let statuses = |init: bool| -> Vec<Value> {
            s.containers
                .iter()
                .filter(|c| c.init == init)
                .map(|c| {
                    let mut v = json!({
                        "name": c.name,
                        "state": c.state.to_json(),
                        "lastState": c.last.as_ref().map(St::to_json).unwrap_or(json!({})),
                        "ready": c.ready,
                        "restartCount": c.restart_count,
                        "image": c.image,
                        "imageID": c.image_id,
                        "started": c.started && matches!(c.state, St::Running { .. }),
                    });
                    if !c.container_id.is_empty() {
                        v["containerID"] = json!(c.container_id);
                    }
                    v
                })
                .collect()
        };
        let mut status = json!({
            "phase": s.phase,
            "conditions": out,
            "qosClass": s.qos,
            "startTime": s.start_time,
            "containerStatuses": statuses(false),
        });
        let inits = statuses(true);
        if !inits.is_empty() {
            status["initContainerStatuses"] = json!(inits);
        }
        if let Some(ip) = &s.host_ip {
            status["hostIP"] = json!(ip);
            status["hostIPs"] = json!([{"ip": ip}]);
        }
        if let Some(ip) = &s.pod_ip {
            status["podIP"] = json!(ip);
            status["podIPs"] = json!([{"ip": ip}]);
        }
        if let Some(r) = &s.reason {
            status["reason"] = json!(r);
        }
        if let Some(m) = &s.message {
            status["message"] = json!(m);
        }
        let phases = self
            .cluster
            .write_pod_status(&self.ns, &self.name, &self.uid, |cur| {
                // PodScheduled belongs to the scheduler, DisruptionTarget to whoever disrupts.
                let mut status = status;
                let keep: Vec<Value> = cur
                    .get("conditions")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter(|c| {
                        matches!(c["type"].as_str(), Some("PodScheduled"))
                            || (c["type"].as_str() == Some("DisruptionTarget")
                                && s.disruption.is_none())
                    })
                    .cloned()
                    .collect();
                if let Some(list) = status["conditions"].as_array_mut() {
                    list.extend(keep);
                }
                status
            });
        drop(s);
        if let Some((before, after)) = phases
            && before != after
            && matches!(after.as_str(), "Succeeded" | "Failed")
        {
            let _ = self
                .cluster
                .ctl_tx
                .send(crate::controllers::CtlMsg::PvcProtection {
                    namespace: self.ns.clone(),
                });
            let _ = self.cluster.node_tx.send(super::NodeMsg::Schedule);
        }
    }
}

fn secs(s: i32) -> Duration {
    Duration::from_secs(u64::try_from(s.max(0)).unwrap_or(0))
}

/// Kubernetes' `$(VAR)` expansion: defined variables are replaced, `$$` is a literal `$`,
/// anything else stays as written.
pub(crate) fn expand(s: &str, vars: &[(String, String)]) -> String {
    let mut out = String::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            if b[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if b[i + 1] == b'('
                && let Some(end) = s[i + 2..].find(')')
            {
                let name = &s[i + 2..i + 2 + end];
                if let Some((_, v)) = vars.iter().find(|(k, _)| k == name) {
                    out.push_str(v);
                    i += end + 3;
                    continue;
                }
            }
        }
        let ch = s[i..].chars().next().unwrap_or('\u{fffd}');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// Where a container's termination message goes (`terminationMessagePath`, default
/// `/dev/termination-log`).
fn termination_path(c: &Container) -> String {
    c.termination_message_path
        .clone()
        .unwrap_or_else(|| "/dev/termination-log".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependent_variables() {
        let vars = vec![
            ("A".to_owned(), "x".to_owned()),
            ("B".to_owned(), "y".to_owned()),
        ];
        assert_eq!(expand("$(A)-$(B)", &vars), "x-y");
        assert_eq!(expand("$$(A) $(C) $", &vars), "$(A) $(C) $");
        assert_eq!(expand("é$(A)", &vars), "éx");
    }
}
