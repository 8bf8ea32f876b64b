//! The [`LogTarget`] through which the runner uploads a job's spool: the hub client's log
//! append. Public so that `cargo xtask bench` measures the log pipeline through this very
//! target.

use async_trait::async_trait;
use bytes::Bytes;
use outpost_client::{ClientError, HubClient, LogAppend};
use outpost_logship::{LogTarget, TargetError};
use outpost_protocol::{JobId, LeaseId};

use crate::fatal::Fatal;

/// Uploads one job's log through the hub client, as the holder of the job's lease
/// (`POST /api/v1/runner/jobs/{id}/log?offset=N&lease_id=L`).
#[derive(Debug)]
pub struct HubLogTarget {
    client: HubClient,
    job_id: JobId,
    lease_id: LeaseId,
    fatal: Fatal,
}

impl HubLogTarget {
    /// A target for the log of `job_id`, held under `lease_id`.
    pub fn new(client: HubClient, job_id: JobId, lease_id: LeaseId) -> Self {
        Self::with_fatal(client, job_id, lease_id, Fatal::default())
    }

    /// A target that stops the whole scheduler when the hub refuses the token.
    pub(crate) fn with_fatal(
        client: HubClient,
        job_id: JobId,
        lease_id: LeaseId,
        fatal: Fatal,
    ) -> Self {
        Self {
            client,
            job_id,
            lease_id,
            fatal,
        }
    }
}

#[async_trait]
impl LogTarget for HubLogTarget {
    async fn append(&self, offset: u64, bytes: Bytes) -> Result<u64, TargetError> {
        match self
            .client
            .append_log(&self.job_id, &self.lease_id, offset, bytes)
            .await
        {
            Ok(LogAppend::Committed(committed)) => Ok(committed),
            Ok(LogAppend::Gap { committed }) => Err(TargetError::Gap { committed }),
            Err(ClientError::Unauthorized { endpoint }) => {
                let message = format!("{endpoint}: token revoked or invalid");
                self.fatal.unauthorized(endpoint);
                Err(TargetError::Fatal(message))
            }
            Err(e) if e.is_retryable() => Err(TargetError::Retryable(e.to_string())),
            Err(e) => Err(TargetError::Fatal(e.to_string())),
        }
    }
}
