//! The environment a step process sees: a small documented base taken from the runner, the job's
//! own variables and secrets, and the `OUTPOST_*` variables of the backend.

use std::collections::BTreeMap;

use outpost_executor::{PreparedJob, StepSpec};

/// The only variables of the runner's own environment that reach steps (through
/// [`base_env_from_runner`]). Everything else, the runner's hub token included, stays out.
pub const BASE_ENV_VARS: &[&str] = &["PATH", "HOME", "LANG", "TMPDIR"];

/// `PATH` of steps when the runner itself has none.
const FALLBACK_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The runner's values of [`BASE_ENV_VARS`] (those that are set and valid UTF-8), with a default
/// `PATH` when the runner has none.
pub fn base_env_from_runner() -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = BASE_ENV_VARS
        .iter()
        .filter_map(|&name| Some((name.to_owned(), std::env::var(name).ok()?)))
        .collect();
    env.entry("PATH".to_owned())
        .or_insert_with(|| FALLBACK_PATH.to_owned());
    env
}

/// The variable that exports a cache's host directory: `OUTPOST_CACHE_` and the cache name
/// uppercased, with every character other than an ASCII letter or digit turned into `_`
/// (`cargo-home` → `OUTPOST_CACHE_CARGO_HOME`).
pub fn cache_env_name(cache: &str) -> String {
    let suffix: String = cache
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("OUTPOST_CACHE_{suffix}")
}

/// The full environment of one step: base, then the job's step environment, then the backend's
/// own variables (which win, so a script can rely on them).
pub(crate) fn step_env(
    base: &BTreeMap<String, String>,
    job: &PreparedJob,
    step: &StepSpec,
    caches: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut env = base.clone();
    env.extend(job.step_env(step));
    env.insert("CI".to_owned(), "true".to_owned());
    env.insert("OUTPOST".to_owned(), "true".to_owned());
    env.insert("OUTPOST_JOB_ID".to_owned(), job.job_id.to_string());
    env.insert("OUTPOST_STEP_NAME".to_owned(), step.name.clone());
    env.insert(
        "OUTPOST_WORKSPACE".to_owned(),
        job.workspace.to_string_lossy().into_owned(),
    );
    env.extend(caches.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(cache: &str, expected: &str) {
        assert_eq!(cache_env_name(cache), expected);
    }

    #[test]
    fn cache_names() {
        check("cargo", "OUTPOST_CACHE_CARGO");
        check("cargo-home", "OUTPOST_CACHE_CARGO_HOME");
        check("npm.v2", "OUTPOST_CACHE_NPM_V2");
        check("Ünï", "OUTPOST_CACHE__N_");
    }

    #[test]
    fn runner_base_env_holds_only_the_allowed_variables() {
        let env = base_env_from_runner();
        assert!(env.contains_key("PATH"));
        for name in env.keys() {
            assert!(BASE_ENV_VARS.contains(&name.as_str()), "{name} leaked");
        }
    }
}
