//! The client of the outpost hub API (DESIGN.md §3) for runners and the CLI: hyper 1 with
//! hyper-util's pooled client, rustls (ring) with the system's roots or a CA bundle and optional
//! client certificate, HTTP/1.1 and HTTP/2 (ALPN), proxies from config or the environment,
//! timeouts, and retries with full-jitter backoff that honour `Retry-After`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), outpost_client::ClientError> {
//! use outpost_client::{ClientConfig, HubClient};
//! let client = HubClient::new(ClientConfig::new("https://hub.example.com", "runner-token"))?;
//! let job = client
//!     .acquire(&outpost_protocol::AcquireRequest {
//!         runner_id: "r1".into(),
//!         free_slots: 1,
//!         wait_s: 30,
//!     })
//!     .await?;
//! # let _ = job; Ok(()) }
//! ```

mod client;
mod config;
mod connect;
mod error;
mod retry;

pub use crate::client::{Completion, HubClient, LogAppend, LogStream};
pub use crate::config::{ClientConfig, RetryPolicy, defaults};
pub use crate::error::{BoxError, ClientError};
