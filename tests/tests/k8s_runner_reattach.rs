//! Reattach after a runner restart (DESIGN.md §6.3) through the real `runner-k8s` on the kube
//! stand-in: the runner is SIGKILLed while a step runs, started again with the same state
//! directory, finds the pod by its labels, and the job finishes as if nothing happened: the log
//! byte-exact, later steps run, the lease kept, nothing left. The second case writes more than
//! the stand-in's log rotation size before the kill, so re-reading the log from byte 0 would
//! miss its start: the resume goes by the cursor's timestamps.
//!
//! Between its two phases the step waits for a flag file inside its own container, which the
//! test creates (`docker exec` on the stand-in's node, `pods/exec` on a real cluster): no timing
//! decides anything.

mod k8s_support;

use k8s_support::{Cluster, K8sRunner, cluster_or_skip, runner_id, start_runner};
use outpost_e2e::{RUNNER_WAIT, inline_job, seq, step_header, text, wait_ended, wait_log};
use outpost_protocol::{JobState, StepState};
use outpost_testkit::{TestHub, unique, wait_until};

/// The stand-in's rotation size in these tests.
const ROTATE: u64 = 1024 * 1024;

fn pipeline(phase1: u64, total: u64) -> String {
    format!(
        r#"version: 1
image: outpost-test/busybox:1
steps:
  - name: produce
    run: |
      seq 1 {phase1}
      while [ ! -e /tmp/go ]; do sleep 0.05; done
      seq {} {total}
  - name: after
    run: echo "second step"
"#,
        phase1 + 1
    )
}

/// The step container of `pod`'s step 0 on the stand-in's node.
fn step_container(pod: &str) -> String {
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "--filter",
            &format!("label=outpost-kube-sim.pod={pod}"),
            "--filter",
            "label=outpost-kube-sim.container=step-0",
            "--format",
            "{{.Names}}",
        ])
        .output()
        .expect("docker ps runs");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Creates `/tmp/go` in the step's container: with `docker exec` on the stand-in's node, with
/// `pods/exec` (the test's own credentials, not the runner's Role) on a real cluster.
async fn release(cluster: &Cluster, pod: &str) {
    if cluster.sim.is_none() {
        let ap = kube::api::AttachParams::default()
            .container("step-0")
            .stdin(false)
            .stdout(false)
            .stderr(true);
        let process = cluster
            .pods()
            .exec(pod, ["touch", "/tmp/go"], &ap)
            .await
            .expect("exec in the step's container");
        process.join().await.expect("the exec ends");
        return;
    }
    let container = step_container(pod);
    assert!(!container.is_empty(), "no step container for pod {pod}");
    let out = std::process::Command::new("docker")
        .args(["exec", &container, "touch", "/tmp/go"])
        .output()
        .expect("docker exec runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn reattach(cluster: &Cluster, phase1: u64, total: u64, rotated: bool) {
    let hub = TestHub::start().await;
    let org = hub.create_org(&unique("org")).await;
    let mut runner: K8sRunner = start_runner(&hub, &org, cluster, "", |b| b).await;
    let job_id = hub
        .submit(&org, &inline_job(&pipeline(phase1, total), &[]))
        .await;

    let phase1_log = format!("{}{}", step_header("produce", true), seq(1, phase1));
    // Until it is all there, or its last line is (a gap then shows which lines are missing).
    let got = wait_log(&hub, &org, &job_id, "holds phase 1", RUNNER_WAIT, |log| {
        log.len() >= phase1_log.len() || log.ends_with(format!("\n{phase1}\n").as_bytes())
    })
    .await;
    if got.len() != phase1_log.len() {
        let got = text(&got);
        let have: std::collections::HashSet<&str> = got.lines().collect();
        let missing: Vec<String> = (1..=phase1)
            .map(|i| i.to_string())
            .filter(|l| !have.contains(l.as_str()))
            .collect();
        panic!(
            "phase 1 reached the hub with {} lines missing, from {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
    }
    assert_eq!(text(&hub.log(&org, &job_id).await), phase1_log);
    let before = hub.job(&org, &job_id).await;
    assert_eq!(before.state, JobState::Running, "{before:#?}");
    let pod = cluster.wait_pod(&job_id).await;
    let pod_name = pod.metadata.name.clone().expect("a name");

    if rotated {
        // The kubelet's log no longer starts at the step's first line: reading it again from
        // byte 0 could not give the job its log.
        let lp = kube::api::LogParams {
            container: Some("step-0".to_owned()),
            ..Default::default()
        };
        let kept = cluster
            .pods()
            .logs(&pod_name, &lp)
            .await
            .expect("the step's log");
        assert!(
            !kept.starts_with("1\n2\n"),
            "the log did not rotate: it still starts at the first line"
        );
    }
    runner.process.sigkill().await;
    runner.process.restart().await;
    runner.process.wait_ready(RUNNER_WAIT).await;
    assert_eq!(
        runner_id(&hub, &org, runner.process.name()).await,
        runner.id
    );
    let reattached = "reattaching to a job the backend still runs";
    wait_until("the restarted runner reattaches", RUNNER_WAIT, || {
        std::future::ready(runner.process.stderr().contains(reattached))
    })
    .await;
    // Released only now: phase 2 is produced while the new process follows the log.
    release(cluster, &pod_name).await;

    let job = wait_ended(&hub, &org, &job_id).await;
    assert_eq!(job.state, JobState::Success, "{job:#?}");
    let states: Vec<StepState> = job.steps.iter().map(|s| s.state).collect();
    assert_eq!(states, [StepState::Success, StepState::Success], "{job:#?}");
    assert_eq!(job.runner_id.as_deref(), Some(runner.id.as_str()));
    assert_eq!(job.started_at, before.started_at, "{job:#?}");

    let expected = format!(
        "{}{}{}second step\n",
        step_header("produce", true),
        seq(1, total),
        step_header("after", false)
    );
    let log = hub.log(&org, &job_id).await;
    if log != expected.as_bytes() {
        let at = log
            .iter()
            .zip(expected.as_bytes())
            .position(|(a, b)| a != b)
            .unwrap_or(log.len().min(expected.len()));
        let from = at.saturating_sub(60);
        panic!(
            "the stored log ({} bytes) differs from the output ({} bytes) at byte {at}: stored \
             …{:?}…, expected …{:?}…",
            log.len(),
            expected.len(),
            text(&log[from..(at + 60).min(log.len())]),
            &expected[from..(at + 60).min(expected.len())]
        );
    }
    cluster.assert_nothing_left(&runner.id).await;
    let cursor = runner
        .process
        .state_dir()
        .join("kubernetes")
        .join(format!("{job_id}.cursor"));
    assert!(
        !cursor.exists(),
        "the job's log cursor is left: {}",
        cursor.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k8s_runner_killed_mid_step_reattaches_and_the_job_ends_as_if_nothing_happened() {
    let Some(cluster) = cluster_or_skip(|c| c.log_rotation_bytes = ROTATE).await else {
        return;
    };
    reattach(&cluster, 20_000, 40_000, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k8s_runner_reattaches_byte_exact_after_the_log_rotated() {
    let Some(cluster) = cluster_or_skip(|c| c.log_rotation_bytes = ROTATE).await else {
        return;
    };
    // seq 1 300000 is about 2 MB of output and, as CRI log records, about 13 MB: more than the
    // stand-in's rotation size here, and than the kubelet's default (10 MiB) on a real cluster.
    let phase1 = 300_000;
    assert!(seq(1, phase1).len() as u64 > 2 * ROTATE - 200_000);
    reattach(&cluster, phase1, phase1 + 20_000, true).await;
}
