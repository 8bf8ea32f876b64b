//! outpost-hub: the reference control plane of outpost (DESIGN.md §3). An axum HTTP API over an
//! embedded SQLite store: organizations, API keys and runner tokens, runner registration, label
//! routing, long-poll dispatch with leases, batched long-poll heartbeats, durable logs with
//! byte offsets (one append-only file per job), retention of finished jobs, and the admin API.
//! See `docs/protocol.md` for the wire contract.
//!
//! Embedding:
//!
//! ```no_run
//! # async fn demo() -> Result<(), outpost_hub::HubError> {
//! use outpost_hub::{Hub, HubConfig};
//! let config = HubConfig { database: "/tmp/hub.db".into(), ..HubConfig::default() };
//! let hub = Hub::open(config).await?;
//! let api_key = hub.create_org("local").await?;
//! let (_token_id, runner_token) = hub.create_runner_token("local", "embedded runner").await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! hub.serve(listener, shutdown).await?;
//! # let _ = (api_key, runner_token);
//! # Ok(()) }
//! ```

mod admin;
mod api;
mod config;
mod error;
mod metrics;
mod secret;
mod server;
pub mod store;
mod throttle;
mod wait;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use outpost_protocol::{RunnerTokenInfo, Timestamp};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

pub use crate::admin::Admin;
use crate::api::Shared;
pub use crate::config::{ConfigSources, DEFAULT_JOB_RETENTION, ENV_PREFIX, HubConfig, LogFormat};
pub use crate::error::HubError;
pub use crate::secret::{ADMIN_KEY_PREFIX, ORG_KEY_PREFIX, RUNNER_TOKEN_PREFIX};
use crate::store::Store;
use crate::wait::{Acquirers, Waitlist};

/// Where the admin key in use came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminKeySource {
    /// `admin_key` in the configuration (`OUTPOST_HUB_ADMIN_KEY`).
    Config,
    /// Generated at this start and written to the file.
    Generated(PathBuf),
    /// Read from the file a previous start generated.
    File(PathBuf),
}

/// An opened hub: store ready, admin key known, TLS loaded. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    shared: Arc<Shared>,
    admin: Admin,
    admin_key: Arc<str>,
    admin_key_source: AdminKeySource,
    tls: Option<TlsAcceptor>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("database", &self.shared.config.database)
            .field("admin_key_source", &self.admin_key_source)
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// Validates `config`, opens (or creates) the SQLite database, loads the TLS files when
    /// configured, and settles the admin key (config, else `<database>.admin-key`, generated
    /// with mode 0600 at first start).
    pub async fn open(config: HubConfig) -> Result<Self, HubError> {
        config.validate()?;
        let store = admin::open_store(&config.database).await?;
        Self::open_with_store(config, Arc::new(store)).await
    }

    /// Like [`Hub::open`], on a store of the caller's choosing (another [`Store`] backend).
    /// `config.database` still locates the generated admin key file.
    pub async fn open_with_store(
        config: HubConfig,
        store: Arc<dyn Store>,
    ) -> Result<Self, HubError> {
        config.validate()?;
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(server::tls_acceptor(cert, key)?),
            _ => None,
        };
        let (admin_key, admin_key_source) = match &config.admin_key {
            Some(key) => (key.trim().to_owned(), AdminKeySource::Config),
            None => {
                let path = config.admin_key_path();
                let task_path = path.clone();
                tokio::task::spawn_blocking(move || load_or_generate_admin_key(&task_path))
                    .await
                    .map_err(|e| HubError::AdminKeyFile {
                        path,
                        source: std::io::Error::other(e.to_string()),
                    })??
            }
        };
        match &admin_key_source {
            AdminKeySource::Config => tracing::info!("admin key taken from the configuration"),
            AdminKeySource::Generated(path) => {
                tracing::info!(path = %path.display(), "admin key generated and written (mode 0600)")
            }
            AdminKeySource::File(path) => tracing::info!(path = %path.display(), "admin key read"),
        }
        let metrics = metrics::Metrics::new();
        let shared = Arc::new(Shared {
            admin_key_hash: secret::hash(&admin_key),
            config,
            store: Arc::clone(&store),
            acquire: Acquirers::new(metrics.acquire_wakeups.clone()),
            heartbeats: Waitlist::new(),
            followers: Waitlist::new(),
            metrics,
            stopping: CancellationToken::new(),
            revocations: tokio::sync::watch::channel(0).0,
            auth_throttle: throttle::AuthThrottle::new(),
        });
        Ok(Self {
            shared,
            admin: Admin::from_store(store),
            admin_key: admin_key.into(),
            admin_key_source,
            tls,
        })
    }

    /// The admin key (`Authorization: Bearer <key>` on the admin API).
    pub fn admin_key(&self) -> &str {
        &self.admin_key
    }

    /// Where the admin key came from (and the file it is kept in, if any).
    pub fn admin_key_source(&self) -> &AdminKeySource {
        &self.admin_key_source
    }

    pub fn config(&self) -> &HubConfig {
        &self.shared.config
    }

    /// Whether [`Hub::serve`] speaks HTTPS.
    pub fn tls_enabled(&self) -> bool {
        self.tls.is_some()
    }

    /// Administration of organizations and tokens on this hub's store.
    pub fn admin(&self) -> &Admin {
        &self.admin
    }

    /// Creates an organization; returns its API key (shown once).
    pub async fn create_org(&self, name: &str) -> Result<String, HubError> {
        self.admin.create_org(name).await
    }

    /// Creates a runner token of organization `org`; returns `(id, token)` (shown once).
    pub async fn create_runner_token(
        &self,
        org: &str,
        description: &str,
    ) -> Result<(String, String), HubError> {
        self.admin.create_runner_token(org, description).await
    }

    /// The runner tokens of organization `org`.
    pub async fn list_runner_tokens(&self, org: &str) -> Result<Vec<RunnerTokenInfo>, HubError> {
        self.admin.list_runner_tokens(org).await
    }

    /// Revokes runner token `id` of organization `org`.
    pub async fn revoke_runner_token(&self, org: &str, id: &str) -> Result<(), HubError> {
        self.admin.revoke_runner_token(org, id).await
    }

    /// Serves the API on `listener` until `shutdown` is cancelled, then shuts down gracefully:
    /// no new connections, held long-polls answer at once, open requests get
    /// `shutdown_grace_s` to finish. On start, every live lease is extended to now +
    /// `lease_ttl_s`, so time the hub was down never counts against runners.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), HubError> {
        let shared = Arc::clone(&self.shared);
        let config = &shared.config;
        let until = Timestamp::from_unix_millis(
            Timestamp::now()
                .unix_millis()
                .saturating_add(config.lease_ttl_ms() as i64),
        );
        let extended = shared.store.extend_live_leases(until).await?;
        if extended > 0 {
            tracing::info!(leases = extended, until = %until, "live leases extended after start");
        }
        let addr = listener.local_addr().map_err(|source| HubError::Listen {
            addr: config.listen.to_string(),
            source,
        })?;
        tracing::info!(%addr, tls = self.tls.is_some(), database = %config::show(&config.database), "hub serving");
        let expiry = tokio::spawn(expire_leases(Arc::clone(&shared)));
        let retention = tokio::spawn(sweep_retention(Arc::clone(&shared)));
        let router = api::router(Arc::clone(&shared));
        let limits = server::Limits::of(config);
        shared
            .metrics
            .connections
            .limit
            .set(i64::try_from(limits.max_connections).unwrap_or(i64::MAX));
        tracing::info!(
            max_connections = limits.max_connections,
            open_files_limit = server::open_files_limit(),
            header_timeout = ?limits.header_timeout,
            idle_timeout = ?limits.idle_timeout,
            body_timeout = ?config.body_timeout,
            "connection limits"
        );
        let served = server::run(
            listener,
            server::Serving {
                tls: self.tls.clone(),
                router,
                limits,
                metrics: shared.metrics.connections.clone(),
                shutdown,
                stopping: shared.stopping.clone(),
                grace: Duration::from_secs(config.shutdown_grace_s),
            },
        )
        .await;
        // Held long-polls answer on `stopping`.
        shared.stopping.cancel();
        if let Err(e) = expiry.await {
            tracing::error!(error = %e, "lease expiry task failed");
        }
        if let Err(e) = retention.await {
            tracing::error!(error = %e, "retention task failed");
        }
        tracing::info!("hub stopped");
        served
    }
}

/// Opens the hub described by `config` and serves it on `listener` until `shutdown`.
pub async fn serve(
    config: HubConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), HubError> {
    Hub::open(config).await?.serve(listener, shutdown).await
}

/// Handles leases as they run out: sleeps until the earliest live lease expires (at most one
/// lease period, which is as soon as any lease created meanwhile can expire), then requeues or
/// ends the expired jobs.
async fn expire_leases(shared: Arc<Shared>) {
    let period = Duration::from_millis(shared.config.lease_ttl_ms());
    loop {
        let mut wait = period;
        match shared.store.expire_leases(Timestamp::now()).await {
            Ok(expired) => shared.leases_expired(&expired),
            Err(e) => {
                tracing::error!(error = %e, "expiring leases failed");
                wait = Duration::from_secs(1);
            }
        }
        if wait == period {
            match shared.store.next_lease_expiry().await {
                Ok(Some(next)) => {
                    let ms = next
                        .unix_millis()
                        .saturating_sub(Timestamp::now().unix_millis());
                    // A few ms past the expiry, so the lease is due when we look.
                    wait = Duration::from_millis(u64::try_from(ms).unwrap_or(0) + 5).min(period);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(error = %e, "reading the next lease expiry failed");
                    wait = Duration::from_secs(1);
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shared.stopping.cancelled() => return,
        }
    }
}

/// How many jobs one retention delete call removes; the sweep repeats until fewer come back,
/// so each call holds the database only briefly.
const RETENTION_BATCH: u32 = 200;

/// Deletes finished jobs (rows and log files) older than `job_retention`: at start, then every
/// [`HubConfig::retention_sweep_interval`]. First, once, removes log files whose job is gone (a
/// crash between a delete and its file's removal).
async fn sweep_retention(shared: Arc<Shared>) {
    match shared.store.remove_orphan_logs().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(files = n, "removed log files of deleted jobs"),
        Err(e) => tracing::error!(error = %e, "removing orphaned log files failed"),
    }
    let (Some(retention), Some(interval)) = (
        shared.config.job_retention(),
        shared.config.retention_sweep_interval(),
    ) else {
        tracing::info!("job retention off: finished jobs and their logs are kept forever");
        return;
    };
    loop {
        let cutoff = Timestamp::now()
            .unix_millis()
            .saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
        let cutoff = Timestamp::from_unix_millis(cutoff);
        let mut deleted = 0;
        loop {
            if shared.stopping.is_cancelled() {
                return;
            }
            match shared
                .store
                .delete_finished_jobs(cutoff, RETENTION_BATCH)
                .await
            {
                Ok(n) => {
                    deleted += n;
                    if n < u64::from(RETENTION_BATCH) {
                        break;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "deleting expired jobs failed");
                    break;
                }
            }
        }
        if deleted > 0 {
            tracing::info!(jobs = deleted, ended_before = %cutoff, "retention: deleted finished jobs and their logs");
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = shared.stopping.cancelled() => return,
        }
    }
}

/// Reads the admin key file, or generates a key and writes it with mode 0600.
fn load_or_generate_admin_key(path: &Path) -> Result<(String, AdminKeySource), HubError> {
    let file_err = |source| HubError::AdminKeyFile {
        path: path.to_owned(),
        source,
    };
    for _ in 0..2 {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let key = text.trim();
                if key.is_empty() {
                    return Err(file_err(std::io::Error::other("the file is empty")));
                }
                return Ok((key.to_owned(), AdminKeySource::File(path.to_owned())));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(file_err(e)),
        }
        let key = secret::new_secret(ADMIN_KEY_PREFIX);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        match options.open(path) {
            Ok(mut file) => {
                file.write_all(format!("{key}\n").as_bytes())
                    .map_err(file_err)?;
                file.sync_all().map_err(file_err)?;
                return Ok((key, AdminKeySource::Generated(path.to_owned())));
            }
            // Another process created it first: read theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(file_err(e)),
        }
    }
    Err(file_err(std::io::Error::other(
        "the file keeps appearing and vanishing",
    )))
}
