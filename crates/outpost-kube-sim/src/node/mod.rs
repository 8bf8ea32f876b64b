//! The node: a scheduler that binds pods to the one node when their requests fit its
//! allocatable (or leaves them Pending as Unschedulable with the scheduler's message), and a
//! kubelet that runs each bound pod in a worker ([`pod`]). Node loss and eviction come in
//! through here as test hooks.

pub(crate) mod engine;
pub(crate) mod logs;
pub(crate) mod pod;
pub(crate) mod probe;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::SimError;
use crate::cluster::{Cluster, lock};
use crate::meta;
use crate::quantity;
use crate::store::Resource;
use pod::{Stop, Worker};

pub(crate) enum NodeMsg {
    /// Something changed that may let a pending pod in (or a bound pod needs its worker).
    Schedule,
    /// The pod's deletion was asked with this grace period.
    Terminate {
        uid: String,
        grace: i64,
    },
    /// The pod object is gone.
    Removed {
        uid: String,
    },
    Evict {
        namespace: String,
        name: String,
        message: String,
        reply: oneshot::Sender<Result<(), SimError>>,
    },
    LoseNode {
        reply: oneshot::Sender<()>,
    },
    WorkerDone {
        uid: String,
    },
}

struct Entry {
    stop: watch::Sender<Stop>,
    task: tokio::task::JoinHandle<()>,
}

struct Node {
    cluster: Arc<Cluster>,
    workers: HashMap<String, Entry>,
    /// Pods that had a worker (which only ends once the pod is gone): never a second one.
    started: HashSet<String>,
    /// Unschedulable pods: when to try again, and the back-off after that.
    retry: HashMap<String, (Instant, Duration)>,
    lost: bool,
}

pub(crate) async fn run(cluster: Arc<Cluster>, mut rx: mpsc::UnboundedReceiver<NodeMsg>) {
    let mut node = Node {
        cluster,
        workers: HashMap::new(),
        started: HashSet::new(),
        retry: HashMap::new(),
        lost: false,
    };
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = node.cluster.cancel.cancelled() => break,
            msg = rx.recv() => match msg {
                Some(msg) => node.handle(msg),
                None => break,
            },
            _ = tick.tick() => node.schedule(),
        }
    }
    for (_, e) in node.workers.drain() {
        e.task.abort();
    }
}

/// A pod's effective request (cpu millicores, memory bytes), with native sidecars counted as
/// the scheduler counts them: they run alongside every later init container and the main ones.
fn pod_request(spec: &Value) -> (u64, u64) {
    let req = |c: &Value| -> (u64, u64) {
        let r = |name: &str| {
            c.pointer(&format!("/resources/requests/{name}"))
                .and_then(Value::as_str)
        };
        (
            r("cpu").and_then(quantity::millis).unwrap_or(0),
            r("memory").and_then(quantity::bytes).unwrap_or(0),
        )
    };
    let empty = Vec::new();
    let mains = spec["containers"].as_array().unwrap_or(&empty);
    let inits = spec["initContainers"].as_array().unwrap_or(&empty);
    let (mut mc, mut mm) = (0, 0);
    for c in mains {
        let (a, b) = req(c);
        mc += a;
        mm += b;
    }
    let (mut sc, mut sm, mut ic, mut im) = (0, 0, 0, 0);
    for c in inits {
        let (a, b) = req(c);
        if c["restartPolicy"].as_str() == Some("Always") {
            sc += a;
            sm += b;
            ic = ic.max(sc);
            im = im.max(sm);
        } else {
            ic = ic.max(sc + a);
            im = im.max(sm + b);
        }
    }
    ((mc + sc).max(ic), (mm + sm).max(im))
}

const NOT_HELPFUL: &str =
    " preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling.";

impl Node {
    fn handle(&mut self, msg: NodeMsg) {
        match msg {
            NodeMsg::Schedule => {
                for v in self.retry.values_mut() {
                    v.0 = Instant::now();
                }
                self.schedule();
            }
            NodeMsg::Terminate { uid, grace } => {
                if let Some(e) = self.workers.get(&uid) {
                    e.stop.send_if_modified(|cur| {
                        let stronger = match cur {
                            Stop::Run | Stop::Evict { .. } => true,
                            Stop::Delete { grace: g } => grace < *g,
                            Stop::Removed | Stop::NodeLost => false,
                        };
                        if stronger {
                            *cur = Stop::Delete { grace };
                        }
                        stronger
                    });
                }
            }
            NodeMsg::Removed { uid } => {
                self.retry.remove(&uid);
                if let Some(e) = self.workers.get(&uid) {
                    e.stop.send_if_modified(|cur| {
                        if *cur == Stop::NodeLost || *cur == Stop::Removed {
                            return false;
                        }
                        *cur = Stop::Removed;
                        true
                    });
                }
            }
            NodeMsg::Evict {
                namespace,
                name,
                message,
                reply,
            } => {
                let pod = self.cluster.store().get(Resource::Pods, &namespace, &name);
                let Some(pod) = pod else {
                    let _ = reply.send(Err(SimError::NoSuchPod { namespace, name }));
                    return;
                };
                let uid = pod["metadata"]["uid"].as_str().unwrap_or("").to_owned();
                let phase = pod
                    .pointer("/status/phase")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let ok = !matches!(phase, "Succeeded" | "Failed")
                    && self.workers.get(&uid).is_some_and(|e| {
                        e.stop.send_if_modified(|cur| {
                            if *cur != Stop::Run {
                                return false;
                            }
                            *cur = Stop::Evict { message };
                            true
                        })
                    });
                let _ = reply.send(if ok {
                    Ok(())
                } else {
                    Err(SimError::PodNotOnNode { namespace, name })
                });
            }
            NodeMsg::LoseNode { reply } => {
                self.lose();
                let _ = reply.send(());
            }
            NodeMsg::WorkerDone { uid } => {
                self.workers.remove(&uid);
            }
        }
    }

    /// The node's machine is gone: its containers die with it, and the pod garbage collector
    /// fails and force-deletes every pod bound to it ("PodGC: node no longer exists").
    fn lose(&mut self) {
        self.lost = true;
        for e in self.workers.values() {
            e.stop.send_replace(Stop::NodeLost);
        }
        let node = self.cluster.cfg.node_name.clone();
        let bound: Vec<(String, String)> = self
            .cluster
            .store()
            .list(Resource::Pods, None)
            .filter(|(_, _, v)| {
                v.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node.as_str())
            })
            .map(|(ns, n, _)| (ns.to_owned(), n.to_owned()))
            .collect();
        for (ns, name) in bound {
            {
                let mut store = self.cluster.store();
                let Some(cur) = store.get(Resource::Pods, &ns, &name) else {
                    continue;
                };
                let mut v = (*cur).clone();
                let phase = v
                    .pointer("/status/phase")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                if !matches!(phase, "Succeeded" | "Failed") {
                    v["status"]["phase"] = json!("Failed");
                }
                let cond = json!({
                    "type": "DisruptionTarget", "status": "True", "lastProbeTime": null,
                    "lastTransitionTime": meta::now(), "reason": "DeletionByPodGC",
                    "message": "PodGC: node no longer exists",
                });
                match v["status"]["conditions"].as_array_mut() {
                    Some(list) => list.push(cond),
                    None => v["status"]["conditions"] = json!([cond]),
                }
                store.replace(Resource::Pods, &ns, &name, v);
            }
            self.cluster.remove_now(Resource::Pods, &ns, &name);
        }
    }

    fn schedule(&mut self) {
        let node = self.cluster.cfg.node_name.clone();
        let pods: Vec<Arc<Value>> = self
            .cluster
            .store()
            .list(Resource::Pods, None)
            .map(|(_, _, v)| v.clone())
            .collect();
        let (mut cpu, mut mem, mut count) = (0u64, 0u64, 0usize);
        let mut pending = Vec::new();
        for p in &pods {
            let bound = p
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .unwrap_or("");
            let phase = p
                .pointer("/status/phase")
                .and_then(Value::as_str)
                .unwrap_or("");
            if bound == node {
                if !matches!(phase, "Succeeded" | "Failed") {
                    let (c, m) = pod_request(&p["spec"]);
                    cpu += c;
                    mem += m;
                    count += 1;
                }
                self.start_worker(p);
            } else if bound.is_empty()
                && p.pointer("/metadata/deletionTimestamp").is_none()
                && p.pointer("/spec/schedulerName").and_then(Value::as_str)
                    == Some("default-scheduler")
            {
                pending.push(p.clone());
            }
        }
        pending.sort_by(|a, b| {
            let key = |v: &Value| {
                (
                    std::cmp::Reverse(
                        v.pointer("/spec/priority")
                            .and_then(Value::as_i64)
                            .unwrap_or(0),
                    ),
                    v.pointer("/metadata/creationTimestamp")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                    v.pointer("/metadata/resourceVersion")
                        .and_then(Value::as_str)
                        .and_then(|s| s.parse::<u64>().ok())
                        .unwrap_or(0),
                )
            };
            key(a).cmp(&key(b))
        });
        let (max_pods, alloc_cpu, alloc_mem) = {
            let cfg = &self.cluster.cfg;
            (
                cfg.max_pods,
                cfg.allocatable_cpu_millis,
                cfg.allocatable_memory_bytes,
            )
        };
        for p in pending {
            let uid = p["metadata"]["uid"].as_str().unwrap_or("").to_owned();
            if self
                .retry
                .get(&uid)
                .is_some_and(|(at, _)| *at > Instant::now())
            {
                continue;
            }
            let (c, m) = pod_request(&p["spec"]);
            let verdict = self.fit(&p).and_then(|()| {
                let mut short = Vec::new();
                if count >= max_pods {
                    short.push("1 Too many pods");
                }
                if cpu + c > alloc_cpu {
                    short.push("1 Insufficient cpu");
                }
                if mem + m > alloc_mem {
                    short.push("1 Insufficient memory");
                }
                if short.is_empty() {
                    Ok(())
                } else {
                    Err(format!(
                        "0/1 nodes are available: {}. preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod.",
                        short.join(", ")
                    ))
                }
            });
            match verdict {
                Ok(()) => {
                    if self.bind(&p) {
                        cpu += c;
                        mem += m;
                        count += 1;
                        self.retry.remove(&uid);
                    }
                }
                Err(msg) => {
                    let backoff = self
                        .retry
                        .get(&uid)
                        .map(|(_, b)| *b)
                        .unwrap_or(Duration::from_secs(1));
                    self.retry.insert(
                        uid,
                        (
                            Instant::now() + backoff,
                            (backoff * 2).min(Duration::from_secs(10)),
                        ),
                    );
                    self.unschedulable(&p, &msg);
                }
            }
        }
    }

    /// Everything but resources: the node itself, its labels, the pod's claims.
    fn fit(&self, p: &Value) -> Result<(), String> {
        if self.lost {
            return Err("no nodes available to schedule pods".into());
        }
        let node = &self.cluster.cfg.node_name;
        let labels = [
            ("kubernetes.io/hostname", node.as_str()),
            ("kubernetes.io/os", "linux"),
            ("kubernetes.io/arch", "amd64"),
        ];
        for (k, v) in p
            .pointer("/spec/nodeSelector")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            if !labels
                .iter()
                .any(|(lk, lv)| lk == k && v.as_str() == Some(lv))
            {
                return Err(format!(
                    "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector.{NOT_HELPFUL}"
                ));
            }
        }
        let ns = p["metadata"]["namespace"].as_str().unwrap_or("");
        let name = p["metadata"]["name"].as_str().unwrap_or("");
        for v in p
            .pointer("/spec/volumes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let (claim, ephemeral) = if let Some(c) = v
                .pointer("/persistentVolumeClaim/claimName")
                .and_then(Value::as_str)
            {
                (c.to_owned(), false)
            } else if v.get("ephemeral").is_some() {
                (format!("{name}-{}", v["name"].as_str().unwrap_or("")), true)
            } else {
                continue;
            };
            let found = self
                .cluster
                .store()
                .get(Resource::PersistentVolumeClaims, ns, &claim);
            match found {
                None if ephemeral => {
                    return Err(format!(
                        "0/1 nodes are available: waiting for ephemeral volume controller to create the persistentvolumeclaim {claim:?}.{NOT_HELPFUL}"
                    ));
                }
                None => {
                    return Err(format!(
                        "0/1 nodes are available: persistentvolumeclaim {claim:?} not found.{NOT_HELPFUL}"
                    ));
                }
                Some(c) if c.pointer("/metadata/deletionTimestamp").is_some() => {
                    return Err(format!(
                        "0/1 nodes are available: persistentvolumeclaim {claim:?} is being deleted.{NOT_HELPFUL}"
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// The binding: `spec.nodeName` and `PodScheduled=True`, then the worker.
    fn bind(&mut self, p: &Value) -> bool {
        let ns = p["metadata"]["namespace"].as_str().unwrap_or("").to_owned();
        let name = p["metadata"]["name"].as_str().unwrap_or("").to_owned();
        let uid = p["metadata"]["uid"].as_str().unwrap_or("").to_owned();
        let node = self.cluster.cfg.node_name.clone();
        let bound = {
            let mut store = self.cluster.store();
            let Some(cur) = store.get(Resource::Pods, &ns, &name) else {
                return false;
            };
            if cur["metadata"]["uid"].as_str() != Some(uid.as_str())
                || cur
                    .pointer("/spec/nodeName")
                    .and_then(Value::as_str)
                    .is_some_and(|n| !n.is_empty())
            {
                return false;
            }
            let mut v = (*cur).clone();
            v["spec"]["nodeName"] = json!(node);
            set_condition(
                &mut v,
                json!({
                    "type": "PodScheduled", "status": "True", "lastProbeTime": null,
                    "lastTransitionTime": meta::now(),
                }),
            );
            store.replace(Resource::Pods, &ns, &name, v)
        };
        let Some(bound) = bound else { return false };
        self.cluster.event(
            &bound,
            None,
            "Normal",
            "Scheduled",
            &format!("Successfully assigned {ns}/{name} to {node}"),
            "default-scheduler",
        );
        self.start_worker(&bound);
        true
    }

    fn unschedulable(&self, p: &Value, msg: &str) {
        let ns = p["metadata"]["namespace"].as_str().unwrap_or("");
        let name = p["metadata"]["name"].as_str().unwrap_or("");
        let uid = p["metadata"]["uid"].as_str().unwrap_or("");
        let written = self.cluster.write_pod_status(ns, name, uid, |cur| {
            let mut status = cur.clone();
            if !status.is_object() {
                status = json!({"phase": "Pending"});
            }
            let existing = status["conditions"]
                .as_array()
                .and_then(|l| l.iter().find(|c| c["type"] == "PodScheduled"))
                .cloned();
            let at = match &existing {
                Some(c) if c["status"] == "False" => c["lastTransitionTime"].clone(),
                _ => json!(meta::now()),
            };
            let mut pod = json!({"status": status});
            set_condition(
                &mut pod,
                json!({
                    "type": "PodScheduled", "status": "False", "lastProbeTime": null,
                    "lastTransitionTime": at, "reason": "Unschedulable", "message": msg,
                }),
            );
            pod["status"].take()
        });
        // Read first: the store's lock must not be held while the event is recorded.
        let obj = self.cluster.store().get(Resource::Pods, ns, name);
        if written.is_some()
            && let Some(obj) = obj
        {
            self.cluster.event(
                &obj,
                None,
                "Warning",
                "FailedScheduling",
                msg,
                "default-scheduler",
            );
        }
    }

    fn start_worker(&mut self, p: &Value) {
        if self.lost {
            return;
        }
        let uid = p["metadata"]["uid"].as_str().unwrap_or("").to_owned();
        if self.started.contains(&uid) {
            return;
        }
        let initial = match p
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
        {
            Some(grace) if p.pointer("/metadata/deletionTimestamp").is_some() => {
                Stop::Delete { grace }
            }
            _ => Stop::Run,
        };
        let (tx, rx) = watch::channel(initial);
        let Some(worker) = Worker::new(self.cluster.clone(), p, rx) else {
            tracing::warn!(uid, "a bound pod without a usable spec: not run");
            return;
        };
        self.started.insert(uid.clone());
        lock(&self.cluster.runtimes).insert(uid.clone(), worker.runtime());
        let done = self.cluster.node_tx.clone();
        let wuid = worker.uid().to_owned();
        let task = tokio::spawn(async move {
            worker.run().await;
            let _ = done.send(NodeMsg::WorkerDone { uid: wuid });
        });
        self.workers.insert(uid, Entry { stop: tx, task });
    }
}

/// Replaces (or adds) the condition of the same type in `pod.status.conditions`.
fn set_condition(pod: &mut Value, cond: Value) {
    if !pod["status"].is_object() {
        pod["status"] = json!({});
    }
    let t = cond["type"].clone();
    match pod["status"]["conditions"].as_array_mut() {
        Some(list) => {
            list.retain(|c| c["type"] != t);
            list.push(cond);
        }
        None => pod["status"]["conditions"] = json!([cond]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effective_requests_count_sidecars() {
        let spec = json!({
            "initContainers": [
                {"name": "a", "resources": {"requests": {"memory": "100", "cpu": "1"}}},
                {"name": "s", "restartPolicy": "Always", "resources": {"requests": {"memory": "50"}}},
                {"name": "b", "resources": {"requests": {"memory": "80"}}},
            ],
            "containers": [
                {"name": "m", "resources": {"requests": {"memory": "10", "cpu": "250m"}}},
            ],
        });
        // init a: 100; init b with the sidecar: 130; mains with the sidecar: 60.
        assert_eq!(pod_request(&spec), (1000, 130));
    }
}
