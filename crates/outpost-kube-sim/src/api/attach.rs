//! `pods/attach` over WebSocket (`v5.channel.k8s.io`, `v4.channel.k8s.io`): channel 0 carries
//! stdin to the container, 1 and 2 its stdout and stderr, 3 the final `Status`; v5's channel 255
//! closes a stream (stdin's EOF). Backed by a Docker attach of the running container, so a
//! `stdinOnce` container sees EOF when the client closes stdin.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use bollard::container::LogOutput;
use bollard::query_parameters::AttachContainerOptions;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use super::flag;
use super::logs::{not_started, pick_container};
use crate::cluster::{Cluster, lock};
use crate::error::ApiError;
use crate::node::engine;
use crate::node::pod::ContainerRt;
use crate::store::Resource;

const V5: &str = "v5.channel.k8s.io";
const V4: &str = "v4.channel.k8s.io";

pub(crate) async fn attach(
    State(c): State<Arc<Cluster>>,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    match prepare(&c, &ns, &name, &q, ws) {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

fn prepare(
    c: &Arc<Cluster>,
    ns: &str,
    name: &str,
    q: &HashMap<String, String>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let pod = c.get(Resource::Pods, ns, name)?;
    let container = pick_container(&pod, name, q.get("container").map(String::as_str))?;
    let stdin = flag(q, "stdin")?;
    let stdout = flag(q, "stdout")?;
    let stderr = flag(q, "stderr")?;
    if flag(q, "tty")? {
        return Err(ApiError::bad_request(
            "outpost-kube-sim does not attach with a TTY",
        ));
    }
    if !(stdin || stdout || stderr) {
        return Err(ApiError::bad_request(
            "you must specify at least 1 of stdin, stdout, stderr",
        ));
    }
    if stdin {
        let has_stdin = ["containers", "initContainers"]
            .iter()
            .filter_map(|k| pod.pointer(&format!("/spec/{k}")).and_then(Value::as_array))
            .flatten()
            .find(|s| s["name"].as_str() == Some(container.as_str()))
            .and_then(|s| s["stdin"].as_bool())
            .unwrap_or(false);
        if !has_stdin {
            return Err(ApiError::bad_request(format!(
                "container {container} in pod {name} does not have stdin enabled"
            )));
        }
    }
    if pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    if let Some(e) = not_started(&pod, name, &container) {
        return Err(e);
    }
    let running = ["containerStatuses", "initContainerStatuses"]
        .iter()
        .filter_map(|k| {
            pod.pointer(&format!("/status/{k}"))
                .and_then(Value::as_array)
        })
        .flatten()
        .any(|s| {
            s["name"].as_str() == Some(container.as_str()) && s.pointer("/state/running").is_some()
        });
    if !running {
        return Err(ApiError::bad_request(format!(
            "container {container:?} in pod {name:?} is not running"
        )));
    }
    let uid = pod["metadata"]["uid"].as_str().unwrap_or("");
    let rt = lock(&c.runtimes)
        .get(uid)
        .and_then(|rt| lock(&rt.containers).get(&container).cloned())
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "container {container:?} in pod {name:?} is not available"
            ))
        })?;
    let ws = ws.map_err(|_| ApiError::bad_request("Upgrade request required"))?;
    let offered: Vec<String> = ws
        .requested_protocols()
        .filter_map(|p| p.to_str().ok().map(str::to_owned))
        .collect();
    let v5 = offered.iter().any(|p| p == V5);
    if !v5 && !offered.iter().any(|p| p == V4) {
        return Err(ApiError::bad_request(format!(
            "none of the requested subprotocols {offered:?} is supported; use {V5} or {V4}"
        )));
    }
    let docker = c.docker.clone();
    Ok(ws.protocols([V5, V4]).on_upgrade(move |socket| async move {
        session(docker, rt, socket, v5, stdin, stdout, stderr).await;
    }))
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    Message::Binary(v.into())
}

async fn session(
    docker: bollard::Docker,
    rt: Arc<ContainerRt>,
    socket: WebSocket,
    v5: bool,
    stdin: bool,
    stdout: bool,
    stderr: bool,
) {
    let (mut tx, mut rx) = socket.split();
    let attached = docker
        .attach_container(
            &rt.docker_id,
            Some(AttachContainerOptions {
                stdin,
                stdout,
                stderr,
                stream: true,
                logs: false,
                ..Default::default()
            }),
        )
        .await;
    let attached = match attached {
        Ok(a) => a,
        Err(e) => {
            let status = json!({"metadata": {}, "status": "Failure", "message": engine::message_of(&e), "reason": "InternalError", "code": 500});
            let _ = tx.send(frame(3, status.to_string().as_bytes())).await;
            let _ = tx.close().await;
            return;
        }
    };
    let mut input = Some(attached.input);
    let mut output = attached.output;
    // The apiserver opens every readable channel with an empty frame.
    for ch in [(stdout, 1u8), (stderr, 2u8), (true, 3u8)] {
        if ch.0 && tx.send(Message::Binary(vec![ch.1].into())).await.is_err() {
            return;
        }
    }
    let mut exit = rt.exit.clone();
    let mut output_open = true;
    let mut client_open = true;
    let code = loop {
        if let Some(code) = *exit.borrow_and_update()
            && !output_open
        {
            break Some(code);
        }
        tokio::select! {
            msg = rx.next(), if client_open => match msg {
                Some(Ok(Message::Binary(b))) if !b.is_empty() => match b[0] {
                    0 => {
                        if let Some(i) = input.as_mut()
                            && i.write_all(&b[1..]).await.is_err()
                        {
                            input = None;
                        }
                    }
                    255 if v5 && b.get(1) == Some(&0) => {
                        if let Some(mut i) = input.take() {
                            let _ = i.shutdown().await;
                        }
                    }
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    client_open = false;
                    if let Some(mut i) = input.take() {
                        let _ = i.shutdown().await;
                    }
                }
                Some(Ok(_)) => {}
            },
            out = output.next(), if output_open => match out {
                Some(Ok(LogOutput::StdOut { message } | LogOutput::Console { message })) => {
                    if client_open && tx.send(frame(1, &message)).await.is_err() {
                        client_open = false;
                    }
                }
                Some(Ok(LogOutput::StdErr { message })) => {
                    if client_open && tx.send(frame(2, &message)).await.is_err() {
                        client_open = false;
                    }
                }
                Some(Ok(LogOutput::StdIn { .. })) => {}
                Some(Err(_)) | None => output_open = false,
            },
            changed = exit.changed() => {
                if changed.is_err() {
                    break None;
                }
                if exit.borrow().is_some() {
                    // The container ended: what output is left is flushed by the loop.
                    output_open = output_open && stdout | stderr;
                }
            }
        }
        if !client_open && !output_open {
            break *exit.borrow();
        }
    };
    if client_open {
        let status = match code {
            Some(0) => json!({"metadata": {}, "status": "Success"}),
            Some(n) => json!({
                "metadata": {}, "status": "Failure",
                "message": format!("command terminated with non-zero exit code: exit code {n}"),
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": n.to_string()}]},
            }),
            None => {
                json!({"metadata": {}, "status": "Failure", "message": "the container is gone", "reason": "InternalError"})
            }
        };
        let _ = tx.send(frame(3, status.to_string().as_bytes())).await;
        let _ = tx.close().await;
    }
}
