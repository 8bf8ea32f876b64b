//! Wake-ups for long-polls without polling timers: a held request registers a waiter under a
//! key (an org for acquire, a runner for heartbeat, a job for log follow); whoever changes the
//! store wakes the waiters of that key. Each waiter has its own `Notify`, and `notify_one`
//! keeps a permit when the waiter is between its store check and its `.await`, so no wake-up
//! is lost. The registry's mutex is a std one, never held across an `.await`.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

/// Waiters grouped by key, each with a payload the waker can filter on.
pub(crate) struct Waitlist<K, P> {
    inner: Mutex<Inner<K, P>>,
}

struct Inner<K, P> {
    next_id: u64,
    len: usize,
    by_key: HashMap<K, Vec<Entry<P>>>,
}

struct Entry<P> {
    id: u64,
    payload: P,
    notify: Arc<Notify>,
}

impl<K: Eq + Hash + Clone, P> Waitlist<K, P> {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner {
                next_id: 0,
                len: 0,
                by_key: HashMap::new(),
            }),
        })
    }

    /// Registers a waiter; it stays registered until the returned guard is dropped.
    pub(crate) fn register(self: &Arc<Self>, key: K, payload: P) -> Waiter<K, P> {
        let notify = Arc::new(Notify::new());
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let id = inner.next_id;
        inner.next_id += 1;
        inner.len += 1;
        inner.by_key.entry(key.clone()).or_default().push(Entry {
            id,
            payload,
            notify: Arc::clone(&notify),
        });
        Waiter {
            list: Arc::clone(self),
            key,
            id,
            notify,
        }
    }

    /// Wakes every waiter of `key` whose payload passes `filter`.
    pub(crate) fn wake(&self, key: &K, filter: impl Fn(&P) -> bool) {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entries) = inner.by_key.get(key) {
            for entry in entries.iter().filter(|e| filter(&e.payload)) {
                entry.notify.notify_one();
            }
        }
    }

    /// Wakes every waiter of every key (shutdown).
    pub(crate) fn wake_all(&self) {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        for entry in inner.by_key.values().flatten() {
            entry.notify.notify_one();
        }
    }

    /// How many waiters are registered.
    pub(crate) fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len
    }

    fn remove(&self, key: &K, id: u64) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(entries) = inner.by_key.get_mut(key) else {
            return;
        };
        let before = entries.len();
        entries.retain(|e| e.id != id);
        let removed = before - entries.len();
        if entries.is_empty() {
            inner.by_key.remove(key);
        }
        inner.len -= removed;
    }
}

/// A registered waiter; dropping it unregisters.
pub(crate) struct Waiter<K: Eq + Hash + Clone, P> {
    list: Arc<Waitlist<K, P>>,
    key: K,
    id: u64,
    notify: Arc<Notify>,
}

impl<K: Eq + Hash + Clone, P> Waiter<K, P> {
    /// Resolves on the next wake-up (at once if one arrived since the last).
    pub(crate) async fn woken(&self) {
        self.notify.notified().await;
    }
}

impl<K: Eq + Hash + Clone, P> Drop for Waiter<K, P> {
    fn drop(&mut self) {
        self.list.remove(&self.key, self.id);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_wake_before_the_await_is_kept() {
        let list = Waitlist::<u32, ()>::new();
        let waiter = list.register(1, ());
        list.wake(&1, |_| true);
        tokio::time::timeout(Duration::from_secs(5), waiter.woken())
            .await
            .expect("kept permit");
    }

    #[tokio::test]
    async fn filter_and_key_select_the_waiters() {
        let list = Waitlist::<u32, bool>::new();
        let yes = list.register(1, true);
        let no = list.register(1, false);
        let other = list.register(2, true);
        assert_eq!(list.len(), 3);
        list.wake(&1, |p| *p);
        tokio::time::timeout(Duration::from_secs(5), yes.woken())
            .await
            .expect("woken");
        let pending = |w: &Waiter<u32, bool>| {
            let fut = w.woken();
            futures_util::FutureExt::now_or_never(Box::pin(fut)).is_none()
        };
        assert!(pending(&no));
        assert!(pending(&other));
        drop((yes, no));
        assert_eq!(list.len(), 1);
        drop(other);
        assert_eq!(list.len(), 0);
    }
}
