//! The node's use of the Docker engine: names and labels of what it creates, volumes, exec (for
//! probes), stopping, image lookups and reference syntax, and the purge of everything labelled
//! with the stand-in's instance id.

use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::VolumeCreateRequest;
use bollard::query_parameters::{
    ListContainersOptions, ListVolumesOptions, RemoveContainerOptions, StopContainerOptions,
};
use futures_util::StreamExt;

/// The label every container and volume of one stand-in carries (value: the instance id).
pub(crate) const INSTANCE_LABEL: &str = "outpost-kube-sim";
pub(crate) const POD_UID_LABEL: &str = "outpost-kube-sim.pod-uid";

pub(crate) fn labels(instance: &str, extra: &[(&str, &str)]) -> HashMap<String, String> {
    let mut l = HashMap::from([(INSTANCE_LABEL.to_owned(), instance.to_owned())]);
    for (k, v) in extra {
        l.insert(format!("outpost-kube-sim.{k}"), (*v).to_owned());
    }
    l
}

/// dockershim's naming: `k8s_<container>_<pod>_<namespace>_<uid>_<attempt>`, plus the instance.
pub(crate) fn container_name(
    instance: &str,
    container: &str,
    pod: &str,
    ns: &str,
    uid: &str,
    attempt: i32,
) -> String {
    format!(
        "k8s_{container}_{pod}_{ns}_{}_{attempt}_{instance}",
        &uid[..8.min(uid.len())]
    )
}

pub(crate) fn claim_volume(instance: &str, claim_uid: &str) -> String {
    format!("oks-{instance}-pvc-{claim_uid}")
}

pub(crate) fn empty_dir_volume(instance: &str, pod_uid: &str, volume: &str) -> String {
    format!("oks-{instance}-{pod_uid}-{volume}")
}

pub(crate) fn status_of(e: &bollard::errors::Error) -> Option<u16> {
    match e {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

pub(crate) fn message_of(e: &bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// Creates a volume (idempotent: the engine answers the existing one). `memory` makes it a
/// tmpfs, as `emptyDir.medium: Memory`.
pub(crate) async fn create_volume(
    docker: &Docker,
    name: &str,
    labels: HashMap<String, String>,
    memory: Option<Option<u64>>,
) -> Result<(), bollard::errors::Error> {
    let mut driver_opts = HashMap::new();
    if let Some(size) = memory {
        driver_opts.insert("type".to_owned(), "tmpfs".to_owned());
        driver_opts.insert("device".to_owned(), "tmpfs".to_owned());
        if let Some(size) = size {
            driver_opts.insert("o".to_owned(), format!("size={size}"));
        }
    }
    docker
        .create_volume(VolumeCreateRequest {
            name: Some(name.to_owned()),
            driver: Some("local".to_owned()),
            driver_opts: Some(driver_opts),
            labels: Some(labels),
            ..Default::default()
        })
        .await
        .map(|_| ())
}

/// Removes a volume; `true` when it is gone (or never was).
pub(crate) async fn remove_volume(docker: &Docker, name: &str) -> bool {
    match docker
        .remove_volume(name, None::<bollard::query_parameters::RemoveVolumeOptions>)
        .await
    {
        Ok(()) => true,
        Err(e) if status_of(&e) == Some(404) => true,
        Err(e) => {
            tracing::debug!(volume = name, error = %message_of(&e), "volume not removed yet");
            false
        }
    }
}

/// SIGTERM (the image's stop signal), SIGKILL after `grace` seconds.
pub(crate) async fn stop(docker: &Docker, id: &str, grace: i64) {
    let t = i32::try_from(grace.max(0)).unwrap_or(i32::MAX);
    match docker
        .stop_container(
            id,
            Some(StopContainerOptions {
                t: Some(t),
                signal: None,
            }),
        )
        .await
    {
        Ok(()) => {}
        Err(e) if matches!(status_of(&e), Some(304 | 404)) => {}
        Err(e) => {
            tracing::debug!(container = id, error = %message_of(&e), "stop failed; killing");
            let _ = docker
                .kill_container(id, None::<bollard::query_parameters::KillContainerOptions>)
                .await;
        }
    }
}

pub(crate) async fn force_remove(docker: &Docker, id: &str) {
    let _ = docker
        .remove_container(
            id,
            Some(RemoveContainerOptions {
                force: true,
                v: false,
                ..Default::default()
            }),
        )
        .await;
}

/// Containers (any state) carrying `label=value`.
pub(crate) async fn containers_with(docker: &Docker, label: &str, value: &str) -> Vec<String> {
    let filters = HashMap::from([("label".to_owned(), vec![format!("{label}={value}")])]);
    docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .map(|l| l.into_iter().filter_map(|c| c.id).collect())
        .unwrap_or_default()
}

pub(crate) async fn volumes_with(docker: &Docker, label: &str, value: &str) -> Vec<String> {
    let filters = HashMap::from([("label".to_owned(), vec![format!("{label}={value}")])]);
    docker
        .list_volumes(Some(ListVolumesOptions {
            filters: Some(filters),
        }))
        .await
        .ok()
        .and_then(|r| r.volumes)
        .unwrap_or_default()
        .into_iter()
        .map(|v| v.name)
        .collect()
}

/// Removes every container and volume of this instance.
pub(crate) async fn purge(docker: &Docker, instance: &str) {
    for id in containers_with(docker, INSTANCE_LABEL, instance).await {
        force_remove(docker, &id).await;
    }
    for name in volumes_with(docker, INSTANCE_LABEL, instance).await {
        remove_volume(docker, &name).await;
    }
}

/// The same through the CLI, for `Drop`, where no runtime may be left to drive bollard.
pub(crate) fn purge_blocking(instance: &str) {
    let filter = format!("label={INSTANCE_LABEL}={instance}");
    let ids = |args: &[&str]| -> Vec<String> {
        std::process::Command::new("docker")
            .args(args)
            .args(["--filter", &filter, "-q"])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    for (list, remove) in [
        (&["ps", "-a"][..], &["rm", "-f"][..]),
        (&["volume", "ls"][..], &["volume", "rm", "-f"][..]),
    ] {
        let found = ids(list);
        if !found.is_empty() {
            let _ = std::process::Command::new("docker")
                .args(remove)
                .args(&found)
                .output();
        }
    }
}

/// Whether the engine has the image (no pull is ever made).
pub(crate) async fn image_present(docker: &Docker, image: &str) -> Result<bool, String> {
    match docker.inspect_image(image).await {
        Ok(_) => Ok(true),
        Err(e) if status_of(&e) == Some(404) => Ok(false),
        Err(e) => Err(message_of(&e)),
    }
}

/// The image's id, for `imageID`.
pub(crate) async fn image_id(docker: &Docker, image: &str) -> String {
    docker
        .inspect_image(image)
        .await
        .ok()
        .and_then(|i| i.id)
        .unwrap_or_default()
}

/// The distribution reference grammar: `[host[:port]/]path[:tag][@digest]`, lowercase path
/// components separated by `.`, `_`, `__` or dashes.
pub(crate) fn valid_reference(image: &str) -> bool {
    let (rest, digest) = match image.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (image, None),
    };
    if let Some(d) = digest {
        let Some((algo, hex)) = d.split_once(':') else {
            return false;
        };
        if algo.is_empty() || hex.len() < 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return false;
        }
    }
    let mut parts: Vec<&str> = rest.split('/').collect();
    let last = parts.pop().unwrap_or("");
    let (last, tag) = match last.split_once(':') {
        Some((n, t)) => (n, Some(t)),
        None => (last, None),
    };
    if let Some(t) = tag {
        let ok = !t.is_empty()
            && t.len() <= 128
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
            && !t.starts_with(['.', '-']);
        if !ok {
            return false;
        }
    }
    // The first part may be a registry host (with a port, dots, or uppercase).
    let host_like = parts
        .first()
        .is_some_and(|h| h.contains(['.', ':']) || *h == "localhost");
    let path: Vec<&str> = if host_like {
        let host = parts[0];
        let ok = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'));
        if !ok {
            return false;
        }
        parts[1..].iter().copied().chain([last]).collect()
    } else {
        parts.iter().copied().chain([last]).collect()
    };
    !path.is_empty() && path.iter().all(|c| path_component(c))
}

fn path_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !b[0].is_ascii_lowercase() && !b[0].is_ascii_digit() {
        return false;
    }
    let last = b[b.len() - 1];
    if !(last.is_ascii_lowercase() || last.is_ascii_digit()) {
        return false;
    }
    b.iter()
        .all(|x| x.is_ascii_lowercase() || x.is_ascii_digit() || matches!(x, b'.' | b'_' | b'-'))
        && !c.contains("..")
        && !c.contains("___")
}

/// Runs `cmd` in a running container: the exit code and the combined output, or why not
/// (including a timeout, after which the exec is abandoned as the kubelet does).
pub(crate) async fn exec(
    docker: &Docker,
    id: &str,
    cmd: Vec<String>,
    timeout: Duration,
) -> Result<(i64, String), String> {
    let created = docker
        .create_exec(
            id,
            CreateExecOptions {
                cmd: Some(cmd),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| message_of(&e))?;
    let run = async {
        let mut out = Vec::new();
        if let StartExecResults::Attached { mut output, .. } = docker
            .start_exec(&created.id, None)
            .await
            .map_err(|e| message_of(&e))?
        {
            while let Some(frame) = output.next().await {
                match frame {
                    Ok(f) => out.extend_from_slice(&f.into_bytes()),
                    Err(_) => break,
                }
            }
        }
        let inspected = docker
            .inspect_exec(&created.id)
            .await
            .map_err(|e| message_of(&e))?;
        Ok::<_, String>((
            inspected.exit_code.unwrap_or(-1),
            String::from_utf8_lossy(&out).into_owned(),
        ))
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(r) => r,
        Err(_) => Err(format!("command timed out after {}s", timeout.as_secs())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        for (r, ok) in [
            ("busybox", true),
            ("outpost-test/busybox:1", true),
            ("registry.local:5000/a/b:v1.2", true),
            ("localhost/x", true),
            ("Busybox", false),
            ("busybox:", false),
            ("busybox:bad tag", false),
            ("a//b", false),
            ("-x", false),
            ("x@sha256:abc", false),
            (
                "x@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                true,
            ),
            ("", false),
        ] {
            assert_eq!(valid_reference(r), ok, "{r}");
        }
    }
}
