//! Secrets through the real `runner-docker` (DESIGN.md §1, §6.6): a secret from
//! `OUTPOST_SECRET_*` reaches the step's container, which prints it raw, base64-encoded and one
//! byte per write; no form of it is in the hub's log, and none is in the labels of the job's
//! containers, network and volumes, nor in its service container (inspected while the step
//! waits on a flag, so everything still exists).

mod docker_runner_support;

use docker_runner_support::{
    assert_nothing_left, docker_ok, engine_or_skip, resources, start_runner, step_container,
    touch_in,
};
use outpost_e2e::{RUNNER_WAIT, find, inline_job, text, wait_ended, wait_log};
use outpost_protocol::JobState;
use outpost_testkit::{TestHub, random_secret, unique};

/// Prints the secret in three forms, then waits for `/tmp/finish` in its container.
const PIPELINE: &str = r#"version: 1
image: outpost-test/busybox:1
secrets: [X]
services:
  - { name: echo, image: outpost-test/tcp-echo:1 }
steps:
  - name: leak
    run: |
      printf '%s\n' "$MARKER"
      printf 'raw: %s\n' "$X"
      printf 'base64: %s\n' "$(printf '%s' "$X" | base64)"
      printf 'bytes: '
      s="$X"
      while [ -n "$s" ]; do
        rest="${s#?}"; env printf '%s' "${s%"$rest"}"; s="$rest"
      done
      printf '\n'
      echo "forms done"
      while [ ! -e /tmp/finish ]; do sleep 0.05; done
      printf '%s\n' "$MARKER"
"#;

/// Standard base64 with padding (independent of the runner's).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Where a 8-byte piece of `form` occurs in `bytes` (a form cut by a mask or a page is caught).
fn leak(what: &str, form: &str, bytes: &[u8]) -> Option<String> {
    form.as_bytes().windows(8).find_map(|w| {
        find(bytes, w).map(|at| {
            let from = at.saturating_sub(40);
            let to = (at + 48).min(bytes.len());
            format!(
                "{what}: a piece {:?} of {form:?} at byte {at}: …{:?}…",
                String::from_utf8_lossy(w),
                String::from_utf8_lossy(&bytes[from..to])
            )
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_runner_masks_secrets_and_keeps_them_out_of_labels() {
    if !engine_or_skip().await {
        return;
    }
    let hub = TestHub::start().await;
    let org = hub.create_org(&unique("org")).await;
    let secret = random_secret();
    let forms = [secret.clone(), base64(secret.as_bytes())];
    let runner = start_runner(&hub, &org, |b| b.env("OUTPOST_SECRET_X", &secret)).await;
    let marker = format!("marker-{}", random_secret());
    let job_id = hub
        .submit(&org, &inline_job(PIPELINE, &[("MARKER", &marker)]))
        .await;

    let log = wait_log(
        &hub,
        &org,
        &job_id,
        "shows every form printed",
        RUNNER_WAIT,
        |log| find(log, b"forms done\n").is_some(),
    )
    .await;
    let mut found: Vec<String> = Vec::new();
    for form in &forms {
        found.extend(leak("the log while running", form, &log));
    }

    // Everything of the job exists now: read the labels of all of it.
    let step = step_container(&job_id, 0).await;
    let (containers, networks, volumes) = resources("outpost.job-id", &job_id, true).await;
    assert!(
        containers.len() >= 2 && networks.len() == 1 && !volumes.is_empty(),
        "the job's step and service containers, network and workspace volume: {containers:?} \
         {networks:?} {volumes:?}"
    );
    let label_lists = [
        (
            "container",
            &containers,
            &["container", "inspect"][..],
            "{{json .Config.Labels}}",
        ),
        (
            "network",
            &networks,
            &["network", "inspect"][..],
            "{{json .Labels}}",
        ),
        (
            "volume",
            &volumes,
            &["volume", "inspect"][..],
            "{{json .Labels}}",
        ),
    ];
    for (kind, names, inspect, format) in label_lists {
        for name in names {
            let mut args = inspect.to_vec();
            args.extend(["--format", format, name.as_str()]);
            let labels = docker_ok(&args).await;
            // A network is made before its job (the runner's spare) and labels cannot change,
            // so only containers and volumes name the job; the network is named by them.
            assert!(
                kind == "network" || labels.contains(&job_id),
                "{kind} {name} is not labelled with its job: {labels}"
            );
            for form in &forms {
                found.extend(leak(
                    &format!("labels of {kind} {name}"),
                    form,
                    labels.as_bytes(),
                ));
            }
        }
    }
    // The step (only it) has the secret, in its environment: the scans above could see it.
    let env_of = |name: String| async move {
        docker_ok(&["inspect", "--format", "{{json .Config.Env}}", &name]).await
    };
    let step_env = env_of(step.clone()).await;
    assert!(
        step_env.contains(&format!("X={secret}")),
        "the step's container has not the secret in its environment: {step_env}"
    );
    for name in containers.iter().filter(|c| **c != step) {
        let env = env_of(name.clone()).await;
        for form in &forms {
            found.extend(leak(
                &format!("environment of {name}"),
                form,
                env.as_bytes(),
            ));
        }
    }

    touch_in(&step, "/tmp/finish").await;
    let job = wait_ended(&hub, &org, &job_id).await;
    assert_eq!(job.state, JobState::Success, "{job:#?}");
    let log = hub.log(&org, &job_id).await;
    for form in &forms {
        found.extend(leak("the stored log", form, &log));
    }
    let job_json = serde_json::to_vec(&job).expect("a job serializes");
    for form in &forms {
        found.extend(leak("the job read through the API", form, &job_json));
    }
    assert!(found.is_empty(), "the secret leaked:\n{}", found.join("\n"));

    // Each form was printed, and masked, around the known text.
    let log_text = text(&log);
    for form in ["raw", "base64", "bytes"] {
        let prefix = format!("{form}: ");
        let line = log_text
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no line {prefix:?} in the log:\n{log_text}"));
        assert!(line.contains("[MASKED]"), "{line:?} in\n{log_text}");
    }
    assert_eq!(log_text.matches(&marker).count(), 2, "{log_text}");
    assert_nothing_left(&runner.id).await;
}
