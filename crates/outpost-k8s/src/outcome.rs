//! Reading a job pod's status: how a step container ended (its termination message is the
//! wrapper's marker line), and what is wrong with the pod when it cannot go on (deadline,
//! eviction, node loss, unschedulable, image pulls). Pure functions of the status, so the tests
//! feed them statuses.

use k8s_openapi::api::core::v1::{ContainerState, ContainerStatus, Pod};
use outpost_executor::{StepOutcome, StepSpec};
use outpost_protocol::{Failure, FailureClass, StepState};
use outpost_steprules::{Marker, Outcome};

/// A container's state, as far as the backend cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Not created or not started yet; `reason` as the kubelet gives it (`ErrImagePull`, …).
    Waiting {
        reason: Option<String>,
        message: Option<String>,
    },
    Running,
    Terminated(Ended),
}

/// How a container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    pub exit_code: i32,
    pub reason: Option<String>,
    pub message: Option<String>,
}

/// The status of container `name` (init or regular), if the pod reports one.
pub fn container_status<'a>(pod: &'a Pod, name: &str) -> Option<&'a ContainerStatus> {
    let status = pod.status.as_ref()?;
    status
        .container_statuses
        .iter()
        .flatten()
        .chain(status.init_container_statuses.iter().flatten())
        .find(|c| c.name == name)
}

/// The phase of container `name`; `Waiting` without reason when the pod reports nothing of it.
pub fn phase(pod: &Pod, name: &str) -> Phase {
    let Some(state) = container_status(pod, name).and_then(|c| c.state.as_ref()) else {
        return Phase::Waiting {
            reason: None,
            message: None,
        };
    };
    state_phase(state)
}

fn state_phase(state: &ContainerState) -> Phase {
    if let Some(t) = &state.terminated {
        return Phase::Terminated(Ended {
            exit_code: t.exit_code,
            reason: t.reason.clone(),
            message: t.message.clone(),
        });
    }
    if state.running.is_some() {
        return Phase::Running;
    }
    let w = state.waiting.as_ref();
    Phase::Waiting {
        reason: w.and_then(|w| w.reason.clone()),
        message: w.and_then(|w| w.message.clone()),
    }
}

/// Waiting reasons that mean an image cannot be had.
pub const IMAGE_PULL_REASONS: [&str; 4] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
];

/// What ended the pod as a whole, when something did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodEnd {
    /// `activeDeadlineSeconds` passed.
    Deadline,
    /// Evicted, its node lost, or failed otherwise: `infrastructure` with this message.
    Broken(String),
}

/// The pod's own end, from its phase, reason and conditions.
pub fn pod_end(pod: &Pod) -> Option<PodEnd> {
    let status = pod.status.as_ref()?;
    let reason = status.reason.as_deref();
    let message = status.message.clone().unwrap_or_default();
    if reason == Some("DeadlineExceeded") {
        return Some(PodEnd::Deadline);
    }
    if reason == Some("Evicted") {
        return Some(PodEnd::Broken(format!("the pod was evicted: {message}")));
    }
    if matches!(reason, Some("NodeLost" | "Terminated" | "NodeShutdown")) {
        return Some(PodEnd::Broken(format!(
            "the pod's node went away ({}): {message}",
            reason.unwrap_or_default()
        )));
    }
    let conditions = status.conditions.iter().flatten();
    for c in conditions {
        if c.type_ == "DisruptionTarget" && c.status == "True" {
            return Some(PodEnd::Broken(format!(
                "the pod was disrupted ({}): {}",
                c.reason.as_deref().unwrap_or("unknown"),
                c.message.as_deref().unwrap_or_default()
            )));
        }
    }
    if status.phase.as_deref() == Some("Unknown") {
        return Some(PodEnd::Broken(
            "the pod's state is unknown: its node does not report".to_owned(),
        ));
    }
    None
}

/// The scheduler's message while the pod cannot be scheduled.
pub fn unschedulable(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    if status.phase.as_deref().is_some_and(|p| p != "Pending") {
        return None;
    }
    status.conditions.iter().flatten().find_map(|c| {
        (c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable"))
        .then(|| {
            c.message
                .clone()
                .unwrap_or_else(|| "unschedulable".to_owned())
        })
    })
}

/// An init container (install, receive) that ended without success: the pod cannot go on.
pub fn failed_init(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    status
        .init_container_statuses
        .iter()
        .flatten()
        .find_map(|c| {
            let t = c.state.as_ref()?.terminated.as_ref()?;
            // A sidecar that stops is restarted by the kubelet; only one-shot init containers
            // end the pod.
            let sidecar = c.name.starts_with("svc-");
            (t.exit_code != 0 && !sidecar).then(|| {
                format!(
                    "init container {} exited with code {}{}",
                    c.name,
                    t.exit_code,
                    t.message
                        .as_deref()
                        .map(|m| format!(": {}", m.trim()))
                        .unwrap_or_default()
                )
            })
        })
}

/// How a step container that ended did, from its termination message (the wrapper's marker)
/// and its reason. `None` for the marker means the wrapper did not finish (the container was
/// killed around it): the pod cannot run later steps then.
pub fn step_outcome(step: &StepSpec, ended: &Ended) -> (StepOutcome, Option<Marker>) {
    let marker = ended
        .message
        .as_deref()
        .and_then(|m| m.lines().find(|l| l.starts_with("state=")))
        .and_then(|l| Marker::parse(l).ok());
    let oom = ended.reason.as_deref() == Some("OOMKilled");
    let outcome = match marker {
        Some(m) => match m.outcome {
            Outcome::Success if !oom => StepOutcome::success(),
            Outcome::Success | Outcome::Failed if oom => {
                oom_outcome(step, m.exit.or(Some(ended.exit_code)))
            }
            Outcome::Success | Outcome::Failed => {
                StepOutcome::exited(m.exit.unwrap_or(ended.exit_code), &step.name)
            }
            Outcome::TimedOut => {
                let mut o = StepOutcome::timed_out(&step.name, step.timeout.unwrap_or_default());
                o.exit_code = m.exit;
                o
            }
            Outcome::Cancelled => {
                let mut o = StepOutcome::cancelled(&step.name);
                o.exit_code = m.exit;
                o
            }
            Outcome::Skipped => StepOutcome::skipped(),
        },
        None if oom => oom_outcome(step, Some(ended.exit_code)),
        None => StepOutcome::failed(
            Failure::new(
                FailureClass::Infrastructure,
                format!(
                    "step `{}` was stopped around the step wrapper (exit code {}{})",
                    step.name,
                    ended.exit_code,
                    ended
                        .reason
                        .as_deref()
                        .map(|r| format!(", {r}"))
                        .unwrap_or_default()
                ),
            ),
            Some(ended.exit_code),
        ),
    };
    (outcome, marker)
}

fn oom_outcome(step: &StepSpec, exit: Option<i32>) -> StepOutcome {
    StepOutcome::failed(
        Failure::new(
            FailureClass::Oom,
            format!(
                "step `{}` was killed for exceeding its memory limit",
                step.name
            ),
        ),
        exit,
    )
}

/// A failed step whose image cannot be pulled.
pub fn image_pull_outcome(
    container: &str,
    image: &str,
    reason: &str,
    message: &str,
) -> StepOutcome {
    StepOutcome::failed(
        Failure::new(
            FailureClass::ImagePull,
            format!(
                "the image `{image}` of container {container} cannot be pulled ({reason}): {message}"
            ),
        ),
        None,
    )
}

/// A step failed by the pod's infrastructure.
pub fn infrastructure(message: impl Into<String>) -> StepOutcome {
    StepOutcome::failed(Failure::new(FailureClass::Infrastructure, message), None)
}

/// Whether an outcome can be followed by more steps in the same pod (their wrappers wait for its
/// marker: only an outcome the wrapper wrote lets them go on).
pub fn pod_goes_on(outcome: &StepOutcome, marker: Option<Marker>) -> bool {
    marker.is_some() && outcome.state != StepState::Cancelled
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use std::time::Duration;

    use outpost_executor::When;
    use serde_json::json;

    use super::*;

    fn step() -> StepSpec {
        StepSpec {
            index: 0,
            name: "build".to_owned(),
            image: None,
            run: String::new(),
            env: BTreeMap::new(),
            timeout: Some(Duration::from_secs(5)),
            when: When::OnSuccess,
        }
    }

    /// (message, reason, exit) → "state class exit" of the outcome, and whether the pod goes on.
    #[track_caller]
    fn check(message: Option<&str>, reason: Option<&str>, exit: i32, expected: &str) {
        let ended = Ended {
            exit_code: exit,
            reason: reason.map(str::to_owned),
            message: message.map(str::to_owned),
        };
        let (o, marker) = step_outcome(&step(), &ended);
        let got = format!(
            "{} {} {} {}",
            o.state,
            o.failure
                .as_ref()
                .map_or("-".to_owned(), |f| f.class.to_string()),
            o.exit_code.map_or("-".to_owned(), |c| c.to_string()),
            if pod_goes_on(&o, marker) {
                "goes-on"
            } else {
                "stops"
            }
        );
        assert_eq!(got, expected, "{message:?} {reason:?} {exit}");
    }

    #[test]
    fn step_outcomes_from_termination_messages() {
        check(
            Some("state=success exit=0\n"),
            Some("Completed"),
            0,
            "success - 0 goes-on",
        );
        check(
            Some("state=failed exit=3"),
            Some("Error"),
            3,
            "failed script 3 goes-on",
        );
        check(
            Some("state=failed exit=137"),
            Some("OOMKilled"),
            137,
            "failed oom 137 goes-on",
        );
        check(None, Some("OOMKilled"), 137, "failed oom 137 stops");
        check(
            Some("state=timed_out exit=143"),
            Some("Error"),
            143,
            "timed_out timeout 143 goes-on",
        );
        check(
            Some("state=cancelled exit=143"),
            Some("Error"),
            143,
            "cancelled cancelled 143 stops",
        );
        check(
            Some("state=skipped"),
            Some("Completed"),
            0,
            "skipped - - goes-on",
        );
        check(None, Some("Error"), 137, "failed infrastructure 137 stops");
        check(Some("garbage"), None, 1, "failed infrastructure 1 stops");
    }

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "status": status})).expect("a pod")
    }

    #[test]
    fn pod_ends_and_scheduling() {
        assert_eq!(
            pod_end(&pod(
                json!({"phase": "Failed", "reason": "DeadlineExceeded"})
            )),
            Some(PodEnd::Deadline)
        );
        assert!(matches!(
            pod_end(&pod(json!({"phase": "Failed", "reason": "Evicted", "message": "disk"}))),
            Some(PodEnd::Broken(m)) if m.contains("evicted: disk")
        ));
        assert_eq!(pod_end(&pod(json!({"phase": "Running"}))), None);
        let pending = pod(json!({"phase": "Pending", "conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/1 nodes are available: 1 Insufficient memory."}]}));
        assert_eq!(
            unschedulable(&pending).as_deref(),
            Some("0/1 nodes are available: 1 Insufficient memory.")
        );
        let init = pod(json!({"phase": "Pending", "initContainerStatuses": [{
            "name": "outpost-receive", "image": "i", "imageID": "", "ready": false,
            "restartCount": 0, "state": {"terminated": {"exitCode": 1, "message": "bad tar"}}}]}));
        assert_eq!(
            failed_init(&init).as_deref(),
            Some("init container outpost-receive exited with code 1: bad tar")
        );
        assert_eq!(
            phase(&init, "outpost-receive"),
            Phase::Terminated(Ended {
                exit_code: 1,
                reason: None,
                message: Some("bad tar".to_owned())
            })
        );
    }
}
