//! The docker-compose deployment (deploy/docker-compose.yml) end to end: the stack comes up from
//! the locally built images, its init service creates an organization and a runner token, the
//! runner (as the image's non-root user with the socket's group) registers, a job whose steps
//! are sibling containers on the host's engine succeeds, so does one from a git repository (the
//! image's git), a second `up` changes nothing, and `down -v` leaves nothing behind: no
//! container, network or volume of the project, none of the jobs'.
//!
//! Needs a Docker engine and docker-compose (v1, or `docker compose` v2): without them the test
//! prints that it was skipped, unless `OUTPOST_REQUIRE_DOCKER=1`. Needs the images of
//! `cargo xtask images` and `cargo xtask test-images`.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::rc::Rc;
use std::time::Duration;

use http::Method;
use outpost_protocol::{
    DEFAULT_PIPELINE_PATH, GitSource, JobDetails, JobState, RunnerList, Source, StepState,
    SubmitJobRequest, SubmitJobResponse, paths,
};
use outpost_testkit::{Http, random_secret, unique, wait_until};

const HUB_IMAGE: &str = "outpost/hub:dev";
const RUNNER_IMAGE: &str = "outpost/runner-docker:dev";
/// The steps' image, from `cargo xtask test-images`.
const STEP_IMAGE: &str = "outpost-test/busybox:1";
const REQUIRE_ENV: &str = "OUTPOST_REQUIRE_DOCKER";
/// Generous: image starts, health checks every 2 s, a 2-core machine running other tests.
const STACK_DEADLINE: Duration = Duration::from_secs(120);

/// Two steps sharing the workspace volume; `answer=42` is computed, so it is in the log only if
/// the steps really ran (the script text does not contain it).
const PIPELINE: &str = "version: 1
image: outpost-test/busybox:1
steps:
  - name: write
    run: echo $((6 * 7)) > answer.txt
  - name: read
    run: echo \"answer=$(cat answer.txt)\"
";

/// Where [`MAKE_REPO`] makes its repository, inside the runner's container.
const REPO: &str = "/tmp/outpost-e2e-repo";
/// Makes a one-commit repository at `$1` on branch `main` whose pipeline prints a file of the
/// checkout.
const MAKE_REPO: &str = r#"
rm -rf "$1"
git init -q -b main "$1"
cd "$1"
echo checkout > word.txt
printf 'version: 1\nimage: outpost-test/busybox:1\nsteps:\n  - name: show\n    run: echo "from-$(cat word.txt)"\n' > .outpost.yml
git add word.txt .outpost.yml
git -c user.name=e2e -c user.email=e2e@example.com commit -q -m init
"#;

#[tokio::test]
async fn compose_stack_runs_a_job_in_sibling_containers_and_tears_down_clean() {
    let Some(compose) = compose_or_skip() else {
        return;
    };
    for (image, task) in [
        (HUB_IMAGE, "images"),
        (RUNNER_IMAGE, "images"),
        (STEP_IMAGE, "test-images"),
    ] {
        let found = docker(&["image", "inspect", "--format", "{{.Id}}", image]);
        assert!(
            found.status.success(),
            "image {image} is missing: build it with `cargo xtask {task}` first"
        );
    }

    let org = unique("org");
    let admin_key = random_secret();
    let runner_name = unique("compose-runner");
    // The runner runs as the image's `outpost` user with the socket's group: the documented
    // non-root setup. The gid is read where the engine runs, through the engine.
    let socket_gid = docker_ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "stat",
        "-v",
        "/var/run/docker.sock:/s",
        HUB_IMAGE,
        "-c",
        "%g",
        "/s",
    ]);
    let project = unique("outpost-e2e");
    let env_file = std::env::temp_dir().join(format!("{project}.env"));
    std::fs::write(&env_file, "").expect("the temporary directory is writable");
    let mut stack = Stack {
        compose,
        project,
        env_file,
        env: vec![
            ("OUTPOST_HUB_PORT", String::new()),
            ("OUTPOST_HUB_ADMIN_KEY", admin_key.clone()),
            ("OUTPOST_ORG", org.clone()),
            ("OUTPOST_RUNNER_NAME", runner_name.clone()),
            (
                "OUTPOST_RUNNER_USER",
                format!("10001:{}", socket_gid.trim()),
            ),
        ],
        runner_id: None,
        down: false,
    };
    stack.compose_ok(&["up", "-d"]);

    let published = stack.compose_ok(&["port", "hub", "8080"]);
    let addr = published.trim();
    assert!(
        addr.starts_with("127.0.0.1:"),
        "the hub is published on loopback only, not on `{addr}`"
    );
    let http = Http::new(format!("http://{addr}")).timeout(Duration::from_secs(10));
    wait_until("the hub answers /healthz", STACK_DEADLINE, || {
        let http = http.clone();
        async move {
            matches!(http.send(Method::GET, paths::HEALTHZ, None).await, Ok(r) if r.code() == 200)
        }
    })
    .await;

    let org_key = stack.compose_ok(&["exec", "-T", "hub", "cat", "/data/org.key"]);
    let org_key = org_key.trim().to_owned();
    assert!(org_key.len() >= 16, "a short org key: `{org_key}`");
    let api = http.bearer(org_key.clone());

    let runners_path = paths::runners(&org);
    let registered = Rc::new(RefCell::new(None));
    wait_until("the runner registered with the hub", STACK_DEADLINE, || {
        let api = api.clone();
        let path = runners_path.clone();
        let found = registered.clone();
        let name = runner_name.clone();
        async move {
            let Ok(answer) = api.send(Method::GET, &path, None).await else {
                return false;
            };
            let list: RunnerList = answer.expect(200).json();
            let runner = list.runners.into_iter().find(|r| r.name == name);
            let seen = runner.is_some();
            *found.borrow_mut() = runner;
            seen
        }
    })
    .await;
    let runner = registered.take().expect("found above");
    assert_eq!(runner.executor, "docker", "{runner:?}");
    stack.runner_id = Some(runner.runner_id.to_string());
    // The admin key from the environment reached the hub.
    let as_admin: RunnerList = http
        .bearer(admin_key)
        .get(&runners_path)
        .await
        .expect(200)
        .json();
    assert_eq!(as_admin.runners.len(), 1, "{as_admin:?}");

    let inline = SubmitJobRequest {
        pipeline: Some(PIPELINE.to_owned()),
        ..SubmitJobRequest::default()
    };
    let (job, log) = run_job(&api, &org, &inline).await;
    assert_eq!(job.runner_id.as_deref(), Some(runner.runner_id.as_str()));
    assert_eq!(
        step_states(&job),
        [("write", StepState::Success), ("read", StepState::Success)],
        "{job:?}"
    );
    assert!(log.contains("answer=42"), "log:\n{log}");

    // A git source, cloned by the runner with the image's git: a repository made inside the
    // runner's container, over the local transport (git-upload-pack through the image's shell).
    stack.compose_ok(&["exec", "-T", "runner", "sh", "-euc", MAKE_REPO, "sh", REPO]);
    let from_git = SubmitJobRequest {
        source: Some(Source {
            git: GitSource {
                url: format!("file://{REPO}"),
                git_ref: Some("main".to_owned()),
            },
            path: DEFAULT_PIPELINE_PATH.to_owned(),
        }),
        ..SubmitJobRequest::default()
    };
    let (job, log) = run_job(&api, &org, &from_git).await;
    assert_eq!(step_states(&job), [("show", StepState::Success)], "{job:?}");
    assert!(log.contains("from-checkout"), "log:\n{log}");

    // The job's containers, network and workspace volume were the engine's (siblings of the
    // runner's container), and the runner removes them once the job is done. What stays is
    // the one spare network the runner keeps ready for its next job (removed when it stops,
    // checked after `down` below).
    wait_until(
        "no resource of the runner's jobs is left but its spare network",
        STACK_DEADLINE,
        || {
            let left = job_resources(&runner.runner_id);
            let networks = left.iter().filter(|r| r.starts_with("network ")).count();
            async move { networks <= 1 && left.len() == networks }
        },
    )
    .await;

    // `up` again: init finds the token and changes nothing; the runner keeps its identity.
    stack.compose_ok(&["up", "-d"]);
    let init_log = stack.compose_ok(&["logs", "--no-color", "init"]);
    assert!(
        init_log.contains("nothing to do"),
        "init ran its setup twice:\n{init_log}"
    );
    let key_again = stack.compose_ok(&["exec", "-T", "hub", "cat", "/data/org.key"]);
    assert_eq!(key_again.trim(), org_key);

    stack.down();
    let label = format!("label=com.docker.compose.project={}", stack.project);
    for list in [&["ps", "-a"][..], &["network", "ls"], &["volume", "ls"]] {
        let mut args = list.to_vec();
        args.extend(["--filter", &label, "-q"]);
        let left = docker_ok(&args);
        assert!(
            left.trim().is_empty(),
            "`docker {}` after down: {left}",
            args.join(" ")
        );
    }
    let left = job_resources(&runner.runner_id);
    assert!(left.is_empty(), "job resources left after down: {left:?}");
}

/// Submits `request`, waits until the job ended and asserts it succeeded; the job and its log.
async fn run_job(api: &Http, org: &str, request: &SubmitJobRequest) -> (JobDetails, String) {
    let submitted: SubmitJobResponse = api
        .post_json(&paths::jobs(org), request)
        .await
        .expect(201)
        .json();
    let job_path = paths::job(org, &submitted.job_id);
    let last = Rc::new(RefCell::new(None));
    wait_until("the job ended", STACK_DEADLINE, || {
        let api = api.clone();
        let path = job_path.clone();
        let last = last.clone();
        async move {
            let Ok(answer) = api.send(Method::GET, &path, None).await else {
                return false;
            };
            let job: JobDetails = answer.expect(200).json();
            let ended = job.state.is_terminal();
            *last.borrow_mut() = Some(job);
            ended
        }
    })
    .await;
    let job = last.take().expect("read above");
    let log = api
        .get(&paths::job_log_read(org, &submitted.job_id, 0, false))
        .await
        .expect(200)
        .text();
    assert_eq!(job.state, JobState::Success, "{job:?}\nlog:\n{log}");
    (job, log)
}

fn step_states(job: &JobDetails) -> Vec<(&str, StepState)> {
    job.steps
        .iter()
        .map(|s| (s.name.as_str(), s.state))
        .collect()
}

/// The compose command (`docker-compose`, else `docker compose`), or `None` after printing why
/// the test is skipped; panics instead when `OUTPOST_REQUIRE_DOCKER=1`.
fn compose_or_skip() -> Option<Vec<String>> {
    let skip = |what: &str, reason: String| {
        if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") {
            panic!("{REQUIRE_ENV}=1 but {what}: {reason}");
        }
        println!("skipped: {what} ({reason})");
    };
    let engine = Command::new("docker")
        .args(["version", "--format", "{{.Server.APIVersion}}"])
        .output();
    match engine {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            skip(
                "docker engine not reachable",
                String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            );
            return None;
        }
        Err(e) => {
            skip(
                "docker engine not reachable",
                format!("cannot run docker: {e}"),
            );
            return None;
        }
    }
    let candidates: [&[&str]; 2] = [&["docker-compose"], &["docker", "compose"]];
    for program in candidates {
        let works = Command::new(program[0])
            .args(&program[1..])
            .arg("version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if works {
            return Some(program.iter().map(|s| (*s).to_owned()).collect());
        }
    }
    skip(
        "docker-compose not available",
        "neither `docker-compose` nor `docker compose` runs".to_owned(),
    );
    None
}

fn compose_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("deploy")
        .join("docker-compose.yml")
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run docker {}: {e}", args.join(" ")))
}

/// `docker args`' stdout; panics with its stderr when it fails.
fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Containers, networks and volumes labelled with `runner_id` (what the Docker backend creates
/// for jobs), as `kind id` lines.
fn job_resources(runner_id: &str) -> Vec<String> {
    let filter = format!("label=outpost.runner-id={runner_id}");
    let mut found = Vec::new();
    for (kind, list) in [
        ("container", &["ps", "-a"][..]),
        ("network", &["network", "ls"]),
        ("volume", &["volume", "ls"]),
    ] {
        let mut args = list.to_vec();
        args.extend(["--filter", &filter, "-q"]);
        let out = docker(&args);
        found.extend(
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(|id| format!("{kind} {id}")),
        );
    }
    found
}

/// One compose project. Dropping it (a failed assertion included) prints the services' logs if
/// the test is failing, then takes everything down, volumes included, and removes what the
/// runner's jobs left.
struct Stack {
    compose: Vec<String>,
    project: String,
    env: Vec<(&'static str, String)>,
    env_file: PathBuf,
    runner_id: Option<String>,
    down: bool,
}

impl Stack {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.compose[0]);
        cmd.args(&self.compose[1..])
            .arg("-f")
            .arg(compose_file())
            .args(["-p", &self.project])
            // An empty file, not deploy/.env should a developer have one.
            .arg("--env-file")
            .arg(&self.env_file)
            .args(args)
            .env_remove("OUTPOST_LABELS")
            .env_remove("OUTPOST_CONCURRENCY")
            .stdin(Stdio::null());
        for (key, value) in &self.env {
            cmd.env(key, value);
        }
        cmd
    }

    /// Runs a compose command; its stdout, or a panic with its stderr.
    fn compose_ok(&self, args: &[&str]) -> String {
        let out = self
            .command(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.compose.join(" ")));
        assert!(
            out.status.success(),
            "`{} -p {} {}` failed ({}): {}",
            self.compose.join(" "),
            self.project,
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn down(&mut self) {
        self.down = true;
        self.compose_ok(&["down", "-v", "--remove-orphans", "-t", "30"]);
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if self.down {
            let _ = std::fs::remove_file(&self.env_file);
            return;
        }
        if std::thread::panicking()
            && let Ok(out) = self
                .command(&["logs", "--no-color", "--tail", "200"])
                .output()
        {
            eprintln!(
                "--- logs of compose project {} ---\n{}",
                self.project,
                String::from_utf8_lossy(&out.stdout)
            );
        }
        let _ = self
            .command(&["down", "-v", "--remove-orphans", "-t", "30"])
            .output();
        if let Some(runner_id) = &self.runner_id {
            for line in job_resources(runner_id) {
                let remove: &[&str] = match line.split_once(' ') {
                    Some(("container", id)) => &["rm", "-f", id],
                    Some(("network", id)) => &["network", "rm", id],
                    Some(("volume", id)) => &["volume", "rm", "-f", id],
                    _ => continue,
                };
                let _ = Command::new("docker").args(remove).output();
            }
        }
        let _ = std::fs::remove_file(&self.env_file);
    }
}
