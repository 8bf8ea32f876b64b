//! The Docker backend's configuration: typed, `deny_unknown_fields`, every default documented
//! here and nowhere else.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::DockerError;

/// When the backend pulls a step's or service's image before creating its container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PullPolicy {
    /// Pull before every use (at most once per job and image).
    Always,
    /// Pull only when the engine does not have the image (the default).
    #[default]
    IfNotPresent,
    /// Never pull: a missing image fails the step with class `image_pull`.
    Never,
}

/// A number of bytes, written in the config as an integer or as `512m`, `2GiB`, `16MiB`, `1g`
/// (suffixes k, m, g, t with or without `i`/`iB`/`B`, all powers of 1024 as Docker reads them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const fn mib(n: u64) -> Self {
        Self(n * 1024 * 1024)
    }

    /// Parses `16MiB`, `512m`, `1g`, `1048576`.
    pub fn parse(text: &str) -> Result<Self, DockerError> {
        let bad = || DockerError::Config {
            key: "byte size",
            message: format!("`{text}` is not a size (expected e.g. `512MiB`, `1g`, `1048576`)"),
        };
        let t = text.trim();
        let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(digits_end);
        let n: u64 = num.parse().map_err(|_| bad())?;
        let unit = unit.trim().to_ascii_lowercase();
        let shift = match unit.as_str() {
            "" | "b" => 0,
            "k" | "kb" | "ki" | "kib" => 10,
            "m" | "mb" | "mi" | "mib" => 20,
            "g" | "gb" | "gi" | "gib" => 30,
            "t" | "tb" | "ti" | "tib" => 40,
            _ => return Err(bad()),
        };
        n.checked_mul(1u64 << shift).map(Self).ok_or_else(bad)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(Self(n)),
            Raw::Text(t) => Self::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

/// Configuration of the Docker backend (`[executor]` in runner-docker's config file).
///
/// The runner id is not configured here: it comes with every `PreparedJob`, and with every call
/// of `running_jobs` and `sweep`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DockerConfig {
    /// `always`, `if-not-present` (default) or `never`.
    pub pull_policy: PullPolicy,
    /// CPUs given to every step and service container (e.g. `1.5`); default: no limit.
    pub cpus: Option<f64>,
    /// The most CPUs a step may ask for; default: no maximum.
    pub cpus_max: Option<f64>,
    /// Memory limit of every step and service container (swap is not added); default: no limit.
    pub memory: Option<ByteSize>,
    /// The most memory a step may ask for; default: no maximum.
    pub memory_max: Option<ByteSize>,
    /// Images (exact references as written in pipelines, e.g. `docker:27-dind`) whose step
    /// containers run privileged. Default: none. No other container is ever privileged.
    pub privileged_images: Vec<String>,
    /// Grace period between the stop signal and the kill on cancel and timeouts. Default `10s`.
    #[serde(with = "outpost_time::serde_duration")]
    pub stop_grace: Duration,
    /// A cache volume not used by any job for this long is removed by `sweep`. Default `7days`.
    #[serde(with = "outpost_time::serde_duration")]
    pub cache_retention: Duration,
    /// Docker client config file holding registry credentials (`auths`). Default:
    /// `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`; a missing file means no
    /// credentials.
    pub docker_config_path: Option<PathBuf>,
    /// Image of a short-lived container through which the checkout is copied into the workspace
    /// volume (never started, so it needs no binary). Default: none, the checkout is copied
    /// through the first step's own container before it starts, which spares a container.
    pub helper_image: Option<String>,
    /// Prefix of container names (`outpost-<job>-step-<n>`). Default `outpost-`.
    pub container_prefix: String,
    /// Prefix of network names (`outpost-<job>-net`). Default `outpost-`.
    pub network_prefix: String,
    /// Prefix of volume names (`outpost-<job>-workspace`, `outpost-cache-<scope>-<name>`).
    /// Default `outpost-`.
    pub volume_prefix: String,
    /// Directory where the backend keeps its cache-use index (`docker-cache-index.json`), usually
    /// the runner's `--state-dir`. Default: none, then cache use is tracked in memory only (and
    /// from each volume's creation time after a restart).
    pub state_dir: Option<PathBuf>,
    /// Limit on the engine's answer to one API call (not on streams: logs, waits and pulls run as
    /// long as they need). Default `5m`.
    #[serde(with = "outpost_time::serde_duration")]
    pub api_timeout: Duration,
    /// How long the resources of a job without a timeout are labelled to live
    /// (`outpost.expires-at`). Default `24h`.
    #[serde(with = "outpost_time::serde_duration")]
    pub default_expiry: Duration,
}

impl Default for DockerConfig {
    fn default() -> Self {
        Self {
            pull_policy: PullPolicy::IfNotPresent,
            cpus: None,
            cpus_max: None,
            memory: None,
            memory_max: None,
            privileged_images: Vec::new(),
            stop_grace: Duration::from_secs(10),
            cache_retention: Duration::from_secs(7 * 24 * 3600),
            docker_config_path: None,
            helper_image: None,
            container_prefix: "outpost-".to_owned(),
            network_prefix: "outpost-".to_owned(),
            volume_prefix: "outpost-".to_owned(),
            state_dir: None,
            api_timeout: Duration::from_secs(300),
            default_expiry: Duration::from_secs(24 * 3600),
        }
    }
}

/// What a step asks for beyond the runner's defaults. The pipeline has no such keys yet; the
/// plumbing is here so that adding them only means filling this in.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ResourceRequest {
    pub cpus: Option<f64>,
    pub memory: Option<ByteSize>,
}

/// The limits and privileges applied to one container.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Resources {
    pub nano_cpus: Option<i64>,
    pub memory: Option<i64>,
    pub privileged: bool,
}

impl DockerConfig {
    /// Checks the values that serde cannot: positive CPUs, defaults within maxima, prefixes that
    /// make valid Docker names.
    pub fn validate(&self) -> Result<(), DockerError> {
        let bad = |key: &'static str, message: String| Err(DockerError::Config { key, message });
        for (key, v) in [("cpus", self.cpus), ("cpus_max", self.cpus_max)] {
            if let Some(v) = v
                && !(v.is_finite() && v > 0.0)
            {
                return bad(key, format!("must be a positive number of CPUs, not {v}"));
            }
        }
        if let (Some(d), Some(m)) = (self.cpus, self.cpus_max)
            && d > m
        {
            return bad("cpus", format!("the default {d} is above cpus_max {m}"));
        }
        if let (Some(d), Some(m)) = (self.memory, self.memory_max)
            && d > m
        {
            return bad("memory", format!("the default {d} is above memory_max {m}"));
        }
        if let Some(m) = self.memory
            && m.0 < 6 * 1024 * 1024
        {
            return bad("memory", format!("{m} is below Docker's minimum of 6MiB"));
        }
        if self.stop_grace >= self.api_timeout {
            return bad(
                "stop_grace",
                format!(
                    "{} must be shorter than api_timeout ({}): a stop waits that long for the \
                     engine's answer",
                    outpost_time::format(self.stop_grace),
                    outpost_time::format(self.api_timeout)
                ),
            );
        }
        for (key, p) in [
            ("container_prefix", &self.container_prefix),
            ("network_prefix", &self.network_prefix),
            ("volume_prefix", &self.volume_prefix),
        ] {
            if p.is_empty() || crate::names::sanitize(p) != *p {
                return bad(
                    key,
                    format!("`{p}` must be non-empty and use only [a-zA-Z0-9_.-]"),
                );
            }
        }
        Ok(())
    }

    /// The limits for a container of `image`: the request, else the runner's default; a request
    /// above the maximum is refused (the message is the step's `config` failure).
    pub fn resources_for(&self, image: &str, req: ResourceRequest) -> Result<Resources, String> {
        let cpus = req.cpus.or(self.cpus);
        if let (Some(c), Some(m)) = (cpus, self.cpus_max)
            && c > m
        {
            return Err(format!("{c} CPUs requested, the runner allows at most {m}"));
        }
        let memory = req.memory.or(self.memory);
        if let (Some(c), Some(m)) = (memory, self.memory_max)
            && c > m
        {
            return Err(format!(
                "{c} of memory requested, the runner allows at most {m}"
            ));
        }
        Ok(Resources {
            nano_cpus: cpus.map(|c| (c * 1e9).round() as i64),
            memory: memory.map(|m| i64::try_from(m.0).unwrap_or(i64::MAX)),
            privileged: self.privileged_images.iter().any(|i| i == image),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: Option<u64>) {
        assert_eq!(ByteSize::parse(text).ok().map(|b| b.0), expected, "{text}");
    }

    #[test]
    fn byte_sizes() {
        check("1048576", Some(1 << 20));
        check("16MiB", Some(16 << 20));
        check("512m", Some(512 << 20));
        check("1g", Some(1 << 30));
        check("2 GB", Some(2 << 30));
        check("12x", None);
        check("", None);
        check("99999999999999t", None);
    }

    #[test]
    fn config_from_json_with_defaults_and_unknown_keys() {
        let c: DockerConfig = serde_json::from_str(
            r#"{"pull_policy": "never", "memory": "64MiB", "stop_grace": "2s",
                "privileged_images": ["docker:dind"]}"#,
        )
        .expect("valid config");
        assert_eq!(c.pull_policy, PullPolicy::Never);
        assert_eq!(c.memory, Some(ByteSize::mib(64)));
        assert_eq!(c.stop_grace, Duration::from_secs(2));
        assert_eq!(c.cache_retention, DockerConfig::default().cache_retention);
        let err =
            serde_json::from_str::<DockerConfig>(r#"{"memroy": "1g"}"#).expect_err("unknown key");
        assert!(err.to_string().contains("memroy"), "{err}");
    }

    #[test]
    fn resources_apply_defaults_maxima_and_allow_list() {
        let c = DockerConfig {
            cpus: Some(1.0),
            cpus_max: Some(2.0),
            memory: Some(ByteSize::mib(16)),
            memory_max: Some(ByteSize::mib(32)),
            privileged_images: vec!["dind:1".into()],
            ..DockerConfig::default()
        };
        c.validate().expect("valid");
        let r = c
            .resources_for("alpine:3", ResourceRequest::default())
            .expect("defaults fit");
        assert_eq!(r.nano_cpus, Some(1_000_000_000));
        assert_eq!(r.memory, Some(16 << 20));
        assert!(!r.privileged);
        assert!(
            c.resources_for("dind:1", ResourceRequest::default())
                .expect("fits")
                .privileged
        );
        let too_much = ResourceRequest {
            memory: Some(ByteSize::mib(64)),
            ..ResourceRequest::default()
        };
        assert!(c.resources_for("alpine:3", too_much).is_err());
        let bad = DockerConfig {
            cpus: Some(4.0),
            ..c
        };
        assert!(bad.validate().is_err());
    }
}
