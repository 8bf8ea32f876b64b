//! Probes as the kubelet runs them. `exec` runs in the container; `tcpSocket` and `httpGet` run
//! from the pod's sandbox (busybox `nc`/`wget` on the pod's loopback), so that no connection
//! leaves the pod's network namespace and the probed image needs no tools. That differs from the
//! kubelet, which dials the pod IP from the node: a server bound to 127.0.0.1 only passes here.

use std::time::Duration;

use bollard::Docker;
use k8s_openapi::api::core::v1::{ContainerPort, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::engine;

pub(crate) enum Outcome {
    Success,
    Failure(String),
}

fn port_of(port: &IntOrString, ports: &[ContainerPort]) -> Result<i32, String> {
    match port {
        IntOrString::Int(p) => Ok(*p),
        IntOrString::String(name) => match name.parse::<i32>() {
            Ok(p) => Ok(p),
            Err(_) => ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .map(|p| p.container_port)
                .ok_or_else(|| format!("unknown port name {name:?}")),
        },
    }
}

pub(crate) async fn run(
    docker: &Docker,
    probe: &Probe,
    container_id: &str,
    sandbox_id: &str,
    ports: &[ContainerPort],
) -> Outcome {
    let timeout =
        Duration::from_secs(u64::try_from(probe.timeout_seconds.unwrap_or(1).max(1)).unwrap_or(1));
    if let Some(exec) = &probe.exec {
        let cmd = exec.command.clone().unwrap_or_default();
        return match engine::exec(docker, container_id, cmd.clone(), timeout).await {
            Ok((0, _)) => Outcome::Success,
            Ok((code, out)) => Outcome::Failure(if out.trim().is_empty() {
                format!("command {cmd:?} exited with {code}")
            } else {
                out.trim_end().to_owned()
            }),
            Err(e) => Outcome::Failure(e),
        };
    }
    if let Some(tcp) = &probe.tcp_socket {
        let port = match port_of(&tcp.port, ports) {
            Ok(p) => p,
            Err(e) => return Outcome::Failure(e),
        };
        let host = tcp.host.clone().unwrap_or_else(|| "127.0.0.1".into());
        let cmd = vec![
            "nc".into(),
            "-w".into(),
            timeout.as_secs().to_string(),
            host.clone(),
            port.to_string(),
            "-e".into(),
            "/bin/true".into(),
        ];
        return match engine::exec(docker, sandbox_id, cmd, timeout + Duration::from_secs(1)).await {
            Ok((0, _)) => Outcome::Success,
            Ok(_) => Outcome::Failure(format!(
                "dial tcp {host}:{port}: connect: connection refused"
            )),
            Err(e) => Outcome::Failure(e),
        };
    }
    if let Some(http) = &probe.http_get {
        let port = match port_of(&http.port, ports) {
            Ok(p) => p,
            Err(e) => return Outcome::Failure(e),
        };
        if http.scheme.as_deref() == Some("HTTPS") {
            return Outcome::Failure("HTTPS probes are not supported by outpost-kube-sim".into());
        }
        let host = http.host.clone().unwrap_or_else(|| "127.0.0.1".into());
        let path = http.path.clone().unwrap_or_else(|| "/".into());
        let url = format!("http://{host}:{port}{path}");
        let cmd = vec![
            "wget".into(),
            "-q".into(),
            "-T".into(),
            timeout.as_secs().to_string(),
            "-O".into(),
            "/dev/null".into(),
            url.clone(),
        ];
        return match engine::exec(docker, sandbox_id, cmd, timeout + Duration::from_secs(1)).await {
            Ok((0, _)) => Outcome::Success,
            Ok((_, out)) => Outcome::Failure(format!("Get {url:?}: {}", out.trim())),
            Err(e) => Outcome::Failure(e),
        };
    }
    Outcome::Failure("gRPC probes are not supported by outpost-kube-sim".into())
}
