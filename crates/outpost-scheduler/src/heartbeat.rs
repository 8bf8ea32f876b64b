//! The batched long-poll heartbeat that renews the leases of every registered job in one
//! request (DESIGN.md §3). A `cancel_requested` or `lease_lost` in an answer reaches the job's
//! cancellation token at once; the hub answers the long-poll early on a cancel, so a cancel
//! takes about one round trip. When a job is added, the heartbeat in flight is replaced by one
//! that includes it, so its cancel is long-polled from the start too.

use std::time::Duration;

use outpost_client::{ClientError, HubClient};
use outpost_protocol::{HeartbeatRequest, RunnerId};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::HEARTBEAT_RETRY;
use crate::fatal::Fatal;
use crate::registry::JobRegistry;

/// Renews the leases until `stop` fires. `wait` is the long-poll's `wait_s`.
pub(crate) async fn heartbeat_loop(
    registry: JobRegistry,
    client: HubClient,
    runner_id: RunnerId,
    wait: Duration,
    fatal: Fatal,
    stop: CancellationToken,
) {
    let mut added = registry.leases_added();
    let mut failures: u32 = 0;
    let wait_s = wait.as_secs().max(1);
    loop {
        added.borrow_and_update();
        let jobs = registry.leases();
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
                let news = registry.apply(&response);
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
                let delay = HEARTBEAT_RETRY.delay(failures);
                tracing::warn!(error = %e, ?delay, "heartbeat failed; will retry");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = stop.cancelled() => return,
                }
            }
        }
    }
}
