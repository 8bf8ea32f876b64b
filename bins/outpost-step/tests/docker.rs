//! The statically linked wrapper in `outpost-test/busybox:1` (an image with nothing but busybox)
//! on the real Docker engine, the way a job pod uses it: installed into a shared volume, a
//! checkout received on stdin, steps as separate containers that wait for each other's markers,
//! and a cancel that reaches the wrapper as PID 1.
//!
//! Needs the engine and `cargo xtask test-images`; skipped (and says so) when no engine answers,
//! a failure when `OUTPOST_REQUIRE_DOCKER=1`. The static binary is built here with the command
//! of docs/step-wrapper.md into its own target directory, unless `OUTPOST_STEP_STATIC` names one
//! already built.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::DEADLINE;

/// Built by `cargo xtask test-images` (xtask/src/test_images.rs).
const BUSYBOX: &str = "outpost-test/busybox:1";
const REQUIRE_ENV: &str = "OUTPOST_REQUIRE_DOCKER";
const STATIC_ENV: &str = "OUTPOST_STEP_STATIC";

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the docker command runs")
}

/// `docker <args>`, which must succeed; its stdout.
#[track_caller]
fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether the engine answers; the reason when it does not.
fn engine() -> Result<(), String> {
    let out = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .map_err(|e| format!("cannot run `docker`: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// The static-pie wrapper: `$OUTPOST_STEP_STATIC`, else built with the documented command into a
/// target directory of its own (so that it never waits for the lock of the one running tests).
fn static_binary() -> PathBuf {
    if let Some(path) = std::env::var_os(STATIC_ENV) {
        return PathBuf::from(path);
    }
    let triple = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let target_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("outpost-step-static");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--offline",
            "-p",
            "outpost-step",
            "--target",
        ])
        .arg(&triple)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("CARGO_TARGET_DIR", &target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "building the static wrapper failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    target_dir.join(triple).join("release").join("outpost-step")
}

/// Everything one test run creates, removed at the end (even by a panic).
struct Scene {
    prefix: String,
    volume: String,
    containers: std::cell::RefCell<Vec<String>>,
}

impl Scene {
    fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let prefix = format!("outpost-step-test-{}-{nanos}", std::process::id());
        let volume = format!("{prefix}-vol");
        docker_ok(&["volume", "create", &volume]);
        Self {
            prefix,
            volume,
            containers: Default::default(),
        }
    }

    fn name(&self, what: &str) -> String {
        let name = format!("{}-{what}", self.prefix);
        self.containers.borrow_mut().push(name.clone());
        name
    }

    /// `docker create` of a busybox container with the volume at /outpost; `args` is its command.
    fn create(&self, what: &str, args: &[&str]) -> String {
        let name = self.name(what);
        let mount = format!("{}:/outpost", self.volume);
        let mut all = vec!["create", "--name", &name, "-v", &mount, BUSYBOX];
        all.extend_from_slice(args);
        docker_ok(&all);
        name
    }

    /// A step container running the installed wrapper, started in the background.
    fn start_step(&self, index: u32, when: &str, script: &str) -> String {
        let index = index.to_string();
        let name = self.create(
            &format!("step{index}"),
            &[
                "/outpost/bin/outpost-step",
                "run",
                "--index",
                &index,
                "--markers",
                "/outpost/markers",
                "--when",
                when,
                "--",
                "sh",
                "-c",
                script,
            ],
        );
        docker_ok(&["start", &name]);
        name
    }

    /// Waits for a container to end (with the test's deadline) and returns its exit code.
    #[track_caller]
    fn wait(&self, name: &str) -> i32 {
        let start = Instant::now();
        loop {
            let state = docker_ok(&[
                "inspect",
                "--format",
                "{{.State.Status}} {{.State.ExitCode}}",
                name,
            ]);
            if let Some(code) = state.trim().strip_prefix("exited ") {
                return code.parse().expect("an exit code");
            }
            assert!(
                start.elapsed() < DEADLINE,
                "container {name} did not end: {state}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn logs(&self, name: &str) -> String {
        let out = docker(&["logs", name]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// A file of the shared volume, read by a throw-away container.
    fn read(&self, path: &str) -> String {
        let mount = format!("{}:/outpost", self.volume);
        docker_ok(&["run", "--rm", "-v", &mount, BUSYBOX, "cat", path])
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        for name in self.containers.borrow().iter() {
            let _ = docker(&["rm", "-f", name]);
        }
        let _ = docker(&["volume", "rm", "-f", &self.volume]);
    }
}

#[test]
fn docker_static_wrapper_runs_steps_in_busybox_containers() {
    if let Err(reason) = engine() {
        if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") {
            panic!("{REQUIRE_ENV}=1 but the docker engine is not reachable: {reason}");
        }
        println!("skipped: docker engine not reachable ({reason})");
        return;
    }
    assert!(
        docker(&["image", "inspect", BUSYBOX]).status.success(),
        "test image {BUSYBOX} is missing: run `cargo xtask test-images` first"
    );
    let binary = static_binary();
    let scene = Scene::new();

    // The first init container: the binary comes with its image (here: copied in), and installs
    // itself into the shared volume.
    let install = scene.create("install", &["/outpost-step", "install", "/outpost/bin"]);
    docker_ok(&[
        "cp",
        binary.to_str().expect("UTF-8 path"),
        &format!("{install}:/outpost-step"),
    ]);
    docker_ok(&["start", "--attach", &install]);
    assert_eq!(scene.wait(&install), 0, "{}", scene.logs(&install));

    // The checkout arrives on stdin.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    let greeting = b"hello from the checkout\n";
    h.set_size(greeting.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "src/greeting.txt", &greeting[..])
        .expect("appended");
    let archive = b.into_inner().expect("finished");
    let mount = format!("{}:/outpost", scene.volume);
    let mut receive = Command::new("docker")
        .args(["run", "--rm", "-i", "-v", &mount, BUSYBOX])
        .args(["/outpost/bin/outpost-step", "receive", "/outpost/ws"])
        .args(["--marker", "/outpost/markers/receive.done"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("docker runs");
    receive
        .stdin
        .take()
        .expect("piped")
        .write_all(&archive)
        .expect("archive sent");
    let out = receive.wait_with_output().expect("receive ends");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        scene
            .read("/outpost/markers/receive.done")
            .starts_with("state=success exit=0")
    );

    // Later steps start first: they must wait for the markers of the earlier ones.
    let on_failure = scene.start_step(
        1,
        "on_failure",
        "cat /outpost/ws/src/greeting.txt /outpost/ws/out",
    );
    let on_success = scene.start_step(2, "on_success", "echo this must not run");
    let first = scene.start_step(0, "on_success", "echo step-0 > /outpost/ws/out; exit 3");
    assert_eq!(scene.wait(&first), 3, "{}", scene.logs(&first));
    assert_eq!(scene.wait(&on_failure), 0, "{}", scene.logs(&on_failure));
    assert_eq!(scene.logs(&on_failure), "hello from the checkout\nstep-0\n");
    assert_eq!(scene.wait(&on_success), 0, "{}", scene.logs(&on_success));
    assert_eq!(scene.logs(&on_success), "");
    assert_eq!(
        scene.read("/outpost/markers/0.done")
            + &scene.read("/outpost/markers/1.done")
            + &scene.read("/outpost/markers/2.done"),
        "state=failed exit=3\nstate=success exit=0\nstate=skipped\n"
    );

    // A cancel: `docker stop` sends SIGTERM to PID 1, which is the wrapper. Without taking it,
    // the wrapper would ignore it (PID 1 has no default action), `docker stop` would SIGKILL it
    // after its 60 s, and no marker would be written.
    let last = scene.start_step(3, "always", "echo started; exec sleep 600");
    let start = Instant::now();
    while !scene.logs(&last).contains("started") {
        assert!(
            start.elapsed() < DEADLINE,
            "step 3 did not start: {}",
            scene.logs(&last)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    docker_ok(&["stop", "--time", "60", &last]);
    assert_eq!(scene.wait(&last), 143, "{}", scene.logs(&last));
    assert_eq!(
        scene.read("/outpost/markers/3.done"),
        "state=cancelled exit=143\n"
    );
    assert!(
        scene
            .logs(&last)
            .contains("outpost-step: received SIGTERM; stopping the step")
    );
}
