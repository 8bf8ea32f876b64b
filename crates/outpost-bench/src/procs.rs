//! The processes under test: a real `outpost-hub` and real `runner-process` children on 127.0.0.1
//! ports the kernel picks, each in its own directory under the bench's work directory, and what
//! the bench reads from them (`/metrics`, `/proc/<pid>/status` and `stat`).

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use outpost_client::{ClientConfig, HubClient};
use outpost_protocol::{JobDetails, SubmitJobRequest};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};
use tokio::time::Instant;

/// The organization every bench works in.
pub const ORG: &str = "bench";

/// What every measurement gets: where the binaries are, where to put files, how hard to try.
#[derive(Debug)]
pub struct Ctx {
    pub bin_dir: PathBuf,
    pub work: PathBuf,
    pub quick: bool,
    /// The soft limit of open files after raising it (the hub inherits it).
    pub fd_limit: u64,
    seq: AtomicU32,
}

impl Ctx {
    pub fn new(bin_dir: PathBuf, work: PathBuf, quick: bool, fd_limit: u64) -> Ctx {
        Ctx {
            bin_dir,
            work,
            quick,
            fd_limit,
            seq: AtomicU32::new(0),
        }
    }

    /// A fresh directory for one process or measurement.
    pub fn dir(&self, name: &str) -> anyhow::Result<PathBuf> {
        self.dir_in(&self.work, name)
    }

    /// A fresh directory for one process or measurement, under `base`.
    pub fn dir_in(&self, base: &Path, name: &str) -> anyhow::Result<PathBuf> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("{n:02}-{name}"));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(dir)
    }

    /// `full` for a real run, `quick` with `--quick`.
    pub fn pick<T>(&self, full: T, quick: T) -> T {
        if self.quick { quick } else { full }
    }
}

/// Raises the soft limit of open files to the hard limit (children inherit it) and answers the
/// soft limit in force.
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                eprintln!("bench: cannot raise the open-files limit from {soft} to {hard}: {e}");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(e) => {
            eprintln!("bench: cannot read the open-files limit: {e}");
            1024
        }
    }
}

/// A client of the hub at `url` that never goes through a proxy (everything stays on loopback).
pub fn client(url: &str, token: &str) -> anyhow::Result<HubClient> {
    let mut config = ClientConfig::new(url, token);
    config.use_env_proxy = false;
    config.user_agent = "outpost-bench".to_owned();
    HubClient::new(config).context("cannot build a hub client")
}

/// Waits until `probe` answers `Some`, polling every `every`, for at most `limit`.
pub async fn wait_for<T, F, Fut>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut probe: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe().await? {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(every).await;
    }
}

/// A running `outpost-hub serve` with an organization and a runner token.
pub struct Hub {
    pub url: String,
    addr: SocketAddr,
    /// A client with the hub's admin key (valid on every organization's endpoints).
    pub admin: HubClient,
    pub runner_token: String,
    proc: Proc,
    _stdout: BufReader<ChildStdout>,
}

impl Hub {
    pub async fn start(ctx: &Ctx, name: &str) -> anyhow::Result<Hub> {
        Hub::start_in(ctx, &ctx.work, name).await
    }

    /// Like [`Hub::start`], with the hub's directory (and database) under `base`.
    pub async fn start_in(ctx: &Ctx, base: &Path, name: &str) -> anyhow::Result<Hub> {
        Hub::start_with(ctx, base, name, &[]).await
    }

    /// Like [`Hub::start_in`], with more `OUTPOST_HUB_*` settings for the hub process.
    pub async fn start_with(
        ctx: &Ctx,
        base: &Path,
        name: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Hub> {
        let dir = ctx.dir_in(base, &format!("hub-{name}"))?;
        let admin_key = format!("opak_bench_{}", random_hex(16)?);
        let mut cmd = Command::new(ctx.bin_dir.join("outpost-hub"));
        cmd.arg("serve")
            .args(["--listen", "127.0.0.1:0", "--database"])
            .arg(dir.join("hub.db"))
            .env("OUTPOST_HUB_ADMIN_KEY", &admin_key)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped());
        let mut proc = Proc::spawn("outpost-hub", cmd, &dir)?;
        let stdout = proc
            .child
            .stdout
            .take()
            .context("the hub's stdout is not piped")?;
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        let read = tokio::time::timeout(Duration::from_secs(30), stdout.read_line(&mut line)).await;
        let addr = match read {
            Ok(Ok(n)) if n > 0 => line
                .trim()
                .rsplit("http://")
                .next()
                .and_then(|a| a.parse::<SocketAddr>().ok())
                .with_context(|| format!("unexpected first line from the hub: {line:?}"))?,
            Ok(Ok(_)) => bail!(
                "the hub exited before listening; see {}",
                proc.stderr.display()
            ),
            Ok(Err(e)) => bail!("cannot read the hub's stdout: {e}"),
            Err(_) => bail!(
                "the hub did not listen within 30 s; see {}",
                proc.stderr.display()
            ),
        };
        let url = format!("http://{addr}");
        let admin = client(&url, &admin_key)?;
        admin
            .create_org(ORG)
            .await
            .context("creating the bench organization")?;
        let token = admin
            .create_runner_token(ORG, "bench")
            .await
            .context("creating a runner token")?;
        Ok(Hub {
            url,
            addr,
            admin,
            runner_token: token.token,
            proc,
            _stdout: stdout,
        })
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid
    }

    /// The address the hub listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A client with the runner token.
    pub fn runner_client(&self) -> anyhow::Result<HubClient> {
        client(&self.url, &self.runner_token)
    }

    /// The hub's `/metrics` text (a plain HTTP/1.0 GET, so no client pool is involved).
    pub async fn metrics(&self) -> anyhow::Result<Metrics> {
        let mut stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("cannot connect to the hub at {}", self.addr))?;
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\nConnection: close\r\n\r\n")
            .await
            .context("sending GET /metrics")?;
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
            .await
            .context("GET /metrics timed out")?
            .context("reading GET /metrics")?;
        let text = String::from_utf8_lossy(&answer);
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            bail!("GET /metrics: no HTTP answer");
        };
        if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
            bail!(
                "GET /metrics answered {}",
                head.lines().next().unwrap_or_default()
            );
        }
        Ok(Metrics(body.to_owned()))
    }

    /// Waits until the hub holds at least `n` acquire long-polls.
    pub async fn wait_parked(&self, n: u64, limit: Duration) -> anyhow::Result<()> {
        self.wait_gauge("outpost_hub_acquire_waiting", n, limit)
            .await
            .with_context(|| format!("waiting for {n} parked acquire requests"))
    }

    /// Waits until a gauge of the hub is at least `n`.
    pub async fn wait_gauge(&self, name: &str, n: u64, limit: Duration) -> anyhow::Result<()> {
        wait_for(name, limit, Duration::from_millis(2), || async {
            let value = self.metrics().await?.sum(name, None);
            Ok((value >= n as f64).then_some(()))
        })
        .await
    }

    /// Submits an inline pipeline; answers the job id.
    pub async fn submit(&self, pipeline: &str) -> anyhow::Result<String> {
        let request = SubmitJobRequest {
            pipeline: Some(pipeline.to_owned()),
            ..SubmitJobRequest::default()
        };
        let job = self
            .admin
            .submit_job(ORG, &request)
            .await
            .context("submitting a job")?;
        Ok(job.job_id.into_string())
    }

    /// Waits until job `id` has ended; answers it.
    pub async fn wait_ended(&self, id: &str, limit: Duration) -> anyhow::Result<JobDetails> {
        wait_for(
            &format!("job {id} to end"),
            limit,
            Duration::from_millis(5),
            || async {
                let job = self.admin.get_job(ORG, id).await?;
                Ok(job.state.is_terminal().then_some(job))
            },
        )
        .await
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.proc.stop().await
    }
}

/// The text of a `/metrics` answer.
#[derive(Debug, Clone)]
pub struct Metrics(String);

impl Metrics {
    /// The text of a `/metrics` answer read some other way.
    pub fn from_text(text: String) -> Metrics {
        Metrics(text)
    }

    /// The sum of every sample of metric `name` (exactly that name, any labels) whose line
    /// contains `filter`, e.g. `route="/api/v1/runner/acquire"`.
    pub fn sum(&self, name: &str, filter: Option<&str>) -> f64 {
        self.0
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(['{', ' ']))
            })
            .filter(|l| filter.is_none_or(|f| l.contains(f)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// A running `runner-process`.
pub struct Runner {
    proc: Proc,
}

impl Runner {
    /// Starts a runner-process against `hub` and waits until it is registered and parked in
    /// acquire (the hub's acquire gauge reaches `parked_before + 1`).
    pub async fn start(
        ctx: &Ctx,
        hub: &Hub,
        name: &str,
        concurrency: u32,
        kill_grace: &str,
    ) -> anyhow::Result<Runner> {
        let dir = ctx.dir(&format!("runner-{name}"))?;
        let token_file = dir.join("token");
        std::fs::write(&token_file, &hub.runner_token)
            .with_context(|| format!("cannot write {}", token_file.display()))?;
        let config = dir.join("runner.toml");
        let toml = format!(
            "hub = {hub:?}\ntoken_file = {token:?}\nname = {name:?}\nconcurrency = {concurrency}\n\
             state_dir = {state:?}\nacquire_wait = \"30s\"\n\n[proxy]\nfrom_env = false\n\n\
             [executor]\nkill_grace = {kill_grace:?}\n",
            hub = hub.url,
            token = token_file.display().to_string(),
            state = dir.join("state").display().to_string(),
        );
        std::fs::write(&config, toml)
            .with_context(|| format!("cannot write {}", config.display()))?;
        let parked_before = hub
            .metrics()
            .await?
            .sum("outpost_hub_acquire_waiting", None) as u64;
        let mut cmd = Command::new(ctx.bin_dir.join("runner-process"));
        cmd.arg("--config").arg(&config).env("RUST_LOG", "warn");
        let proc = Proc::spawn("runner-process", cmd, &dir)?;
        let runner = Runner { proc };
        hub.wait_parked(parked_before + 1, Duration::from_secs(30))
            .await
            .with_context(|| {
                format!(
                    "runner-process did not start polling; see {}",
                    runner.proc.stderr.display()
                )
            })?;
        Ok(runner)
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.proc.stop().await
    }
}

/// A child process with its stderr in a file; killed when dropped.
struct Proc {
    what: &'static str,
    child: Child,
    pid: u32,
    stderr: PathBuf,
}

impl Proc {
    fn spawn(what: &'static str, mut cmd: Command, dir: &Path) -> anyhow::Result<Proc> {
        let stderr = dir.join(format!("{what}.stderr"));
        let file = std::fs::File::create(&stderr)
            .with_context(|| format!("cannot create {}", stderr.display()))?;
        cmd.current_dir(dir)
            .stdin(Stdio::null())
            .stderr(file)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {what} (is it built?)"))?;
        let pid = child.id().context("the child has no pid")?;
        Ok(Proc {
            what,
            child,
            pid,
            stderr,
        })
    }

    /// SIGTERM, then SIGKILL after 10 s.
    async fn stop(mut self) -> anyhow::Result<()> {
        let pid = Pid::from_raw(i32::try_from(self.pid).context("pid out of range")?);
        if let Err(e) = kill(pid, Signal::SIGTERM) {
            eprintln!("bench: cannot signal {} ({}): {e}", self.what, self.pid);
        }
        match tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => bail!("waiting for {} to exit: {e}", self.what),
            Err(_) => {
                eprintln!("bench: {} did not stop within 10 s: killing it", self.what);
                self.child.kill().await.context("killing a child")?;
                Ok(())
            }
        }
    }
}

/// `VmRSS` of process `pid`, in bytes.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS in {path}"))?;
    Ok(kib * 1024)
}

/// CPU time (user + system) process `pid` has used so far.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    // The command name may hold spaces and parentheses: fields count from the last `)`.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("malformed {path}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After `)`: state is field 3 of stat(5), so utime (14) and stime (15) are at 11 and 12.
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("malformed {path}"))
    };
    let total = ticks(11)? + ticks(12)?;
    // USER_HZ is 100 on every Linux the project supports.
    Ok(Duration::from_millis(total * 10))
}

/// Hex of `n` random bytes from the kernel.
pub fn random_hex(n: usize) -> anyhow::Result<String> {
    use std::io::Read;
    let mut bytes = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("cannot read /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_sum_matches_name_and_filter() {
        let m = Metrics(
            "# HELP x\n\
             outpost_hub_http_requests_total{route=\"/api/v1/runner/acquire\",method=\"POST\",status=\"204\"} 7\n\
             outpost_hub_http_requests_total{route=\"/api/v1/runner/acquire\",method=\"POST\",status=\"200\"} 3\n\
             outpost_hub_http_requests_total{route=\"/metrics\",method=\"GET\",status=\"200\"} 5\n\
             outpost_hub_acquire_waiting 2\n\
             outpost_hub_acquire_waiting_other 9\n"
                .to_owned(),
        );
        assert_eq!(
            m.sum(
                "outpost_hub_http_requests_total",
                Some("route=\"/api/v1/runner/acquire\"")
            ),
            10.0
        );
        assert_eq!(m.sum("outpost_hub_http_requests_total", None), 15.0);
        assert_eq!(m.sum("outpost_hub_acquire_waiting", None), 2.0);
    }

    #[test]
    fn own_process_figures_are_readable() {
        let pid = std::process::id();
        assert!(rss_bytes(pid).expect("rss") > 0);
        cpu_time(pid).expect("cpu time");
    }
}
