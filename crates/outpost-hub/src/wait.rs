//! Wake-ups for long-polls without polling timers. A held heartbeat or log follow registers in a
//! [`Waitlist`] under a key (a runner, a job), and whoever changes the store wakes the waiters of
//! that key. A held acquire registers in [`Acquirers`], by organization and label set, and each
//! job entering the queue wakes one acquire that can take it, not all of them (no herd).
//!
//! Each waiter has its own `Notify`, and `notify_one` keeps a permit when the waiter is between
//! its store check and its `.await`, so no wake-up is lost. The registries' mutexes are std
//! ones, never held across an `.await`.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::metrics::counter::Counter;
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

/// The held acquires, by organization and label set, oldest first within each set.
///
/// A job entering the queue is a wake-up token for one acquire that can take it
/// ([`Acquirers::wake_one`]): the oldest of the org's waiters whose labels include the job's
/// leaves the registry with the token. What it does with the token keeps the invariant that no
/// job stays queued while an acquire that can take it is held:
///
/// - it claims the token's job: the token is spent ([`AcquireWaiter::spend`]);
/// - it claims another job (an older one it can also take, whose own token is elsewhere), or it
///   claimed on its own first look while the token came: it keeps the token, and hands it on
///   when dropped, since the token's job may still be queued;
/// - its claim, made after it saw the token, finds nothing: no job it can take is queued, so not
///   the token's job either; it drops the token and registers again
///   ([`AcquireWaiter::rearm`], in its old place), then looks once more;
/// - it leaves without claiming (its wait is up, the hub stops, the client went away, even in the
///   middle of its claim): the token is still its, and is handed on when it is dropped.
///
/// The token stays in the waiter until spent or dropped, so no path loses it.
///
/// A job queued while no registered waiter can take it has no token: every acquire looks at
/// the queue once after registering, so a later one finds it.
pub(crate) struct Acquirers {
    inner: Mutex<AcquireInner>,
    /// Counts every wake-up sent (`outpost_hub_acquire_wakeups_total`).
    wakeups: Counter,
}

struct AcquireInner {
    next_id: u64,
    /// Acquires held, registered or holding a token.
    held: usize,
    /// Registered waiters: by org, by label set (sorted, deduplicated), by id (oldest first).
    orgs: HashMap<i64, LabelSets>,
}

/// An org's registered waiters: by label set, then by id (oldest first).
type LabelSets = HashMap<Vec<String>, BTreeMap<u64, Arc<Token>>>;

/// A waiter's side of a wake-up: the job it was woken for.
#[derive(Default)]
struct Token {
    job: Mutex<Option<Wake>>,
    notify: Notify,
}

/// The job a wake-up is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Wake {
    pub job_id: String,
    pub labels: Vec<String>,
}

impl Token {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Wake>> {
        self.job.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Acquirers {
    /// A registry counting its wake-ups in `wakeups`.
    pub(crate) fn new(wakeups: Counter) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(AcquireInner {
                next_id: 0,
                held: 0,
                orgs: HashMap::new(),
            }),
            wakeups,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AcquireInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers an acquire of `org` by a runner with `labels`.
    pub(crate) fn register(self: &Arc<Self>, org: i64, labels: &[String]) -> AcquireWaiter {
        let mut labels = labels.to_vec();
        labels.sort();
        labels.dedup();
        let token = Arc::new(Token::default());
        let mut inner = self.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        inner.held += 1;
        inner
            .orgs
            .entry(org)
            .or_default()
            .entry(labels.clone())
            .or_default()
            .insert(id, Arc::clone(&token));
        AcquireWaiter {
            list: Arc::clone(self),
            org,
            labels,
            id,
            token,
        }
    }

    /// A job of `org` entered the queue: wakes the oldest waiter that can take it. Answers
    /// whether there was one.
    pub(crate) fn wake_one(&self, org: i64, wake: Wake) -> bool {
        let woken = self.lock().wake_one(org, wake);
        if woken {
            self.wakeups.inc();
        }
        woken
    }

    /// How many acquires are held.
    pub(crate) fn len(&self) -> usize {
        self.lock().held
    }
}

impl AcquireInner {
    fn wake_one(&mut self, org: i64, wake: Wake) -> bool {
        let Some(sets) = self.orgs.get_mut(&org) else {
            return false;
        };
        let oldest = sets
            .iter()
            .filter(|(labels, _)| crate::store::labels_match(&wake.labels, labels))
            .filter_map(|(labels, waiters)| waiters.keys().next().map(|id| (*id, labels.clone())))
            .min();
        let Some((id, labels)) = oldest else {
            return false;
        };
        let Some(waiters) = sets.get_mut(&labels) else {
            return false;
        };
        let Some(token) = waiters.remove(&id) else {
            return false;
        };
        if waiters.is_empty() {
            sets.remove(&labels);
            if sets.is_empty() {
                self.orgs.remove(&org);
            }
        }
        *token.lock() = Some(wake);
        token.notify.notify_one();
        true
    }
}

/// A held acquire; dropping it unregisters, or hands on the wake-up it holds.
pub(crate) struct AcquireWaiter {
    list: Arc<Acquirers>,
    org: i64,
    labels: Vec<String>,
    id: u64,
    token: Arc<Token>,
}

impl AcquireWaiter {
    /// Resolves on the next wake-up (at once if one arrived since the last).
    pub(crate) async fn woken(&self) {
        self.token.notify.notified().await;
    }

    /// The job this waiter was woken for, if it was (it has left the registry then). The
    /// wake-up stays with the waiter.
    pub(crate) fn woken_for(&self) -> Option<String> {
        self.token.lock().as_ref().map(|wake| wake.job_id.clone())
    }

    /// The waiter claimed `job_id`: a wake-up for that job is spent. One for another job stays,
    /// to be handed on when the waiter is dropped.
    pub(crate) fn spend(&self, job_id: &str) {
        let mut token = self.token.lock();
        if token.as_ref().is_some_and(|wake| wake.job_id == job_id) {
            *token = None;
        }
    }

    /// The waiter's claim, made after it was woken, found nothing: it drops the wake-up and
    /// registers again, in its old place.
    pub(crate) fn rearm(&self) {
        *self.token.lock() = None;
        let mut inner = self.list.lock();
        inner
            .orgs
            .entry(self.org)
            .or_default()
            .entry(self.labels.clone())
            .or_default()
            .insert(self.id, Arc::clone(&self.token));
    }
}

impl Drop for AcquireWaiter {
    fn drop(&mut self) {
        let mut inner = self.list.lock();
        inner.held -= 1;
        let registered = inner
            .orgs
            .get_mut(&self.org)
            .and_then(|sets| sets.get_mut(&self.labels))
            .is_some_and(|waiters| waiters.remove(&self.id).is_some());
        if registered {
            let sets = inner.orgs.get_mut(&self.org);
            if let Some(sets) = sets {
                if sets.get(&self.labels).is_some_and(BTreeMap::is_empty) {
                    sets.remove(&self.labels);
                }
                if sets.is_empty() {
                    inner.orgs.remove(&self.org);
                }
            }
            return;
        }
        // Woken: a wake-up not spent on a claim goes to the next waiter that can use it.
        let unspent = self.token.lock().take();
        if let Some(wake) = unspent
            && inner.wake_one(self.org, wake)
        {
            self.list.wakeups.inc();
        }
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

    fn labels(l: &[&str]) -> Vec<String> {
        l.iter().map(|s| (*s).to_owned()).collect()
    }

    fn job(id: &str, l: &[&str]) -> Wake {
        Wake {
            job_id: id.to_owned(),
            labels: labels(l),
        }
    }

    fn pending(w: &AcquireWaiter) -> bool {
        futures_util::FutureExt::now_or_never(Box::pin(w.woken())).is_none()
    }

    #[tokio::test]
    async fn a_job_wakes_the_oldest_waiter_that_can_take_it_and_only_that_one() {
        let list = Acquirers::new(Counter::default());
        let plain = list.register(1, &labels(&["linux"]));
        let gpu = list.register(1, &labels(&["gpu", "linux"]));
        let other_org = list.register(2, &labels(&["gpu", "linux"]));
        let younger = list.register(1, &labels(&["linux"]));
        assert_eq!(list.len(), 4);

        assert!(list.wake_one(1, job("j1", &["gpu"])));
        assert!(!pending(&gpu), "the one waiter with the label");
        assert_eq!(gpu.woken_for().as_deref(), Some("j1"));
        gpu.spend("j1");
        assert!(pending(&plain) && pending(&other_org) && pending(&younger));
        assert!(
            !list.wake_one(1, job("j2", &["gpu"])),
            "the gpu waiter left the registry"
        );

        assert!(list.wake_one(1, job("j3", &[])));
        assert!(!pending(&plain), "the oldest of those that can take it");
        assert!(pending(&younger));
        assert_eq!(list.len(), 4, "woken acquires are still held");
        drop((gpu, other_org));
        assert_eq!(list.len(), 2);
    }

    #[tokio::test]
    async fn a_wake_up_not_spent_on_a_claim_is_handed_on() {
        let list = Acquirers::new(Counter::default());
        let first = list.register(1, &labels(&[]));
        let second = list.register(1, &labels(&[]));
        assert!(list.wake_one(1, job("j1", &[])));
        // `first` leaves with its wake-up unspent (its wait ran out as the job came).
        drop(first);
        assert!(!pending(&second), "the wake-up went on to the next waiter");
        assert_eq!(second.woken_for().as_deref(), Some("j1"));
        second.spend("j1");
        drop(second);
        assert_eq!(list.len(), 0);
        assert!(!list.wake_one(1, job("j2", &[])), "nobody is left");
    }

    #[tokio::test]
    async fn a_waiter_whose_claim_found_nothing_waits_again_in_its_place() {
        let list = Acquirers::new(Counter::default());
        let old = list.register(1, &labels(&[]));
        let young = list.register(1, &labels(&[]));
        assert!(list.wake_one(1, job("j1", &[])));
        assert!(old.woken_for().is_some());
        old.rearm();
        assert!(list.wake_one(1, job("j2", &[])));
        assert_eq!(
            old.woken_for().as_deref(),
            Some("j2"),
            "back in its place: still the oldest"
        );
        assert!(young.woken_for().is_none());
        // Spent (it claimed that job): dropping hands nothing on.
        old.spend("j2");
        drop(old);
        assert!(pending(&young));
    }

    /// The case a "spent on any claim" rule gets wrong: `w` is woken for `j` but claims the
    /// older `jx` (its labels take both), whose own token went to `v`, which cannot take `j`.
    /// `w` hands `j`'s token on to `u`, parked and able to take it.
    #[tokio::test]
    async fn a_wake_up_for_one_job_spent_on_another_is_handed_on() {
        let list = Acquirers::new(Counter::default());
        let v = list.register(1, &labels(&["a"]));
        let w = list.register(1, &labels(&["a", "b"]));
        let u = list.register(1, &labels(&["a", "b"]));
        assert!(list.wake_one(1, job("jx", &["a"])));
        assert!(list.wake_one(1, job("j", &["b"])));
        assert_eq!(v.woken_for().as_deref(), Some("jx"));
        assert_eq!(w.woken_for().as_deref(), Some("j"));
        assert!(pending(&u));
        // w's claim took jx: not its token's job, which it hands on.
        w.spend("jx");
        drop(w);
        assert_eq!(u.woken_for().as_deref(), Some("j"));
    }

    /// The acquire handler's steps against a model queue, interleaved at random with enqueues
    /// and departures: whenever every wake-up has been acted on, no registered waiter is parked
    /// while a job it can take is queued.
    #[test]
    fn no_job_waits_while_a_waiter_that_can_take_it_is_parked() {
        use rand::{Rng, SeedableRng};

        #[derive(PartialEq)]
        enum Step {
            Look,
            Claim(Option<String>),
            Parked,
        }
        struct Sim {
            waiter: AcquireWaiter,
            labels: Vec<String>,
            step: Step,
        }
        let sets: [&[&str]; 4] = [&[], &["a"], &["b"], &["a", "b"]];
        for seed in 0..2000 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let list = Acquirers::new(Counter::default());
            let mut queue: Vec<(String, Vec<String>)> = Vec::new();
            let mut sims: Vec<Sim> = Vec::new();
            let mut next_job = 0;
            // The store's claim: the oldest queued job the labels take.
            let claim = |queue: &mut Vec<(String, Vec<String>)>, labels: &[String]| {
                let at = queue
                    .iter()
                    .position(|(_, job)| crate::store::labels_match(job, labels))?;
                Some(queue.remove(at).0)
            };
            // The waiters come first; then only jobs (fewer than waiters, so that some stay
            // parked to check), and no fresh acquire's first look rescues a job that a lost
            // wake-up left queued.
            for _ in 0..8 {
                let l = labels(sets[rng.random_range(0..sets.len())]);
                sims.push(Sim {
                    waiter: list.register(1, &l),
                    labels: l,
                    step: Step::Look,
                });
            }
            for _ in 0..200 {
                match rng.random_range(0..10) {
                    0..=2 if next_job < 5 => {
                        let id = format!("j{next_job}");
                        next_job += 1;
                        let l = labels(sets[rng.random_range(0..sets.len())]);
                        queue.push((id.clone(), l.clone()));
                        list.wake_one(
                            1,
                            Wake {
                                job_id: id,
                                labels: l,
                            },
                        );
                    }
                    3 if !sims.is_empty() && rng.random_range(0..8) == 0 => {
                        // An acquire whose wait ran out, or whose client went away.
                        let at = rng.random_range(0..sims.len());
                        drop(sims.swap_remove(at));
                    }
                    _ if !sims.is_empty() => {
                        let at = rng.random_range(0..sims.len());
                        let sim = &mut sims[at];
                        match std::mem::replace(&mut sim.step, Step::Parked) {
                            Step::Look => sim.step = Step::Claim(sim.waiter.woken_for()),
                            Step::Claim(woken) => match claim(&mut queue, &sim.labels) {
                                Some(job) => {
                                    sim.waiter.spend(&job);
                                    drop(sims.swap_remove(at));
                                }
                                None if woken.is_some() => {
                                    sim.waiter.rearm();
                                    sim.step = Step::Look;
                                }
                                None => sim.step = Step::Parked,
                            },
                            Step::Parked if !pending(&sim.waiter) => sim.step = Step::Look,
                            Step::Parked => {}
                        }
                    }
                    _ => {}
                }
            }
            // Let every woken or looking waiter finish what it does.
            loop {
                let busy: Vec<usize> = (0..sims.len())
                    .filter(|&i| {
                        sims[i].step != Step::Parked || sims[i].waiter.token.lock().is_some()
                    })
                    .collect();
                if busy.is_empty() {
                    break;
                }
                let at = busy[rng.random_range(0..busy.len())];
                let sim = &mut sims[at];
                match std::mem::replace(&mut sim.step, Step::Parked) {
                    Step::Parked | Step::Look => sim.step = Step::Claim(sim.waiter.woken_for()),
                    Step::Claim(woken) => match claim(&mut queue, &sim.labels) {
                        Some(job) => {
                            sim.waiter.spend(&job);
                            drop(sims.swap_remove(at));
                        }
                        None if woken.is_some() => {
                            sim.waiter.rearm();
                            sim.step = Step::Look;
                        }
                        None => sim.step = Step::Parked,
                    },
                }
            }
            for sim in &sims {
                let stuck = queue
                    .iter()
                    .find(|(_, job)| crate::store::labels_match(job, &sim.labels));
                assert!(
                    stuck.is_none(),
                    "seed {seed}: job {stuck:?} is queued while a waiter with {:?} is parked",
                    sim.labels
                );
            }
        }
    }
}
