//! The hub's typed configuration: defaults in one place ([`HubConfig::default`]), loaded from a
//! TOML file, `OUTPOST_HUB_*` environment variables and command-line overrides (highest last).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::HubError;

/// The prefix of every environment variable the hub reads (`OUTPOST_HUB_LEASE_TTL_S`, ...).
pub const ENV_PREFIX: &str = "OUTPOST_HUB";

/// How the binary writes its logs to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Every setting of the hub. Each field is a config-file key, and an environment variable
/// `OUTPOST_HUB_<KEY>` (upper case).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HubConfig {
    /// Address the binary listens on (the library takes a bound listener instead).
    pub listen: SocketAddr,
    /// The SQLite database file; created when missing. Job logs are files in
    /// `<database>.logs/<org id>/<job id>.log`.
    pub database: PathBuf,
    /// The admin key. When unset, one is generated at first start and kept in
    /// `<database>.admin-key` (mode 0600).
    pub admin_key: Option<String>,
    /// Seconds a lease lasts without a heartbeat.
    pub lease_ttl_s: u64,
    /// Seconds a runner should hold a heartbeat long-poll at most (told at registration).
    pub heartbeat_interval_s: u64,
    /// Largest `wait_s` accepted by acquire and heartbeat.
    pub max_wait_s: u64,
    /// Largest body of one log append, in bytes.
    pub max_log_chunk_bytes: usize,
    /// Largest JSON request body, in bytes.
    pub max_json_body_bytes: usize,
    /// Largest inline pipeline accepted at submission, in bytes.
    pub max_pipeline_bytes: usize,
    /// PEM certificate chain; with `tls_key`, the hub serves HTTPS.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key that goes with `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Seconds in-flight requests get to finish after a shutdown signal.
    pub shutdown_grace_s: u64,
    /// How the binary logs: `text` or `json`.
    pub log_format: LogFormat,
    /// How long a finished job (with its steps and log file) is kept after it ended, e.g.
    /// `30days`, `12h` (or a number of seconds); `0` keeps jobs forever. Swept at start and
    /// then periodically.
    #[serde(with = "outpost_time::serde_duration")]
    pub job_retention: Duration,
    /// How long a client may take to send a request's head (request line and headers): from
    /// the connection's start for its first request, from the first byte for a later one. Past
    /// it, the connection is closed.
    #[serde(with = "outpost_time::serde_duration")]
    pub header_timeout: Duration,
    /// How long a connection may stay open with no request in flight (keep-alive). A held
    /// long-poll is a request in flight: its hold is the hub's own (`wait_s`, the heartbeat
    /// hold), never cut by this.
    #[serde(with = "outpost_time::serde_duration")]
    pub idle_timeout: Duration,
    /// How long a client may take to send a request's body; past it the answer is `408`.
    #[serde(with = "outpost_time::serde_duration")]
    pub body_timeout: Duration,
    /// How long a client may take for its TLS handshake.
    #[serde(with = "outpost_time::serde_duration")]
    pub tls_handshake_timeout: Duration,
    /// The most connections open at once; a connection beyond it is closed as soon as it is
    /// accepted. `0`: 80 % of the process's open-files limit, read at start (the rest stays for
    /// the database, log files and refusing connections).
    pub max_connections: usize,
}

/// The default `job_retention`: 30 days.
pub const DEFAULT_JOB_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// The share of the open-files limit that `max_connections = 0` allows, in percent.
pub const AUTO_MAX_CONNECTIONS_PERCENT: u64 = 80;

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database: PathBuf::from("outpost-hub.db"),
            admin_key: None,
            lease_ttl_s: 60,
            heartbeat_interval_s: 20,
            max_wait_s: 120,
            max_log_chunk_bytes: 1024 * 1024,
            max_json_body_bytes: 1024 * 1024,
            max_pipeline_bytes: 256 * 1024,
            tls_cert: None,
            tls_key: None,
            shutdown_grace_s: 5,
            log_format: LogFormat::Text,
            job_retention: DEFAULT_JOB_RETENTION,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
            tls_handshake_timeout: Duration::from_secs(10),
            max_connections: 0,
        }
    }
}

impl std::fmt::Debug for HubConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubConfig")
            .field("listen", &self.listen)
            .field("database", &self.database)
            .field("admin_key", &self.admin_key.as_ref().map(|_| "<redacted>"))
            .field("lease_ttl_s", &self.lease_ttl_s)
            .field("heartbeat_interval_s", &self.heartbeat_interval_s)
            .field("max_wait_s", &self.max_wait_s)
            .field("max_log_chunk_bytes", &self.max_log_chunk_bytes)
            .field("max_json_body_bytes", &self.max_json_body_bytes)
            .field("max_pipeline_bytes", &self.max_pipeline_bytes)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("shutdown_grace_s", &self.shutdown_grace_s)
            .field("log_format", &self.log_format)
            .field("job_retention", &self.job_retention)
            .field("header_timeout", &self.header_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("body_timeout", &self.body_timeout)
            .field("tls_handshake_timeout", &self.tls_handshake_timeout)
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

/// Where configuration comes from, lowest precedence first: defaults, `file`, `env`, `overrides`.
#[derive(Debug, Clone, Default)]
pub struct ConfigSources {
    /// A TOML file (`--config F`); it must exist when named.
    pub file: Option<PathBuf>,
    /// The environment to read `OUTPOST_HUB_*` from; `None` reads the process environment.
    pub env: Option<HashMap<String, String>>,
    /// Key/value overrides from command-line flags (`("listen", "127.0.0.1:0")`).
    pub overrides: Vec<(String, String)>,
}

impl HubConfig {
    /// Loads the configuration from its sources and validates it. Errors name the bad key.
    pub fn load(sources: ConfigSources) -> Result<Self, HubError> {
        let mut builder = config::Config::builder();
        if let Some(file) = &sources.file {
            builder = builder.add_source(
                config::File::from(file.as_path())
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        let env = config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("_")
            .try_parsing(false)
            .source(sources.env.clone());
        builder = builder.add_source(env);
        for (key, value) in &sources.overrides {
            builder = builder
                .set_override(key.as_str(), value.as_str())
                .map_err(|e| HubError::Config {
                    message: format!("override `{key}`: {e}"),
                })?;
        }
        let loaded = builder.build().map_err(|e| config_error(&sources, &e))?;
        let config: HubConfig = loaded
            .try_deserialize()
            .map_err(|e| config_error(&sources, &e))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the values that serde cannot: ranges and pairs of keys.
    pub fn validate(&self) -> Result<(), HubError> {
        let bad = |key: &str, why: &str| HubError::Config {
            message: format!("`{key}` {why}"),
        };
        if self.lease_ttl_s == 0 {
            return Err(bad("lease_ttl_s", "must be at least 1"));
        }
        if self.heartbeat_interval_s == 0 {
            return Err(bad("heartbeat_interval_s", "must be at least 1"));
        }
        if self.max_log_chunk_bytes == 0 {
            return Err(bad("max_log_chunk_bytes", "must be at least 1"));
        }
        if self.max_json_body_bytes < 64 {
            return Err(bad("max_json_body_bytes", "must be at least 64"));
        }
        if self.max_pipeline_bytes == 0 {
            return Err(bad("max_pipeline_bytes", "must be at least 1"));
        }
        for (key, value) in [
            ("header_timeout", self.header_timeout),
            ("idle_timeout", self.idle_timeout),
            ("body_timeout", self.body_timeout),
            ("tls_handshake_timeout", self.tls_handshake_timeout),
        ] {
            if value.is_zero() {
                return Err(bad(key, "must be more than 0"));
            }
        }
        if self.database.as_os_str().is_empty() {
            return Err(bad("database", "must not be empty"));
        }
        if self
            .admin_key
            .as_deref()
            .is_some_and(|k| k.trim().len() < 16)
        {
            return Err(bad("admin_key", "must be at least 16 characters"));
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => return Err(bad("tls_key", "is required when `tls_cert` is set")),
            (None, Some(_)) => return Err(bad("tls_cert", "is required when `tls_key` is set")),
            _ => {}
        }
        Ok(())
    }

    /// Whether the hub serves HTTPS.
    pub fn tls_enabled(&self) -> bool {
        self.tls_cert.is_some() && self.tls_key.is_some()
    }

    /// The file the generated admin key is kept in: `<database>.admin-key`.
    pub fn admin_key_path(&self) -> PathBuf {
        let mut name = self.database.as_os_str().to_owned();
        name.push(".admin-key");
        PathBuf::from(name)
    }

    /// How long the hub holds a heartbeat at most: within `heartbeat_interval_s`, and well
    /// inside the lease, so a held heartbeat never lets its own lease expire.
    pub(crate) fn heartbeat_hold_ms(&self, wait_s: u64) -> u64 {
        let wait_ms = wait_s.saturating_mul(1000);
        wait_ms
            .min(self.heartbeat_interval_s.saturating_mul(1000))
            .min(self.lease_ttl_ms() / 2)
    }

    /// The heartbeat interval told to runners: never more than a third of the lease.
    pub(crate) fn advertised_heartbeat_interval_s(&self) -> u64 {
        self.heartbeat_interval_s.min((self.lease_ttl_s / 3).max(1))
    }

    pub(crate) fn lease_ttl_ms(&self) -> u64 {
        self.lease_ttl_s.saturating_mul(1000)
    }

    /// How long finished jobs are kept; `None` for forever.
    pub fn job_retention(&self) -> Option<Duration> {
        (!self.job_retention.is_zero()).then_some(self.job_retention)
    }

    /// How often the retention sweep runs: a 24th of the retention (so a job outlives it by
    /// at most ~4 %), between a second and an hour.
    pub(crate) fn retention_sweep_interval(&self) -> Option<Duration> {
        self.job_retention()
            .map(|r| (r / 24).clamp(Duration::from_secs(1), Duration::from_secs(3600)))
    }
}

fn config_error(sources: &ConfigSources, e: &config::ConfigError) -> HubError {
    let origin = match &sources.file {
        Some(file) => format!(
            " (file {}, environment {ENV_PREFIX}_*, flags)",
            file.display()
        ),
        None => format!(" (environment {ENV_PREFIX}_*, flags)"),
    };
    HubError::Config {
        message: format!("{e}{origin}"),
    }
}

/// A path shown in messages (`-` when empty).
pub(crate) fn show(path: &Path) -> String {
    if path.as_os_str().is_empty() {
        "-".to_owned()
    } else {
        path.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(
        toml: Option<&str>,
        env: &[(&str, &str)],
        overrides: &[(&str, &str)],
    ) -> Result<HubConfig, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = toml.map(|text| {
            let path = dir.path().join("hub.toml");
            std::fs::write(&path, text).expect("write config");
            path
        });
        HubConfig::load(ConfigSources {
            file,
            env: Some(
                env.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            overrides: overrides
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        })
        .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_the_documented_values() {
        let config = load(None, &[], &[]).expect("defaults load");
        assert_eq!(config, HubConfig::default());
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.database, PathBuf::from("outpost-hub.db"));
        assert_eq!(config.lease_ttl_s, 60);
        assert_eq!(config.heartbeat_interval_s, 20);
        assert_eq!(config.max_wait_s, 120);
        assert_eq!(config.max_log_chunk_bytes, 1 << 20);
        assert_eq!(config.max_json_body_bytes, 1 << 20);
        assert_eq!(config.max_pipeline_bytes, 256 << 10);
        assert_eq!(config.job_retention, Duration::from_secs(30 * 86_400));
        assert_eq!(config.header_timeout, Duration::from_secs(10));
        assert_eq!(config.idle_timeout, Duration::from_secs(60));
        assert_eq!(config.body_timeout, Duration::from_secs(60));
        assert_eq!(config.tls_handshake_timeout, Duration::from_secs(10));
        assert_eq!(config.max_connections, 0);
        assert_eq!(
            config.retention_sweep_interval(),
            Some(Duration::from_secs(3600))
        );
    }

    #[test]
    fn job_retention_reads_durations_and_forever() {
        let check = |toml: Option<&str>, env: &[(&str, &str)], expected: Option<Duration>| {
            let config = load(toml, env, &[]).expect("loads");
            assert_eq!(config.job_retention(), expected, "{toml:?} {env:?}");
        };
        let days = |n: u64| Some(Duration::from_secs(n * 86_400));
        check(Some("job_retention = \"7days\"\n"), &[], days(7));
        check(
            None,
            &[("OUTPOST_HUB_JOB_RETENTION", "12h")],
            Some(Duration::from_secs(43_200)),
        );
        check(None, &[("OUTPOST_HUB_JOB_RETENTION", "0")], None);
        check(Some("job_retention = 0\n"), &[], None);
        check(
            Some("job_retention = 3600\n"),
            &[],
            Some(Duration::from_secs(3600)),
        );
        let short = load(None, &[("OUTPOST_HUB_JOB_RETENTION", "2s")], &[]).expect("loads");
        assert_eq!(
            short.retention_sweep_interval(),
            Some(Duration::from_secs(1))
        );
        let err = load(Some("job_retention = \"a month\"\n"), &[], &[]).expect_err("bad");
        assert!(err.to_string().contains("job_retention"), "{err}");
    }

    #[test]
    fn connection_limits_come_from_file_and_environment() {
        let config = load(
            Some("idle_timeout = \"90s\"\nbody_timeout = 30\n"),
            &[
                ("OUTPOST_HUB_HEADER_TIMEOUT", "250ms"),
                ("OUTPOST_HUB_TLS_HANDSHAKE_TIMEOUT", "5s"),
                ("OUTPOST_HUB_MAX_CONNECTIONS", "100"),
            ],
            &[],
        )
        .expect("loads");
        assert_eq!(config.header_timeout, Duration::from_millis(250));
        assert_eq!(config.idle_timeout, Duration::from_secs(90));
        assert_eq!(config.body_timeout, Duration::from_secs(30));
        assert_eq!(config.tls_handshake_timeout, Duration::from_secs(5));
        assert_eq!(config.max_connections, 100);
    }

    #[test]
    fn flags_beat_env_beat_file() {
        let config = load(
            Some("lease_ttl_s = 5\nmax_wait_s = 7\nlisten = \"127.0.0.1:9000\"\n"),
            &[
                ("OUTPOST_HUB_LEASE_TTL_S", "6"),
                ("OUTPOST_HUB_LISTEN", "127.0.0.1:9001"),
            ],
            &[("listen", "127.0.0.1:9002")],
        )
        .expect("loads");
        assert_eq!(config.max_wait_s, 7);
        assert_eq!(config.lease_ttl_s, 6);
        assert_eq!(config.listen.to_string(), "127.0.0.1:9002");
    }

    #[test]
    fn admin_key_comes_from_the_environment() {
        let config = load(
            None,
            &[("OUTPOST_HUB_ADMIN_KEY", "0123456789abcdef0123")],
            &[],
        )
        .expect("loads");
        assert_eq!(config.admin_key.as_deref(), Some("0123456789abcdef0123"));
    }

    #[test]
    fn errors_name_the_key() {
        let check = |toml: Option<&str>, env: &[(&str, &str)], needle: &str| {
            let err = load(toml, env, &[]).expect_err("must fail");
            assert!(err.contains(needle), "error `{err}` should name `{needle}`");
        };
        check(Some("lease_tl_s = 3\n"), &[], "lease_tl_s");
        check(None, &[("OUTPOST_HUB_LEASE_TTL_S", "soon")], "lease_ttl_s");
        check(None, &[("OUTPOST_HUB_BOGUS", "1")], "bogus");
        check(Some("listen = \"nowhere\"\n"), &[], "listen");
        check(Some("lease_ttl_s = 0\n"), &[], "lease_ttl_s");
        check(Some("tls_cert = \"a.pem\"\n"), &[], "tls_key");
        check(Some("log_format = \"xml\"\n"), &[], "log_format");
        check(
            None,
            &[("OUTPOST_HUB_HEADER_TIMEOUT", "0")],
            "header_timeout",
        );
        check(
            None,
            &[("OUTPOST_HUB_IDLE_TIMEOUT", "soon")],
            "idle_timeout",
        );
        check(
            None,
            &[("OUTPOST_HUB_MAX_CONNECTIONS", "-1")],
            "max_connections",
        );
    }
}
