//! The stand-in driven through kube-rs exactly as the Kubernetes backend drives a cluster, with
//! its node on the real Docker engine. Skipped (saying so) when no engine answers, unless
//! `OUTPOST_REQUIRE_DOCKER=1`. Needs the images of `cargo xtask test-images`.

use std::future::Future;
use std::time::Duration;

use futures_util::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Event, PersistentVolumeClaim, Pod, Secret};
use kube::api::{
    AttachParams, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::runtime::watcher;
use kube::{Api, Client};
use outpost_kube_sim::{KubeSim, SimConfig};
use serde_json::{Value, json};

const BUSYBOX: &str = "outpost-test/busybox:1";
const TCP_ECHO: &str = "outpost-test/tcp-echo:1";
const REQUIRE_ENV: &str = "OUTPOST_REQUIRE_DOCKER";
const NS: &str = "default";
/// Generous: the condition is what the test waits for, this only bounds a hang.
const DEADLINE: Duration = Duration::from_secs(180);

struct Ctx {
    sim: KubeSim,
    client: Client,
}

impl Ctx {
    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), NS)
    }
}

async fn setup(cfg: SimConfig) -> Option<Ctx> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let docker = match bollard::Docker::connect_with_defaults() {
        Ok(d) => d,
        Err(e) => return skip(&e.to_string()),
    };
    if let Err(e) = docker.ping().await {
        return skip(&e.to_string());
    }
    for image in [BUSYBOX, TCP_ECHO] {
        if docker.inspect_image(image).await.is_err() {
            panic!("test image {image} is missing: run `cargo xtask test-images` first");
        }
    }
    let sim = KubeSim::start(cfg).await.expect("the stand-in starts");
    let kc = kube::config::Kubeconfig::from_yaml(&sim.kubeconfig()).expect("a valid kubeconfig");
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .expect("kube reads the kubeconfig");
    let client = Client::try_from(config).expect("a client");
    Some(Ctx { sim, client })
}

fn skip(reason: &str) -> Option<Ctx> {
    if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") {
        panic!("{REQUIRE_ENV}=1 but the docker engine is not reachable: {reason}");
    }
    println!("skipped: docker engine not reachable ({reason})");
    None
}

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Watches one pod (through kube's watcher, as the backend does) until `cond` holds.
async fn wait_pod(api: &Api<Pod>, name: &str, what: &str, cond: impl Fn(&Pod) -> bool) -> Pod {
    let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let stream = watcher::watcher(api.clone(), cfg);
    within(what, async {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.try_next().await.expect("the watch works") {
            if let watcher::Event::Apply(p) | watcher::Event::InitApply(p) = ev
                && cond(&p)
            {
                return p;
            }
        }
        panic!("the watch ended before {what}");
    })
    .await
}

async fn wait_gone<K>(api: &Api<K>, name: &str, what: &str)
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    within(what, async {
        loop {
            match api.get_opt(name).await.expect("get") {
                None => return,
                Some(_) => {
                    // Wait for the next change of anything rather than polling on a timer.
                    let wp = WatchParams::default()
                        .fields(&format!("metadata.name={name}"))
                        .timeout(5);
                    let mut s = api.watch(&wp, "0").await.expect("watch").boxed();
                    while let Some(ev) = s.try_next().await.expect("watch event") {
                        if matches!(ev, WatchEvent::Deleted(_)) {
                            return;
                        }
                    }
                }
            }
        }
    })
    .await
}

fn pod(v: Value) -> Pod {
    serde_json::from_value(v).expect("a valid pod")
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn container_status<'a>(
    p: &'a Pod,
    name: &str,
) -> Option<&'a k8s_openapi::api::core::v1::ContainerStatus> {
    let s = p.status.as_ref()?;
    s.container_statuses
        .iter()
        .flatten()
        .chain(s.init_container_statuses.iter().flatten())
        .find(|c| c.name == name)
}

fn waiting_reason(p: &Pod, name: &str) -> Option<String> {
    container_status(p, name)?
        .state
        .as_ref()?
        .waiting
        .as_ref()?
        .reason
        .clone()
}

fn terminated(p: &Pod, name: &str) -> Option<(i32, String)> {
    let t = container_status(p, name)?
        .state
        .as_ref()?
        .terminated
        .as_ref()?;
    Some((t.exit_code, t.reason.clone().unwrap_or_default()))
}

fn running(p: &Pod, name: &str) -> bool {
    container_status(p, name)
        .and_then(|c| c.state.as_ref())
        .is_some_and(|s| s.running.is_some())
}

async fn events_of(client: &Client, pod: &str) -> Vec<(String, String)> {
    let api: Api<Event> = Api::namespaced(client.clone(), NS);
    let list = api
        .list(&ListParams::default().fields(&format!("involvedObject.name={pod}")))
        .await
        .expect("events list");
    list.items
        .into_iter()
        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect()
}

async fn api_error<T: std::fmt::Debug>(r: kube::Result<T>) -> kube::core::Status {
    match r {
        Err(kube::Error::Api(s)) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_sidecar_and_steps_run_to_success() {
    let Some(ctx) = setup(SimConfig::default()).await else {
        return;
    };
    let pods = ctx.pods();
    let p = pod(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "job-", "labels": {"outpost.dev/job": "j1"}},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "hostAliases": [{"ip": "127.0.0.1", "hostnames": ["echo"]}],
            "volumes": [{"name": "work", "emptyDir": {}}],
            "initContainers": [
                {"name": "prep", "image": BUSYBOX,
                 "command": ["sh", "-c", "echo prepared > /work/prep; echo init-out"],
                 "volumeMounts": [{"name": "work", "mountPath": "/work"}]},
                {"name": "svc", "image": TCP_ECHO, "restartPolicy": "Always",
                 "startupProbe": {"tcpSocket": {"port": 7000}, "periodSeconds": 1, "failureThreshold": 60}},
            ],
            "containers": [
                {"name": "step1", "image": BUSYBOX,
                 "command": ["sh", "-c", "cat /work/prep; echo hello | nc echo 7000; echo $(GREETING)"],
                 "env": [{"name": "GREETING", "value": "hi"}],
                 "volumeMounts": [{"name": "work", "mountPath": "/work"}]},
                {"name": "step2", "image": BUSYBOX, "command": ["sh", "-c", "echo to-stderr >&2"]},
            ],
        },
    }));
    let created = pods
        .create(&PostParams::default(), &p)
        .await
        .expect("create");
    let name = created.metadata.name.clone().expect("a generated name");
    assert!(name.starts_with("job-") && name.len() == 9, "{name}");
    assert_eq!(created.metadata.generation, Some(1));
    assert!(created.metadata.uid.is_some() && created.metadata.resource_version.is_some());
    let done = wait_pod(&pods, &name, "Succeeded", |p| phase(p) == "Succeeded").await;
    assert_eq!(terminated(&done, "prep"), Some((0, "Completed".into())));
    assert_eq!(terminated(&done, "step1"), Some((0, "Completed".into())));
    assert_eq!(terminated(&done, "step2"), Some((0, "Completed".into())));
    let svc = container_status(&done, "svc").expect("the sidecar's status");
    assert!(
        svc.state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .is_some(),
        "the sidecar was stopped: {svc:?}"
    );
    let conds: Vec<(String, String)> = done
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|c| (c.type_, c.status))
        .collect();
    assert!(
        conds.contains(&("PodScheduled".into(), "True".into())),
        "{conds:?}"
    );
    assert!(
        conds.contains(&("Initialized".into(), "True".into())),
        "{conds:?}"
    );
    assert!(
        conds.contains(&("Ready".into(), "False".into())),
        "{conds:?}"
    );

    let lp = |c: &str| LogParams {
        container: Some(c.into()),
        ..Default::default()
    };
    assert_eq!(
        pods.logs(&name, &lp("prep")).await.expect("prep log"),
        "init-out\n"
    );
    assert_eq!(
        pods.logs(&name, &lp("step1")).await.expect("step1 log"),
        "prepared\nhello\nhi\n"
    );
    assert_eq!(
        pods.logs(&name, &lp("step2")).await.expect("step2 log"),
        "to-stderr\n"
    );
    let e = api_error(pods.logs(&name, &LogParams::default()).await).await;
    assert_eq!(e.code, 400);
    assert!(
        e.message.contains("a container name must be specified"),
        "{}",
        e.message
    );

    let reasons: Vec<String> = events_of(&ctx.client, &name)
        .await
        .into_iter()
        .map(|e| e.0)
        .collect();
    for r in ["Scheduled", "Pulled", "Created", "Started", "Killing"] {
        assert!(
            reasons.iter().any(|x| x == r),
            "no {r} event in {reasons:?}"
        );
    }
    let listed = pods
        .list(&ListParams::default().labels("outpost.dev/job in (j1,j2)"))
        .await
        .expect("list");
    assert_eq!(listed.items.len(), 1);
    assert!(
        pods.list(&ListParams::default().labels("outpost.dev/job!=j1"))
            .await
            .expect("list")
            .items
            .is_empty()
    );
    let by_phase = pods
        .list(&ListParams::default().fields("status.phase=Succeeded"))
        .await
        .expect("list");
    assert_eq!(by_phase.items.len(), 1);

    pods.delete(&name, &DeleteParams::default())
        .await
        .expect("delete");
    wait_gone(&pods, &name, "the pod's removal").await;
    let verbs: std::collections::BTreeSet<String> = ctx
        .sim
        .requests()
        .iter()
        .map(|r| format!("{} {}", r.verb, r.rbac_resource()))
        .collect();
    for v in [
        "create pods",
        "list pods",
        "watch pods",
        "get pods",
        "get pods/log",
        "delete pods",
        "list events",
    ] {
        assert!(verbs.contains(v), "no {v} in {verbs:?}");
    }
    ctx.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_streams_a_checkout_into_an_init_container() {
    let Some(ctx) = setup(SimConfig::default()).await else {
        return;
    };
    let pods = ctx.pods();
    let p = pod(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "checkout"},
        "spec": {
            "restartPolicy": "Never",
            "volumes": [{"name": "ws", "emptyDir": {}}],
            "initContainers": [{"name": "checkout", "image": BUSYBOX, "stdin": true, "stdinOnce": true,
                "command": ["tar", "xf", "-", "-C", "/ws"],
                "volumeMounts": [{"name": "ws", "mountPath": "/ws"}]}],
            "containers": [{"name": "step", "image": BUSYBOX,
                "command": ["sh", "-c", "cat /ws/src/hello.txt; wc -c < /ws/big.bin"],
                "volumeMounts": [{"name": "ws", "mountPath": "/ws"}]}],
        },
    }));
    pods.create(&PostParams::default(), &p)
        .await
        .expect("create");
    let e = api_error(
        pods.logs(
            "checkout",
            &LogParams {
                container: Some("step".into()),
                ..Default::default()
            },
        )
        .await,
    )
    .await;
    assert_eq!(e.code, 400);
    assert!(e.message.contains("is waiting to start"), "{}", e.message);
    wait_pod(&pods, "checkout", "the init container running", |p| {
        running(p, "checkout")
    })
    .await;
    let mut archive = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        archive.append_data(&mut h, path, data).expect("tar entry");
    };
    add("src/hello.txt", b"hello from the runner\n");
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    add("big.bin", &big);
    let bytes = archive.into_inner().expect("tar");
    let ap = AttachParams::default()
        .container("checkout")
        .stdin(true)
        .stdout(false)
        .stderr(false);
    let mut attached = pods.attach("checkout", &ap).await.expect("attach");
    let mut stdin = attached.stdin().expect("stdin");
    tokio::io::AsyncWriteExt::write_all(&mut stdin, &bytes)
        .await
        .expect("write");
    // kube's stdin is one half of a simplex pipe: EOF is a shutdown, not a drop.
    tokio::io::AsyncWriteExt::shutdown(&mut stdin)
        .await
        .expect("close stdin");
    let status = within("the attach status", attached.take_status().expect("status")).await;
    assert_eq!(
        status.as_ref().and_then(|s| s.status.as_deref()),
        Some("Success"),
        "{status:?}"
    );
    let done = wait_pod(&pods, "checkout", "Succeeded", |p| phase(p) == "Succeeded").await;
    assert_eq!(terminated(&done, "checkout"), Some((0, "Completed".into())));
    let log = pods
        .logs(
            "checkout",
            &LogParams {
                container: Some("step".into()),
                ..Default::default()
            },
        )
        .await
        .expect("log");
    assert_eq!(log, "hello from the runner\n300000\n");
    assert!(
        ctx.sim
            .requests()
            .iter()
            .any(|r| r.verb == "get" && r.rbac_resource() == "pods/attach")
    );
    ctx.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_rotate_and_resume_by_time() {
    let cfg = SimConfig {
        log_rotation_bytes: 4096,
        ..SimConfig::default()
    };
    let Some(ctx) = setup(cfg).await else { return };
    let pods = ctx.pods();
    // The container waits for a line on stdin, so that the follower is there before output.
    let p = pod(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "chatty"},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": BUSYBOX,
            "stdin": true, "stdinOnce": true,
            "command": ["sh", "-c", "read go; i=0; while [ $i -lt 3000 ]; do echo line-$i; i=$((i+1)); done"]}]},
    }));
    pods.create(&PostParams::default(), &p)
        .await
        .expect("create");
    wait_pod(&pods, "chatty", "running", |p| running(p, "main")).await;
    let follow = LogParams {
        follow: true,
        timestamps: true,
        ..Default::default()
    };
    let reader = pods.log_stream("chatty", &follow).await.expect("follow");
    let follower = tokio::spawn(async move {
        let mut lines = reader.lines();
        let mut got = Vec::new();
        while let Some(l) = lines.try_next().await.expect("a line") {
            got.push(l);
        }
        got
    });
    let mut attached = pods
        .attach(
            "chatty",
            &AttachParams::default()
                .stdin(true)
                .stdout(false)
                .stderr(false),
        )
        .await
        .expect("attach");
    let mut stdin = attached.stdin().expect("stdin");
    tokio::io::AsyncWriteExt::write_all(&mut stdin, b"go\n")
        .await
        .expect("write");
    // kube's stdin is one half of a simplex pipe: EOF is a shutdown, not a drop.
    tokio::io::AsyncWriteExt::shutdown(&mut stdin)
        .await
        .expect("close stdin");
    wait_pod(&pods, "chatty", "Succeeded", |p| phase(p) == "Succeeded").await;
    let followed = within("the follower's end", follower)
        .await
        .expect("follower");
    // Every followed line is timestamped, in order, never twice; the last one is there.
    let idx: Vec<u32> = followed
        .iter()
        .map(|l| {
            let (ts, text) = l.split_once(' ').expect("a timestamp prefix");
            assert!(ts.parse::<jiff::Timestamp>().is_ok(), "{ts}");
            text.strip_prefix("line-")
                .and_then(|n| n.parse().ok())
                .expect("a numbered line")
        })
        .collect();
    assert!(
        idx.windows(2).all(|w| w[0] < w[1]),
        "out of order or doubled"
    );
    assert_eq!(idx.last(), Some(&2999));

    // From byte 0 again: the rotated lines are gone.
    let whole = pods
        .logs("chatty", &LogParams::default())
        .await
        .expect("log");
    let first: u32 = whole
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("line-"))
        .and_then(|n| n.parse().ok())
        .expect("a line");
    assert!(
        first > 0,
        "the current file should no longer start at line 0"
    );
    assert!(whole.ends_with("line-2999\n"));
    // Resuming by time (second precision on the wire, as kube sends it) gives the lines from
    // that second on.
    let stamped = pods
        .logs(
            "chatty",
            &LogParams {
                timestamps: true,
                ..Default::default()
            },
        )
        .await
        .expect("log");
    // A line from the middle of the current file (right after a rotation it may hold only a
    // few lines).
    let stamped_lines: Vec<&str> = stamped.lines().collect();
    let picked = stamped_lines[stamped_lines.len() / 2];
    let (ts, picked_text) = picked.split_once(' ').expect("a timestamp prefix");
    let ts: jiff::Timestamp = ts.parse().expect("a timestamp");
    let floor = jiff::Timestamp::from_second(ts.as_second()).expect("in range");
    let since = pods
        .logs(
            "chatty",
            &LogParams {
                since_time: Some(floor),
                ..Default::default()
            },
        )
        .await
        .expect("log");
    assert!(
        whole.ends_with(&since) && since.contains(picked_text),
        "the log since {floor} is not the tail holding {picked_text:?}"
    );
    let limited = pods
        .logs(
            "chatty",
            &LogParams {
                limit_bytes: Some(10),
                ..Default::default()
            },
        )
        .await
        .expect("log");
    assert_eq!(limited.len(), 10);
    ctx.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_missing_image_unschedulable_and_deadline() {
    let cfg = SimConfig {
        image_pull_backoff: Duration::from_secs(1),
        allocatable_memory_bytes: 2 * 1024 * 1024 * 1024,
        ..SimConfig::default()
    };
    let Some(ctx) = setup(cfg).await else { return };
    let pods = ctx.pods();
    let one = |name: &str, image: &str, cmd: &str, extra: Value| {
        let mut v = json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "main", "image": image, "command": ["sh", "-c", cmd]}]},
        });
        if let (Some(spec), Some(extra)) = (v["spec"].as_object_mut(), extra.as_object()) {
            for (k, x) in extra {
                spec.insert(k.clone(), x.clone());
            }
        }
        pod(v)
    };
    let mut oom = one(
        "oom",
        BUSYBOX,
        "dd if=/dev/zero of=/dev/null bs=64M count=1",
        json!({}),
    );
    oom.spec.as_mut().expect("spec").containers[0].resources =
        Some(serde_json::from_value(json!({"limits": {"memory": "16Mi"}})).expect("resources"));
    pods.create(&PostParams::default(), &oom)
        .await
        .expect("create");
    pods.create(
        &PostParams::default(),
        &one("nopull", "outpost-test/does-not-exist:1", "true", json!({})),
    )
    .await
    .expect("create");
    pods.create(
        &PostParams::default(),
        &one("badname", "Not A Valid/Image", "true", json!({})),
    )
    .await
    .expect("create");
    let mut big = one("big", BUSYBOX, "true", json!({}));
    big.spec.as_mut().expect("spec").containers[0].resources =
        Some(serde_json::from_value(json!({"requests": {"memory": "1Ti"}})).expect("resources"));
    pods.create(&PostParams::default(), &big)
        .await
        .expect("create");
    pods.create(
        &PostParams::default(),
        &one(
            "late",
            BUSYBOX,
            "sleep 600",
            json!({"activeDeadlineSeconds": 2}),
        ),
    )
    .await
    .expect("create");

    let p = wait_pod(&pods, "oom", "OOMKilled", |p| phase(p) == "Failed").await;
    assert_eq!(terminated(&p, "main"), Some((137, "OOMKilled".into())));

    wait_pod(&pods, "nopull", "ErrImagePull", |p| {
        waiting_reason(p, "main").as_deref() == Some("ErrImagePull")
    })
    .await;
    wait_pod(&pods, "nopull", "ImagePullBackOff", |p| {
        waiting_reason(p, "main").as_deref() == Some("ImagePullBackOff")
    })
    .await;
    let reasons: Vec<String> = events_of(&ctx.client, "nopull")
        .await
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert!(
        reasons.iter().any(|r| r == "Failed") && reasons.iter().any(|r| r == "BackOff"),
        "{reasons:?}"
    );
    let e = api_error(pods.logs("nopull", &LogParams::default()).await).await;
    assert_eq!(e.code, 400);
    assert!(
        e.message
            .starts_with("container \"main\" in pod \"nopull\" is waiting to start"),
        "{}",
        e.message
    );

    wait_pod(&pods, "badname", "InvalidImageName", |p| {
        waiting_reason(p, "main").as_deref() == Some("InvalidImageName")
    })
    .await;

    let p = wait_pod(&pods, "big", "Unschedulable", |p| {
        p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| {
                c.iter().any(|c| {
                    c.type_ == "PodScheduled"
                        && c.status == "False"
                        && c.reason.as_deref() == Some("Unschedulable")
                })
            })
    })
    .await;
    assert_eq!(phase(&p), "Pending");
    let msg = p
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find_map(|c| c.message)
        .unwrap_or_default();
    assert!(
        msg.starts_with("0/1 nodes are available: 1 Insufficient memory."),
        "{msg}"
    );
    let events = events_of(&ctx.client, "big").await;
    assert!(
        events
            .iter()
            .any(|(r, m)| r == "FailedScheduling" && m.contains("Insufficient memory")),
        "{events:?}"
    );
    assert_eq!(
        pods.logs("big", &LogParams::default())
            .await
            .expect("an unscheduled pod's log"),
        ""
    );

    let p = wait_pod(&pods, "late", "DeadlineExceeded", |p| phase(p) == "Failed").await;
    assert_eq!(
        p.status.as_ref().and_then(|s| s.reason.as_deref()),
        Some("DeadlineExceeded")
    );
    assert!(terminated(&p, "main").is_some());
    ctx.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_delete_collects_owned_claims_and_secrets() {
    let Some(ctx) = setup(SimConfig::default()).await else {
        return;
    };
    let pods = ctx.pods();
    let p = pod(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "owner"},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 30,
            "volumes": [{"name": "work", "ephemeral": {"volumeClaimTemplate": {
                "metadata": {"labels": {"outpost.dev/kind": "workspace"}},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}}}],
            "containers": [{"name": "main", "image": BUSYBOX,
                "command": ["sh", "-c", "trap 'echo term; exit 0' TERM; echo up > /work/x; while true; do sleep 1 & wait; done"],
                "env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "owner-secrets", "key": "token"}}}],
                "volumeMounts": [{"name": "work", "mountPath": "/work"}]}]},
    }));
    let created = pods
        .create(&PostParams::default(), &p)
        .await
        .expect("create");
    let uid = created.metadata.uid.clone().expect("uid");
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), NS);
    let s: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "owner-secrets", "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "owner", "uid": uid}]},
        "stringData": {"token": "s3cr3t"},
    }))
    .expect("secret");
    let stored = secrets
        .create(&PostParams::default(), &s)
        .await
        .expect("create secret");
    assert!(stored.string_data.is_none());
    assert_eq!(
        stored
            .data
            .and_then(|d| d.get("token").cloned())
            .map(|b| b.0),
        Some(b"s3cr3t".to_vec())
    );
    wait_pod(&pods, "owner", "running", |p| running(p, "main")).await;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), NS);
    let claim = claims.get("owner-work").await.expect("the ephemeral claim");
    assert_eq!(claim.status.and_then(|s| s.phase).as_deref(), Some("Bound"));
    let owner = claim.metadata.owner_references.unwrap_or_default();
    assert!(
        owner
            .iter()
            .any(|o| o.uid == uid && o.controller == Some(true)),
        "{owner:?}"
    );

    let deleting = pods
        .delete("owner", &DeleteParams::default())
        .await
        .expect("delete");
    let obj = deleting.left().expect("a graceful delete answers the pod");
    assert!(obj.metadata.deletion_timestamp.is_some());
    assert_eq!(obj.metadata.deletion_grace_period_seconds, Some(30));
    wait_gone(&pods, "owner", "the pod's removal").await;
    wait_gone(&claims, "owner-work", "the claim's collection").await;
    wait_gone(&secrets, "owner-secrets", "the secret's collection").await;
    ctx.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_validation_conflicts_and_expired_watches() {
    let cfg = SimConfig {
        watch_history: 5,
        bookmark_interval: Duration::from_millis(200),
        ..SimConfig::default()
    };
    let Some(ctx) = setup(cfg).await else { return };
    let raw = |path: &str, body: Value| {
        http::Request::post(path)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body).expect("json"))
            .expect("request")
    };
    let r = ctx
        .client
        .request::<Pod>(raw(
            "/api/v1/namespaces/default/pods",
            json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"},
            "spec": {"foo": 1, "containers": [{"name": "a", "image": BUSYBOX}]}}),
        ))
        .await;
    let e = api_error(r).await;
    assert_eq!((e.code, e.reason.as_str()), (400, "BadRequest"));
    assert_eq!(
        e.message,
        "strict decoding error: unknown field \"spec.foo\""
    );
    let pods = ctx.pods();
    let bad = pod(
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "Bad_Name"},
        "spec": {"containers": [{"name": "a"}]}}),
    );
    let e = api_error(pods.create(&PostParams::default(), &bad).await).await;
    assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
    assert!(
        e.message.contains("metadata.name: Invalid value")
            && e.message
                .contains("spec.containers[0].image: Required value"),
        "{}",
        e.message
    );
    let e = api_error(pods.get("nope").await).await;
    assert_eq!(
        (e.code, e.reason.as_str(), e.message.as_str()),
        (404, "NotFound", "pods \"nope\" not found")
    );

    // Claims: create, merge patch, a stale replace conflicts, a fresh one goes through.
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), NS);
    let c: PersistentVolumeClaim = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "cache-a"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}))
    .expect("claim");
    let created = claims
        .create(&PostParams::default(), &c)
        .await
        .expect("create");
    let e = api_error(claims.create(&PostParams::default(), &c).await).await;
    assert_eq!((e.code, e.reason.as_str()), (409, "AlreadyExists"));
    let stale = claims.get("cache-a").await.expect("get");
    assert_eq!(
        stale.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Bound")
    );
    assert_ne!(
        created.metadata.resource_version, stale.metadata.resource_version,
        "binding is a write"
    );
    let patched = claims
        .patch(
            "cache-a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"outpost.dev/in-use": "job-1"}}})),
        )
        .await
        .expect("merge patch");
    assert_eq!(
        patched
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("outpost.dev/in-use"))
            .map(String::as_str),
        Some("job-1")
    );
    let e = api_error(
        claims
            .replace("cache-a", &PostParams::default(), &stale)
            .await,
    )
    .await;
    assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));
    let mut fresh = patched.clone();
    fresh
        .metadata
        .labels
        .get_or_insert_default()
        .insert("outpost.dev/in-use".into(), "job-2".into());
    let replaced = claims
        .replace("cache-a", &PostParams::default(), &fresh)
        .await
        .expect("replace");
    assert_eq!(
        replaced
            .metadata
            .labels
            .and_then(|l| l.get("outpost.dev/in-use").cloned())
            .as_deref(),
        Some("job-2")
    );
    let e = api_error(
        claims
            .patch(
                "cache-a",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"bogus": true}})),
            )
            .await,
    )
    .await;
    assert_eq!(e.code, 400);
    let listed = claims.list(&ListParams::default()).await.expect("list");
    assert!(listed.metadata.resource_version.is_some());

    // A watch from a version older than the history: 410 Expired as an ERROR event.
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), NS);
    for i in 0..8 {
        let s: Secret = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": format!("s{i}"), "labels": {"n": i.to_string()}}, "data": {"k": "dg=="}})).expect("secret");
        secrets
            .create(&PostParams::default(), &s)
            .await
            .expect("create");
    }
    let mut stream = secrets
        .watch(&WatchParams::default(), "1")
        .await
        .expect("watch")
        .boxed();
    match within("the ERROR event", stream.try_next())
        .await
        .expect("an event")
    {
        Some(WatchEvent::Error(e)) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected 410 Expired, got {other:?}"),
    }
    // From the list's version: changes after it, then a bookmark.
    let list = secrets
        .list(&ListParams::default().labels("n in (1,2)"))
        .await
        .expect("list");
    assert_eq!(list.items.len(), 2);
    let rv = list.metadata.resource_version.expect("a list version");
    let mut stream = secrets
        .watch(&WatchParams::default().labels("n=1"), &rv)
        .await
        .expect("watch")
        .boxed();
    secrets
        .delete("s1", &DeleteParams::default())
        .await
        .expect("delete");
    match within("the DELETED event", stream.try_next())
        .await
        .expect("an event")
    {
        Some(WatchEvent::Deleted(s)) => assert_eq!(s.metadata.name.as_deref(), Some("s1")),
        other => panic!("expected DELETED, got {other:?}"),
    }
    let bookmark = within("a bookmark", async {
        while let Some(ev) = stream.try_next().await.expect("an event") {
            if let WatchEvent::Bookmark(b) = ev {
                return b;
            }
        }
        panic!("the watch ended without a bookmark");
    })
    .await;
    assert!(!bookmark.metadata.resource_version.is_empty());
    ctx.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_and_node_loss() {
    let Some(ctx) = setup(SimConfig::default()).await else {
        return;
    };
    let pods = ctx.pods();
    for name in ["evicted", "lost"] {
        let p = pod(
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "main", "image": BUSYBOX, "command": ["sleep", "600"]}]}}),
        );
        pods.create(&PostParams::default(), &p)
            .await
            .expect("create");
        wait_pod(&pods, name, "running", |p| running(p, "main")).await;
    }
    ctx.sim.evict(NS, "evicted").await.expect("evict");
    let p = wait_pod(&pods, "evicted", "Evicted", |p| phase(p) == "Failed").await;
    assert_eq!(
        p.status.as_ref().and_then(|s| s.reason.as_deref()),
        Some("Evicted")
    );
    ctx.sim.lose_node().await.expect("lose the node");
    wait_gone(&pods, "lost", "the lost node's pod deleted").await;
    let p = pod(
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "after"},
        "spec": {"containers": [{"name": "main", "image": BUSYBOX}]}}),
    );
    pods.create(&PostParams::default(), &p)
        .await
        .expect("create");
    wait_pod(&pods, "after", "Pending without a node", |p| {
        p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c.reason.as_deref() == Some("Unschedulable"))
            })
    })
    .await;
    ctx.sim.shutdown().await;
}
