//! The shared state of one stand-in (store, namespaces, request log, engine client, the node's
//! pod runtimes) and the object semantics every writer goes through: create with defaults and
//! validation, get, update and merge patch with `resourceVersion` preconditions, delete with
//! grace periods, finalizers and propagation policies, status writes, and events.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use bollard::Docker;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::DeleteOptions;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::Config as SimConfig;
use crate::controllers::CtlMsg;
use crate::error::{ApiError, Cause};
use crate::meta;
use crate::node::NodeMsg;
use crate::node::pod::PodRuntime;
use crate::requests::ApiRequest;
use crate::store::{Resource, Store};
use crate::validate;

/// The finalizer the PVC protection controller puts on every claim.
pub(crate) const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";

pub(crate) struct Cluster {
    pub cfg: SimConfig,
    /// Labels everything this stand-in creates on the engine.
    pub instance: String,
    pub store: Mutex<Store>,
    pub namespaces: Mutex<BTreeSet<String>>,
    pub requests: Mutex<Vec<ApiRequest>>,
    pub docker: Docker,
    pub log_dir: PathBuf,
    pub node_tx: mpsc::UnboundedSender<NodeMsg>,
    pub ctl_tx: mpsc::UnboundedSender<CtlMsg>,
    /// The node's running pods by uid, for `pods/log` and `pods/attach`.
    pub runtimes: Mutex<HashMap<String, Arc<PodRuntime>>>,
    pub cancel: CancellationToken,
}

/// Lock helper: a poisoned lock means a panic elsewhere already failed the test; go on with the
/// data as it is rather than cascading panics through every handler.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What an object's delete answers: the object (pods, claims, and anything still terminating) or
/// a success `Status` (others, once gone).
pub(crate) enum Deleted {
    Object(Value),
    Status(Value),
}

impl Cluster {
    pub fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.store)
    }

    pub fn check_namespace(&self, ns: &str) -> Result<(), ApiError> {
        if lock(&self.namespaces).contains(ns) {
            Ok(())
        } else {
            Err(ApiError::namespace_not_found(ns))
        }
    }

    pub fn get(&self, r: Resource, ns: &str, name: &str) -> Result<Arc<Value>, ApiError> {
        self.store()
            .get(r, ns, name)
            .ok_or_else(|| ApiError::not_found(r.plural(), name))
    }

    /// Creates an object received from a client.
    pub fn create(
        &self,
        r: Resource,
        ns: &str,
        body: &Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        self.check_namespace(ns)?;
        let body_ns = body.pointer("/metadata/namespace").and_then(Value::as_str);
        if body_ns.is_some_and(|b| !b.is_empty() && b != ns) {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        if body
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
        {
            return Err(ApiError::bad_request(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        let given = body
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let generate = body
            .pointer("/metadata/generateName")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let name = if given.is_empty() && !generate.is_empty() {
            format!("{generate}{}", meta::name_suffix())
        } else {
            given
        };
        let (mut obj, uid) = match r {
            Resource::Pods => {
                let mut pod: Pod = validate::strict("Pod", body)?;
                let causes = validate::check_pod(&pod, &name)?;
                invalid_if_any("Pod", &name, causes)?;
                validate::default_pod(&mut pod);
                let qos = validate::qos_class(&pod);
                pod.status = None;
                let mut v = to_json(&pod)?;
                v["status"] = json!({"phase": "Pending", "qosClass": qos});
                let uid = stamp_meta(&mut v, r, ns, &name, true);
                (v, uid)
            }
            Resource::PersistentVolumeClaims => {
                let mut pvc: PersistentVolumeClaim =
                    validate::strict("PersistentVolumeClaim", body)?;
                let causes = validate::check_pvc(&pvc, &name)?;
                invalid_if_any("PersistentVolumeClaim", &name, causes)?;
                validate::default_pvc(&mut pvc, self.cfg.default_storage_class.as_deref());
                pvc.status = None;
                let finalizers = pvc.metadata.finalizers.get_or_insert_with(Vec::new);
                if !finalizers.iter().any(|f| f == PVC_PROTECTION) {
                    finalizers.push(PVC_PROTECTION.into());
                }
                let mut v = to_json(&pvc)?;
                v["status"] = json!({"phase": "Pending"});
                let uid = stamp_meta(&mut v, r, ns, &name, false);
                (v, uid)
            }
            Resource::Secrets => {
                let mut secret: Secret = validate::strict("Secret", body)?;
                let causes = validate::check_secret(&secret, &name);
                invalid_if_any("Secret", &name, causes)?;
                validate::default_secret(&mut secret);
                let mut v = to_json(&secret)?;
                let uid = stamp_meta(&mut v, r, ns, &name, false);
                (v, uid)
            }
            Resource::Events => {
                return Err(ApiError::method_not_allowed(
                    "the stand-in does not implement create on events".into(),
                ));
            }
        };
        if dry_run {
            return Ok(obj);
        }
        let stored = self.store().insert(r, ns, &name, obj.take())?;
        match r {
            Resource::Pods => {
                let _ = self.ctl_tx.send(CtlMsg::PodCreated {
                    namespace: ns.into(),
                    name: name.clone(),
                    uid: uid.clone(),
                });
                let _ = self.node_tx.send(NodeMsg::Schedule);
            }
            Resource::PersistentVolumeClaims => {
                // The PV controller binds at once: a dynamically provisioned volume per claim.
                self.bind_claim(ns, &name, &uid);
            }
            _ => {}
        }
        Ok((*stored).clone())
    }

    /// Binds a new claim to a provisioned volume: `Bound`, capacity as requested.
    pub fn bind_claim(&self, ns: &str, name: &str, uid: &str) {
        let mut store = self.store();
        let Some(cur) = store.get(Resource::PersistentVolumeClaims, ns, name) else {
            return;
        };
        if cur.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid) {
            return;
        }
        let mut v = (*cur).clone();
        let modes = v.pointer("/spec/accessModes").cloned().unwrap_or(json!([]));
        let storage = v
            .pointer("/spec/resources/requests/storage")
            .cloned()
            .unwrap_or(json!("1Gi"));
        v["spec"]["volumeName"] = json!(format!("pvc-{uid}"));
        let ann = v["metadata"]
            .as_object_mut()
            .map(|m| m.entry("annotations").or_insert_with(|| json!({})));
        if let Some(Value::Object(a)) = ann {
            a.insert("pv.kubernetes.io/bind-completed".into(), json!("yes"));
            a.insert("pv.kubernetes.io/bound-by-controller".into(), json!("yes"));
            a.insert(
                "volume.kubernetes.io/storage-provisioner".into(),
                json!("outpost-kube-sim"),
            );
        }
        v["status"] =
            json!({"phase": "Bound", "accessModes": modes, "capacity": {"storage": storage}});
        store.replace(Resource::PersistentVolumeClaims, ns, name, v);
    }

    /// PUT on a claim: optimistic concurrency on `metadata.resourceVersion`, spec immutable
    /// except `resources.requests` (no shrinking) and `volumeAttributesClassName`, status kept.
    pub fn update_claim(&self, ns: &str, name: &str, body: &Value) -> Result<Value, ApiError> {
        let r = Resource::PersistentVolumeClaims;
        let body_name = body
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        if body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let body_ns = body.pointer("/metadata/namespace").and_then(Value::as_str);
        if body_ns.is_some_and(|b| !b.is_empty() && b != ns) {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let pvc: PersistentVolumeClaim = validate::strict("PersistentVolumeClaim", body)?;
        let causes = validate::check_pvc(&pvc, name)?;
        invalid_if_any("PersistentVolumeClaim", name, causes)?;
        let mut new = to_json(&pvc)?;
        let gone_after;
        {
            let mut store = self.store();
            let cur = store
                .get(r, ns, name)
                .ok_or_else(|| ApiError::not_found(r.plural(), name))?;
            let want_rv = body
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .unwrap_or("");
            let have_rv = cur
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .unwrap_or("");
            if !want_rv.is_empty() && want_rv != have_rv {
                return Err(ApiError::conflict_modified(r.plural(), name));
            }
            check_claim_spec_change(&cur, &new, name)?;
            // System fields come from the stored object; status is a subresource.
            for key in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "namespace",
                "name",
                "generation",
            ] {
                match cur.pointer(&format!("/metadata/{key}")) {
                    Some(v) => new["metadata"][key] = v.clone(),
                    None => {
                        if let Some(m) = new["metadata"].as_object_mut() {
                            m.remove(key);
                        }
                    }
                }
            }
            new["status"] = cur.get("status").cloned().unwrap_or(Value::Null);
            if new.get("status") == Some(&Value::Null)
                && let Some(o) = new.as_object_mut()
            {
                o.remove("status");
            }
            if new == *cur {
                // A no-op update writes nothing and keeps the version, as the apiserver does.
                return Ok((*cur).clone());
            }
            gone_after =
                new.pointer("/metadata/deletionTimestamp").is_some() && finalizers(&new).is_empty();
            store.replace(r, ns, name, new.clone());
        }
        if gone_after {
            self.remove_now(r, ns, name);
        }
        Ok(self
            .store()
            .get(r, ns, name)
            .map(|v| (*v).clone())
            .unwrap_or(new))
    }

    /// JSON merge patch (RFC 7386) on a claim, then the same rules as an update; a
    /// `metadata.resourceVersion` in the patch is a precondition.
    pub fn merge_patch_claim(
        &self,
        ns: &str,
        name: &str,
        patch: &Value,
    ) -> Result<Value, ApiError> {
        let r = Resource::PersistentVolumeClaims;
        let cur = self.get(r, ns, name)?;
        let mut merged = (*cur).clone();
        merge_patch(&mut merged, patch);
        if patch.pointer("/metadata/resourceVersion").is_none()
            && let Some(m) = merged["metadata"].as_object_mut()
        {
            // Without a precondition in the patch, the patch applies to what it was read from.
            m.insert(
                "resourceVersion".into(),
                cur["metadata"]["resourceVersion"].clone(),
            );
        }
        // The status is not patchable through the main resource; drop it from the body so
        // that strict decoding checks only what the client sent plus the stored object.
        self.update_claim(ns, name, &merged)
    }

    /// DELETE of one object.
    pub fn delete(
        &self,
        r: Resource,
        ns: &str,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Deleted, ApiError> {
        let cur = self.get(r, ns, name)?;
        if let Some(pre) = &opts.preconditions {
            let uid = cur
                .pointer("/metadata/uid")
                .and_then(Value::as_str)
                .unwrap_or("");
            let rv = cur
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .unwrap_or("");
            if let Some(want) = &pre.uid
                && want != uid
            {
                return Err(ApiError::conflict_precondition(
                    r.plural(),
                    name,
                    format!(
                        "Precondition failed: UID in precondition: {want}, UID in object meta: {uid}"
                    ),
                ));
            }
            if let Some(want) = &pre.resource_version
                && want != rv
            {
                return Err(ApiError::conflict_precondition(
                    r.plural(),
                    name,
                    format!(
                        "Precondition failed: ResourceVersion in precondition: {want}, ResourceVersion in object meta: {rv}"
                    ),
                ));
            }
        }
        let dry_run = opts.dry_run.as_ref().is_some_and(|d| !d.is_empty());
        if dry_run {
            return Ok(Deleted::Object((*cur).clone()));
        }
        let uid = cur
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let policy =
            opts.propagation_policy
                .as_deref()
                .unwrap_or(if opts.orphan_dependents == Some(true) {
                    "Orphan"
                } else {
                    "Background"
                });
        match policy {
            "Orphan" => self.orphan_dependents(ns, &uid),
            // Foreground, simplified: the dependents go first, the owner right after.
            "Foreground" => {
                for (dr, dname) in self.dependents(ns, &uid) {
                    let _ = self.delete(dr, ns, &dname, &DeleteOptions::default());
                }
            }
            "Background" => {}
            other => {
                return Err(ApiError::invalid(
                    "DeleteOptions",
                    "",
                    vec![Cause::not_supported(
                        "propagationPolicy",
                        other,
                        &["Foreground", "Background", "Orphan"],
                    )],
                ));
            }
        }
        if r == Resource::Pods {
            return self.delete_pod(ns, name, &cur, opts).map(Deleted::Object);
        }
        if !finalizers(&cur).is_empty() {
            let mut v = (*cur).clone();
            if v.pointer("/metadata/deletionTimestamp").is_none() {
                v["metadata"]["deletionTimestamp"] = json!(meta::now());
                v["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                if let Some(s) = self.store().replace(r, ns, name, v.clone()) {
                    v = (*s).clone();
                }
            }
            if r == Resource::PersistentVolumeClaims {
                let _ = self.ctl_tx.send(CtlMsg::PvcProtection {
                    namespace: ns.into(),
                });
            }
            return Ok(Deleted::Object(v));
        }
        let last = self
            .remove_now(r, ns, name)
            .ok_or_else(|| ApiError::not_found(r.plural(), name))?;
        if r == Resource::PersistentVolumeClaims {
            return Ok(Deleted::Object((*last).clone()));
        }
        Ok(Deleted::Status(json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": {"name": name, "kind": r.plural(), "uid": uid},
        })))
    }

    /// Graceful pod deletion: `deletionTimestamp` and the node's termination, or at once for a
    /// pod no kubelet runs (unscheduled, terminal) and for a grace period of 0.
    fn delete_pod(
        &self,
        ns: &str,
        name: &str,
        cur: &Value,
        opts: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        let r = Resource::Pods;
        let uid = cur["metadata"]["uid"].as_str().unwrap_or("").to_owned();
        let spec_grace = cur
            .pointer("/spec/terminationGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(30);
        let mut grace = opts.grace_period_seconds.unwrap_or(spec_grace).max(0);
        let node = cur
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .unwrap_or("");
        let phase = cur
            .pointer("/status/phase")
            .and_then(Value::as_str)
            .unwrap_or("");
        if node.is_empty() || matches!(phase, "Succeeded" | "Failed") {
            grace = 0;
        }
        if grace == 0 {
            let _ = self.node_tx.send(NodeMsg::Terminate {
                uid: uid.clone(),
                grace: 0,
            });
            if finalizers(cur).is_empty() {
                let last = self
                    .remove_now(r, ns, name)
                    .ok_or_else(|| ApiError::not_found(r.plural(), name))?;
                return Ok((*last).clone());
            }
        }
        let mut v = cur.clone();
        let existing = v
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64);
        if existing.is_some_and(|e| e <= grace) {
            return Ok(v);
        }
        let at = Timestamp::now()
            .checked_add(SignedDuration::from_secs(grace))
            .unwrap_or_else(|_| Timestamp::now());
        v["metadata"]["deletionTimestamp"] = json!(meta::time(at));
        v["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
        let stored = self
            .store()
            .replace(r, ns, name, v)
            .ok_or_else(|| ApiError::not_found(r.plural(), name))?;
        let _ = self.node_tx.send(NodeMsg::Terminate { uid, grace });
        Ok((*stored).clone())
    }

    /// The kubelet's last word on a terminated pod (a delete with grace 0), if the pod with
    /// this uid is still there and waits for nothing else.
    pub fn finish_pod_deletion(&self, ns: &str, name: &str, uid: &str) {
        let cur = self.store().get(Resource::Pods, ns, name);
        let Some(cur) = cur else { return };
        if cur["metadata"]["uid"].as_str() != Some(uid)
            || cur.pointer("/metadata/deletionTimestamp").is_none()
            || !finalizers(&cur).is_empty()
        {
            return;
        }
        self.remove_now(Resource::Pods, ns, name);
    }

    /// Takes an object out of the store and tells the controllers: garbage collection of its
    /// dependents, the node for a pod, claim protection and the volume for a claim.
    pub fn remove_now(&self, r: Resource, ns: &str, name: &str) -> Option<Arc<Value>> {
        let last = self.store().remove(r, ns, name)?;
        let uid = last["metadata"]["uid"].as_str().unwrap_or("").to_owned();
        let _ = self.ctl_tx.send(CtlMsg::OwnerGone {
            namespace: ns.into(),
            uid: uid.clone(),
        });
        match r {
            Resource::Pods => {
                let _ = self.node_tx.send(NodeMsg::Removed { uid });
                let _ = self.ctl_tx.send(CtlMsg::PvcProtection {
                    namespace: ns.into(),
                });
                let _ = self.node_tx.send(NodeMsg::Schedule);
            }
            Resource::PersistentVolumeClaims => {
                let _ = self.ctl_tx.send(CtlMsg::ClaimGone { uid });
            }
            _ => {}
        }
        Some(last)
    }

    /// Objects in `ns` with an owner reference to `uid`.
    pub fn dependents(&self, ns: &str, uid: &str) -> Vec<(Resource, String)> {
        let store = self.store();
        let mut out = Vec::new();
        for r in Resource::ALL {
            for (_, name, v) in store.list(r, Some(ns)) {
                let owned = v
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .is_some_and(|refs| refs.iter().any(|o| o["uid"].as_str() == Some(uid)));
                if owned {
                    out.push((r, name.to_owned()));
                }
            }
        }
        out
    }

    fn orphan_dependents(&self, ns: &str, uid: &str) {
        for (r, name) in self.dependents(ns, uid) {
            let mut store = self.store();
            let Some(cur) = store.get(r, ns, &name) else {
                continue;
            };
            let mut v = (*cur).clone();
            if let Some(refs) = v
                .pointer_mut("/metadata/ownerReferences")
                .and_then(Value::as_array_mut)
            {
                refs.retain(|o| o["uid"].as_str() != Some(uid));
            }
            store.replace(r, ns, &name, v);
        }
    }

    /// Rewrites a pod's status from its current one, if the pod with this uid is still stored;
    /// nothing is written when the status stays the same. Returns the phases before and after.
    pub fn write_pod_status(
        &self,
        ns: &str,
        name: &str,
        uid: &str,
        build: impl FnOnce(&Value) -> Value,
    ) -> Option<(String, String)> {
        let mut store = self.store();
        let cur = store.get(Resource::Pods, ns, name)?;
        if cur["metadata"]["uid"].as_str() != Some(uid) {
            return None;
        }
        let phase = |v: &Value| {
            v.get("phase")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        let old = cur.get("status").cloned().unwrap_or(Value::Null);
        let status = build(&old);
        let phases = (phase(&old), phase(&status));
        if old == status {
            return Some(phases);
        }
        let mut v = (*cur).clone();
        v["status"] = status;
        store.replace(Resource::Pods, ns, name, v);
        Some(phases)
    }

    /// Records an event about `involved` (a stored object), merging repeats into a count, as
    /// the event recorder's aggregation does.
    pub fn event(
        &self,
        involved: &Value,
        field_path: Option<&str>,
        type_: &str,
        reason: &str,
        message: &str,
        component: &str,
    ) {
        let ns = involved["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default");
        let oname = involved["metadata"]["name"].as_str().unwrap_or("");
        let uid = involved["metadata"]["uid"].as_str().unwrap_or("");
        let now = Timestamp::now();
        let mut store = self.store();
        let same = store
            .list(Resource::Events, Some(ns))
            .find(|(_, _, e)| {
                e["involvedObject"]["uid"].as_str() == Some(uid)
                    && e["involvedObject"]["fieldPath"].as_str() == field_path
                    && e["reason"].as_str() == Some(reason)
                    && e["message"].as_str() == Some(message)
                    && e["type"].as_str() == Some(type_)
            })
            .map(|(_, n, e)| (n.to_owned(), (**e).clone()));
        if let Some((ename, mut e)) = same {
            let count = e["count"].as_i64().unwrap_or(1) + 1;
            e["count"] = json!(count);
            e["lastTimestamp"] = json!(meta::time(now));
            store.replace(Resource::Events, ns, &ename, e);
            return;
        }
        let mut involved_ref = json!({
            "kind": involved["kind"].as_str().unwrap_or("Pod"),
            "namespace": ns,
            "name": oname,
            "uid": uid,
            "apiVersion": "v1",
            "resourceVersion": involved["metadata"]["resourceVersion"].clone(),
        });
        if let Some(fp) = field_path {
            involved_ref["fieldPath"] = json!(fp);
        }
        let ename = format!("{oname}.{:016x}", rand::random::<u64>());
        let mut source = json!({"component": component});
        if component == "kubelet" {
            source["host"] = json!(self.cfg.node_name);
        }
        let e = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": ename,
                "namespace": ns,
                "uid": meta::uid(),
                "creationTimestamp": meta::time(now),
            },
            "involvedObject": involved_ref,
            "reason": reason,
            "message": message,
            "source": source,
            "firstTimestamp": meta::time(now),
            "lastTimestamp": meta::time(now),
            "count": 1,
            "type": type_,
            "eventTime": null,
            "reportingComponent": component,
            "reportingInstance": if component == "kubelet" { self.cfg.node_name.clone() } else { String::new() },
        });
        let _ = store.insert(Resource::Events, ns, &ename, e);
    }
}

fn invalid_if_any(kind: &str, name: &str, causes: Vec<Cause>) -> Result<(), ApiError> {
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(kind, name, causes))
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<Value, ApiError> {
    serde_json::to_value(v).map_err(|e| ApiError::internal(format!("encoding: {e}")))
}

/// The system part of a new object's metadata; returns the uid.
fn stamp_meta(v: &mut Value, r: Resource, ns: &str, name: &str, generation: bool) -> String {
    let uid = meta::uid();
    v["apiVersion"] = json!("v1");
    v["kind"] = json!(r.kind());
    let m = &mut v["metadata"];
    m["name"] = json!(name);
    m["namespace"] = json!(ns);
    m["uid"] = json!(uid);
    m["creationTimestamp"] = json!(meta::now());
    if generation {
        m["generation"] = json!(1);
    }
    if let Some(o) = m.as_object_mut() {
        o.remove("deletionTimestamp");
        o.remove("deletionGracePeriodSeconds");
        o.remove("resourceVersion");
        o.remove("managedFields");
        o.remove("selfLink");
    }
    uid
}

pub(crate) fn finalizers(v: &Value) -> Vec<String> {
    v.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// RFC 7386: objects merge key by key, `null` removes, anything else replaces.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// A claim's spec may only change `resources.requests` (grow) and `volumeAttributesClassName`.
fn check_claim_spec_change(cur: &Value, new: &Value, name: &str) -> Result<(), ApiError> {
    let strip = |v: &Value| {
        let mut s = v.get("spec").cloned().unwrap_or(json!({}));
        if let Some(o) = s.as_object_mut() {
            o.remove("volumeAttributesClassName");
            // Filled in by the binder; a client sending it back unchanged or not at all is fine.
            o.remove("volumeName");
            if let Some(r) = o.get_mut("resources").and_then(Value::as_object_mut) {
                r.remove("requests");
            }
        }
        s
    };
    if strip(cur) != strip(new) {
        return Err(ApiError::invalid(
            "PersistentVolumeClaim",
            name,
            vec![Cause::forbidden(
                "spec",
                "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims",
            )],
        ));
    }
    let size = |v: &Value| {
        v.pointer("/spec/resources/requests/storage")
            .and_then(Value::as_str)
            .and_then(crate::quantity::parse)
    };
    if let (Some(a), Some(b)) = (size(cur), size(new))
        && b < a
    {
        return Err(ApiError::invalid(
            "PersistentVolumeClaim",
            name,
            vec![Cause::forbidden(
                "spec.resources.requests.storage",
                "field can not be less than status.capacity",
            )],
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_rfc7386() {
        let mut t = json!({"a": {"b": 1, "c": 2}, "d": [1, 2], "e": 1});
        merge_patch(
            &mut t,
            &json!({"a": {"b": null, "x": 3}, "d": [3], "e": null}),
        );
        assert_eq!(t, json!({"a": {"c": 2, "x": 3}, "d": [3]}));
    }
}
