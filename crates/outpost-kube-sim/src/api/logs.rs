//! `pods/log`: the container to read (the only one, or the one named), the kubelet's answers
//! for a container that has not started, then the CRI log file per the query.

use std::collections::HashMap;
use std::sync::Arc;

use axum::response::Response;
use jiff::{SignedDuration, Timestamp};
use serde_json::Value;

use super::{flag, number, stream_body};
use crate::cluster::{Cluster, lock};
use crate::error::ApiError;
use crate::meta;
use crate::node::logs::{self, LogQuery};
use crate::store::Resource;

/// The container a `container` parameter (or its absence) designates, as the apiserver
/// validates it.
pub(crate) fn pick_container(
    pod: &Value,
    name: &str,
    wanted: Option<&str>,
) -> Result<String, ApiError> {
    let names = |key: &str| -> Vec<String> {
        pod.pointer(&format!("/spec/{key}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_owned))
            .collect()
    };
    let mains = names("containers");
    let inits = names("initContainers");
    match wanted.filter(|w| !w.is_empty()) {
        Some(w) if mains.iter().chain(inits.iter()).any(|n| n == w) => Ok(w.to_owned()),
        Some(w) => Err(ApiError::bad_request(format!(
            "container {w} is not valid for pod {name}"
        ))),
        None if mains.len() == 1 => Ok(mains[0].clone()),
        None => {
            let mut msg = format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                mains.join(" ")
            );
            if !inits.is_empty() {
                msg.push_str(&format!(
                    " or one of the init containers: [{}]",
                    inits.join(" ")
                ));
            }
            Err(ApiError::bad_request(msg))
        }
    }
}

/// The kubelet's refusal for a container that has not started, if it has not.
pub(crate) fn not_started(pod: &Value, pod_name: &str, container: &str) -> Option<ApiError> {
    let status = ["containerStatuses", "initContainerStatuses"]
        .iter()
        .filter_map(|k| {
            pod.pointer(&format!("/status/{k}"))
                .and_then(Value::as_array)
        })
        .flatten()
        .find(|s| s["name"].as_str() == Some(container));
    let waiting = |reason: &str| {
        Some(ApiError::bad_request(format!(
            "container {container:?} in pod {pod_name:?} is waiting to start: {reason}"
        )))
    };
    let Some(s) = status else {
        return waiting("ContainerCreating");
    };
    if s.pointer("/state/running").is_some() || s.pointer("/state/terminated").is_some() {
        return None;
    }
    if s.pointer("/lastState/terminated").is_some() {
        return None;
    }
    match s.pointer("/state/waiting/reason").and_then(Value::as_str) {
        Some("ErrImagePull") => waiting("image can't be pulled"),
        Some("ImagePullBackOff") => waiting("trying and failing to pull image"),
        Some(r) => waiting(r),
        None => Some(ApiError::bad_request(format!(
            "container {container:?} in pod {pod_name:?} is waiting to start - no logs yet"
        ))),
    }
}

pub(crate) async fn logs(
    c: &Arc<Cluster>,
    ns: &str,
    name: &str,
    q: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let pod = c.get(Resource::Pods, ns, name)?;
    let container = pick_container(&pod, name, q.get("container").map(String::as_str))?;
    let mut query = LogQuery {
        follow: flag(q, "follow")?,
        timestamps: flag(q, "timestamps")?,
        ..Default::default()
    };
    if let Some(s) = q.get("sinceTime").filter(|s| !s.is_empty()) {
        query.since = Some(meta::parse_time(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "parsing time {s:?} as \"2006-01-02T15:04:05Z07:00\": cannot parse"
            ))
        })?);
    }
    if let Some(secs) = number(q, "sinceSeconds")? {
        if secs <= 0 {
            return Err(ApiError::invalid(
                "PodLogOptions",
                "",
                vec![crate::error::Cause::invalid(
                    "sinceSeconds",
                    &Value::from(secs),
                    "must be greater than 0",
                )],
            ));
        }
        query.since = Timestamp::now()
            .checked_sub(SignedDuration::from_secs(secs))
            .ok();
    }
    if let Some(l) = number(q, "limitBytes")? {
        if l <= 0 {
            return Err(ApiError::invalid(
                "PodLogOptions",
                "",
                vec![crate::error::Cause::invalid(
                    "limitBytes",
                    &Value::from(l),
                    "must be greater than 0",
                )],
            ));
        }
        query.limit_bytes = Some(u64::try_from(l).unwrap_or(0));
    }
    if let Some(t) = number(q, "tailLines")? {
        query.tail_lines = Some(u64::try_from(t.max(0)).unwrap_or(0));
    }
    // Not bound to a node: the apiserver has no kubelet to ask and answers nothing.
    if pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Ok(stream_body(futures_util::stream::empty(), "text/plain"));
    }
    if flag(q, "previous")? {
        return Err(ApiError::bad_request(format!(
            "previous terminated container {container:?} in pod {name:?} not found"
        )));
    }
    if let Some(e) = not_started(&pod, name, &container) {
        return Err(e);
    }
    let uid = pod["metadata"]["uid"].as_str().unwrap_or("");
    let rt = lock(&c.runtimes).get(uid).cloned();
    let log = rt.and_then(|rt| lock(&rt.containers).get(&container).map(|h| h.log.clone()));
    let Some(log) = log else {
        return Err(ApiError::bad_request(format!(
            "container {container:?} in pod {name:?} is not available"
        )));
    };
    let stream = logs::read(log, query)
        .await
        .map_err(|e| ApiError::internal(format!("reading the log of {container:?}: {e}")))?;
    Ok(stream_body(stream, "text/plain"))
}
