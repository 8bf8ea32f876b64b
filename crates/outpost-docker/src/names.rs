//! Names and labels of everything the backend creates, so that a later process (reattach, sweep)
//! finds them again.

use std::collections::HashMap;

use crate::DockerConfig;

/// The labels every resource carries.
pub mod labels {
    /// `true` on everything outpost created.
    pub const MANAGED: &str = "outpost.managed";
    /// The id of the runner (at the hub) whose job created the resource.
    pub const RUNNER_ID: &str = "outpost.runner-id";
    /// The job the resource belongs to (for cache volumes: the job that created it).
    pub const JOB_ID: &str = "outpost.job-id";
    /// The job's deadline in Unix seconds (or creation time plus `default_expiry`).
    pub const EXPIRES_AT: &str = "outpost.expires-at";
    /// The step's index, on step containers only.
    pub const STEP_INDEX: &str = "outpost.step-index";
    /// `step`, `service`, `helper`, `workspace`, `cache` or `network`.
    pub const KIND: &str = "outpost.kind";
    /// The service's name, on service containers.
    pub const SERVICE: &str = "outpost.service";
    /// The cache's scope and name, on cache volumes.
    pub const CACHE_SCOPE: &str = "outpost.cache-scope";
    pub const CACHE_NAME: &str = "outpost.cache-name";
    /// The name of the job's network, on its workspace volume and containers (a network's own
    /// labels name no job: it may have been made before its job arrived).
    pub const NETWORK: &str = "outpost.network";
    /// One run of a job, on its workspace volume: a volume with another value was left by an
    /// earlier attempt of the same job.
    pub const ATTEMPT: &str = "outpost.attempt";
}

/// The value of [`labels::KIND`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Step,
    Service,
    Helper,
    Workspace,
    Cache,
    Network,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Step => "step",
            Kind::Service => "service",
            Kind::Helper => "helper",
            Kind::Workspace => "workspace",
            Kind::Cache => "cache",
            Kind::Network => "network",
        }
    }
}

/// Replaces every character Docker refuses in a name (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`) by `-`.
pub fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// The names of one job's resources (its network's is not the job's: see `network.rs`).
#[derive(Debug, Clone)]
pub struct JobNames {
    pub workspace: String,
    container_base: String,
    volume_prefix: String,
}

impl JobNames {
    pub fn new(config: &DockerConfig, job_id: &str) -> Self {
        let job = sanitize(job_id);
        Self {
            workspace: format!("{}{job}-workspace", config.volume_prefix),
            container_base: format!("{}{job}", config.container_prefix),
            volume_prefix: config.volume_prefix.clone(),
        }
    }

    pub fn step(&self, index: u32) -> String {
        format!("{}-step-{index}", self.container_base)
    }

    pub fn service(&self, name: &str) -> String {
        format!("{}-svc-{}", self.container_base, sanitize(name))
    }

    pub fn helper(&self) -> String {
        format!("{}-copy", self.container_base)
    }

    /// Cache volumes are named by scope and cache name, not by job: later jobs reuse them.
    pub fn cache(&self, scope: &str, name: &str) -> String {
        format!(
            "{}cache-{}-{}",
            self.volume_prefix,
            sanitize(scope),
            sanitize(name)
        )
    }
}

/// The labels of one resource of a job.
pub fn job_labels(
    runner_id: &str,
    job_id: &str,
    expires_at: u64,
    kind: Kind,
) -> HashMap<String, String> {
    let mut l = runner_labels(runner_id, expires_at, kind);
    l.insert(labels::JOB_ID.to_owned(), job_id.to_owned());
    l
}

/// The labels of a resource of a runner that belongs to no job (yet): a network.
pub fn runner_labels(runner_id: &str, expires_at: u64, kind: Kind) -> HashMap<String, String> {
    HashMap::from([
        (labels::MANAGED.to_owned(), "true".to_owned()),
        (labels::RUNNER_ID.to_owned(), runner_id.to_owned()),
        (labels::EXPIRES_AT.to_owned(), expires_at.to_string()),
        (labels::KIND.to_owned(), kind.as_str().to_owned()),
    ])
}

/// A Docker `label` filter matching this runner's resources, plus `extra` `key=value` pairs.
pub fn runner_filter(runner_id: &str, extra: &[(&str, &str)]) -> HashMap<String, Vec<String>> {
    let mut l = vec![
        format!("{}=true", labels::MANAGED),
        format!("{}={runner_id}", labels::RUNNER_ID),
    ];
    l.extend(extra.iter().map(|(k, v)| format!("{k}={v}")));
    HashMap::from([("label".to_owned(), l)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_recognisable_and_valid() {
        let n = JobNames::new(&DockerConfig::default(), "j_1/x");
        assert_eq!(n.step(2), "outpost-j_1-x-step-2");
        assert_eq!(n.workspace, "outpost-j_1-x-workspace");
        assert_eq!(n.service("db"), "outpost-j_1-x-svc-db");
        assert_eq!(n.cache("org/repo", "cargo"), "outpost-cache-org-repo-cargo");
    }
}
