//! What the `k8s_runner_*` tests share: a cluster (the one `OUTPOST_TEST_KUBECONFIG` names, else
//! the stand-in `outpost-kube-sim` started in the test process, whose node runs pods on the
//! Docker engine), the runner image with the step wrapper, the real `runner-k8s` started against
//! a hub and that cluster, and looks at what the cluster holds.
//!
//! Without `OUTPOST_TEST_KUBECONFIG` the stand-in needs the Docker engine and the images of
//! `cargo xtask test-images`: without an engine a test prints that it was skipped, unless
//! `OUTPOST_REQUIRE_DOCKER=1`, which makes that a failure. On a real cluster
//! (`OUTPOST_TEST_KUBECONFIG`, namespace `OUTPOST_TEST_NAMESPACE` or `default`), the images the
//! pipelines name must be pullable there and `OUTPOST_TEST_RUNNER_IMAGE` names the runner image
//! (default `outpost/runner-k8s:dev`); tests that need the stand-in's controls (eviction, the
//! rotation size) say they were skipped.

#![allow(dead_code)] // each test binary uses a different part

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret};
use kube::Api;
use kube::api::ListParams;
use outpost_e2e::{RUNNER_WAIT, runner_for};
use outpost_kube_sim::{KubeSim, SimConfig};
use outpost_protocol::{RunnerList, paths};
use outpost_testkit::{Org, RunnerProcess, RunnerProcessBuilder, TestHub, bin_path, unique};
use tempfile::TempDir;

/// Built by `cargo xtask test-images`: busybox applets and `sh`.
pub const BUSYBOX: &str = "outpost-test/busybox:1";
/// Built by `cargo xtask test-images`: a TCP echo server on port 7000.
pub const TCP_ECHO: &str = "outpost-test/tcp-echo:1";

const REQUIRE_ENV: &str = "OUTPOST_REQUIRE_DOCKER";
const KUBECONFIG_ENV: &str = "OUTPOST_TEST_KUBECONFIG";

/// A cluster for one test.
pub struct Cluster {
    /// The stand-in, when no real cluster was named.
    pub sim: Option<KubeSim>,
    pub kubeconfig: PathBuf,
    pub namespace: String,
    pub runner_image: String,
    pub client: kube::Client,
    _dir: TempDir,
}

/// Runs a command; `None` when it cannot be started at all.
fn command(program: &str, args: &[&str]) -> Option<std::process::Output> {
    std::process::Command::new(program).args(args).output().ok()
}

#[track_caller]
fn command_ok(program: &str, args: &[&str]) -> String {
    let out = command(program, args).unwrap_or_else(|| panic!("cannot run `{program}`"));
    assert!(
        out.status.success(),
        "`{program} {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Why the Docker engine cannot be used, if it cannot.
fn engine_absent() -> Option<String> {
    match command("docker", &["version", "--format", "{{.Server.Version}}"]) {
        None => Some("the docker CLI cannot be run".to_owned()),
        Some(out) if !out.status.success() => Some(
            String::from_utf8_lossy(&out.stderr)
                .trim()
                .lines()
                .last()
                .unwrap_or("docker version failed")
                .to_owned(),
        ),
        Some(_) => None,
    }
}

/// Whether this test runs on the stand-in (it does unless `OUTPOST_TEST_KUBECONFIG` is set).
pub fn on_stand_in() -> bool {
    std::env::var_os(KUBECONFIG_ENV).is_none()
}

/// The cluster of a test, or `None` (after printing why) when it cannot run here. `configure`
/// adjusts the stand-in (not a real cluster).
pub async fn cluster_or_skip(configure: impl FnOnce(&mut SimConfig)) -> Option<Cluster> {
    let dir = tempfile::Builder::new()
        .prefix("outpost-k8s-e2e-")
        .tempdir()
        .expect("a temporary directory");
    if let Some(path) = std::env::var_os(KUBECONFIG_ENV) {
        let kubeconfig = PathBuf::from(path);
        let namespace =
            std::env::var("OUTPOST_TEST_NAMESPACE").unwrap_or_else(|_| "default".to_owned());
        let runner_image = std::env::var("OUTPOST_TEST_RUNNER_IMAGE")
            .unwrap_or_else(|_| "outpost/runner-k8s:dev".to_owned());
        let client = client_for(&kubeconfig).await;
        return Some(Cluster {
            sim: None,
            kubeconfig,
            namespace,
            runner_image,
            client,
            _dir: dir,
        });
    }
    if let Some(reason) = engine_absent() {
        if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") {
            panic!("{REQUIRE_ENV}=1 but the docker engine is not reachable: {reason}");
        }
        println!(
            "skipped: no {KUBECONFIG_ENV} and the docker engine for the kube stand-in is not \
             reachable ({reason})"
        );
        return None;
    }
    for image in [BUSYBOX, TCP_ECHO] {
        let found = command(
            "docker",
            &["image", "inspect", "--format", "{{.Id}}", image],
        );
        assert!(
            found.is_some_and(|o| o.status.success()),
            "test image {image} is missing: run `cargo xtask test-images` first"
        );
    }
    let runner_image = tokio::task::spawn_blocking(runner_image)
        .await
        .expect("the runner image is built");
    let mut cfg = SimConfig::default();
    configure(&mut cfg);
    let sim = KubeSim::start(cfg)
        .await
        .unwrap_or_else(|e| panic!("the kube stand-in does not start: {e}"));
    let kubeconfig = dir.path().join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig)
        .unwrap_or_else(|e| panic!("cannot write the stand-in's kubeconfig: {e}"));
    let client = client_for(&kubeconfig).await;
    Some(Cluster {
        sim: Some(sim),
        kubeconfig,
        namespace: "default".to_owned(),
        runner_image,
        client,
        _dir: dir,
    })
}

async fn client_for(path: &Path) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap_or_else(|e| panic!("cannot use {}: {e}", path.display()));
    kube::Client::try_from(config).expect("a kube client")
}

/// The step wrapper built static (`OUTPOST_STEP_STATIC` names one already built), with the
/// command of docs/step-wrapper.md, into a target directory of its own.
fn static_wrapper() -> PathBuf {
    if let Some(path) = std::env::var_os("OUTPOST_STEP_STATIC") {
        return PathBuf::from(path);
    }
    let target_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("outpost-step-static");
    let triple = "x86_64-unknown-linux-gnu";
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let status = std::process::Command::new(cargo)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            triple,
            "-p",
            "outpost-step",
        ])
        .arg("--manifest-path")
        .arg(&manifest)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env("CARGO_TARGET_DIR", &target_dir)
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the static step wrapper failed");
    target_dir.join(triple).join("release").join("outpost-step")
}

/// A local image like the runner's for the stand-in's node: busybox with the static wrapper at
/// `/usr/local/bin/outpost-step`, tagged by the wrapper's hash (made once per wrapper build).
fn runner_image() -> String {
    use sha2::Digest;
    let wrapper = static_wrapper();
    let bytes = std::fs::read(&wrapper)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", wrapper.display()));
    let hash = hex::encode(sha2::Sha256::digest(&bytes));
    let tag = format!("outpost-test/runner-k8s:{}", &hash[..16]);
    if command("docker", &["image", "inspect", "--format", "{{.Id}}", &tag])
        .is_some_and(|o| o.status.success())
    {
        return tag;
    }
    let context = tempfile::tempdir().expect("a temporary directory");
    let bin = context.path().join("usr/local/bin");
    std::fs::create_dir_all(&bin).expect("create usr/local/bin");
    std::fs::copy(&wrapper, bin.join("outpost-step")).expect("copy the wrapper");
    let name = unique("outpost-runner-image");
    command_ok("docker", &["create", "--name", &name, BUSYBOX, "true"]);
    let usr = context.path().join("usr");
    let usr = usr.to_str().expect("a UTF-8 path");
    command_ok("docker", &["cp", usr, &format!("{name}:/")]);
    command_ok("docker", &["commit", &name, &tag]);
    command_ok("docker", &["rm", "-f", &name]);
    tag
}

/// A `runner-k8s` process and its id at the hub.
pub struct K8sRunner {
    pub process: RunnerProcess,
    pub id: String,
}

/// The `[executor]` section for `cluster`, plus `extra` lines.
pub fn executor_section(cluster: &Cluster, extra: &str) -> String {
    format!(
        "[executor]\nkubeconfig = {:?}\nnamespace = {:?}\nrunner_image = {:?}\n\
         cancel_grace = \"2s\"\n{extra}\n",
        cluster.kubeconfig.display().to_string(),
        cluster.namespace,
        cluster.runner_image,
    )
}

/// Starts `runner-k8s` with a unique name for `org` against the hub and `cluster` (extra
/// `[executor]` lines in `extra`), waits until it is ready, and looks its id up at the hub.
pub async fn start_runner(
    hub: &TestHub,
    org: &Org,
    cluster: &Cluster,
    extra: &str,
    configure: impl FnOnce(RunnerProcessBuilder) -> RunnerProcessBuilder,
) -> K8sRunner {
    let name = unique("k8s-runner");
    let config = executor_section(cluster, extra);
    let process = runner_for(hub, org, hub.url(), |b| {
        configure(
            b.binary(bin_path("runner-k8s"))
                .name(name.clone())
                .config(config)
                .start_timeout(Duration::from_secs(60)),
        )
    })
    .await;
    let id = runner_id(hub, org, &name).await;
    K8sRunner { process, id }
}

/// The id the hub gave the runner named `name`.
pub async fn runner_id(hub: &TestHub, org: &Org, name: &str) -> String {
    let answer = hub.as_org(org).get(&paths::runners(&org.name)).await;
    let list: RunnerList = answer.expect(200).json();
    let ids: Vec<&str> = list
        .runners
        .iter()
        .filter(|r| r.name == name)
        .map(|r| r.runner_id.as_str())
        .collect();
    assert_eq!(ids.len(), 1, "runner {name} in {list:#?}");
    ids[0].to_owned()
}

impl Cluster {
    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    pub fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    pub fn claims(&self) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// The names of the pods, secrets and (non-cache) claims labelled with `runner_id`.
    pub async fn left_by(&self, runner_id: &str) -> Vec<String> {
        let lp = ListParams::default().labels(&format!("outpost.dev/runner-id={runner_id}"));
        let mut left = Vec::new();
        for p in self.pods().list(&lp).await.expect("list pods").items {
            left.push(format!("pod {}", p.metadata.name.unwrap_or_default()));
        }
        for s in self.secrets().list(&lp).await.expect("list secrets").items {
            left.push(format!("secret {}", s.metadata.name.unwrap_or_default()));
        }
        for c in self.claims().list(&lp).await.expect("list claims").items {
            let cache = c
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("outpost.dev/kind"))
                .is_some_and(|k| k == "cache");
            if !cache {
                left.push(format!("claim {}", c.metadata.name.unwrap_or_default()));
            }
        }
        left
    }

    /// Waits until nothing of `runner_id` is left but cache claims.
    pub async fn assert_nothing_left(&self, runner_id: &str) {
        let end = tokio::time::Instant::now() + RUNNER_WAIT;
        loop {
            let left = self.left_by(runner_id).await;
            if left.is_empty() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < end,
                "runner {runner_id} left behind: {left:?}"
            );
            tokio::time::sleep(outpost_testkit::POLL_INTERVAL * 5).await;
        }
    }

    /// The job's pod once it exists.
    pub async fn wait_pod(&self, job_id: &str) -> Pod {
        let lp = ListParams::default().labels(&format!("outpost.dev/job-id={job_id}"));
        let end = tokio::time::Instant::now() + RUNNER_WAIT;
        loop {
            if let Some(p) = self.pods().list(&lp).await.expect("list pods").items.pop() {
                return p;
            }
            assert!(
                tokio::time::Instant::now() < end,
                "job {job_id} has no pod after {RUNNER_WAIT:?}"
            );
            tokio::time::sleep(outpost_testkit::POLL_INTERVAL * 5).await;
        }
    }
}

/// The Role's rules (deploy/helm/outpost-runner/files/role-rules.json) as `resource → verbs`.
pub fn role_rules() -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/helm/outpost-runner/files/role-rules.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let rules: Vec<serde_json::Value> = serde_json::from_str(&text).expect("role rules are JSON");
    let mut out = std::collections::BTreeMap::new();
    for r in rules {
        let resource = r["resource"].as_str().expect("a resource").to_owned();
        let verbs = r["verbs"]
            .as_array()
            .expect("verbs")
            .iter()
            .map(|v| v.as_str().expect("a verb").to_owned())
            .collect();
        out.insert(resource, verbs);
    }
    out
}

/// Every version of every managed pod the cluster showed while it ran, as JSON: what a test
/// looks through for a secret value.
pub struct PodRecorder {
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl PodRecorder {
    pub async fn start(cluster: &Cluster) -> PodRecorder {
        use futures_util::StreamExt;
        use kube::runtime::{WatchStreamExt, watcher};
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let config = watcher::Config::default().labels("app.kubernetes.io/managed-by=outpost");
        let stream = watcher(cluster.pods(), config).default_backoff();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let sink = seen.clone();
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            let mut ready = Some(ready_tx);
            while let Some(event) = stream.next().await {
                let Ok(event) = event else { continue };
                match event {
                    watcher::Event::Apply(p)
                    | watcher::Event::Delete(p)
                    | watcher::Event::InitApply(p) => {
                        let json = serde_json::to_string(&p).expect("json");
                        sink.lock().expect("not poisoned").push(json);
                    }
                    watcher::Event::InitDone => {
                        if let Some(tx) = ready.take() {
                            let _ = tx.send(());
                        }
                    }
                    watcher::Event::Init => {}
                }
            }
        });
        let _ = ready_rx.await;
        PodRecorder { seen, task }
    }

    /// The pod versions seen so far.
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().expect("not poisoned").clone()
    }
}

impl Drop for PodRecorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// On the stand-in: every request it saw was within the chart's Role (role-rules.json), and
/// none named `secret` in its path. Prints how many there were. A no-op on a real cluster.
pub fn assert_within_role(cluster: &Cluster, secret: &str) {
    let Some(sim) = cluster.sim.as_ref() else {
        println!("verbs check skipped: it needs the stand-in's request log");
        return;
    };
    let rules = role_rules();
    let requests = sim.requests();
    assert!(!requests.is_empty(), "the stand-in saw no request");
    let mut outside = Vec::new();
    for r in &requests {
        if r.resource.is_empty() {
            continue;
        }
        let resource = r.rbac_resource();
        let allowed = rules
            .get(&resource)
            .is_some_and(|verbs| verbs.contains(&r.verb));
        if !allowed {
            outside.push(format!("{} {resource} ({} {})", r.verb, r.method, r.path));
        }
    }
    assert!(
        outside.is_empty(),
        "requests outside the Role: {outside:#?}"
    );
    assert!(
        !requests.iter().any(|r| r.path.contains(secret)),
        "the secret is in a request path"
    );
    let mut used: Vec<String> = requests
        .iter()
        .filter(|r| !r.resource.is_empty())
        .map(|r| format!("{} {}", r.verb, r.rbac_resource()))
        .collect();
    used.sort();
    used.dedup();
    println!(
        "{} API requests; verbs used: {}",
        requests.len(),
        used.join(", ")
    );
}
