//! The leases this runner holds, and the batched long-poll heartbeat that renews them all in one
//! request (DESIGN.md §3). A `cancel_requested` or `lease_lost` in an answer reaches the job's
//! cancellation token at once; the hub answers the long-poll early on a cancel, so a cancel
//! takes about one round trip. When a job is added, the heartbeat in flight is replaced by one
//! that includes it, so its cancel is long-polled from the start too.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use outpost_client::{ClientError, HubClient};
use outpost_protocol::{HeartbeatRequest, HeartbeatResponse, HeldLease};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::fatal::Fatal;
use crate::outbox::backoff;

/// What the heartbeat tells one job.
#[derive(Debug)]
pub(crate) struct JobControl {
    /// Fires on a cancel from the hub, a lost lease, or the drain's cancel.
    pub cancel: CancellationToken,
    lost: AtomicBool,
    cancel_requested: AtomicBool,
}

impl JobControl {
    pub(crate) fn new(cancel: CancellationToken) -> Arc<Self> {
        Arc::new(Self {
            cancel,
            lost: AtomicBool::new(false),
            cancel_requested: AtomicBool::new(false),
        })
    }

    /// Whether the hub said the lease is gone: the job must stop and report nothing more.
    pub(crate) fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }
}

#[derive(Debug)]
struct Held {
    lease_id: String,
    control: Arc<JobControl>,
}

/// The leases held, by job id. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Leases {
    inner: Arc<Mutex<HashMap<String, Held>>>,
    /// Bumped when a lease is added.
    added: watch::Sender<u64>,
}

impl Default for Leases {
    fn default() -> Self {
        Self {
            inner: Arc::default(),
            added: watch::channel(0).0,
        }
    }
}

impl Leases {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Held>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts renewing a job's lease (at once: the heartbeat in flight is replaced).
    pub(crate) fn insert(&self, job_id: &str, lease_id: &str, control: Arc<JobControl>) {
        self.lock().insert(
            job_id.to_owned(),
            Held {
                lease_id: lease_id.to_owned(),
                control,
            },
        );
        self.added.send_modify(|n| *n += 1);
    }

    /// Stops renewing a job's lease.
    pub(crate) fn remove(&self, job_id: &str) {
        self.lock().remove(job_id);
    }

    fn snapshot(&self) -> Vec<HeldLease> {
        let mut held: Vec<HeldLease> = self
            .lock()
            .iter()
            .map(|(job_id, h)| HeldLease {
                job_id: job_id.clone(),
                lease_id: h.lease_id.clone(),
            })
            .collect();
        held.sort_by(|a, b| a.job_id.cmp(&b.job_id));
        held
    }

    /// Applies an answer; `true` when it said something new (a cancel or a lost lease).
    fn apply(&self, response: &HeartbeatResponse) -> bool {
        let mut news = false;
        let mut held = self.lock();
        for status in &response.jobs {
            let Some(h) = held.get(&status.job_id) else {
                continue;
            };
            if status.lease_lost {
                tracing::warn!(job_id = %status.job_id, "the hub says the job's lease is lost; stopping the job");
                h.control.lost.store(true, Ordering::SeqCst);
                h.control.cancel.cancel();
                held.remove(&status.job_id);
                news = true;
            } else if status.cancel_requested
                && !h.control.cancel_requested.swap(true, Ordering::SeqCst)
            {
                tracing::info!(job_id = %status.job_id, "cancel requested by the hub");
                h.control.cancel.cancel();
                news = true;
            }
        }
        news
    }
}

/// Renews the leases until `stop` fires. `wait` is the long-poll's `wait_s`.
pub(crate) async fn heartbeat_loop(
    leases: Leases,
    client: HubClient,
    runner_id: String,
    wait: Duration,
    fatal: Fatal,
    stop: CancellationToken,
) {
    let mut added = leases.added.subscribe();
    let mut failures: u32 = 0;
    let wait_s = wait.as_secs().max(1);
    loop {
        added.borrow_and_update();
        let jobs = leases.snapshot();
        if jobs.is_empty() {
            tokio::select! {
                changed = added.changed() => if changed.is_err() { return },
                () = stop.cancelled() => return,
            }
            continue;
        }
        let request = HeartbeatRequest {
            runner_id: runner_id.clone(),
            jobs,
            wait_s,
        };
        let started = Instant::now();
        let result = tokio::select! {
            result = client.heartbeat(&request) => result,
            _ = added.changed() => continue,
            () = stop.cancelled() => return,
        };
        match result {
            Ok(response) => {
                failures = 0;
                let news = leases.apply(&response);
                // An early answer with nothing new (a cancel already being carried out) would
                // come back at once again: pace those.
                let early = started.elapsed() < Duration::from_secs(wait_s) / 2;
                if early && !news {
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = added.changed() => {}
                        () = stop.cancelled() => return,
                    }
                }
            }
            Err(ClientError::Unauthorized { endpoint }) => {
                fatal.unauthorized(endpoint);
                return;
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let delay = backoff(failures).min(Duration::from_secs(5));
                tracing::warn!(error = %e, ?delay, "heartbeat failed; will retry");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = stop.cancelled() => return,
                }
            }
        }
    }
}
