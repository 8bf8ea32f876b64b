//! The runner's configuration: typed, `deny_unknown_fields`, loaded from a TOML file, then
//! `OUTPOST_*` environment variables, then command-line flags (each overriding the one before).
//! The defaults below are the documented ones (docs/runner.md), in this one place.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use outpost_scheduler::{GitConfig, SchedulerConfig};

use crate::AgentError;

/// Command line shared by every runner binary (DESIGN.md §3 "Command lines").
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RunnerArgs {
    /// The hub's URL, e.g. https://hub.example.com
    #[arg(long, value_name = "URL")]
    pub hub: Option<String>,
    /// File holding the runner token (alternatively set OUTPOST_TOKEN)
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// The runner's name at the hub (default: the host name)
    #[arg(long)]
    pub name: Option<String>,
    /// Labels this runner offers, comma-separated; a job runs here only if it asks for a subset
    #[arg(long, value_delimiter = ',', value_name = "a,b")]
    pub labels: Option<Vec<String>>,
    /// How many jobs run at once
    #[arg(long, value_name = "N")]
    pub concurrency: Option<u32>,
    /// Directory for spools, the outbox, the job journal and workspaces
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Serve /metrics, /healthz and /readyz on this address, e.g. 127.0.0.1:9464
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Directory with one file per secret, named after it
    #[arg(long, value_name = "DIR")]
    pub secrets_dir: Option<PathBuf>,
    /// TOML configuration file
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration (token redacted) and exit
    #[arg(long)]
    pub print_config: bool,
}

/// Log output format on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// TLS towards the hub: the system's roots unless `ca_file` is given; `client_cert` and
/// `client_key` for mutual TLS.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// An HTTP(S) proxy towards the hub. When `url` is unset, `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`
/// from the environment apply (unless `from_env = false`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    pub url: Option<String>,
    pub no_proxy: Option<String>,
    pub from_env: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            url: None,
            no_proxy: None,
            from_env: true,
        }
    }
}

/// How the runner clones git sources. Credentials come only from here (or the host's own git
/// configuration), never from the hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GitSection {
    /// A git credential helper, e.g. `store --file=/etc/outpost/git-credentials`.
    pub credential_helper: Option<String>,
    /// Limit for one checkout.
    #[serde(with = "outpost_time::serde_duration")]
    pub timeout: Duration,
}

impl Default for GitSection {
    fn default() -> Self {
        Self {
            credential_helper: None,
            timeout: GitConfig::default().timeout,
        }
    }
}

/// The whole runner configuration; `E` is the backend's own section, `[executor]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    default,
    bound(deserialize = "E: Default + DeserializeOwned")
)]
pub struct AgentConfig<E> {
    /// The hub's URL (required).
    pub hub: Option<String>,
    /// The runner token itself (prefer `token_file`); never printed.
    #[serde(skip_serializing)]
    pub token: Option<String>,
    /// File holding the runner token.
    pub token_file: Option<PathBuf>,
    /// The runner's name; registering the same name again keeps the same runner id.
    pub name: String,
    pub labels: Vec<String>,
    /// Jobs run at once.
    pub concurrency: u32,
    pub state_dir: PathBuf,
    pub metrics_listen: Option<SocketAddr>,
    pub secrets_dir: Option<PathBuf>,
    /// How long running jobs may go on after the first SIGTERM before they are cancelled.
    #[serde(with = "outpost_time::serde_duration")]
    pub drain_grace: Duration,
    /// How long one acquire long-poll is held by the hub.
    #[serde(with = "outpost_time::serde_duration")]
    pub acquire_wait: Duration,
    /// Per-job log limit; output beyond it is dropped with a visible notice.
    pub log_cap_bytes: u64,
    pub log_format: LogFormat,
    pub tls: TlsConfig,
    pub proxy: ProxyConfig,
    pub git: GitSection,
    /// The backend's section.
    pub executor: E,
}

/// Where a runner keeps its state unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/outpost";

impl<E: Default> Default for AgentConfig<E> {
    /// The scheduler's own defaults ([`SchedulerConfig::new`]), so a runner binary and
    /// `outpost run` cannot drift apart.
    fn default() -> Self {
        let scheduler = SchedulerConfig::new(default_name(), DEFAULT_STATE_DIR);
        Self {
            hub: None,
            token: None,
            token_file: None,
            name: scheduler.name,
            labels: scheduler.labels,
            concurrency: scheduler.concurrency,
            state_dir: scheduler.state_dir,
            metrics_listen: None,
            secrets_dir: scheduler.secrets_dir,
            drain_grace: scheduler.drain_grace,
            acquire_wait: scheduler.acquire_wait,
            log_cap_bytes: scheduler.log_cap_bytes,
            log_format: LogFormat::Human,
            tls: TlsConfig::default(),
            proxy: ProxyConfig::default(),
            git: GitSection::default(),
            executor: E::default(),
        }
    }
}

fn default_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "outpost-runner".to_owned())
}

/// Top-level keys that may come from `OUTPOST_<KEY>` variables. Only these are read, so that
/// `OUTPOST_SECRET_*` (secrets) and other tools' `OUTPOST_*` variables are never mistaken for
/// configuration. Nested keys use a double underscore: `OUTPOST_TLS__CA_FILE`,
/// `OUTPOST_EXECUTOR__PULL_POLICY`.
const ENV_KEYS: &[&str] = &[
    "hub",
    "token",
    "token_file",
    "name",
    "labels",
    "concurrency",
    "state_dir",
    "metrics_listen",
    "secrets_dir",
    "drain_grace",
    "acquire_wait",
    "log_cap_bytes",
    "log_format",
];
const ENV_SECTIONS: &[&str] = &["tls", "proxy", "git", "executor"];

/// Loads the configuration: defaults, then `--config` file, then `env` (`OUTPOST_*`), then flags.
pub fn load_config<E>(
    args: &RunnerArgs,
    env: &HashMap<String, String>,
) -> Result<AgentConfig<E>, AgentError>
where
    E: Default + Serialize + DeserializeOwned,
{
    let mut builder = config::Config::builder();
    if let Some(path) = &args.config {
        if !path.is_file() {
            return Err(AgentError::Config(format!(
                "config file {} does not exist",
                path.display()
            )));
        }
        builder =
            builder.add_source(config::File::from(path.as_path()).format(config::FileFormat::Toml));
    }
    let selected: config::Map<String, String> = env
        .iter()
        .filter_map(|(k, v)| {
            let rest = k.strip_prefix("OUTPOST_")?.to_ascii_lowercase();
            let top = rest.split("__").next().unwrap_or_default();
            let known = if rest.contains("__") {
                ENV_SECTIONS.contains(&top)
            } else {
                ENV_KEYS.contains(&rest.as_str())
            };
            known.then(|| (k.clone(), v.clone()))
        })
        .collect();
    builder = builder.add_source(
        config::Environment::with_prefix("OUTPOST")
            .prefix_separator("_")
            .separator("__")
            .list_separator(",")
            .with_list_parse_key("labels")
            .try_parsing(true)
            .source(Some(selected)),
    );
    let set = |b: config::ConfigBuilder<config::builder::DefaultState>,
               key: &str,
               value: Option<config::Value>| match value {
        Some(v) => b.set_override(key, v),
        None => Ok(b),
    };
    let err = |e: config::ConfigError| AgentError::Config(e.to_string());
    builder = set(builder, "hub", args.hub.clone().map(Into::into)).map_err(err)?;
    builder = set(
        builder,
        "token_file",
        args.token_file
            .as_ref()
            .map(|p| p.display().to_string().into()),
    )
    .map_err(err)?;
    builder = set(builder, "name", args.name.clone().map(Into::into)).map_err(err)?;
    builder = set(builder, "labels", args.labels.clone().map(Into::into)).map_err(err)?;
    builder = set(
        builder,
        "concurrency",
        args.concurrency.map(|n| u64::from(n).into()),
    )
    .map_err(err)?;
    builder = set(
        builder,
        "state_dir",
        args.state_dir
            .as_ref()
            .map(|p| p.display().to_string().into()),
    )
    .map_err(err)?;
    builder = set(
        builder,
        "metrics_listen",
        args.metrics_listen.map(|a| a.to_string().into()),
    )
    .map_err(err)?;
    builder = set(
        builder,
        "secrets_dir",
        args.secrets_dir
            .as_ref()
            .map(|p| p.display().to_string().into()),
    )
    .map_err(err)?;
    let merged = builder.build().map_err(err)?;
    let config: AgentConfig<E> = merged.try_deserialize().map_err(err)?;
    config.validate()?;
    Ok(config)
}

impl<E> AgentConfig<E> {
    fn validate(&self) -> Result<(), AgentError> {
        let bad = |m: String| Err(AgentError::Config(m));
        match &self.hub {
            None => {
                return bad(
                    "no hub URL: set --hub, OUTPOST_HUB or `hub` in the config file".into(),
                );
            }
            Some(url) if !(url.starts_with("http://") || url.starts_with("https://")) => {
                return bad(format!(
                    "hub URL `{url}` must start with http:// or https://"
                ));
            }
            Some(_) => {}
        }
        if self.concurrency == 0 {
            return bad("concurrency must be at least 1".into());
        }
        if self.name.trim().is_empty() {
            return bad("name must not be empty".into());
        }
        if let Some(l) = self
            .labels
            .iter()
            .find(|l| l.is_empty() || l.contains(char::is_whitespace))
        {
            return bad(format!("label `{l}` must be non-empty and without spaces"));
        }
        Ok(())
    }

    /// The runner token: `token` (e.g. from `OUTPOST_TOKEN`) or the content of `token_file`.
    pub fn resolve_token(&self) -> Result<String, AgentError> {
        if let Some(token) = self.token.as_ref().filter(|t| !t.trim().is_empty()) {
            return Ok(token.trim().to_owned());
        }
        let Some(path) = &self.token_file else {
            return Err(AgentError::Config(
                "no runner token: set --token-file or OUTPOST_TOKEN (create one with `outpost-hub token create`)".into(),
            ));
        };
        let text = std::fs::read_to_string(path).map_err(|source| AgentError::TokenFile {
            path: path.clone(),
            source,
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(AgentError::Config(format!(
                "the runner token file {} is empty",
                path.display()
            )));
        }
        Ok(token.to_owned())
    }

    /// The effective configuration as TOML (the token itself is never serialized).
    pub fn to_toml(&self) -> String
    where
        E: Serialize,
    {
        toml::to_string(self)
            .unwrap_or_else(|e| format!("# cannot render the configuration: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Exec {
        pull_policy: String,
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn flags_override_env_override_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("runner.toml");
        std::fs::write(
            &file,
            "hub = \"http://file:1\"\nname = \"from-file\"\nconcurrency = 3\ndrain_grace = \"2m\"\n[executor]\npull_policy = \"never\"\n",
        )
        .unwrap();
        let args = RunnerArgs {
            config: Some(file),
            name: Some("from-flag".into()),
            ..Default::default()
        };
        let vars = env(&[
            ("OUTPOST_HUB", "http://env:2"),
            ("OUTPOST_NAME", "from-env"),
            ("OUTPOST_LABELS", "linux,gpu"),
            ("OUTPOST_SECRET_DEPLOY", "not config"),
            ("OUTPOST_EXECUTOR__PULL_POLICY", "always"),
        ]);
        let c: AgentConfig<Exec> = load_config(&args, &vars).unwrap();
        assert_eq!(c.hub.as_deref(), Some("http://env:2"));
        assert_eq!(c.name, "from-flag");
        assert_eq!(c.labels, ["linux", "gpu"]);
        assert_eq!(c.concurrency, 3);
        assert_eq!(c.drain_grace, Duration::from_secs(120));
        assert_eq!(c.executor.pull_policy, "always");
    }

    #[test]
    fn bad_keys_and_values_name_themselves() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("runner.toml");
        std::fs::write(&file, "hub = \"http://h\"\nconcurency = 3\n").unwrap();
        let args = RunnerArgs {
            config: Some(file.clone()),
            ..Default::default()
        };
        let e = load_config::<Exec>(&args, &HashMap::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("concurency"), "{e}");

        std::fs::write(&file, "hub = \"http://h\"\ndrain_grace = \"soon\"\n").unwrap();
        let e = load_config::<Exec>(&args, &HashMap::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("soon") && e.contains("drain_grace"), "{e}");

        let e = load_config::<Exec>(&RunnerArgs::default(), &HashMap::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("no hub URL"), "{e}");
    }

    #[test]
    fn token_from_env_or_file_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "oprt_secret\n").unwrap();
        let args = RunnerArgs {
            hub: Some("http://h".into()),
            token_file: Some(token_file),
            ..Default::default()
        };
        let c: AgentConfig<Exec> = load_config(&args, &HashMap::new()).unwrap();
        assert_eq!(c.resolve_token().unwrap(), "oprt_secret");
        let c: AgentConfig<Exec> = load_config(
            &RunnerArgs {
                hub: Some("http://h".into()),
                ..Default::default()
            },
            &env(&[("OUTPOST_TOKEN", "oprt_env")]),
        )
        .unwrap();
        assert_eq!(c.resolve_token().unwrap(), "oprt_env");
        assert!(!c.to_toml().contains("oprt_env"));
    }
}
