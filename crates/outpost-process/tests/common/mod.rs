//! Shared support of the process backend's tests: fixtures in tempdirs, job builders, an event
//! collector, and checks on the event stream and on processes.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use outpost_executor::{
    CancellationToken, EventReceiver, ExecEvent, Executor, ExecutorError, JobOutcome, OutputStream,
    PreparedJob, StepOutcome, StepSpec, When, event_channel,
};
use outpost_process::{ProcessConfig, ProcessExecutor};
use outpost_protocol::StepState;
use tokio::task::JoinHandle;

/// The runner id of every test job.
pub const RUNNER: &str = "r_test";

/// Every wait in these tests ends by this deadline: a hang is a failure, not a stuck run.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// A work root and a cache root in a fresh tempdir.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub work_root: PathBuf,
    pub cache_root: PathBuf,
}

impl Fixture {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let work_root = dir.path().join("work");
        let cache_root = dir.path().join("cache");
        Self {
            dir,
            work_root,
            cache_root,
        }
    }

    /// A config with an explicit base environment (`PATH` only, from the test's own) and a
    /// short grace, so a test states what it relies on.
    pub fn config(&self) -> ProcessConfig {
        let mut config = ProcessConfig::new(&self.work_root, &self.cache_root);
        config.base_env = BTreeMap::from([(
            "PATH".to_owned(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".to_owned()),
        )]);
        config.kill_grace = Duration::from_secs(30);
        config
    }

    pub fn executor(&self, config: ProcessConfig) -> Arc<ProcessExecutor> {
        Arc::new(ProcessExecutor::new(config))
    }

    /// A job whose workspace is `<work_root>/<job_id>` (not created yet).
    pub fn job(&self, job_id: &str, steps: Vec<StepSpec>) -> PreparedJob {
        PreparedJob {
            job_id: job_id.into(),
            runner_id: RUNNER.into(),
            cache_scope: "scope".to_owned(),
            workspace: self.work_root.join(job_id),
            container_workspace: "/workspace".to_owned(),
            default_image: Some("alpine:3.20".to_owned()),
            env: BTreeMap::new(),
            secrets: Vec::new(),
            services: Vec::new(),
            caches: Vec::new(),
            steps,
            timeout: None,
        }
    }
}

/// Steps numbered in order.
pub fn steps(specs: &[(&str, &str, When)]) -> Vec<StepSpec> {
    specs
        .iter()
        .enumerate()
        .map(|(i, &(name, run, when))| StepSpec {
            index: u32::try_from(i).expect("few steps"),
            name: name.to_owned(),
            image: None,
            run: run.to_owned(),
            env: BTreeMap::new(),
            timeout: None,
            when,
        })
        .collect()
}

/// A job running in the background, its events read as they come.
pub struct Running {
    pub rx: EventReceiver,
    pub events: Vec<ExecEvent>,
    pub cancel: CancellationToken,
    task: JoinHandle<Result<JobOutcome, ExecutorError>>,
}

/// What a finished run produced.
pub struct Finished {
    pub result: Result<JobOutcome, ExecutorError>,
    pub events: Vec<ExecEvent>,
}

pub fn start(exec: &Arc<ProcessExecutor>, job: PreparedJob) -> Running {
    let (tx, rx) = event_channel();
    let cancel = CancellationToken::new();
    let exec = Arc::clone(exec);
    let token = cancel.clone();
    let task = tokio::spawn(async move { exec.run(job, None, tx, token).await });
    Running {
        rx,
        events: Vec::new(),
        cancel,
        task,
    }
}

impl Running {
    /// Reads events until the stdout of step `index` contains `needle`.
    pub async fn until_stdout(&mut self, index: u32, needle: &str) {
        let wait = async {
            loop {
                if contains(&stdout(&self.events, index), needle.as_bytes()) {
                    return;
                }
                match self.rx.recv().await {
                    Some(event) => self.events.push(event),
                    None => panic!("the job ended before step {index} printed {needle:?}"),
                }
            }
        };
        tokio::time::timeout(DEADLINE, wait)
            .await
            .expect("deadline waiting for output");
    }

    pub async fn finish(mut self) -> Finished {
        let wait = async {
            while let Some(event) = self.rx.recv().await {
                self.events.push(event);
            }
            self.task.await.expect("run task panicked")
        };
        let result = tokio::time::timeout(DEADLINE, wait)
            .await
            .expect("deadline waiting for the job to end");
        Finished {
            result,
            events: self.events,
        }
    }

    /// Ends the run by dropping the event receiver, and returns what `run` returned.
    pub async fn drop_receiver(self) -> Result<JobOutcome, ExecutorError> {
        drop(self.rx);
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("deadline waiting for the job to end")
            .expect("run task panicked")
    }
}

pub async fn run(exec: &Arc<ProcessExecutor>, job: PreparedJob) -> Finished {
    start(exec, job).finish().await
}

impl Finished {
    pub fn outcome(&self) -> &JobOutcome {
        match &self.result {
            Ok(outcome) => outcome,
            Err(e) => panic!("run failed: {e}"),
        }
    }

    /// The finished outcome of step `index`.
    pub fn step(&self, index: u32) -> &StepOutcome {
        self.events
            .iter()
            .find_map(|e| match e {
                ExecEvent::StepFinished {
                    index: i, outcome, ..
                } if *i == index => Some(outcome),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no StepFinished for step {index}"))
    }

    pub fn states(&self) -> Vec<StepState> {
        self.events
            .iter()
            .filter_map(|e| match e {
                ExecEvent::StepFinished { outcome, .. } => Some(outcome.state),
                _ => None,
            })
            .collect()
    }

    pub fn stdout(&self, index: u32) -> Vec<u8> {
        stdout(&self.events, index)
    }

    pub fn stdout_str(&self, index: u32) -> String {
        String::from_utf8_lossy(&self.stdout(index)).into_owned()
    }

    pub fn stderr(&self, index: u32) -> Vec<u8> {
        stream(&self.events, index, OutputStream::Stderr)
    }
}

pub fn stdout(events: &[ExecEvent], index: u32) -> Vec<u8> {
    stream(events, index, OutputStream::Stdout)
}

fn stream(events: &[ExecEvent], index: u32, which: OutputStream) -> Vec<u8> {
    let mut out = Vec::new();
    for event in events {
        if let ExecEvent::Output {
            index: i,
            stream,
            data,
        } = event
            && *i == index
            && *stream == which
        {
            out.extend_from_slice(data);
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Checks the shape of a job's event stream: steps in order 0..n, each either `StepStarted`,
/// `Output`*, `StepFinished`, or a lone skipped `StepFinished`, with nothing interleaved.
pub fn check_event_order(events: &[ExecEvent], steps: u32) {
    let mut it = events.iter().peekable();
    for index in 0..steps {
        match it.next() {
            Some(ExecEvent::StepStarted { index: i, .. }) => {
                assert_eq!(*i, index, "StepStarted out of order");
                while let Some(ExecEvent::Output { index: i, .. }) = it.peek() {
                    assert_eq!(*i, index, "output of another step inside step {index}");
                    it.next();
                }
                match it.next() {
                    Some(ExecEvent::StepFinished {
                        index: i, outcome, ..
                    }) => {
                        assert_eq!(*i, index);
                        assert_ne!(outcome.state, StepState::Skipped, "started step skipped");
                    }
                    other => panic!("step {index}: expected StepFinished, got {other:?}"),
                }
            }
            Some(ExecEvent::StepFinished {
                index: i, outcome, ..
            }) => {
                assert_eq!(*i, index, "StepFinished out of order");
                assert_eq!(outcome.state, StepState::Skipped, "finished without start");
            }
            other => panic!("step {index}: expected an event, got {other:?}"),
        }
    }
    assert!(it.next().is_none(), "events after the last step");
}

/// Waits until process `pid` is gone (or a zombie nobody reaps, which runs nothing).
pub async fn wait_gone(pid: i32) {
    let wait = async {
        loop {
            match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                Err(_) => return,
                Ok(stat) => {
                    let state = stat
                        .rsplit_once(')')
                        .and_then(|(_, rest)| rest.trim_start().chars().next());
                    if matches!(state, Some('Z' | 'X')) {
                        return;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(DEADLINE, wait)
        .await
        .unwrap_or_else(|_| panic!("process {pid} is still alive"));
}

/// Whether process `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => !matches!(
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next()),
            Some('Z' | 'X')
        ),
    }
}

/// The pids written one per line to `file`.
pub fn read_pids(file: &std::path::Path) -> Vec<i32> {
    std::fs::read_to_string(file)
        .expect("pid file")
        .lines()
        .map(|l| l.trim().parse().expect("a pid"))
        .collect()
}
