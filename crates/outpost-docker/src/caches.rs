//! When each cache volume was last used. Docker cannot relabel a volume, so the backend keeps
//! this index itself: in memory, and in `<state_dir>/docker-cache-index.json` when the runner has
//! a state directory, so that a restarted runner still knows. A volume missing from the index
//! counts as last used when it was created.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::error::DockerError;

const FILE_NAME: &str = "docker-cache-index.json";

/// The last use (Unix seconds) of each cache volume, by volume name.
#[derive(Debug, Default)]
pub struct CacheIndex {
    path: Option<PathBuf>,
    inner: Mutex<Inner>,
    /// Serialises writes of the file; held only inside blocking tasks.
    written: Arc<Mutex<u64>>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<String, u64>,
    version: u64,
}

impl CacheIndex {
    /// Loads the index from `state_dir` (none: in memory only). A corrupt file is logged and
    /// replaced: losing it only makes caches look older.
    pub async fn load(state_dir: Option<PathBuf>) -> Result<Self, DockerError> {
        let Some(dir) = state_dir else {
            return Ok(Self::default());
        };
        let path = dir.join(FILE_NAME);
        let entries = match tokio::fs::read(&path).await {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "ignoring a corrupt cache index");
                HashMap::new()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(source) => return Err(DockerError::CacheIndex { path, source }),
        };
        Ok(Self {
            path: Some(path),
            inner: Mutex::new(Inner {
                entries,
                version: 0,
            }),
            written: Arc::default(),
        })
    }

    pub fn last_use(&self, volume: &str) -> Option<u64> {
        self.lock().entries.get(volume).copied()
    }

    /// Records that `volumes` are in use now.
    pub async fn touch(&self, volumes: &[String], now: u64) {
        if volumes.is_empty() {
            return;
        }
        let snapshot = {
            let mut inner = self.lock();
            for v in volumes {
                inner.entries.insert(v.clone(), now);
            }
            inner.version += 1;
            (inner.version, inner.entries.clone())
        };
        self.persist(snapshot).await;
    }

    /// Forgets a removed volume.
    pub async fn forget(&self, volume: &str) {
        let snapshot = {
            let mut inner = self.lock();
            if inner.entries.remove(volume).is_none() {
                return;
            }
            inner.version += 1;
            (inner.version, inner.entries.clone())
        };
        self.persist(snapshot).await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves a plain map behind: still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn persist(&self, (version, entries): (u64, HashMap<String, u64>)) {
        let Some(path) = self.path.clone() else {
            return;
        };
        let written = self.written.clone();
        let result = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut last = written.lock().unwrap_or_else(|p| p.into_inner());
            if *last >= version {
                return Ok(()); // a newer snapshot is already on disk
            }
            let tmp = path.with_extension("json.tmp");
            let bytes = serde_json::to_vec_pretty(&entries).map_err(std::io::Error::other)?;
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, &path)?;
            *last = version;
            Ok(())
        })
        .await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot write the cache index"),
            Err(e) => tracing::warn!(error = %e, "the cache index writer failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn survives_a_reload() {
        let dir = tempfile::tempdir().expect("tempdir");
        let index = CacheIndex::load(Some(dir.path().to_owned()))
            .await
            .expect("load");
        index.touch(&["a".into(), "b".into()], 100).await;
        index.touch(&["b".into()], 200).await;
        index.forget("a").await;
        let again = CacheIndex::load(Some(dir.path().to_owned()))
            .await
            .expect("reload");
        assert_eq!(again.last_use("a"), None);
        assert_eq!(again.last_use("b"), Some(200));
    }
}
