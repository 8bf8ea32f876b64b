//! [`TestHub`]: the real `outpost-hub` binary as a child process, on `127.0.0.1` with a port the
//! kernel picks, a database in a temporary directory and a random admin key; killed on drop.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use outpost_protocol::{
    CreateOrgRequest, CreateOrgResponse, CreateRunnerTokenRequest, CreateRunnerTokenResponse,
    JobDetails, SubmitJobRequest, SubmitJobResponse, paths,
};
use tempfile::TempDir;

use crate::{Http, TestRunner, bin_path, random_secret};

/// The line the hub prints on stdout once it listens, followed by its URL.
const LISTENING_PREFIX: &str = "outpost-hub listening on ";
/// How many lines of the hub's stderr a panic message shows.
const STDERR_TAIL_LINES: usize = 60;

/// An organization created on a test hub, with its API key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Org {
    pub name: String,
    pub api_key: String,
}

/// Options of a [`TestHub`]; `TestHub::builder().lease_ttl_s(2).start().await`.
#[derive(Debug, Clone)]
pub struct TestHubBuilder {
    lease_ttl_s: Option<u64>,
    heartbeat_interval_s: Option<u64>,
    max_wait_s: Option<u64>,
    env: Vec<(String, String)>,
    start_timeout: Duration,
    binary: Option<PathBuf>,
}

impl Default for TestHubBuilder {
    fn default() -> Self {
        Self {
            binary: None,
            lease_ttl_s: None,
            heartbeat_interval_s: None,
            max_wait_s: None,
            env: Vec::new(),
            start_timeout: Duration::from_secs(30),
        }
    }
}

impl TestHubBuilder {
    /// `OUTPOST_HUB_LEASE_TTL_S`: seconds a lease lasts without a heartbeat.
    pub fn lease_ttl_s(mut self, seconds: u64) -> Self {
        self.lease_ttl_s = Some(seconds);
        self
    }

    /// `OUTPOST_HUB_HEARTBEAT_INTERVAL_S`: the heartbeat interval the hub tells runners.
    pub fn heartbeat_interval_s(mut self, seconds: u64) -> Self {
        self.heartbeat_interval_s = Some(seconds);
        self
    }

    /// `OUTPOST_HUB_MAX_WAIT_S`: the cap on long-poll `wait_s`.
    pub fn max_wait_s(mut self, seconds: u64) -> Self {
        self.max_wait_s = Some(seconds);
        self
    }

    /// One more environment variable for the hub process.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Runs this executable instead of [`bin_path`]`("outpost-hub")`.
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// How long the hub may take to print its listening line (default 30 s).
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// Starts the hub; panics (with the hub's stderr) when it does not come up.
    pub async fn start(self) -> TestHub {
        let dir = tempfile::Builder::new()
            .prefix("outpost-testhub-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temporary directory for the hub: {e}"));
        let mut hub = TestHub {
            binary: self
                .binary
                .clone()
                .unwrap_or_else(|| bin_path("outpost-hub")),
            database: dir.path().join("hub.sqlite"),
            stdout_path: dir.path().join("hub.stdout"),
            stderr_path: dir.path().join("hub.stderr"),
            admin_key: random_secret(),
            options: self,
            child: None,
            url: String::new(),
            listen: "127.0.0.1:0".to_owned(),
            dir,
            tail_shown: AtomicBool::new(false),
        };
        hub.spawn_and_wait().await;
        hub
    }
}

/// A running `outpost-hub` process. Killed (SIGKILL) when dropped; when dropped during a
/// panic, the tail of its stderr is printed so the failing test shows what the hub said.
pub struct TestHub {
    binary: PathBuf,
    database: PathBuf,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    admin_key: String,
    options: TestHubBuilder,
    child: Option<Child>,
    url: String,
    /// What `--listen` gets: port 0 at first, the port first bound on restarts.
    listen: String,
    /// Owns the database and output files; removed on drop, after the child is gone.
    dir: TempDir,
    /// Whether a helper's panic message already showed the stderr tail (drop need not).
    tail_shown: AtomicBool,
}

impl std::fmt::Debug for TestHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestHub")
            .field("url", &self.url)
            .field("database", &self.database)
            .field("running", &self.child.is_some())
            .finish()
    }
}

impl TestHub {
    /// Starts a hub with the default options.
    pub async fn start() -> TestHub {
        Self::builder().start().await
    }

    pub fn builder() -> TestHubBuilder {
        TestHubBuilder::default()
    }

    /// `http://127.0.0.1:PORT`, the same across restarts.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The hub's admin key (`OUTPOST_HUB_ADMIN_KEY`).
    pub fn admin_key(&self) -> &str {
        &self.admin_key
    }

    /// The SQLite database file (kept across restarts).
    pub fn database_path(&self) -> &Path {
        &self.database
    }

    /// The temporary directory that holds the database and the hub's output.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The file the hub's stderr goes to (appended to across restarts).
    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }

    /// The last `lines` lines of the hub's stderr.
    pub fn stderr_tail(&self, lines: usize) -> String {
        tail(&self.stderr_path, lines)
    }

    /// Whether the hub process is running (not killed by [`TestHub::kill`]).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// A client without credentials.
    pub fn http(&self) -> Http {
        Http::new(self.url.clone())
    }

    /// A client with the admin key.
    pub fn admin(&self) -> Http {
        self.http().bearer(self.admin_key.clone())
    }

    /// A client with `org`'s API key.
    pub fn as_org(&self, org: &Org) -> Http {
        self.http().bearer(org.api_key.clone())
    }

    /// Kills the hub with SIGKILL and waits until it is gone. A no-op when it is not running.
    pub async fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Err(e) = child.kill() {
            panic!("cannot kill the hub (pid {}): {e}", child.id());
        }
        let pid = child.id();
        crate::wait_until("the killed hub has exited", Duration::from_secs(10), || {
            let exited = match child.try_wait() {
                Ok(Some(_)) => true,
                Ok(None) => false,
                Err(e) => panic!("cannot wait for the hub (pid {pid}): {e}"),
            };
            std::future::ready(exited)
        })
        .await;
    }

    /// Starts the hub again on the same port with the same database and admin key (after
    /// [`TestHub::kill`]; kills it first when it is still running).
    pub async fn restart(&mut self) {
        self.kill().await;
        self.note_in_stderr("restart");
        self.spawn_and_wait().await;
    }

    /// Creates an organization with the admin key; panics unless the hub answers 201.
    pub async fn create_org(&self, name: &str) -> Org {
        let request = CreateOrgRequest {
            name: name.to_owned(),
        };
        let answer = self.admin().post_json(paths::ORGS, &request).await;
        self.check(
            answer.code() == 201,
            &format!("create org `{name}`: {answer:?}"),
        );
        let created: CreateOrgResponse = answer.json();
        assert_eq!(
            created.name, name,
            "the hub named the org differently: {answer:?}"
        );
        Org {
            name: created.name,
            api_key: created.api_key,
        }
    }

    /// Creates a runner token for `org` with its API key; returns the token.
    pub async fn create_runner_token(&self, org: &Org) -> String {
        self.create_runner_token_with_id(org, "testkit").await.token
    }

    /// Creates a runner token with a description; returns its id and the token.
    pub async fn create_runner_token_with_id(
        &self,
        org: &Org,
        description: &str,
    ) -> CreateRunnerTokenResponse {
        let request = CreateRunnerTokenRequest {
            description: description.to_owned(),
        };
        let answer = self
            .as_org(org)
            .post_json(&paths::runner_tokens(&org.name), &request)
            .await;
        self.check(
            answer.code() == 201,
            &format!("create runner token: {answer:?}"),
        );
        answer.json()
    }

    /// Creates a token for `org` and registers a runner with it (executor `process`, capacity 1).
    pub async fn register_runner(&self, org: &Org, name: &str, labels: &[&str]) -> TestRunner {
        let token = self.create_runner_token(org).await;
        TestRunner::register(&self.url, &token, name, labels).await
    }

    /// Submits a job for `org`; panics unless 201; returns the job id.
    pub async fn submit(&self, org: &Org, request: &SubmitJobRequest) -> String {
        let answer = self
            .as_org(org)
            .post_json(&paths::jobs(&org.name), request)
            .await;
        self.check(answer.code() == 201, &format!("submit job: {answer:?}"));
        answer.json::<SubmitJobResponse>().job_id.into_string()
    }

    /// Fetches a job of `org`; panics unless 200.
    pub async fn job(&self, org: &Org, job_id: impl AsRef<str>) -> JobDetails {
        let answer = self
            .as_org(org)
            .get(&paths::job(&org.name, job_id.as_ref()))
            .await;
        self.check(answer.code() == 200, &format!("get job: {answer:?}"));
        answer.json()
    }

    /// Reads a job's whole log (no follow); panics unless 200.
    pub async fn log(&self, org: &Org, job_id: impl AsRef<str>) -> Vec<u8> {
        let answer = self
            .as_org(org)
            .get(&paths::job_log_read(&org.name, job_id.as_ref(), 0, false))
            .await;
        self.check(answer.code() == 200, &format!("read log: {answer:?}"));
        answer.body.to_vec()
    }

    /// The value of one sample of the hub's `/metrics`, named with its labels exactly as the
    /// hub prints them (`outpost_hub_acquire_waiting`); `None` when absent.
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        let answer = self.http().get(paths::METRICS).await;
        self.check(answer.code() == 200, &format!("GET /metrics: {answer:?}"));
        crate::metric_value(&answer.text(), sample)
    }

    /// Waits until the hub's metric `sample` is `value`; panics after `deadline`.
    pub async fn wait_metric(&self, sample: &str, value: f64, deadline: Duration) {
        crate::wait_until(&format!("{sample} is {value}"), deadline, || async {
            self.metric(sample).await == Some(value)
        })
        .await;
    }

    #[track_caller]
    fn check(&self, ok: bool, what: &str) {
        if !ok {
            self.tail_shown.store(true, Ordering::Relaxed);
            panic!(
                "{what}\n--- hub stderr (tail) ---\n{}",
                self.stderr_tail(STDERR_TAIL_LINES)
            );
        }
    }

    fn note_in_stderr(&self, what: &str) {
        if let Ok(mut f) = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_path)
        {
            let _ = writeln!(f, "--- testkit: {what} ---");
        }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("serve")
            .arg("--listen")
            .arg(&self.listen)
            .arg("--database")
            .arg(&self.database)
            .env("OUTPOST_HUB_ADMIN_KEY", &self.admin_key)
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        let o = &self.options;
        for (key, value) in [
            ("OUTPOST_HUB_LEASE_TTL_S", o.lease_ttl_s),
            ("OUTPOST_HUB_HEARTBEAT_INTERVAL_S", o.heartbeat_interval_s),
            ("OUTPOST_HUB_MAX_WAIT_S", o.max_wait_s),
        ] {
            match value {
                Some(v) => cmd.env(key, v.to_string()),
                None => cmd.env_remove(key),
            };
        }
        for (key, value) in &o.env {
            cmd.env(key, value);
        }
        cmd
    }

    /// Spawns the hub and waits for its listening line. Retries a restart whose port is
    /// briefly not bindable, until the start timeout.
    async fn spawn_and_wait(&mut self) {
        let deadline = tokio::time::Instant::now() + self.options.start_timeout;
        loop {
            match self.spawn_once(deadline).await {
                Ok(url) => {
                    if !self.url.is_empty() && url != self.url {
                        panic!("the restarted hub listens on {url}, not on {}", self.url);
                    }
                    self.listen = url.trim_start_matches("http://").to_owned();
                    self.url = url;
                    return;
                }
                Err(why) => {
                    let restarting = !self.url.is_empty();
                    if !restarting || tokio::time::Instant::now() >= deadline {
                        self.tail_shown.store(true, Ordering::Relaxed);
                        panic!(
                            "outpost-hub did not start: {why}\ncommand: {:?}\n--- hub stderr \
                             (tail) ---\n{}",
                            self.command(),
                            self.stderr_tail(STDERR_TAIL_LINES)
                        );
                    }
                    self.note_in_stderr(&format!("start failed ({why}); retrying"));
                    tokio::time::sleep(crate::POLL_INTERVAL * 5).await;
                }
            }
        }
    }

    /// One attempt: spawn, then poll stdout for the listening line while the child lives.
    async fn spawn_once(&mut self, deadline: tokio::time::Instant) -> Result<String, String> {
        let stdout = File::create(&self.stdout_path)
            .map_err(|e| format!("cannot create {}: {e}", self.stdout_path.display()))?;
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_path)
            .map_err(|e| format!("cannot open {}: {e}", self.stderr_path.display()))?;
        let child = self
            .command()
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("cannot spawn {}: {e}", self.binary.display()))?;
        self.child = Some(child);
        loop {
            let out = std::fs::read_to_string(&self.stdout_path).unwrap_or_default();
            if let Some(line) = out.lines().next().filter(|_| out.contains('\n')) {
                let Some(url) = line.strip_prefix(LISTENING_PREFIX) else {
                    self.kill().await;
                    return Err(format!("unexpected first stdout line {line:?}"));
                };
                return Ok(url.trim().to_owned());
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!("the hub exited with {status} before listening"));
            }
            if tokio::time::Instant::now() >= deadline {
                self.kill().await;
                return Err(format!(
                    "no listening line on stdout within {:?} (stdout so far: {out:?})",
                    self.options.start_timeout
                ));
            }
            tokio::time::sleep(crate::POLL_INTERVAL).await;
        }
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            // Reaping a SIGKILLed child returns at once.
            let _ = child.wait();
        }
        if std::thread::panicking() && !self.tail_shown.load(Ordering::Relaxed) {
            eprintln!(
                "--- outpost-hub at {} stderr (tail, {}) ---\n{}",
                self.url,
                self.stderr_path.display(),
                self.stderr_tail(STDERR_TAIL_LINES)
            );
        }
    }
}

fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    /// Writes an executable shell script standing in for the hub.
    fn fake_hub(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("fake-hub");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write the fake hub");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    /// Prints the listening line for `--listen` (port 0 becomes 4242), then sleeps.
    const LISTENS: &str = r#"listen="$3"
case "$listen" in *:0) listen="${listen%:0}:4242";; esac
echo "fake up: db=$5 key=${#OUTPOST_HUB_ADMIN_KEY} ttl=$OUTPOST_HUB_LEASE_TTL_S extra=$EXTRA" >&2
echo "outpost-hub listening on http://$listen"
exec sleep 300"#;

    #[tokio::test]
    async fn starts_kills_and_restarts_on_the_same_address() {
        let scripts = tempfile::tempdir().expect("tempdir");
        let mut hub = TestHub::builder()
            .binary(fake_hub(scripts.path(), LISTENS))
            .lease_ttl_s(5)
            .env("EXTRA", "yes")
            .start()
            .await;
        assert_eq!(hub.url(), "http://127.0.0.1:4242");
        assert_eq!(hub.admin_key().len(), 32);
        let said = hub.stderr_tail(10);
        let db = hub.database_path().display().to_string();
        assert!(
            said.contains(&format!("fake up: db={db} key=32 ttl=5 extra=yes")),
            "{said}"
        );

        hub.kill().await;
        assert!(!hub.is_running());
        hub.restart().await;
        assert!(hub.is_running());
        assert_eq!(hub.url(), "http://127.0.0.1:4242");
        let said = hub.stderr_tail(10);
        assert_eq!(said.matches("fake up").count(), 2, "{said}");
        assert!(said.contains("--- testkit: restart ---"), "{said}");
    }

    #[tokio::test]
    #[should_panic(expected = "no database here")]
    async fn a_hub_that_exits_panics_with_its_stderr() {
        let scripts = tempfile::tempdir().expect("tempdir");
        let fake = fake_hub(scripts.path(), "echo 'no database here' >&2; exit 3");
        TestHub::builder().binary(fake).start().await;
    }

    #[tokio::test]
    #[should_panic(expected = "no listening line on stdout")]
    async fn a_hub_that_never_listens_panics_at_the_deadline() {
        let scripts = tempfile::tempdir().expect("tempdir");
        let fake = fake_hub(scripts.path(), "exec sleep 300");
        TestHub::builder()
            .binary(fake)
            .start_timeout(Duration::from_millis(300))
            .start()
            .await;
    }

    #[tokio::test]
    #[should_panic(expected = "unexpected first stdout line")]
    async fn a_hub_that_prints_something_else_panics() {
        let scripts = tempfile::tempdir().expect("tempdir");
        let fake = fake_hub(scripts.path(), "echo hello; exec sleep 300");
        TestHub::builder().binary(fake).start().await;
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        std::fs::write(&path, "a\nb\nc\nd\n").expect("write");
        assert_eq!(tail(&path, 2), "c\nd");
        assert_eq!(tail(&path, 10), "a\nb\nc\nd");
        assert!(tail(&dir.path().join("missing"), 3).starts_with("(cannot read"));
    }
}
