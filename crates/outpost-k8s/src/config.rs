//! The Kubernetes backend's configuration (`[executor]` of runner-k8s): typed,
//! `deny_unknown_fields`, every default documented here and set in one place
//! ([`KubeConfig::default`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::K8sError;
use crate::quantity::{Cpu, Memory};

/// When the kubelet pulls an image (`imagePullPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// Where a job's workspace lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkspaceVolume {
    /// A generic ephemeral volume: a claim `<pod>-workspace` made from the pod's template and
    /// owned by the pod, so it goes with it (the default).
    #[default]
    Ephemeral,
    /// An `emptyDir` on the node (no storage class needed; bounded by the node's disk).
    #[serde(alias = "empty-dir")]
    EmptyDir,
}

/// Configuration of the Kubernetes backend (`[executor]` in runner-k8s's config file).
///
/// The runner id is not configured here: it comes with every job and every call of
/// `running_jobs` and `sweep`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubeConfig {
    /// A kubeconfig file. Default: none, then `KUBECONFIG` or `~/.kube/config` when present,
    /// else the in-cluster configuration (the pod's service account). runner-k8s's
    /// `--kubeconfig` wins over this.
    pub kubeconfig: Option<PathBuf>,
    /// The namespace of job pods, claims and secrets. Default: in a cluster, the namespace of
    /// the runner's own service account (`/var/run/secrets/kubernetes.io/serviceaccount/
    /// namespace`); with a kubeconfig, its context's namespace; else `default`.
    pub namespace: Option<String>,
    /// The image the init containers of every job pod run (`outpost-step install` and
    /// `receive`): the runner's own image, which ships the step wrapper. Default
    /// `outpost/runner-k8s:dev`.
    pub runner_image: String,
    /// Where the step wrapper is in `runner_image`. Default `/usr/local/bin/outpost-step`.
    pub runner_step_path: String,
    /// Pull policy of `runner_image`. Default `IfNotPresent`.
    pub runner_image_pull_policy: PullPolicy,
    /// Pull policy of step and service images. Default: none (Kubernetes' own default:
    /// `Always` for `:latest` and untagged images, else `IfNotPresent`).
    pub image_pull_policy: Option<PullPolicy>,
    /// Where the workspace lives: `ephemeral` (default) or `empty_dir`.
    pub workspace: WorkspaceVolume,
    /// Storage class of workspace and cache claims. Default: none (the cluster's default
    /// class).
    pub storage_class: Option<String>,
    /// Size of workspace claims (and the `sizeLimit` of an `emptyDir` workspace). Default
    /// `1Gi`.
    pub workspace_size: String,
    /// Storage class of cache claims when it differs from `storage_class` (e.g. one that
    /// offers `ReadWriteMany`). Default: `storage_class`.
    pub cache_storage_class: Option<String>,
    /// Size of a new cache claim. Default `1Gi`.
    pub cache_size: String,
    /// Access mode of new cache claims: `ReadWriteOnce` (default; one job at a time) or
    /// `ReadWriteMany` (shared by the jobs of a scope that run at once).
    pub cache_access_mode: String,
    /// A cache claim unused for this long is deleted by `sweep`. Default `7days`.
    #[serde(with = "outpost_time::serde_duration")]
    pub cache_retention: Duration,
    /// `activeDeadlineSeconds` of the pod of a job without a timeout, and how long its
    /// resources are labelled to live (`outpost.dev/expires-at`). Default `24h`.
    #[serde(with = "outpost_time::serde_duration")]
    pub default_timeout: Duration,
    /// Grace period of the pod's deletion on cancel (the running step gets SIGTERM, then
    /// SIGKILL after this). Default `10s`.
    #[serde(with = "outpost_time::serde_duration")]
    pub cancel_grace: Duration,
    /// How long a container may wait in `ErrImagePull`, `ImagePullBackOff` or
    /// `InvalidImageName` before its step fails with class `image_pull`. Default `1m`.
    #[serde(with = "outpost_time::serde_duration")]
    pub image_pull_grace: Duration,
    /// How long a pod may stay unschedulable (`PodScheduled=False`, `Unschedulable`) before the
    /// job fails with class `infrastructure` and the scheduler's message. Default `5m`.
    #[serde(with = "outpost_time::serde_duration")]
    pub unschedulable_timeout: Duration,
    /// `nodeSelector` of job pods. Default: none.
    pub node_selector: BTreeMap<String, String>,
    /// `tolerations` of job pods, as in a pod spec (`key`, `operator`, `value`, `effect`,
    /// `tolerationSeconds`). Default: none.
    pub tolerations: Vec<k8s_openapi::api::core::v1::Toleration>,
    /// `serviceAccountName` of job pods. Default: none (the namespace's `default`; the token
    /// is not mounted either way, see `automountServiceAccountToken`).
    pub service_account: Option<String>,
    /// Names of `imagePullSecrets` of job pods. Default: none.
    pub image_pull_secrets: Vec<String>,
    /// CPU request and limit of a step that asks for none (e.g. `500m`, `2`). Default: none.
    pub cpu: Option<String>,
    /// The most CPU a step may ask for. Default: no maximum.
    pub cpu_max: Option<String>,
    /// Memory request and limit of a step that asks for none (e.g. `512Mi`). Default: none.
    pub memory: Option<String>,
    /// The most memory a step may ask for. Default: no maximum.
    pub memory_max: Option<String>,
    /// A JSON merge patch (RFC 7386) applied to every job pod just before it is created, as a
    /// TOML table or as a string of JSON, e.g. `{"spec": {"priorityClassName": "ci"}}`.
    /// Default: none. What it sets wins over what the backend made, so it can break a pod.
    pub pod_template_patch: Option<serde_json::Value>,
}

impl Default for KubeConfig {
    fn default() -> Self {
        Self {
            kubeconfig: None,
            namespace: None,
            runner_image: "outpost/runner-k8s:dev".to_owned(),
            runner_step_path: "/usr/local/bin/outpost-step".to_owned(),
            runner_image_pull_policy: PullPolicy::IfNotPresent,
            image_pull_policy: None,
            workspace: WorkspaceVolume::Ephemeral,
            storage_class: None,
            workspace_size: "1Gi".to_owned(),
            cache_storage_class: None,
            cache_size: "1Gi".to_owned(),
            cache_access_mode: "ReadWriteOnce".to_owned(),
            cache_retention: Duration::from_secs(7 * 24 * 3600),
            default_timeout: Duration::from_secs(24 * 3600),
            cancel_grace: Duration::from_secs(10),
            image_pull_grace: Duration::from_secs(60),
            unschedulable_timeout: Duration::from_secs(300),
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            service_account: None,
            image_pull_secrets: Vec::new(),
            cpu: None,
            cpu_max: None,
            memory: None,
            memory_max: None,
            pod_template_patch: None,
        }
    }
}

impl KubeConfig {
    /// Checks what serde cannot: quantities, defaults within maxima, the access mode, names.
    pub fn validate(&self) -> Result<(), K8sError> {
        let bad = |key: &'static str, message: String| Err(K8sError::Config { key, message });
        for (key, q) in [("cpu", &self.cpu), ("cpu_max", &self.cpu_max)] {
            if let Some(q) = q {
                Cpu::parse(q).map_err(|message| K8sError::Config { key, message })?;
            }
        }
        for (key, q) in [
            ("memory", &self.memory),
            ("memory_max", &self.memory_max),
            ("workspace_size", &Some(self.workspace_size.clone())),
            ("cache_size", &Some(self.cache_size.clone())),
        ] {
            if let Some(q) = q {
                Memory::parse(q).map_err(|message| K8sError::Config { key, message })?;
            }
        }
        if let (Some(d), Some(m)) = (&self.cpu, &self.cpu_max)
            && Cpu::parse(d).ok() > Cpu::parse(m).ok()
        {
            return bad("cpu", format!("the default {d} is above cpu_max {m}"));
        }
        if let (Some(d), Some(m)) = (&self.memory, &self.memory_max)
            && Memory::parse(d).ok() > Memory::parse(m).ok()
        {
            return bad("memory", format!("the default {d} is above memory_max {m}"));
        }
        if !matches!(
            self.cache_access_mode.as_str(),
            "ReadWriteOnce" | "ReadWriteMany" | "ReadWriteOncePod"
        ) {
            return bad(
                "cache_access_mode",
                format!(
                    "`{}` is not ReadWriteOnce, ReadWriteMany or ReadWriteOncePod",
                    self.cache_access_mode
                ),
            );
        }
        if let Some(ns) = &self.namespace
            && !crate::names::is_dns_label(ns)
        {
            return bad("namespace", format!("`{ns}` is not a valid namespace name"));
        }
        if self.runner_image.trim().is_empty() {
            return bad("runner_image", "must name an image".to_owned());
        }
        if !self.runner_step_path.starts_with('/') {
            return bad(
                "runner_step_path",
                format!("`{}` must be an absolute path", self.runner_step_path),
            );
        }
        if self.default_timeout.as_secs() == 0 {
            return bad("default_timeout", "must be at least 1s".to_owned());
        }
        self.patch()?;
        Ok(())
    }

    /// The pod template patch as JSON (a string holding JSON is parsed).
    pub fn patch(&self) -> Result<Option<serde_json::Value>, K8sError> {
        match &self.pod_template_patch {
            None => Ok(None),
            Some(serde_json::Value::String(text)) => {
                serde_json::from_str(text)
                    .map(Some)
                    .map_err(|e| K8sError::Config {
                        key: "pod_template_patch",
                        message: format!("not JSON: {e}"),
                    })
            }
            Some(v @ serde_json::Value::Object(_)) => Ok(Some(v.clone())),
            Some(other) => Err(K8sError::Config {
                key: "pod_template_patch",
                message: format!("must be a table (an object), not {other}"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(json: &str, expected: Result<(), &str>) {
        let got = serde_json::from_str::<KubeConfig>(json)
            .map_err(|e| e.to_string())
            .and_then(|c| c.validate().map_err(|e| e.to_string()));
        match (got, expected) {
            (Ok(()), Ok(())) => {}
            (Err(e), Err(want)) => assert!(e.contains(want), "{json}: {e} lacks {want}"),
            (got, want) => panic!("{json}: got {got:?}, expected {want:?}"),
        }
    }

    #[test]
    fn settings_are_checked_and_name_themselves() {
        check("{}", Ok(()));
        check(
            r#"{"cpu": "500m", "cpu_max": "2", "memory": "64Mi"}"#,
            Ok(()),
        );
        check(r#"{"cpu": "3", "cpu_max": "2"}"#, Err("cpu_max"));
        check(
            r#"{"memory": "1Gi", "memory_max": "512Mi"}"#,
            Err("memory_max"),
        );
        check(r#"{"memroy": "1Gi"}"#, Err("memroy"));
        check(r#"{"memory": "lots"}"#, Err("memory"));
        check(
            r#"{"cache_access_mode": "ReadOnlyMany"}"#,
            Err("cache_access_mode"),
        );
        check(
            r#"{"cancel_grace": "2s", "cache_retention": "3days"}"#,
            Ok(()),
        );
        check(r#"{"cancel_grace": "soon"}"#, Err("soon"));
        check(r#"{"namespace": "Bad_NS"}"#, Err("namespace"));
        check(r#"{"pod_template_patch": "{\"spec\": {}}"}"#, Ok(()));
        check(
            r#"{"pod_template_patch": "{nope"}"#,
            Err("pod_template_patch"),
        );
        check(
            r#"{"pod_template_patch": {"spec": {"priorityClassName": "ci"}}}"#,
            Ok(()),
        );
        check(
            r#"{"tolerations": [{"key": "ci", "operator": "Exists", "effect": "NoSchedule"}]}"#,
            Ok(()),
        );
    }

    /// Every key the Helm chart can render into `[executor]`
    /// (`outpost-runner.executorConfig` in deploy/helm/outpost-runner/templates/_helpers.tpl),
    /// with the kind of value it renders, is a key of this section.
    #[test]
    fn the_charts_keys_are_this_sections() {
        check(
            r#"{"namespace": "ci", "workspace": "empty_dir", "workspace_size": "10Gi",
                "storage_class": "fast", "cache_retention": "7days",
                "unschedulable_timeout": "5m", "image_pull_grace": "2m",
                "node_selector": {"pool": "ci"},
                "tolerations": [{"key": "ci", "operator": "Exists"}],
                "service_account": "builder", "image_pull_secrets": ["regcred"],
                "cpu": "500m", "memory": "1Gi", "cpu_max": "2", "memory_max": "4Gi",
                "pod_template_patch": {"spec": {"priorityClassName": "ci"}}}"#,
            Ok(()),
        );
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = KubeConfig::default();
        assert_eq!(c.runner_image, "outpost/runner-k8s:dev");
        assert_eq!(c.cancel_grace, Duration::from_secs(10));
        assert_eq!(c.cache_access_mode, "ReadWriteOnce");
        assert_eq!(c.workspace, WorkspaceVolume::Ephemeral);
    }
}
