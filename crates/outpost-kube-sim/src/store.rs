//! The object store: every object of every resource under one global `resourceVersion` counter
//! (etcd's revision), and a bounded history of changes that watches replay from. A watch that
//! asks for a version older than the history answers `410 Expired`, as after etcd compaction.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::watch;

use crate::error::ApiError;

/// The resources the stand-in serves, all namespaced core/v1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    /// `pods`
    Pods,
    /// `persistentvolumeclaims`
    PersistentVolumeClaims,
    /// `secrets`
    Secrets,
    /// `events`
    Events,
}

impl Resource {
    pub const ALL: [Resource; 4] = [
        Resource::Pods,
        Resource::PersistentVolumeClaims,
        Resource::Secrets,
        Resource::Events,
    ];

    /// The URL segment and RBAC resource name.
    pub fn plural(self) -> &'static str {
        match self {
            Resource::Pods => "pods",
            Resource::PersistentVolumeClaims => "persistentvolumeclaims",
            Resource::Secrets => "secrets",
            Resource::Events => "events",
        }
    }

    pub fn kind(self) -> &'static str {
        match self {
            Resource::Pods => "Pod",
            Resource::PersistentVolumeClaims => "PersistentVolumeClaim",
            Resource::Secrets => "Secret",
            Resource::Events => "Event",
        }
    }

    pub fn from_plural(s: &str) -> Option<Resource> {
        Resource::ALL.into_iter().find(|r| r.plural() == s)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChangeType {
    Added,
    Modified,
    Deleted,
}

/// One write, as a watch replays it.
#[derive(Debug)]
pub(crate) struct Change {
    pub rv: u64,
    pub resource: Resource,
    pub namespace: String,
    pub kind: ChangeType,
    /// The object after the write (for a deletion: its last state, at the deletion's version).
    pub object: Arc<Value>,
    /// The object before the write, so that a filtered watch can turn a change that leaves or
    /// enters its selection into DELETED or ADDED, as the watch cache does.
    pub previous: Option<Arc<Value>>,
}

type Key = (Resource, String, String);

pub(crate) struct Store {
    rv: u64,
    objects: BTreeMap<Key, Arc<Value>>,
    history: VecDeque<Arc<Change>>,
    history_limit: usize,
    /// The highest version no longer in `history`: a watch from below it has lost events.
    compacted: u64,
    tx: watch::Sender<u64>,
}

impl Store {
    pub fn new(history_limit: usize) -> Store {
        let (tx, _) = watch::channel(0);
        Store {
            rv: 0,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            compacted: 0,
            tx,
        }
    }

    pub fn rv(&self) -> u64 {
        self.rv
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }

    pub fn get(&self, r: Resource, ns: &str, name: &str) -> Option<Arc<Value>> {
        self.objects
            .get(&(r, ns.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Objects of `r`, in `ns` or in every namespace, ordered by namespace and name.
    pub fn list<'a>(
        &'a self,
        r: Resource,
        ns: Option<&'a str>,
    ) -> impl Iterator<Item = (&'a str, &'a str, &'a Arc<Value>)> + 'a {
        self.objects
            .range((r, String::new(), String::new())..)
            .take_while(move |((res, _, _), _)| *res == r)
            .filter(move |((_, n, _), _)| ns.is_none_or(|want| want == n))
            .map(|((_, n, name), v)| (n.as_str(), name.as_str(), v))
    }

    /// Stores a new object under a new version; `AlreadyExists` if the name is taken.
    pub fn insert(
        &mut self,
        r: Resource,
        ns: &str,
        name: &str,
        mut obj: Value,
    ) -> Result<Arc<Value>, ApiError> {
        let key = (r, ns.to_owned(), name.to_owned());
        if self.objects.contains_key(&key) {
            return Err(ApiError::already_exists(r.plural(), name));
        }
        let rv = self.next_rv();
        set_rv(&mut obj, rv);
        let obj = Arc::new(obj);
        self.objects.insert(key, obj.clone());
        self.record(rv, r, ns, ChangeType::Added, obj.clone(), None);
        Ok(obj)
    }

    /// Replaces an existing object under a new version; returns `None` if it is gone.
    pub fn replace(
        &mut self,
        r: Resource,
        ns: &str,
        name: &str,
        mut obj: Value,
    ) -> Option<Arc<Value>> {
        let key = (r, ns.to_owned(), name.to_owned());
        let previous = self.objects.get(&key)?.clone();
        let rv = self.next_rv();
        set_rv(&mut obj, rv);
        let obj = Arc::new(obj);
        self.objects.insert(key, obj.clone());
        self.record(rv, r, ns, ChangeType::Modified, obj.clone(), Some(previous));
        Some(obj)
    }

    /// Removes an object; the DELETED event carries its last state at the deletion's version.
    pub fn remove(&mut self, r: Resource, ns: &str, name: &str) -> Option<Arc<Value>> {
        let previous = self.objects.remove(&(r, ns.to_owned(), name.to_owned()))?;
        let rv = self.next_rv();
        let mut last = (*previous).clone();
        set_rv(&mut last, rv);
        let last = Arc::new(last);
        self.record(rv, r, ns, ChangeType::Deleted, last.clone(), Some(previous));
        Some(last)
    }

    /// The changes after version `since`, or `Err(oldest kept version)` when some are no longer
    /// in the history.
    pub fn changes_since(&self, since: u64) -> Result<Vec<Arc<Change>>, u64> {
        if since < self.compacted {
            return Err(self.compacted + 1);
        }
        let start = self.history.partition_point(|c| c.rv <= since);
        Ok(self.history.range(start..).cloned().collect())
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn record(
        &mut self,
        rv: u64,
        resource: Resource,
        ns: &str,
        kind: ChangeType,
        object: Arc<Value>,
        previous: Option<Arc<Value>>,
    ) {
        self.history.push_back(Arc::new(Change {
            rv,
            resource,
            namespace: ns.to_owned(),
            kind,
            object,
            previous,
        }));
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.compacted = old.rv;
            }
        }
        self.tx.send_replace(rv);
    }
}

fn set_rv(obj: &mut Value, rv: u64) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn history_is_bounded_and_reports_expiry() {
        let mut s = Store::new(3);
        for i in 0..5 {
            s.insert(
                Resource::Secrets,
                "ns",
                &format!("s{i}"),
                json!({"metadata": {}}),
            )
            .expect("new name");
        }
        assert_eq!(s.rv(), 5);
        assert!(s.changes_since(1).is_err());
        let kept = s.changes_since(2).expect("in history");
        assert_eq!(kept.iter().map(|c| c.rv).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert!(s.changes_since(5).expect("current").is_empty());
        assert!(
            s.insert(Resource::Secrets, "ns", "s0", json!({"metadata": {}}))
                .is_err()
        );
        let gone = s.remove(Resource::Secrets, "ns", "s0").expect("exists");
        assert_eq!(gone["metadata"]["resourceVersion"], "6");
        assert_eq!(s.list(Resource::Secrets, Some("ns")).count(), 4);
        assert_eq!(s.list(Resource::Pods, None).count(), 0);
    }
}
