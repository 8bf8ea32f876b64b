//! The control-plane controllers the backend relies on, in one task: the garbage collector
//! (ownerReferences, background propagation), the ephemeral volume controller (`<pod>-<volume>`
//! claims owned by their pod), PVC protection (a claim in use by a pod stays until the pod is
//! done), and the provisioner's reclaim (a removed claim's Docker volume goes too).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::DeleteOptions;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::cluster::{Cluster, PVC_PROTECTION, finalizers};
use crate::node::engine;
use crate::store::Resource;

pub(crate) enum CtlMsg {
    /// A pod was created: make its ephemeral claims.
    PodCreated {
        namespace: String,
        name: String,
        uid: String,
    },
    /// An object left the store: collect what it owned.
    OwnerGone { namespace: String, uid: String },
    /// Claims being deleted in this namespace may be free now.
    PvcProtection { namespace: String },
    /// A claim left the store: remove its volume.
    ClaimGone { uid: String },
    /// A pod's containers are gone: volumes they held may be removable now.
    RetryVolumes,
}

pub(crate) async fn run(cluster: Arc<Cluster>, mut rx: mpsc::UnboundedReceiver<CtlMsg>) {
    // Volumes the engine refused to remove yet (a stopped container of a pod still holds them).
    let mut volumes: BTreeSet<String> = BTreeSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cluster.cancel.cancelled() => return,
            msg = rx.recv() => {
                let Some(msg) = msg else { return };
                match msg {
                    CtlMsg::PodCreated { namespace, name, uid } => {
                        ephemeral_claims(&cluster, &namespace, &name, &uid);
                    }
                    CtlMsg::OwnerGone { namespace, uid } => collect(&cluster, &namespace, &uid),
                    CtlMsg::PvcProtection { namespace } => protect(&cluster, &namespace),
                    CtlMsg::RetryVolumes => retry_volumes(&cluster, &mut volumes).await,
                    CtlMsg::ClaimGone { uid } => {
                        let name = engine::claim_volume(&cluster.instance, &uid);
                        if !engine::remove_volume(&cluster.docker, &name).await {
                            volumes.insert(name);
                        }
                    }
                }
            }
            _ = tick.tick() => {
                retry_volumes(&cluster, &mut volumes).await;
                let namespaces: Vec<String> =
                    crate::cluster::lock(&cluster.namespaces).iter().cloned().collect();
                for ns in namespaces {
                    protect(&cluster, &ns);
                }
            }
        }
    }
}

async fn retry_volumes(cluster: &Cluster, volumes: &mut BTreeSet<String>) {
    let pending: Vec<String> = volumes.iter().cloned().collect();
    for name in pending {
        if engine::remove_volume(&cluster.docker, &name).await {
            volumes.remove(&name);
        }
    }
}

fn ephemeral_claims(cluster: &Cluster, ns: &str, pod: &str, uid: &str) {
    let Some(obj) = cluster.store().get(Resource::Pods, ns, pod) else {
        return;
    };
    let volumes = obj
        .pointer("/spec/volumes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for v in volumes {
        let Some(template) = v.pointer("/ephemeral/volumeClaimTemplate") else {
            continue;
        };
        let vname = v["name"].as_str().unwrap_or("");
        let claim = format!("{pod}-{vname}");
        let mut metadata = template.get("metadata").cloned().unwrap_or(json!({}));
        metadata["name"] = json!(claim);
        metadata["namespace"] = json!(ns);
        metadata["ownerReferences"] = json!([{
            "apiVersion": "v1",
            "kind": "Pod",
            "name": pod,
            "uid": uid,
            "controller": true,
            "blockOwnerDeletion": true,
        }]);
        let body = json!({
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": metadata,
            "spec": template.get("spec").cloned().unwrap_or(json!({})),
        });
        // An existing claim of that name is left alone; the kubelet refuses it if it is not
        // this pod's.
        if let Err(e) = cluster.create(Resource::PersistentVolumeClaims, ns, &body, false)
            && e.code != 409
        {
            tracing::warn!(namespace = ns, pod, claim, error = %e.message, "cannot create an ephemeral claim");
        }
    }
}

/// Background propagation: dependents whose every owner is gone are deleted; a dependent with
/// another owner left only loses the dangling reference.
fn collect(cluster: &Cluster, ns: &str, uid: &str) {
    for (r, name) in cluster.dependents(ns, uid) {
        let Some(obj) = cluster.store().get(r, ns, &name) else {
            continue;
        };
        let refs = obj
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let others_alive = refs.iter().any(|o| {
            let ouid = o["uid"].as_str().unwrap_or("");
            ouid != uid && exists_uid(cluster, ns, ouid)
        });
        if others_alive {
            let mut v = (*obj).clone();
            if let Some(list) = v
                .pointer_mut("/metadata/ownerReferences")
                .and_then(Value::as_array_mut)
            {
                list.retain(|o| o["uid"].as_str() != Some(uid));
            }
            cluster.store().replace(r, ns, &name, v);
        } else if obj.pointer("/metadata/deletionTimestamp").is_none() {
            let opts = DeleteOptions {
                propagation_policy: Some("Background".into()),
                ..Default::default()
            };
            if let Err(e) = cluster.delete(r, ns, &name, &opts) {
                tracing::debug!(namespace = ns, name, error = %e.message, "garbage collection");
            }
        }
    }
}

fn exists_uid(cluster: &Cluster, ns: &str, uid: &str) -> bool {
    let store = cluster.store();
    Resource::ALL.into_iter().any(|r| {
        store
            .list(r, Some(ns))
            .any(|(_, _, v)| v["metadata"]["uid"].as_str() == Some(uid))
    })
}

/// Claims in this namespace used by a pod that is not done.
fn claims_in_use(cluster: &Cluster, ns: &str) -> BTreeSet<String> {
    let store = cluster.store();
    let mut used = BTreeSet::new();
    for (_, pod, v) in store.list(Resource::Pods, Some(ns)) {
        let phase = v
            .pointer("/status/phase")
            .and_then(Value::as_str)
            .unwrap_or("");
        if matches!(phase, "Succeeded" | "Failed") {
            continue;
        }
        for vol in v
            .pointer("/spec/volumes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(c) = vol
                .pointer("/persistentVolumeClaim/claimName")
                .and_then(Value::as_str)
            {
                used.insert(c.to_owned());
            }
            if vol.get("ephemeral").is_some() {
                used.insert(format!("{pod}-{}", vol["name"].as_str().unwrap_or("")));
            }
        }
    }
    used
}

fn protect(cluster: &Cluster, ns: &str) {
    let deleting: Vec<String> = cluster
        .store()
        .list(Resource::PersistentVolumeClaims, Some(ns))
        .filter(|(_, _, v)| {
            v.pointer("/metadata/deletionTimestamp").is_some()
                && finalizers(v).iter().any(|f| f == PVC_PROTECTION)
        })
        .map(|(_, n, _)| n.to_owned())
        .collect();
    if deleting.is_empty() {
        return;
    }
    let used = claims_in_use(cluster, ns);
    for name in deleting {
        if used.contains(&name) {
            continue;
        }
        let gone = {
            let mut store = cluster.store();
            let Some(cur) = store.get(Resource::PersistentVolumeClaims, ns, &name) else {
                continue;
            };
            let mut v = (*cur).clone();
            if let Some(list) = v
                .pointer_mut("/metadata/finalizers")
                .and_then(Value::as_array_mut)
            {
                list.retain(|f| f.as_str() != Some(PVC_PROTECTION));
            }
            let empty = finalizers(&v).is_empty();
            store.replace(Resource::PersistentVolumeClaims, ns, &name, v);
            empty
        };
        if gone {
            cluster.remove_now(Resource::PersistentVolumeClaims, ns, &name);
        }
    }
}
