//! The one condition that stops the whole scheduler from any of its tasks: the hub refused the
//! runner token (revoked or invalid).

use std::sync::{Arc, Mutex, PoisonError};

use tokio_util::sync::CancellationToken;

/// Shared by every task that talks to the hub; the first refusal wins.
#[derive(Debug, Clone, Default)]
pub(crate) struct Fatal {
    token: CancellationToken,
    endpoint: Arc<Mutex<Option<String>>>,
}

impl Fatal {
    /// Records that the hub refused the token at `endpoint`.
    pub(crate) fn unauthorized(&self, endpoint: String) {
        {
            let mut slot = self.endpoint.lock().unwrap_or_else(PoisonError::into_inner);
            if slot.is_none() {
                tracing::error!(%endpoint, "the hub refused the runner token (revoked or invalid); taking no more jobs");
                *slot = Some(endpoint);
            }
        }
        self.token.cancel();
    }

    /// Fires once the token was refused.
    pub(crate) fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// The endpoint that refused the token, once it happened.
    pub(crate) fn endpoint(&self) -> Option<String> {
        self.endpoint
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}
