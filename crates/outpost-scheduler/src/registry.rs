//! The jobs this runner holds, in one registry: the single place where a job's shared state
//! lives (its lease, what the heartbeat tells it, its log lengths, whether the backend runs
//! it). Every other part asks the registry: the heartbeat for the leases to renew, the outbox
//! for the log gate of a completion, the sweep for what is live, the metrics for running jobs
//! and unsent bytes, the drain for when the last job stopped running.
//!
//! A job is registered before anything of it exists (files, backend resources) and leaves the
//! registry only once nothing more will be sent for it and its files are gone, so "registered"
//! is exactly "live".

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use outpost_executor::LiveJobs;
use outpost_protocol::{HeartbeatResponse, HeldLease, JobId, LeaseId};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// One registered job: what other tasks may see of it. The job's own task owns the rest (its
/// log writer, uploader, slot) in its [`crate::job::JobRun`].
#[derive(Debug)]
pub(crate) struct Entry {
    pub job_id: JobId,
    pub lease_id: LeaseId,
    /// Fires on a cancel from the hub, a lost lease, or the drain's cancel.
    pub cancel: CancellationToken,
    lost: AtomicBool,
    cancel_requested: AtomicBool,
    /// Its completion went to the hub: a lease the hub calls lost is no news any more (the
    /// completion's own answer says how the job ended).
    completing: AtomicBool,
    /// The hub acknowledged its completion: its lease is not renewed any more.
    delivered: AtomicBool,
    /// Whether the backend runs the job (set between the start and the end of its steps).
    running: AtomicBool,
    /// The spooled and committed lengths of the job's log, once it is open.
    log: Mutex<Option<LogLengths>>,
}

/// A job's spooled and committed log lengths, as the writer and the uploader report them.
#[derive(Debug, Clone)]
pub(crate) struct LogLengths {
    pub spooled: watch::Receiver<u64>,
    pub committed: watch::Receiver<u64>,
}

impl Entry {
    /// Whether the hub said the lease is gone: the job must stop and report nothing more.
    pub(crate) fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// The lease is gone (the hub said so, or handed the job out again): stop the job.
    pub(crate) fn mark_lost(&self) {
        self.lost.store(true, Ordering::SeqCst);
        self.cancel.cancel();
    }

    fn lock_log(&self) -> MutexGuard<'_, Option<LogLengths>> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What the drain and the metrics watch: how many jobs are registered and how many the backend
/// runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub registered: usize,
    pub running: usize,
}

/// The registry. Cheap to clone.
#[derive(Clone)]
pub(crate) struct JobRegistry {
    inner: Arc<Inner>,
}

struct Inner {
    jobs: Mutex<HashMap<JobId, Arc<Entry>>>,
    counts: watch::Sender<Counts>,
    /// Bumped when a lease is added, so the heartbeat in flight is replaced by one with it.
    leases_added: watch::Sender<u64>,
    running_gauge: Gauge,
}

impl std::fmt::Debug for JobRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobRegistry")
            .field("counts", &*self.inner.counts.borrow())
            .finish_non_exhaustive()
    }
}

impl JobRegistry {
    pub(crate) fn new(running_gauge: Gauge) -> Self {
        Self {
            inner: Arc::new(Inner {
                jobs: Mutex::default(),
                counts: watch::channel(Counts::default()).0,
                leases_added: watch::channel(0).0,
                running_gauge,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<JobId, Arc<Entry>>> {
        self.inner
            .jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a job under `lease_id`; its cancel token is a child of `parent`. Its lease is
    /// renewed from now on (the heartbeat in flight is replaced). When the job is registered
    /// already (the hub handed it out again after its lease expired here), the old holder is
    /// told its lease is lost and `Err` answers it, to wait for with [`JobRegistry::wait_gone`].
    pub(crate) fn register(
        &self,
        job_id: &JobId,
        lease_id: &LeaseId,
        parent: &CancellationToken,
    ) -> Result<Arc<Entry>, Arc<Entry>> {
        let entry = {
            let mut jobs = self.lock();
            if let Some(old) = jobs.get(job_id) {
                old.mark_lost();
                return Err(Arc::clone(old));
            }
            let entry = Arc::new(Entry {
                job_id: job_id.clone(),
                lease_id: lease_id.clone(),
                cancel: parent.child_token(),
                lost: AtomicBool::new(false),
                cancel_requested: AtomicBool::new(false),
                completing: AtomicBool::new(false),
                delivered: AtomicBool::new(false),
                running: AtomicBool::new(false),
                log: Mutex::new(None),
            });
            jobs.insert(job_id.clone(), Arc::clone(&entry));
            entry
        };
        self.recount();
        self.inner.leases_added.send_modify(|n| *n += 1);
        Ok(entry)
    }

    /// Waits until `old` has left the registry.
    pub(crate) async fn wait_gone(&self, old: &Arc<Entry>) {
        let mut rx = self.inner.counts.subscribe();
        loop {
            let present = self
                .lock()
                .get(&old.job_id)
                .is_some_and(|e| Arc::ptr_eq(e, old));
            if !present || rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Removes a job: nothing more is sent for it and its files are gone.
    pub(crate) fn remove(&self, entry: &Arc<Entry>) {
        {
            let mut jobs = self.lock();
            if jobs
                .get(&entry.job_id)
                .is_some_and(|e| Arc::ptr_eq(e, entry))
            {
                jobs.remove(&entry.job_id);
            }
        }
        self.recount();
    }

    /// Marks whether the backend runs the job.
    pub(crate) fn set_running(&self, entry: &Entry, running: bool) {
        if entry.running.swap(running, Ordering::SeqCst) != running {
            self.recount();
        }
    }

    /// The job's completion is being sent to the hub.
    pub(crate) fn completion_sent(&self, job_id: &JobId) {
        if let Some(entry) = self.lock().get(job_id) {
            entry.completing.store(true, Ordering::SeqCst);
        }
    }

    /// The hub acknowledged the job's completion: its lease ended with it.
    pub(crate) fn completion_delivered(&self, job_id: &JobId) {
        if let Some(entry) = self.lock().get(job_id) {
            entry.delivered.store(true, Ordering::SeqCst);
        }
    }

    /// The job's log lengths, once its log is open (for the metrics and the outbox's gate).
    pub(crate) fn set_log(&self, entry: &Entry, lengths: LogLengths) {
        *entry.lock_log() = Some(lengths);
    }

    fn recount(&self) {
        let counts = {
            let jobs = self.lock();
            Counts {
                registered: jobs.len(),
                running: jobs
                    .values()
                    .filter(|e| e.running.load(Ordering::SeqCst))
                    .count(),
            }
        };
        self.inner
            .running_gauge
            .set(i64::try_from(counts.running).unwrap_or(i64::MAX));
        self.inner.counts.send_if_modified(|c| {
            let changed = *c != counts;
            *c = counts;
            changed
        });
    }

    /// Waits until `done` holds for the counts.
    pub(crate) async fn wait_until(&self, done: impl Fn(Counts) -> bool) {
        let mut rx = self.inner.counts.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = rx.wait_for(|c| done(*c)).await;
    }

    /// The ids of the jobs the backend runs now, sorted.
    pub(crate) fn running(&self) -> Vec<JobId> {
        let mut ids: Vec<JobId> = self
            .lock()
            .values()
            .filter(|e| e.running.load(Ordering::SeqCst))
            .map(|e| e.job_id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// The committed length of a job's log as its uploader reports it; `None` without one.
    pub(crate) fn committed(&self, job_id: &JobId) -> Option<watch::Receiver<u64>> {
        let entry = self.lock().get(job_id).cloned()?;
        let log = entry.lock_log();
        log.as_ref().map(|l| l.committed.clone())
    }

    /// Spooled log bytes the hub has not committed yet, over all jobs.
    pub(crate) fn unsent_log_bytes(&self) -> u64 {
        let entries: Vec<Arc<Entry>> = self.lock().values().cloned().collect();
        entries
            .iter()
            .filter_map(|e| e.lock_log().clone())
            .map(|l| l.spooled.borrow().saturating_sub(*l.committed.borrow()))
            .sum()
    }

    /// Subscribes to "a lease was added".
    pub(crate) fn leases_added(&self) -> watch::Receiver<u64> {
        self.inner.leases_added.subscribe()
    }

    /// The leases to renew, sorted by job id: every job whose lease is not lost and whose
    /// completion the hub has not acknowledged.
    pub(crate) fn leases(&self) -> Vec<HeldLease> {
        let mut held: Vec<HeldLease> = self
            .lock()
            .values()
            .filter(|e| !e.is_lost() && !e.delivered.load(Ordering::SeqCst))
            .map(|e| HeldLease {
                job_id: e.job_id.clone(),
                lease_id: e.lease_id.clone(),
            })
            .collect();
        held.sort_by(|a, b| a.job_id.cmp(&b.job_id));
        held
    }

    /// Applies a heartbeat answer; `true` when it said something new (a cancel or a lost lease).
    pub(crate) fn apply(&self, response: &HeartbeatResponse) -> bool {
        let mut news = false;
        let jobs = self.lock();
        for status in &response.jobs {
            let Some(entry) = jobs.get(&status.job_id) else {
                continue;
            };
            if status.lease_lost {
                if entry.completing.load(Ordering::SeqCst) {
                    // The completion ended the lease (or its answer will say what did).
                    tracing::debug!(job_id = %status.job_id, "lease ended with the job's completion");
                } else if !entry.is_lost() {
                    tracing::warn!(job_id = %status.job_id, "the hub says the job's lease is lost; stopping the job");
                    entry.mark_lost();
                    news = true;
                }
            } else if status.cancel_requested
                && !entry.cancel_requested.swap(true, Ordering::SeqCst)
            {
                tracing::info!(job_id = %status.job_id, "cancel requested by the hub");
                entry.cancel.cancel();
                news = true;
            }
        }
        news
    }
}

impl LiveJobs for JobRegistry {
    fn is_live(&self, job_id: &str) -> bool {
        self.lock().contains_key(job_id)
    }
}

#[cfg(test)]
mod tests {
    use outpost_protocol::LeaseStatus;

    use super::*;

    fn lost(job_id: &JobId) -> HeartbeatResponse {
        HeartbeatResponse {
            jobs: vec![LeaseStatus {
                job_id: job_id.clone(),
                lease_lost: true,
                lease_expires_at: None,
                cancel_requested: false,
            }],
        }
    }

    #[test]
    fn a_lease_that_ends_with_its_completion_is_not_lost_news() {
        let registry = JobRegistry::new(Gauge::default());
        let parent = CancellationToken::new();
        let (done, running): (JobId, JobId) = ("j_done".into(), "j_running".into());
        let entry = registry
            .register(&done, &"l_1".into(), &parent)
            .expect("registered");
        let other = registry
            .register(&running, &"l_2".into(), &parent)
            .expect("registered");

        registry.completion_sent(&done);
        assert!(
            !registry.apply(&lost(&done)),
            "no news: the completion ended it"
        );
        assert!(!entry.is_lost() && !entry.cancel.is_cancelled());
        assert_eq!(
            registry.leases().len(),
            2,
            "renewed until the hub acknowledges"
        );
        registry.completion_delivered(&done);
        let leases: Vec<_> = registry.leases().into_iter().map(|l| l.job_id).collect();
        assert_eq!(leases, std::slice::from_ref(&running));

        // A job still running whose lease is lost stops.
        assert!(registry.apply(&lost(&running)));
        assert!(other.is_lost() && other.cancel.is_cancelled());
    }
}
