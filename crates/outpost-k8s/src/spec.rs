//! The pod of a job and its Secret, built from the prepared job and the runner's config: a pure
//! function of its inputs, so the tests can look at every field (and dump a typical pod for
//! `deploy/check.py` to validate against the Kubernetes schema).
//!
//! The pod:
//! - volumes: `outpost-tools` (`emptyDir`: the wrapper and the markers), `workspace` (a generic
//!   ephemeral volume, or an `emptyDir`), one per cache (`cache-<i>`, the claim the job took);
//! - init containers in order: `outpost-install` (runner image: copies the wrapper), then
//!   `outpost-receive` when the checkout has files (runner image, stdin open once: the runner
//!   attaches and streams a tar of the checkout, so no git and no credential is in the spec), then
//!   one native sidecar per service (`svc-<name>`, `restartPolicy: Always`) with a startup probe
//!   from its `ready` check, so that the kubelet starts the steps only once services are ready;
//! - one container per step, `step-<index>`, whose command is the wrapper;
//! - `hostAliases` mapping every service name to 127.0.0.1: a pod's containers share one network
//!   namespace, so a service listens on the pod's loopback, and the alias keeps `db:5432` working
//!   in the pipeline as on the Docker backend (where the name is a network alias). Plain
//!   `localhost` would work too but would make pipelines differ between backends.
//!
//! Secrets never enter the pod: the containers reference them with `secretKeyRef` in the job's
//! Secret (`<pod>-secrets`), which is created after the pod and owned by it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, Secret as KubeSecret};
use outpost_executor::{PreparedJob, StepSpec};
use serde_json::{Value, json};

use crate::config::{KubeConfig, WorkspaceVolume};
use crate::names::{self, JobNames, annotations, labels};
use crate::quantity::{Cpu, Memory};

/// What the pod builder needs besides the job and the config.
#[derive(Debug, Clone)]
pub struct PodInputs<'a> {
    pub names: &'a JobNames,
    pub namespace: &'a str,
    /// The job's deadline in Unix seconds (`outpost.dev/expires-at`).
    pub expires_at: u64,
    /// `activeDeadlineSeconds`.
    pub deadline_seconds: u64,
    /// The claim of each of `job.caches`, in order.
    pub cache_claims: &'a [String],
    /// Whether the checkout has files to send (`outpost-receive` exists only then).
    pub receive: bool,
}

/// Why a pod cannot be built for a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError(pub String);

/// What a step asks for, in Kubernetes quantities.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceRequest {
    pub cpu: Option<String>,
    pub memory: Option<String>,
}

/// A service's readiness check, as its startup probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadyCheck {
    /// `sh -c <command>` in the service's container exits 0.
    Command(String),
    /// The port accepts a TCP connection.
    Tcp(u16),
}

/// The outpost version written on everything.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The termination message file of step containers (Kubernetes' default path, named so the
/// wrapper and the spec say the same).
pub const TERMINATION_LOG: &str = "/dev/termination-log";

/// The key of secret `index` in the job's Secret: by position, because a secret's name may hold
/// characters a key may not.
pub fn secret_key(index: usize) -> String {
    format!("secret-{index}")
}

/// The pod of `job`, with the config's pod template patch applied.
pub fn build_pod(
    job: &PreparedJob,
    config: &KubeConfig,
    inputs: &PodInputs<'_>,
) -> Result<Pod, SpecError> {
    let mut value = pod_value(job, config, inputs)?;
    if let Some(patch) = config.patch().map_err(|e| SpecError(e.to_string()))? {
        merge_patch(&mut value, &patch);
    }
    serde_json::from_value(value).map_err(|e| SpecError(format!("the pod is not a pod: {e}")))
}

/// The pod as JSON, before the patch.
pub fn pod_value(
    job: &PreparedJob,
    config: &KubeConfig,
    inputs: &PodInputs<'_>,
) -> Result<Value, SpecError> {
    let names = inputs.names;
    let workspace = job.container_workspace.as_str();
    if !workspace.starts_with('/') {
        return Err(SpecError(format!(
            "the workspace path `{workspace}` is not absolute"
        )));
    }
    let tools_mount = json!({"name": names::TOOLS_VOLUME, "mountPath": names::TOOLS_MOUNT});
    let workspace_mount = json!({"name": names::WORKSPACE_VOLUME, "mountPath": workspace});
    let mut step_mounts = vec![tools_mount.clone(), workspace_mount.clone()];
    for (i, cache) in job.caches.iter().enumerate() {
        step_mounts.push(json!({"name": names::cache_volume(i), "mountPath": cache.path}));
    }

    let mut volumes = vec![json!({"name": names::TOOLS_VOLUME, "emptyDir": {}})];
    volumes.push(match config.workspace {
        WorkspaceVolume::EmptyDir => json!({
            "name": names::WORKSPACE_VOLUME,
            "emptyDir": {"sizeLimit": config.workspace_size},
        }),
        WorkspaceVolume::Ephemeral => {
            let mut spec = json!({
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": config.workspace_size}},
            });
            if let Some(class) = &config.storage_class {
                spec["storageClassName"] = json!(class);
            }
            json!({
                "name": names::WORKSPACE_VOLUME,
                "ephemeral": {"volumeClaimTemplate": {
                    "metadata": {"labels": names::job_labels(
                        job.runner_id.as_str(), job.job_id.as_str(), inputs.expires_at, "workspace")},
                    "spec": spec,
                }},
            })
        }
    });
    if inputs.cache_claims.len() != job.caches.len() {
        return Err(SpecError("a cache has no claim".to_owned()));
    }
    for (i, claim) in inputs.cache_claims.iter().enumerate() {
        volumes.push(json!({
            "name": names::cache_volume(i),
            "persistentVolumeClaim": {"claimName": claim},
        }));
    }

    let runner_image = |name: &str, args: Vec<String>| {
        json!({
            "name": name,
            "image": config.runner_image,
            "imagePullPolicy": config.runner_image_pull_policy.as_str(),
            "command": args,
            "volumeMounts": [tools_mount.clone(), workspace_mount.clone()],
            "terminationMessagePath": TERMINATION_LOG,
        })
    };
    let mut init = vec![runner_image(
        names::INSTALL_CONTAINER,
        vec![
            config.runner_step_path.clone(),
            "install".to_owned(),
            format!("{}/bin", names::TOOLS_MOUNT),
        ],
    )];
    if inputs.receive {
        let mut receive = runner_image(
            names::RECEIVE_CONTAINER,
            vec![
                format!("{}/bin/outpost-step", names::TOOLS_MOUNT),
                "receive".to_owned(),
                workspace.to_owned(),
            ],
        );
        receive["stdin"] = json!(true);
        receive["stdinOnce"] = json!(true);
        init.push(receive);
    }
    let mut aliases = Vec::new();
    for service in &job.services {
        let mut c = json!({
            "name": names::service_container(&service.name),
            "image": service.image,
            "restartPolicy": "Always",
            "env": plain_env(&service.env),
        });
        if let Some(command) = &service.command {
            // As on Docker: the command replaces the image's arguments, not its entrypoint.
            c["args"] = json!(command);
        }
        if let Some(policy) = config.image_pull_policy {
            c["imagePullPolicy"] = json!(policy.as_str());
        }
        if let Some((check, interval, timeout)) = service_ready(service) {
            c["startupProbe"] = startup_probe(&check, interval, timeout);
        }
        aliases.push(names::dns_safe(&service.name));
        init.push(c);
    }

    let mut containers = Vec::new();
    for step in &job.steps {
        let Some(image) = job.step_image(step) else {
            return Err(SpecError(format!(
                "step `{}` names no image and the job has no default image",
                step.name
            )));
        };
        let mut command = vec![
            names::WRAPPER.to_owned(),
            "run".to_owned(),
            "--index".to_owned(),
            step.index.to_string(),
            "--markers".to_owned(),
            names::MARKERS.to_owned(),
            "--when".to_owned(),
            when_arg(step).to_owned(),
            "--grace".to_owned(),
            outpost_time::format(config.cancel_grace),
            "--termination-log".to_owned(),
            TERMINATION_LOG.to_owned(),
        ];
        if let Some(t) = step.timeout {
            command.push("--timeout".to_owned());
            command.push(outpost_time::format(t));
        }
        command.extend([
            "--".to_owned(),
            "sh".to_owned(),
            "-c".to_owned(),
            step.run.clone(),
        ]);
        let mut c = json!({
            "name": names::step_container(step.index),
            "image": image,
            "command": command,
            "workingDir": workspace,
            "env": step_env(job, step),
            "volumeMounts": step_mounts,
            "terminationMessagePath": TERMINATION_LOG,
            "terminationMessagePolicy": "File",
        });
        if let Some(policy) = config.image_pull_policy {
            c["imagePullPolicy"] = json!(policy.as_str());
        }
        let resources = resources(config, &step_request(step))
            .map_err(|e| SpecError(format!("step `{}`: {e}", step.name)))?;
        if let Some(r) = resources {
            c["resources"] = r;
        }
        containers.push(c);
    }

    let mut spec = json!({
        "restartPolicy": "Never",
        "activeDeadlineSeconds": inputs.deadline_seconds,
        // Steps need no API access; a pipeline that does names a service account and mounts
        // its token through the pod template patch.
        "automountServiceAccountToken": false,
        "enableServiceLinks": false,
        "initContainers": init,
        "containers": containers,
        "volumes": volumes,
    });
    if !aliases.is_empty() {
        spec["hostAliases"] = json!([{"ip": "127.0.0.1", "hostnames": aliases}]);
    }
    if !config.node_selector.is_empty() {
        spec["nodeSelector"] = json!(config.node_selector);
    }
    if !config.tolerations.is_empty() {
        spec["tolerations"] = serde_json::to_value(&config.tolerations)
            .map_err(|e| SpecError(format!("tolerations: {e}")))?;
    }
    if let Some(sa) = &config.service_account {
        spec["serviceAccountName"] = json!(sa);
    }
    if !config.image_pull_secrets.is_empty() {
        spec["imagePullSecrets"] = json!(
            config
                .image_pull_secrets
                .iter()
                .map(|n| json!({"name": n}))
                .collect::<Vec<_>>()
        );
    }
    Ok(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": names.pod,
            "namespace": inputs.namespace,
            "labels": names::job_labels(
                job.runner_id.as_str(), job.job_id.as_str(), inputs.expires_at, "pod"),
            "annotations": {
                annotations::VERSION: VERSION,
                annotations::JOB_ID: job.job_id.as_str(),
            },
        },
        "spec": spec,
    }))
}

/// The job's Secret: one key per secret, owned by the pod (`pod_uid`), so it goes with it.
pub fn build_secret(
    job: &PreparedJob,
    inputs: &PodInputs<'_>,
    pod_uid: &str,
) -> Result<KubeSecret, SpecError> {
    let data: BTreeMap<String, String> = job
        .secrets
        .iter()
        .enumerate()
        .map(|(i, s)| (secret_key(i), s.value.clone()))
        .collect();
    let value = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": inputs.names.secret,
            "namespace": inputs.namespace,
            "labels": names::job_labels(
                job.runner_id.as_str(), job.job_id.as_str(), inputs.expires_at, "secret"),
            "annotations": {annotations::VERSION: VERSION},
            "ownerReferences": [{
                "apiVersion": "v1",
                "kind": "Pod",
                "name": inputs.names.pod,
                "uid": pod_uid,
                "blockOwnerDeletion": true,
            }],
        },
        "type": "Opaque",
        "stringData": data,
    });
    serde_json::from_value(value).map_err(|e| SpecError(format!("the secret is not a secret: {e}")))
}

fn when_arg(step: &StepSpec) -> &'static str {
    match step.when {
        outpost_executor::When::OnSuccess => "on_success",
        outpost_executor::When::OnFailure => "on_failure",
        outpost_executor::When::Always => "always",
    }
}

fn plain_env(env: &BTreeMap<String, String>) -> Vec<Value> {
    env.iter()
        .map(|(k, v)| json!({"name": k, "value": v}))
        .collect()
}

/// The step's environment: job env, then step env, as values; then every secret by reference
/// (secrets win, as in `PreparedJob::step_env`, so a plain value of the same name is left out).
fn step_env(job: &PreparedJob, step: &StepSpec) -> Vec<Value> {
    let mut plain = job.env.clone();
    plain.extend(step.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    for s in &job.secrets {
        plain.remove(&s.name);
    }
    let mut env = plain_env(&plain);
    for (i, s) in job.secrets.iter().enumerate() {
        env.push(json!({
            "name": s.name,
            "valueFrom": {"secretKeyRef": {"name": "", "key": secret_key(i)}},
        }));
    }
    // The Secret's name is the job's; set here so the function needs no names.
    let secret = names::JobNames::new(job.job_id.as_str()).secret;
    for e in &mut env {
        if let Some(r) = e.pointer_mut("/valueFrom/secretKeyRef/name") {
            *r = json!(secret);
        }
    }
    env
}

/// What a step asks for. The pipeline's `resources:` is not in the prepared job yet.
fn step_request(_step: &StepSpec) -> ResourceRequest {
    ResourceRequest::default()
}

/// A service's readiness check with its interval and timeout. The pipeline's `ready:` is not in
/// the prepared job yet.
fn service_ready(
    _service: &outpost_executor::ServiceSpec,
) -> Option<(ReadyCheck, std::time::Duration, std::time::Duration)> {
    None
}

/// The startup probe of a service's readiness check: tried every `interval`, failed after
/// `timeout` (the kubelet then restarts the sidecar; the runner's unschedulable and image
/// limits do not apply, the job's deadline does).
pub fn startup_probe(
    check: &ReadyCheck,
    interval: std::time::Duration,
    timeout: std::time::Duration,
) -> Value {
    let period = interval.as_secs().max(1);
    let failures = timeout.as_secs().div_ceil(period).max(1);
    let mut probe = json!({
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": period,
    });
    match check {
        ReadyCheck::Command(cmd) => probe["exec"] = json!({"command": ["sh", "-c", cmd]}),
        ReadyCheck::Tcp(port) => probe["tcpSocket"] = json!({"port": port}),
    }
    probe
}

/// Requests and limits of a step: its request, else the runner's default, refused above the
/// maxima. Requests equal limits, so a step gets what it asked for and no more.
pub fn resources(config: &KubeConfig, req: &ResourceRequest) -> Result<Option<Value>, String> {
    let cpu = req.cpu.clone().or_else(|| config.cpu.clone());
    let memory = req.memory.clone().or_else(|| config.memory.clone());
    if let (Some(c), Some(max)) = (&cpu, &config.cpu_max)
        && Cpu::parse(c)? > Cpu::parse(max)?
    {
        return Err(format!(
            "{c} CPUs requested, the runner allows at most {max}"
        ));
    }
    if let (Some(m), Some(max)) = (&memory, &config.memory_max)
        && Memory::parse(m)? > Memory::parse(max)?
    {
        return Err(format!(
            "{m} of memory requested, the runner allows at most {max}"
        ));
    }
    let mut r = serde_json::Map::new();
    if let Some(c) = cpu {
        r.insert("cpu".to_owned(), json!(c));
    }
    if let Some(m) = memory {
        r.insert("memory".to_owned(), json!(m));
    }
    if r.is_empty() {
        return Ok(None);
    }
    Ok(Some(json!({"requests": r, "limits": r})))
}

/// RFC 7386: objects merge key by key, `null` removes a key, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    let Value::Object(map) = target else {
        return;
    };
    for (k, v) in patch {
        if v.is_null() {
            map.remove(k);
        } else {
            merge_patch(map.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// Labels and names a test or a sweep reads back from a pod.
pub fn pod_job_id(pod: &Pod) -> Option<String> {
    let meta = &pod.metadata;
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(annotations::JOB_ID).cloned())
        .or_else(|| meta.labels.as_ref()?.get(labels::JOB_ID).cloned())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use outpost_executor::{CacheSpec, JobId, RunnerId, Secret, ServiceSpec, When};

    use super::*;

    pub(crate) fn typical_job() -> PreparedJob {
        let step = |index: u32, name: &str, when: When, image: Option<&str>| StepSpec {
            index,
            name: name.to_owned(),
            image: image.map(str::to_owned),
            run: format!("echo {name}"),
            env: BTreeMap::from([("STEP".to_owned(), name.to_owned())]),
            timeout: (index == 0).then(|| std::time::Duration::from_secs(90)),
            when,
        };
        PreparedJob {
            job_id: JobId::from("j_01ABC"),
            runner_id: RunnerId::from("r_7"),
            cache_scope: "org/repo".to_owned(),
            workspace: PathBuf::from("/tmp/checkout"),
            container_workspace: "/workspace".to_owned(),
            default_image: Some("busybox:1".to_owned()),
            env: BTreeMap::from([
                ("GREETING".to_owned(), "hello".to_owned()),
                (
                    "TOKEN".to_owned(),
                    "plain, shadowed by the secret".to_owned(),
                ),
            ]),
            secrets: vec![Secret {
                name: "TOKEN".to_owned(),
                value: "s3cr3t-value".to_owned(),
            }],
            services: vec![ServiceSpec {
                name: "db".to_owned(),
                image: "postgres:16".to_owned(),
                env: BTreeMap::from([("POSTGRES_PASSWORD".to_owned(), "x".to_owned())]),
                command: None,
            }],
            caches: vec![CacheSpec {
                name: "cargo".to_owned(),
                path: "/cache/cargo".to_owned(),
            }],
            steps: vec![
                step(0, "build", When::OnSuccess, None),
                step(1, "report", When::OnFailure, Some("alpine:3")),
                step(2, "cleanup", When::Always, None),
            ],
            timeout: Some(std::time::Duration::from_secs(600)),
        }
    }

    fn inputs<'a>(names: &'a JobNames, claims: &'a [String]) -> PodInputs<'a> {
        PodInputs {
            names,
            namespace: "ci",
            expires_at: 1_900_000_000,
            deadline_seconds: 600,
            cache_claims: claims,
            receive: true,
        }
    }

    fn built(job: &PreparedJob, config: &KubeConfig) -> Value {
        let names = JobNames::new(job.job_id.as_str());
        let claims = vec!["outpost-cache-1".to_owned(); job.caches.len()];
        let pod = build_pod(job, config, &inputs(&names, &claims)).expect("a pod");
        serde_json::to_value(&pod).expect("serializable")
    }

    /// The value at each JSON pointer, as compact JSON (`-` when absent).
    #[track_caller]
    fn check(pod: &Value, expected: &[(&str, &str)]) {
        for (pointer, want) in expected {
            let got = pod
                .pointer(pointer)
                .map_or("-".to_owned(), |v| v.to_string());
            assert_eq!(&got, want, "at {pointer}");
        }
    }

    #[test]
    fn every_field_survives_the_typed_pod() {
        // A field k8s-openapi does not know would be dropped on the way through `Pod`: the JSON
        // the builder made and the typed pod's JSON are the same.
        let job = typical_job();
        let names = JobNames::new(job.job_id.as_str());
        let claims = vec!["outpost-cache-1".to_owned()];
        let raw = pod_value(&job, &KubeConfig::default(), &inputs(&names, &claims)).expect("a pod");
        assert_eq!(built(&job, &KubeConfig::default()), raw);
        // So do the probes of readiness checks.
        let mut with_probe = raw.clone();
        let s = std::time::Duration::from_secs;
        with_probe["spec"]["initContainers"][2]["startupProbe"] =
            startup_probe(&ReadyCheck::Command("true".into()), s(1), s(3));
        let typed: Pod = serde_json::from_value(with_probe.clone()).expect("a pod");
        assert_eq!(serde_json::to_value(&typed).expect("json"), with_probe);
    }

    #[test]
    fn metadata_labels_and_policies() {
        let pod = built(&typical_job(), &KubeConfig::default());
        check(
            &pod,
            &[
                ("/metadata/name", r#""outpost-j-01abc""#),
                ("/metadata/namespace", r#""ci""#),
                (
                    "/metadata/labels/app.kubernetes.io~1managed-by",
                    r#""outpost""#,
                ),
                ("/metadata/labels/outpost.dev~1runner-id", r#""r_7""#),
                ("/metadata/labels/outpost.dev~1job-id", r#""j_01ABC""#),
                (
                    "/metadata/labels/outpost.dev~1expires-at",
                    r#""1900000000""#,
                ),
                (
                    "/metadata/annotations/outpost.dev~1version",
                    &format!("\"{VERSION}\""),
                ),
                ("/spec/restartPolicy", r#""Never""#),
                ("/spec/activeDeadlineSeconds", "600"),
                ("/spec/automountServiceAccountToken", "false"),
            ],
        );
    }

    #[test]
    fn init_containers_in_order_with_sidecars_and_aliases() {
        let pod = built(&typical_job(), &KubeConfig::default());
        let names: Vec<&str> = pod["spec"]["initContainers"]
            .as_array()
            .expect("init containers")
            .iter()
            .map(|c| c["name"].as_str().expect("a name"))
            .collect();
        assert_eq!(names, ["outpost-install", "outpost-receive", "svc-db"]);
        check(
            &pod,
            &[
                (
                    "/spec/initContainers/0/image",
                    r#""outpost/runner-k8s:dev""#,
                ),
                (
                    "/spec/initContainers/0/command",
                    r#"["/usr/local/bin/outpost-step","install","/outpost/bin"]"#,
                ),
                (
                    "/spec/initContainers/1/command",
                    r#"["/outpost/bin/outpost-step","receive","/workspace"]"#,
                ),
                ("/spec/initContainers/1/stdin", "true"),
                ("/spec/initContainers/1/stdinOnce", "true"),
                ("/spec/initContainers/2/restartPolicy", r#""Always""#),
                ("/spec/initContainers/2/image", r#""postgres:16""#),
                ("/spec/initContainers/0/restartPolicy", "-"),
                (
                    "/spec/hostAliases",
                    r#"[{"hostnames":["db"],"ip":"127.0.0.1"}]"#,
                ),
            ],
        );
        // No checkout, no receive.
        let mut job = typical_job();
        job.services.clear();
        let names = JobNames::new(job.job_id.as_str());
        let claims = vec!["c".to_owned()];
        let mut i = inputs(&names, &claims);
        i.receive = false;
        let pod = serde_json::to_value(build_pod(&job, &KubeConfig::default(), &i).expect("pod"))
            .expect("json");
        check(
            &pod,
            &[("/spec/initContainers/1", "-"), ("/spec/hostAliases", "-")],
        );
    }

    #[test]
    fn step_containers_run_the_wrapper() {
        let pod = built(&typical_job(), &KubeConfig::default());
        check(
            &pod,
            &[
                ("/spec/containers/0/name", r#""step-0""#),
                ("/spec/containers/0/image", r#""busybox:1""#),
                ("/spec/containers/1/image", r#""alpine:3""#),
                (
                    "/spec/containers/0/command",
                    r#"["/outpost/bin/outpost-step","run","--index","0","--markers","/outpost/markers","--when","on_success","--grace","10s","--termination-log","/dev/termination-log","--timeout","1m30s","--","sh","-c","echo build"]"#,
                ),
                ("/spec/containers/1/command/7", r#""on_failure""#),
                ("/spec/containers/2/command/7", r#""always""#),
                ("/spec/containers/0/workingDir", r#""/workspace""#),
                (
                    "/spec/containers/0/terminationMessagePath",
                    r#""/dev/termination-log""#,
                ),
                (
                    "/spec/containers/0/volumeMounts/2/mountPath",
                    r#""/cache/cargo""#,
                ),
                (
                    "/spec/volumes/2/persistentVolumeClaim/claimName",
                    r#""outpost-cache-1""#,
                ),
                (
                    "/spec/volumes/1/ephemeral/volumeClaimTemplate/spec/resources/requests/storage",
                    r#""1Gi""#,
                ),
                ("/spec/containers/0/resources", "-"),
            ],
        );
        let mut job = typical_job();
        job.default_image = None;
        let names = JobNames::new(job.job_id.as_str());
        let claims = vec!["c".to_owned()];
        let err = build_pod(&job, &KubeConfig::default(), &inputs(&names, &claims))
            .expect_err("a step without an image");
        assert!(err.0.contains("step `build` names no image"), "{err:?}");
    }

    #[test]
    fn secrets_are_referenced_never_written() {
        let job = typical_job();
        let pod = built(&job, &KubeConfig::default());
        let text = pod.to_string();
        assert!(
            !text.contains("s3cr3t-value"),
            "a secret value in the pod: {text}"
        );
        assert!(!text.contains("shadowed by the secret"), "{text}");
        check(
            &pod,
            &[
                (
                    "/spec/containers/0/env/0",
                    r#"{"name":"GREETING","value":"hello"}"#,
                ),
                (
                    "/spec/containers/0/env/1",
                    r#"{"name":"STEP","value":"build"}"#,
                ),
                (
                    "/spec/containers/0/env/2",
                    r#"{"name":"TOKEN","valueFrom":{"secretKeyRef":{"key":"secret-0","name":"outpost-j-01abc-secrets"}}}"#,
                ),
            ],
        );
        let names = JobNames::new(job.job_id.as_str());
        let claims = vec!["c".to_owned()];
        let secret = build_secret(&job, &inputs(&names, &claims), "uid-1").expect("a secret");
        let s = serde_json::to_value(&secret).expect("json");
        check(
            &s,
            &[
                ("/metadata/name", r#""outpost-j-01abc-secrets""#),
                ("/metadata/ownerReferences/0/uid", r#""uid-1""#),
                ("/metadata/ownerReferences/0/kind", r#""Pod""#),
                ("/stringData/secret-0", r#""s3cr3t-value""#),
            ],
        );
    }

    #[test]
    fn customisation_from_the_config() {
        let config: KubeConfig = serde_json::from_value(json!({
            "node_selector": {"pool": "ci"},
            "tolerations": [{"key": "ci", "operator": "Exists", "effect": "NoSchedule"}],
            "service_account": "builder",
            "image_pull_secrets": ["regcred"],
            "cpu": "500m",
            "memory": "256Mi",
            "image_pull_policy": "Always",
            "workspace": "empty_dir",
            "pod_template_patch": {"spec": {"priorityClassName": "ci", "enableServiceLinks": null}},
        }))
        .expect("a config");
        let pod = built(&typical_job(), &config);
        check(
            &pod,
            &[
                ("/spec/nodeSelector", r#"{"pool":"ci"}"#),
                ("/spec/tolerations/0/key", r#""ci""#),
                ("/spec/serviceAccountName", r#""builder""#),
                ("/spec/imagePullSecrets", r#"[{"name":"regcred"}]"#),
                (
                    "/spec/containers/0/resources",
                    r#"{"limits":{"cpu":"500m","memory":"256Mi"},"requests":{"cpu":"500m","memory":"256Mi"}}"#,
                ),
                ("/spec/containers/0/imagePullPolicy", r#""Always""#),
                ("/spec/volumes/1/emptyDir/sizeLimit", r#""1Gi""#),
                ("/spec/priorityClassName", r#""ci""#),
                ("/spec/enableServiceLinks", "-"),
            ],
        );
        let strict = KubeConfig {
            memory: Some("1Gi".into()),
            memory_max: Some("512Mi".into()),
            ..KubeConfig::default()
        };
        assert!(resources(&strict, &ResourceRequest::default()).is_err());
        let asks = ResourceRequest {
            cpu: Some("2".into()),
            memory: None,
        };
        let capped = KubeConfig {
            cpu_max: Some("1".into()),
            ..KubeConfig::default()
        };
        let err = resources(&capped, &asks).expect_err("above the maximum");
        assert!(err.contains("at most 1"), "{err}");
    }

    #[test]
    fn readiness_checks_are_startup_probes() {
        let s = std::time::Duration::from_secs;
        let probe = startup_probe(&ReadyCheck::Tcp(5432), s(2), s(60));
        assert_eq!(
            probe,
            json!({"periodSeconds": 2, "failureThreshold": 30, "timeoutSeconds": 2,
                   "tcpSocket": {"port": 5432}})
        );
        let probe = startup_probe(&ReadyCheck::Command("pg_isready".into()), s(0), s(5));
        assert_eq!(probe["exec"]["command"], json!(["sh", "-c", "pg_isready"]));
        assert_eq!(probe["periodSeconds"], json!(1));
        assert_eq!(probe["failureThreshold"], json!(5));
    }

    #[test]
    fn merge_patches() {
        let mut v = json!({"a": {"b": 1, "c": 2}, "d": [1]});
        merge_patch(&mut v, &json!({"a": {"b": null, "e": 3}, "d": [2]}));
        assert_eq!(v, json!({"a": {"c": 2, "e": 3}, "d": [2]}));
    }

    /// The pod of a typical job as JSON in `target/k8s-pod-specs/` (`OUTPOST_K8S_POD_SPECS`
    /// overrides), for `deploy/check.py` to validate with kubernetes-validate --strict.
    #[test]
    fn typical_pod_spec_is_written_for_the_schema_check() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
        // A relative directory is the workspace's, as deploy/check.py reads it.
        let dir = std::env::var_os("OUTPOST_K8S_POD_SPECS")
            .map(|d| root.join(d))
            .unwrap_or_else(|| {
                let target = std::env::var_os("CARGO_TARGET_DIR")
                    .map(|d| root.join(d))
                    .unwrap_or_else(|| root.join("target"));
                target.join("k8s-pod-specs")
            });
        std::fs::create_dir_all(&dir).expect("create the pod spec directory");
        let pod = built(&typical_job(), &KubeConfig::default());
        let text = serde_json::to_string_pretty(&pod).expect("json");
        std::fs::write(dir.join("typical-job.json"), text).expect("write the pod spec");
        // The runner's customisations, an emptyDir workspace and a service's startup probe.
        let config: KubeConfig = serde_json::from_value(json!({
            "node_selector": {"pool": "ci"},
            "tolerations": [{"key": "ci", "operator": "Exists", "effect": "NoSchedule"}],
            "service_account": "builder",
            "image_pull_secrets": ["regcred"],
            "cpu": "500m",
            "memory": "256Mi",
            "image_pull_policy": "Always",
            "workspace": "empty_dir",
            "pod_template_patch": {"spec": {"priorityClassName": "ci"}},
        }))
        .expect("a config");
        let mut custom = built(&typical_job(), &config);
        let s = std::time::Duration::from_secs;
        custom["spec"]["initContainers"][2]["startupProbe"] =
            startup_probe(&ReadyCheck::Tcp(5432), s(2), s(60));
        let text = serde_json::to_string_pretty(&custom).expect("json");
        std::fs::write(dir.join("customised-job.json"), text).expect("write the pod spec");
        let job = typical_job();
        let names = JobNames::new(job.job_id.as_str());
        let claims = vec!["c".to_owned()];
        let secret = build_secret(
            &job,
            &inputs(&names, &claims),
            "0d9b0a50-0000-4000-8000-000000000001",
        )
        .expect("secret");
        let mut s = serde_json::to_value(&secret).expect("json");
        // The file is for the schema, not for people: no secret value in it either.
        s["stringData"]["secret-0"] = json!("redacted");
        std::fs::write(
            dir.join("typical-job-secret.json"),
            serde_json::to_string_pretty(&s).expect("json"),
        )
        .expect("write the secret spec");
    }
}
