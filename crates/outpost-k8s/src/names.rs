//! Names, labels and annotations of everything the backend creates, so that a later process
//! (reattach, sweep) finds it again by label.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

/// Label keys.
pub mod labels {
    /// `outpost` on everything the backend made (the one watch selects on it).
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    pub const MANAGED_BY_VALUE: &str = "outpost";
    /// The runner (its id at the hub) whose job made the object.
    pub const RUNNER_ID: &str = "outpost.dev/runner-id";
    /// The job the object belongs to (on cache claims: the job that created it).
    pub const JOB_ID: &str = "outpost.dev/job-id";
    /// The job's deadline in Unix seconds.
    pub const EXPIRES_AT: &str = "outpost.dev/expires-at";
    /// `pod`, `secret`, `cache`.
    pub const KIND: &str = "outpost.dev/kind";
    /// On cache claims: a label-safe hash of the cache scope, and the cache's name.
    pub const CACHE_SCOPE: &str = "outpost.dev/cache-scope";
    pub const CACHE_NAME: &str = "outpost.dev/cache-name";
}

/// Annotation keys.
pub mod annotations {
    /// The outpost version that made the object.
    pub const VERSION: &str = "outpost.dev/version";
    /// On a cache claim: the job using it now (absent when free).
    pub const IN_USE_BY: &str = "outpost.dev/in-use-by";
    /// On a cache claim: when a job last released it (Unix seconds).
    pub const LAST_USED: &str = "outpost.dev/last-used";
    /// On a cache claim: the cache scope in full (the label holds a hash of it).
    pub const CACHE_SCOPE: &str = "outpost.dev/cache-scope";
    /// On a pod: the job's id as given (the label holds a label-safe form).
    pub const JOB_ID: &str = "outpost.dev/job-id";
}

/// Whether `s` is a DNS-1123 label (names of namespaces, containers, ports).
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// `s` lowercased with everything outside `[a-z0-9-]` as `-` (`j_1AB` → `j-1ab`).
pub fn dns_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect::<String>()
        .trim_matches('-')
        .to_owned()
}

/// Whether `s` may be a label value (63 characters of `[A-Za-z0-9_.-]`, alphanumeric ends).
pub fn is_label_value(s: &str) -> bool {
    s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.bytes().next().is_none_or(|b| b.is_ascii_alphanumeric())
        && s.bytes().last().is_none_or(|b| b.is_ascii_alphanumeric())
}

/// A label value for `s`: `s` itself when it is one, else a hash of it (`h-<24 hex>`).
pub fn label_value(s: &str) -> String {
    if is_label_value(s) {
        s.to_owned()
    } else {
        hashed(s)
    }
}

/// `h-` and the first 24 hex digits of SHA-256 of `s`: label- and name-safe, stable.
pub fn hashed(s: &str) -> String {
    let digest = Sha256::digest(s.as_bytes());
    format!("h-{}", &hex::encode(digest)[..24])
}

/// The names of one job's objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobNames {
    /// `outpost-<job id lowercased, '_' → '-'>`.
    pub pod: String,
    /// `<pod>-secrets`.
    pub secret: String,
    /// The claim the workspace's ephemeral volume makes: `<pod>-workspace`.
    pub workspace_claim: String,
}

impl JobNames {
    pub fn new(job_id: &str) -> Self {
        let mut base = dns_safe(job_id);
        // Pod names may be 253 long, but a claim named after pod and volume must stay a name,
        // and short names read better: long ids are cut and made unique by a hash.
        if base.len() > 40 {
            base = format!(
                "{}-{}",
                base[..24].trim_end_matches('-'),
                &hashed(job_id)[2..14]
            );
        }
        let pod = format!("outpost-{base}");
        Self {
            secret: format!("{pod}-secrets"),
            workspace_claim: format!("{pod}-{WORKSPACE_VOLUME}"),
            pod,
        }
    }
}

/// The volume of the workspace (and the suffix of its claim's name).
pub const WORKSPACE_VOLUME: &str = "workspace";
/// The volume holding the step wrapper and the markers.
pub const TOOLS_VOLUME: &str = "outpost-tools";
/// Where the tools volume is mounted in every container.
pub const TOOLS_MOUNT: &str = "/outpost";
/// The wrapper inside the tools volume.
pub const WRAPPER: &str = "/outpost/bin/outpost-step";
/// The markers directory inside the tools volume.
pub const MARKERS: &str = "/outpost/markers";
/// Init container names.
pub const INSTALL_CONTAINER: &str = "outpost-install";
pub const RECEIVE_CONTAINER: &str = "outpost-receive";

/// The container of step `index`.
pub fn step_container(index: u32) -> String {
    format!("step-{index}")
}

/// The step index of a container named by [`step_container`].
pub fn step_index(container: &str) -> Option<u32> {
    container.strip_prefix("step-")?.parse().ok()
}

/// The sidecar container of service `name`.
pub fn service_container(name: &str) -> String {
    format!("svc-{}", dns_safe(name))
}

/// The volume of cache `index` of a job.
pub fn cache_volume(index: usize) -> String {
    format!("cache-{index}")
}

/// The labels of the runner's object of `kind` for job `job_id`.
pub fn job_labels(
    runner_id: &str,
    job_id: &str,
    expires_at: u64,
    kind: &str,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            labels::MANAGED_BY.to_owned(),
            labels::MANAGED_BY_VALUE.to_owned(),
        ),
        (labels::RUNNER_ID.to_owned(), label_value(runner_id)),
        (labels::JOB_ID.to_owned(), label_value(job_id)),
        (labels::EXPIRES_AT.to_owned(), expires_at.to_string()),
        (labels::KIND.to_owned(), kind.to_owned()),
    ])
}

/// The label selector of everything runner `runner_id` made, plus `kind` when given.
pub fn runner_selector(runner_id: &str, kind: Option<&str>) -> String {
    let mut s = format!(
        "{}={},{}={}",
        labels::MANAGED_BY,
        labels::MANAGED_BY_VALUE,
        labels::RUNNER_ID,
        label_value(runner_id)
    );
    if let Some(kind) = kind {
        s.push_str(&format!(",{}={kind}", labels::KIND));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(job_id: &str, pod: &str) {
        let n = JobNames::new(job_id);
        assert_eq!(n.pod, pod);
        assert!(n.pod.len() <= 63 && is_dns_label(&n.pod), "{}", n.pod);
        assert!(is_dns_label(&n.workspace_claim) || n.workspace_claim.len() <= 253);
    }

    #[test]
    fn pod_names() {
        check("j_1AB", "outpost-j-1ab");
        check("01HZX3_abc", "outpost-01hzx3-abc");
        let long = "j_".to_owned() + &"x".repeat(80);
        let n = JobNames::new(&long);
        assert!(n.pod.starts_with("outpost-j-xxxx"), "{}", n.pod);
        assert_ne!(n.pod, JobNames::new(&(long.clone() + "y")).pod);
        assert_eq!(JobNames::new("j_1").secret, "outpost-j-1-secrets");
        assert_eq!(
            JobNames::new("j_1").workspace_claim,
            "outpost-j-1-workspace"
        );
    }

    #[test]
    fn label_values() {
        assert_eq!(label_value("r_1"), "r_1");
        let h = label_value("org/repo");
        assert!(h.starts_with("h-") && is_label_value(&h), "{h}");
        assert_eq!(h, label_value("org/repo"));
        assert_eq!(step_index(&step_container(7)), Some(7));
        assert_eq!(service_container("My_DB"), "svc-my-db");
    }
}
