//! Test support shared by outpost's tests: the real `outpost-hub` binary started as a child
//! process on a loopback port with a temporary database ([`TestHub`]), a small HTTP client
//! ([`Http`]), a typed runner-side facade ([`TestRunner`]), the real `runner-process` binary as a
//! child process ([`RunnerProcess`]), a fault-injecting TCP proxy ([`FaultProxy`]), and the
//! helpers every test needs ([`wait_until`], [`unique`], [`bin_path`]).
//!
//! The kit drives binaries over real sockets; it deliberately does not depend on the crates it
//! tests. Helpers panic with a message naming what failed (a test wants that), and the fallible
//! building blocks ([`Http::send`]) return [`Error`] for tests that expect a failure, e.g. while
//! the hub is down.
//!
//! ```no_run
//! # async fn example() {
//! use outpost_protocol::SubmitJobRequest;
//! use outpost_testkit::{TestHub, unique};
//!
//! // Needs the binaries built first (`cargo build --bins`).
//! let hub = TestHub::builder().lease_ttl_s(2).start().await;
//! let org = hub.create_org(&unique("org")).await;
//! let runner = hub.register_runner(&org, &unique("runner"), &["linux"]).await;
//! let request = SubmitJobRequest {
//!     pipeline: Some("version: 1\nsteps:\n  - name: a\n    run: 'true'\n".into()),
//!     ..SubmitJobRequest::default()
//! };
//! let job_id = hub.submit(&org, &request).await;
//! let job = runner.acquire(5).await.expect("a job");
//! assert_eq!(job.job_id, job_id);
//! # }
//! ```

mod docker;
mod http;
mod hub;
mod proxy;
mod runner;
mod runner_process;

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use crate::docker::DockerPurge;
pub use crate::http::{Http, Response, Streaming};
pub use crate::hub::{Org, TestHub, TestHubBuilder};
pub use crate::proxy::{FaultMode, FaultProxy, ProxyStats};
pub use crate::runner::{TEST_RUNNER_CAPACITY, TestRunner, held};
pub use crate::runner_process::{RunnerProcess, RunnerProcessBuilder, metric_value};

/// What a fallible helper of the kit failed at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The base URL and path do not form a valid URI.
    #[error("invalid url `{url}`: {source}")]
    InvalidUrl {
        /// The URL as built from the base URL and the path.
        url: String,
        #[source]
        source: ::http::uri::InvalidUri,
    },
    /// The request could not be built (a bad header value, e.g. a token with a newline).
    #[error("cannot build request {method} {url}: {source}")]
    BuildRequest {
        method: String,
        url: String,
        #[source]
        source: ::http::Error,
    },
    /// The request failed before an answer arrived (connection refused, reset, ...).
    #[error("request {method} {url} failed: {source}")]
    Request {
        method: String,
        url: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// The answer's body could not be read to its end.
    #[error("reading the body of {method} {url} failed: {source}")]
    Body {
        method: String,
        url: String,
        #[source]
        source: hyper::Error,
    },
    /// No complete answer arrived within the client's timeout.
    #[error("request {method} {url} got no answer within {after:?}")]
    Timeout {
        method: String,
        url: String,
        after: Duration,
    },
}

/// The interval at which [`wait_until`] checks its condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Polls `f` every [`POLL_INTERVAL`] until it returns `true`; panics naming `what` when
/// `deadline` passes first. The replacement for a sleep: wait for the condition itself.
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if f().await {
            return;
        }
        if tokio::time::Instant::now() >= end {
            panic!("timed out after {deadline:?} waiting until {what}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// A name unique across tests and test processes: `prefix-<random>-<counter>`, lowercase
/// letters, digits and dashes only (fit for organization names and Docker labels).
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{:08x}-{n}", rand::random::<u32>())
}

/// A random secret of 32 hex digits (admin keys and the like).
pub fn random_secret() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// The path of one of the workspace's binaries: in `OUTPOST_BIN_DIR` when set, else next to
/// the running test executable's directory (`target/<profile>/deps/..` = `target/<profile>`).
///
/// # Panics
/// When the binary is not there, with how to build it.
pub fn bin_path(name: &str) -> PathBuf {
    let file = format!("{name}{}", std::env::consts::EXE_SUFFIX);
    let dir = match std::env::var_os("OUTPOST_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => default_bin_dir(),
    };
    let path = dir.join(file);
    if !path.is_file() {
        panic!(
            "binary `{name}` not found at {}: build the binaries first with `cargo build --bins` \
             (`cargo xtask ci` does)",
            path.display()
        );
    }
    path
}

fn default_bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the running test executable has a path");
    let mut dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    dir
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Arc;
    use std::sync::atomic::AtomicU32;

    use super::*;

    #[test]
    fn unique_names_differ_and_are_label_safe() {
        let names: HashSet<String> = (0..1000).map(|_| unique("org")).collect();
        assert_eq!(names.len(), 1000);
        for name in &names {
            assert!(name.starts_with("org-"), "{name}");
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{name}"
            );
        }
    }

    #[test]
    fn random_secrets_are_long_and_differ() {
        let (a, b) = (random_secret(), random_secret());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }

    #[test]
    fn default_bin_dir_is_the_profile_dir() {
        let dir = default_bin_dir();
        assert_ne!(
            dir.file_name().and_then(|n| n.to_str()),
            Some("deps"),
            "{}",
            dir.display()
        );
        assert!(dir.is_dir(), "{}", dir.display());
    }

    #[test]
    #[should_panic(expected = "build the binaries first with `cargo build --bins`")]
    fn bin_path_names_the_fix_when_missing() {
        bin_path("no-such-binary-in-outpost");
    }

    #[tokio::test]
    async fn wait_until_returns_once_the_condition_holds() {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        wait_until("three calls", Duration::from_secs(10), move || {
            let c = c.clone();
            async move { c.fetch_add(1, Ordering::SeqCst) >= 2 }
        })
        .await;
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    #[should_panic(expected = "waiting until never true")]
    async fn wait_until_panics_naming_the_condition() {
        wait_until("never true", Duration::from_millis(50), || async { false }).await;
    }
}
