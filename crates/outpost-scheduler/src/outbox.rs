//! The persistent outbox (DESIGN.md §6.2): step updates and completions are written to the state
//! directory (one fsynced file each) before they are sent, and retried with backoff until the
//! hub acknowledges them, across hub outages and runner restarts.
//!
//! Entries of one job are delivered one at a time, in the order they were queued (a step's
//! `running` before its end, every step before the completion); different jobs go in parallel.
//! A completion is sent only once the job's log uploader reports every byte committed (the hub
//! would refuse a short one with `409 log_incomplete` anyway, which is retried too). Delivery
//! stops only on answers that can never succeed (`404`, `409 invalid_state`, …), which are
//! logged and dropped, or when the hub refuses the token (`401`), which stops the runner.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use outpost_client::{ClientError, Completion, HubClient};
use outpost_protocol::{CompleteRequest, ErrorCode, JobId, LeaseId, StepUpdate};
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::HUB_RETRY;
use crate::fatal::Fatal;
use crate::registry::JobRegistry;
use crate::state;

/// What an entry asks the hub to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "body", rename_all = "snake_case")]
pub(crate) enum Item {
    /// `POST /api/v1/runner/jobs/{id}/steps`
    Step(StepUpdate),
    /// `POST /api/v1/runner/jobs/{id}/complete`
    Complete(CompleteRequest),
}

/// One queued message, as stored in `<state>/outbox/<seq>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Entry {
    pub job_id: JobId,
    /// The lease the job is held under: the hub takes writes to a job from its lease holder only.
    pub lease_id: LeaseId,
    #[serde(flatten)]
    pub item: Item,
}

/// An entry as read back: runners before the hub required the lease on step updates wrote none
/// (see [`Outbox::open`] for how it is found again).
#[derive(Debug, Deserialize)]
struct StoredEntry {
    job_id: JobId,
    #[serde(default)]
    lease_id: Option<LeaseId>,
    #[serde(flatten)]
    item: Item,
}

/// The outbox. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Outbox {
    shared: Arc<Shared>,
}

struct Shared {
    dir: PathBuf,
    state: Mutex<State>,
    /// Bumped on every change of `entries`.
    changed: watch::Sender<u64>,
    depth: Gauge,
}

#[derive(Default)]
struct State {
    next_seq: u64,
    entries: BTreeMap<u64, Entry>,
    /// Jobs that have a delivery worker.
    active: HashSet<JobId>,
}

impl Outbox {
    /// Opens the outbox directory and loads what a previous run left in it. Blocking.
    ///
    /// An entry written by a runner of an earlier version carries no lease id: a completion
    /// has its own, a step update takes the lease from the job's journal (`lease_of`); a step
    /// update whose job has no journal any more cannot be sent and is dropped with a warning.
    pub(crate) fn open(
        dir: &Path,
        depth: Gauge,
        lease_of: impl Fn(&JobId) -> Option<LeaseId>,
    ) -> io::Result<Self> {
        state::create_private_dir(dir)?;
        let mut entries = BTreeMap::new();
        let mut next_seq = 0;
        for dirent in fs::read_dir(dir)? {
            let path = dirent?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some(seq) = name
                .strip_suffix(".json")
                .and_then(|stem| stem.parse::<u64>().ok())
            else {
                // Half-written temporary files of a crashed run: never renamed, so never queued.
                if name.ends_with(".tmp") {
                    let _ = fs::remove_file(&path);
                }
                continue;
            };
            next_seq = next_seq.max(seq + 1);
            match fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<StoredEntry>(&b).map_err(|e| e.to_string()))
            {
                Ok(stored) => {
                    let lease_id = stored.lease_id.or_else(|| match &stored.item {
                        Item::Complete(request) => Some(request.lease_id.clone()),
                        Item::Step(_) => lease_of(&stored.job_id),
                    });
                    let Some(lease_id) = lease_id else {
                        tracing::warn!(path = %path.display(), job_id = %stored.job_id, "dropping a step update of an earlier runner version: it names no lease and the job's journal is gone");
                        let _ = fs::remove_file(&path);
                        continue;
                    };
                    entries.insert(
                        seq,
                        Entry {
                            job_id: stored.job_id,
                            lease_id,
                            item: stored.item,
                        },
                    );
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "dropping an unreadable outbox entry");
                    let _ = fs::remove_file(&path);
                }
            }
        }
        depth.set(entries.len() as i64);
        let (changed, _) = watch::channel(0);
        Ok(Self {
            shared: Arc::new(Shared {
                dir: dir.to_owned(),
                state: Mutex::new(State {
                    next_seq,
                    entries,
                    ..State::default()
                }),
                changed,
                depth,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues an entry of the job held under `lease_id`: it is on disk (fsynced) when this
    /// returns. Answers its sequence number.
    pub(crate) async fn push(
        &self,
        job_id: &JobId,
        lease_id: &LeaseId,
        item: Item,
    ) -> io::Result<u64> {
        let entry = Entry {
            job_id: job_id.clone(),
            lease_id: lease_id.clone(),
            item,
        };
        let seq = {
            let mut st = self.lock();
            let seq = st.next_seq;
            st.next_seq += 1;
            seq
        };
        let bytes = serde_json::to_vec(&entry).map_err(io::Error::other)?;
        let path = self.path(seq);
        tokio::task::spawn_blocking(move || state::write_atomic(&path, &bytes))
            .await
            .map_err(io::Error::other)??;
        {
            let mut st = self.lock();
            st.entries.insert(seq, entry);
            self.shared.depth.set(st.entries.len() as i64);
        }
        self.shared.changed.send_modify(|n| *n += 1);
        Ok(seq)
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.shared.dir.join(format!("{seq:020}.json"))
    }

    /// The pending completion of a job, if one is queued.
    pub(crate) fn pending_completion(&self, job_id: &JobId) -> Option<(u64, CompleteRequest)> {
        self.lock()
            .entries
            .iter()
            .find_map(|(seq, e)| match &e.item {
                Item::Complete(c) if &e.job_id == job_id => Some((*seq, c.clone())),
                _ => None,
            })
    }

    /// How many entries wait for delivery.
    pub(crate) fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Waits until entry `seq` was delivered (or dropped as undeliverable).
    pub(crate) async fn wait_delivered(&self, seq: u64) {
        let mut rx = self.shared.changed.subscribe();
        while self.lock().entries.contains_key(&seq) {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Waits until no entry is left.
    pub(crate) async fn wait_empty(&self) {
        let mut rx = self.shared.changed.subscribe();
        while !self.lock().entries.is_empty() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Delivers entries until `stop` fires: one worker per job with pending entries. A
    /// completion waits until the job's uploader (found in `registry`) reports its log committed.
    pub(crate) async fn run(
        self,
        client: HubClient,
        registry: JobRegistry,
        fatal: Fatal,
        stop: CancellationToken,
    ) {
        let mut workers = JoinSet::new();
        let mut rx = self.shared.changed.subscribe();
        loop {
            let idle: Vec<JobId> = {
                let mut st = self.lock();
                let jobs: Vec<JobId> = st
                    .entries
                    .values()
                    .map(|e| e.job_id.clone())
                    .filter(|j| !st.active.contains(j))
                    .collect::<HashSet<_>>()
                    .into_iter()
                    .collect();
                st.active.extend(jobs.iter().cloned());
                jobs
            };
            for job_id in idle {
                let worker = Worker {
                    outbox: self.clone(),
                    client: client.clone(),
                    registry: registry.clone(),
                    fatal: fatal.clone(),
                    stop: stop.clone(),
                    job_id,
                };
                workers.spawn(worker.run());
            }
            tokio::select! {
                () = stop.cancelled() => break,
                changed = rx.changed() => if changed.is_err() { break },
                Some(_) = workers.join_next(), if !workers.is_empty() => {}
            }
        }
        workers.shutdown().await;
        self.lock().active.clear();
    }

    async fn remove(&self, seq: u64) {
        let path = self.path(seq);
        let dir = self.shared.dir.clone();
        let removed = tokio::task::spawn_blocking(move || {
            fs::remove_file(&path).and_then(|()| state::sync_dir(&dir))
        })
        .await;
        if let Ok(Err(e)) | Err(e) = removed.map_err(io::Error::other)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(seq, error = %e, "cannot remove a delivered outbox entry");
        }
        {
            let mut st = self.lock();
            st.entries.remove(&seq);
            self.shared.depth.set(st.entries.len() as i64);
        }
        self.shared.changed.send_modify(|n| *n += 1);
    }
}

/// Delivers the entries of one job, in order.
struct Worker {
    outbox: Outbox,
    client: HubClient,
    registry: JobRegistry,
    fatal: Fatal,
    stop: CancellationToken,
    job_id: JobId,
}

/// How one delivery attempt went.
enum Attempt {
    Done,
    /// Retry after a backoff; the reason is logged.
    Retry(String),
    /// Never deliverable: drop it.
    Drop(String),
    /// The token was refused.
    Unauthorized(String),
}

impl Worker {
    async fn run(self) {
        loop {
            let next = {
                let mut st = self.outbox.lock();
                let next = st
                    .entries
                    .iter()
                    .find(|(_, e)| e.job_id == self.job_id)
                    .map(|(seq, e)| (*seq, e.clone()));
                if next.is_none() {
                    st.active.remove(&self.job_id);
                }
                next
            };
            let Some((seq, entry)) = next else { return };
            if !self.deliver(seq, &entry).await {
                return;
            }
            self.outbox.remove(seq).await;
        }
    }

    /// Tries until the entry is delivered or dropped (`true`), or the outbox stops (`false`).
    async fn deliver(&self, seq: u64, entry: &Entry) -> bool {
        let mut failures: u32 = 0;
        loop {
            if let Item::Complete(req) = &entry.item
                && !self.wait_log(req.log_bytes).await
            {
                return false;
            }
            let attempt = match &entry.item {
                Item::Step(update) => match self
                    .client
                    .step_update(&self.job_id, &entry.lease_id, update)
                    .await
                {
                    Ok(()) => Attempt::Done,
                    Err(e) => classify(e),
                },
                Item::Complete(req) => {
                    self.registry.completion_sent(&self.job_id);
                    match self.client.complete(&self.job_id, req).await {
                        Ok(Completion::Done(resp)) => {
                            tracing::info!(job_id = %self.job_id, state = %resp.state, "completion acknowledged");
                            self.registry.completion_delivered(&self.job_id);
                            Attempt::Done
                        }
                        Ok(Completion::LogIncomplete { committed }) => Attempt::Retry(format!(
                            "the hub holds {committed} of {} log bytes",
                            req.log_bytes
                        )),
                        Err(e) => classify(e),
                    }
                }
            };
            let what = match &entry.item {
                Item::Step(u) => format!("step {} update ({})", u.index, u.state),
                Item::Complete(c) => format!("completion ({:?})", c.result),
            };
            match attempt {
                Attempt::Done => return true,
                Attempt::Drop(reason) => {
                    tracing::warn!(job_id = %self.job_id, seq, %what, %reason, "the hub refused an outbox entry for good; dropping it");
                    return true;
                }
                Attempt::Unauthorized(endpoint) => {
                    self.fatal.unauthorized(endpoint);
                    self.stop.cancelled().await;
                    return false;
                }
                Attempt::Retry(reason) => {
                    failures = failures.saturating_add(1);
                    let delay = HUB_RETRY.delay(failures);
                    tracing::debug!(job_id = %self.job_id, seq, %what, %reason, ?delay, "outbox delivery failed; will retry");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = self.stop.cancelled() => return false,
                    }
                }
            }
        }
    }

    /// Waits until the job's uploader reports `log_bytes` committed, or has stopped, or there is
    /// no uploader. `false` when the outbox stops first.
    async fn wait_log(&self, log_bytes: u64) -> bool {
        let Some(mut gate) = self.registry.committed(&self.job_id) else {
            return true;
        };
        let reached = gate.wait_for(|committed| *committed >= log_bytes);
        tokio::select! {
            _ = reached => true,
            () = self.stop.cancelled() => false,
        }
    }
}

fn classify(e: ClientError) -> Attempt {
    match &e {
        ClientError::Unauthorized { endpoint } => Attempt::Unauthorized(endpoint.clone()),
        ClientError::Api { status, body, .. } if !e.is_retryable() => {
            let retry_codes = [ErrorCode::LogGap, ErrorCode::LogIncomplete];
            if retry_codes.contains(&body.error.code) {
                Attempt::Retry(e.to_string())
            } else if matches!(status.as_u16(), 400 | 403 | 404 | 409 | 410 | 413 | 422) {
                Attempt::Drop(e.to_string())
            } else {
                Attempt::Retry(e.to_string())
            }
        }
        ClientError::Decode { .. } | ClientError::Config { .. } => Attempt::Drop(e.to_string()),
        _ => Attempt::Retry(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use outpost_protocol::{JobResult, StepState};

    use super::*;

    fn step(index: u32) -> Item {
        Item::Step(StepUpdate {
            index,
            name: format!("s{index}"),
            state: StepState::Running,
            exit_code: None,
            started_at: None,
            finished_at: None,
            failure: None,
            log_offset: Some(0),
        })
    }

    fn no_journal(_: &JobId) -> Option<LeaseId> {
        None
    }

    #[test]
    fn entries_of_an_earlier_version_find_their_lease() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |seq: u64, json: &str| {
            fs::write(dir.path().join(format!("{seq:020}.json")), json).expect("write")
        };
        // As runners wrote them before the hub required the lease on step updates.
        let step = r#"{"index":0,"name":"a","state":"running","log_offset":0}"#;
        write(
            1,
            &format!(r#"{{"job_id":"j1","kind":"step","body":{step}}}"#),
        );
        write(
            2,
            r#"{"job_id":"j1","kind":"complete","body":{"lease_id":"l_done","result":"success","log_bytes":0}}"#,
        );
        write(
            3,
            &format!(r#"{{"job_id":"j2","kind":"step","body":{step}}}"#),
        );
        let journal = |job: &JobId| (job.as_str() == "j1").then(|| LeaseId::from("l_journal"));

        let outbox = Outbox::open(dir.path(), Gauge::default(), journal).expect("open");
        let leases: Vec<(u64, String, String)> = outbox
            .lock()
            .entries
            .iter()
            .map(|(seq, e)| (*seq, e.job_id.to_string(), e.lease_id.to_string()))
            .collect();
        assert_eq!(
            leases,
            [
                (1, "j1".to_owned(), "l_journal".to_owned()),
                (2, "j1".to_owned(), "l_done".to_owned()),
            ],
            "the step takes the journal's lease, the completion its own; j2's step cannot be sent"
        );
        assert!(!dir.path().join(format!("{:020}.json", 3)).exists());
        // New entries go on after the highest sequence found, dropped ones included.
        assert_eq!(outbox.lock().next_seq, 4);
    }

    #[tokio::test]
    async fn entries_survive_a_reopen_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outbox = Outbox::open(dir.path(), Gauge::default(), no_journal).expect("open");
        let lease: LeaseId = "l".into();
        outbox
            .push(&"j1".into(), &lease, step(0))
            .await
            .expect("push");
        outbox
            .push(&"j2".into(), &lease, step(0))
            .await
            .expect("push");
        let complete = Item::Complete(CompleteRequest {
            lease_id: "l".into(),
            result: JobResult::Success,
            failure: None,
            log_bytes: 12,
        });
        let seq = outbox
            .push(&"j1".into(), &lease, complete.clone())
            .await
            .expect("push");
        drop(outbox);
        // A torn temporary file of a crash is ignored and removed.
        fs::write(dir.path().join("00000000000000000099.json.tmp"), b"{").expect("write");

        let depth = Gauge::default();
        let outbox = Outbox::open(dir.path(), depth.clone(), no_journal).expect("reopen");
        assert_eq!(outbox.len(), 3);
        assert_eq!(depth.get(), 3);
        let (found, req) = outbox.pending_completion(&"j1".into()).expect("completion");
        assert_eq!(found, seq);
        assert_eq!(Item::Complete(req), complete);
        assert!(outbox.pending_completion(&"j2".into()).is_none());
        assert!(!dir.path().join("00000000000000000099.json.tmp").exists());
        // New entries continue the sequence.
        let next = outbox
            .push(&"j3".into(), &lease, step(1))
            .await
            .expect("push");
        assert!(next > seq);
        outbox.remove(seq).await;
        outbox.wait_delivered(seq).await;
        assert_eq!(outbox.len(), 3);
        assert!(!outbox.path(seq).exists());
    }
}
