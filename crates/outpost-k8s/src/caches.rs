//! Cache claims: persistent volume claims reused by cache scope and name. A job takes a free
//! claim of its scope and name by setting `outpost.dev/in-use-by` with a merge patch that carries
//! the claim's `resourceVersion` (two runners racing for one claim: the second gets 409 Conflict
//! and tries the next), or creates one already marked as its own; at its end it releases them
//! (the mark removed, `outpost.dev/last-used` set). A `ReadWriteMany` claim is shared and never
//! marked. The sweeper deletes claims unused for `cache_retention`.

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use outpost_executor::{ExecutorError, PreparedJob};
use serde_json::json;

use crate::Shared;
use crate::error::{job_error, status_of};
use crate::names::{self, annotations, labels};

/// A claim a job holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheClaim {
    pub name: String,
    /// `ReadWriteMany`: shared with other jobs, not marked as in use.
    pub shared: bool,
}

/// Annotation: since when (Unix seconds) the claim is in use, for the sweeper to recognise a
/// mark left by a job that died before its pod existed.
pub const IN_USE_SINCE: &str = "outpost.dev/in-use-since";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The selector of the claims of cache `name` in `scope`.
pub fn cache_selector(scope: &str, name: &str) -> String {
    format!(
        "{}={},{}=cache,{}={},{}={}",
        labels::MANAGED_BY,
        labels::MANAGED_BY_VALUE,
        labels::KIND,
        labels::CACHE_SCOPE,
        names::hashed(scope),
        labels::CACHE_NAME,
        names::label_value(name)
    )
}

/// The selector of every cache claim.
pub fn all_caches_selector() -> String {
    format!(
        "{}={},{}=cache",
        labels::MANAGED_BY,
        labels::MANAGED_BY_VALUE,
        labels::KIND
    )
}

fn is_shared(c: &PersistentVolumeClaim) -> bool {
    c.spec
        .as_ref()
        .and_then(|s| s.access_modes.as_ref())
        .is_some_and(|m| m.iter().any(|m| m == "ReadWriteMany"))
}

fn in_use_by(c: &PersistentVolumeClaim) -> Option<&str> {
    c.metadata
        .annotations
        .as_ref()?
        .get(annotations::IN_USE_BY)
        .map(String::as_str)
}

/// Takes (or creates) one claim per cache of the job, in order.
pub async fn acquire(shared: &Shared, job: &PreparedJob) -> Result<Vec<CacheClaim>, ExecutorError> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(shared.client.clone(), &shared.namespace);
    let job_id = job.job_id.as_str();
    let mut held = Vec::new();
    for cache in &job.caches {
        let selector = cache_selector(&job.cache_scope, &cache.name);
        let mut list = api
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| {
                job_error(
                    &job.job_id,
                    format!("list cache claims of `{}`", cache.name),
                    &e,
                )
            })?
            .items;
        list.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let mut taken = None;
        for c in &list {
            let Some(name) = c.metadata.name.clone() else {
                continue;
            };
            if c.metadata.deletion_timestamp.is_some()
                || held.iter().any(|h: &CacheClaim| h.name == name)
            {
                continue;
            }
            if is_shared(c) {
                taken = Some(CacheClaim { name, shared: true });
                break;
            }
            if in_use_by(c).is_some_and(|j| j != job_id) {
                continue;
            }
            if mark(&api, job, &name, c.metadata.resource_version.as_deref()).await? {
                taken = Some(CacheClaim {
                    name,
                    shared: false,
                });
                break;
            }
        }
        let claim = match taken {
            Some(c) => c,
            None => create(shared, &api, job, &cache.name).await?,
        };
        held.push(claim);
    }
    Ok(held)
}

/// Marks claim `name` as the job's; `false` when another runner changed it first.
async fn mark(
    api: &Api<PersistentVolumeClaim>,
    job: &PreparedJob,
    name: &str,
    resource_version: Option<&str>,
) -> Result<bool, ExecutorError> {
    let patch = json!({"metadata": {
        "resourceVersion": resource_version,
        "annotations": {
            annotations::IN_USE_BY: job.job_id.as_str(),
            IN_USE_SINCE: now().to_string(),
        },
    }});
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if matches!(status_of(&e), Some(409 | 404)) => Ok(false),
        Err(e) => Err(job_error(
            &job.job_id,
            format!("take cache claim {name}"),
            &e,
        )),
    }
}

async fn create(
    shared: &Shared,
    api: &Api<PersistentVolumeClaim>,
    job: &PreparedJob,
    cache: &str,
) -> Result<CacheClaim, ExecutorError> {
    let key = names::hashed(&format!("{}\n{cache}", job.cache_scope));
    let mut job_part = names::dns_safe(job.job_id.as_str());
    job_part.truncate(30);
    let name = format!(
        "outpost-cache-{}-{}",
        &key[2..12],
        job_part.trim_end_matches('-')
    );
    let config = &shared.config;
    let mut spec = json!({
        "accessModes": [config.cache_access_mode],
        "resources": {"requests": {"storage": config.cache_size}},
    });
    if let Some(class) = config
        .cache_storage_class
        .as_ref()
        .or(config.storage_class.as_ref())
    {
        spec["storageClassName"] = json!(class);
    }
    let shared_mode = config.cache_access_mode == "ReadWriteMany";
    let mut notes = serde_json::Map::new();
    notes.insert(annotations::VERSION.to_owned(), json!(crate::spec::VERSION));
    notes.insert(annotations::CACHE_SCOPE.to_owned(), json!(job.cache_scope));
    notes.insert(annotations::LAST_USED.to_owned(), json!(now().to_string()));
    if !shared_mode {
        notes.insert(
            annotations::IN_USE_BY.to_owned(),
            json!(job.job_id.as_str()),
        );
        notes.insert(IN_USE_SINCE.to_owned(), json!(now().to_string()));
    }
    let claim: PersistentVolumeClaim = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": name,
            "namespace": shared.namespace,
            "labels": {
                labels::MANAGED_BY: labels::MANAGED_BY_VALUE,
                labels::KIND: "cache",
                labels::RUNNER_ID: names::label_value(job.runner_id.as_str()),
                labels::JOB_ID: names::label_value(job.job_id.as_str()),
                labels::CACHE_SCOPE: names::hashed(&job.cache_scope),
                labels::CACHE_NAME: names::label_value(cache),
            },
            "annotations": notes,
        },
        "spec": spec,
    }))
    .map_err(|e| ExecutorError::Invalid {
        backend: crate::KIND,
        job_id: job.job_id.clone(),
        message: format!("cache claim {name}: {e}"),
    })?;
    match api.create(&PostParams::default(), &claim).await {
        Ok(_) => {}
        // Made by an earlier attempt of this job: it carries this job's mark.
        Err(e) if status_of(&e) == Some(409) => {}
        Err(e) => {
            return Err(job_error(
                &job.job_id,
                format!("create cache claim {name}"),
                &e,
            ));
        }
    }
    Ok(CacheClaim {
        name,
        shared: shared_mode,
    })
}

/// The claims a job holds (after a runner restart).
pub async fn held_by(shared: &Shared, job: &PreparedJob) -> Result<Vec<CacheClaim>, ExecutorError> {
    if job.caches.is_empty() {
        return Ok(Vec::new());
    }
    let api: Api<PersistentVolumeClaim> = Api::namespaced(shared.client.clone(), &shared.namespace);
    let list = api
        .list(&ListParams::default().labels(&all_caches_selector()))
        .await
        .map_err(|e| job_error(&job.job_id, "list cache claims", &e))?;
    Ok(list
        .items
        .iter()
        .filter(|c| in_use_by(c) == Some(job.job_id.as_str()))
        .filter_map(|c| {
            Some(CacheClaim {
                name: c.metadata.name.clone()?,
                shared: false,
            })
        })
        .collect())
}

/// Releases the job's claims: the mark removed, the time of use recorded.
pub async fn release(
    shared: &Shared,
    job: &PreparedJob,
    claims: &[CacheClaim],
) -> Result<(), ExecutorError> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(shared.client.clone(), &shared.namespace);
    for c in claims {
        let patch = if c.shared {
            json!({"metadata": {"annotations": {annotations::LAST_USED: now().to_string()}}})
        } else {
            json!({"metadata": {"annotations": {
                annotations::IN_USE_BY: null,
                IN_USE_SINCE: null,
                annotations::LAST_USED: now().to_string(),
            }}})
        };
        match api
            .patch(&c.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            Err(e) if status_of(&e) == Some(404) => {}
            Err(e) => {
                return Err(job_error(
                    &job.job_id,
                    format!("release cache claim {}", c.name),
                    &e,
                ));
            }
        }
    }
    Ok(())
}

/// Whether the sweeper may delete cache claim `c` now (`now` in Unix seconds): unused for
/// `retention`, and either free or marked by a job that has had no pod for that long.
pub fn expired(
    c: &PersistentVolumeClaim,
    retention: u64,
    now: u64,
    job_has_pod: impl Fn(&str) -> bool,
) -> bool {
    let notes = c.metadata.annotations.as_ref();
    let num = |key: &str| {
        notes
            .and_then(|a| a.get(key))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let created = c
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(0, |t| u64::try_from(t.0.as_second()).unwrap_or(0));
    if let Some(job) = in_use_by(c) {
        let since = num(IN_USE_SINCE).unwrap_or(created);
        return !job_has_pod(job) && now.saturating_sub(since) >= retention;
    }
    let last = num(annotations::LAST_USED).unwrap_or(created);
    now.saturating_sub(last) >= retention
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(notes: serde_json::Value) -> PersistentVolumeClaim {
        serde_json::from_value(json!({"metadata": {"name": "c", "annotations": notes,
            "creationTimestamp": "2026-01-01T00:00:00Z"}}))
        .expect("a claim")
    }

    #[test]
    fn retention() {
        let day = 86_400;
        let now = 1_767_225_600 + 10 * day; // 2026-01-11
        let no_pod = |_: &str| false;
        assert!(expired(&claim(json!({})), 7 * day, now, no_pod));
        assert!(!expired(
            &claim(json!({annotations::LAST_USED: (now - day).to_string()})),
            7 * day,
            now,
            no_pod
        ));
        let held = claim(
            json!({annotations::IN_USE_BY: "j_1", IN_USE_SINCE: (now - 8 * day).to_string()}),
        );
        assert!(expired(&held, 7 * day, now, no_pod));
        assert!(!expired(&held, 7 * day, now, |_| true));
        assert!(cache_selector("org/repo", "cargo").contains("outpost.dev/cache-name=cargo"));
    }
}
