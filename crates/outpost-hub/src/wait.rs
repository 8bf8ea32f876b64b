//! Wake-ups for long-polls without polling timers. A held heartbeat or log follow registers in a
//! [`Waitlist`] under a key (a runner, a job), and whoever changes the store wakes the waiters of
//! that key. A held acquire registers in [`Acquirers`], by organization and label set, and each
//! job entering the queue wakes one acquire that can take it, not all of them (no herd).
//!
//! Each waiter has its own `Notify`, and `notify_one` keeps a permit when the waiter is between
//! its store check and its `.await`, so no wake-up is lost. The registries' mutexes are std
//! ones, never held across an `.await`.

use std::collections::{BTreeMap, HashMap, HashSet};
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

/// The held acquires, by organization and label set, oldest first within each set, and the
/// jobs they were woken for.
///
/// A job entering the queue is a wake-up for one acquire that can take it
/// ([`Acquirers::wake_one`]): the oldest of the org's registered waiters whose labels include the
/// job's leaves the registry with it, and the job is **reserved** for that waiter: its claim asks
/// for that very job, and every other claim skips reserved jobs, so a waiter that looks at the
/// queue on its own never takes a job another was woken for (and no wake-up is wasted on a job
/// that went elsewhere). After its claim ([`AcquireWaiter::after_claim`]):
///
/// - woken, it took a job: done (its reserved job, or, if that one was gone, say cancelled, another
///   one; the wake-up is used up either way);
/// - woken, its claim found nothing: the reserved job is gone and no other job it can take is
///   free; it registers again, in its old place, and looks once more (a job queued while it was
///   out of the registry is free for it);
/// - unwoken, it took a job on its own: done; a wake-up that came during the claim for another
///   job is handed on when the waiter is dropped;
/// - unwoken, its claim found nothing: it waits.
///
/// A waiter that leaves holding a wake-up (its wait is up, the hub stops, the client went away,
/// even in the middle of its claim) hands it on to the next registered waiter that can take the
/// job; the reservation goes with it, or ends when there is none. A job with no reservation (none
/// of the registered waiters could take it when it came) is free: every acquire looks at the
/// queue after registering, and a woken one whose claim found nothing looks again, so one that
/// can take it finds it. No job stays queued while a registered waiter that can take it waits.
pub(crate) struct Acquirers {
    inner: Mutex<AcquireInner>,
    /// Counts every wake-up sent (`outpost_hub_acquire_wakeups_total`).
    wakeups: Counter,
}

struct AcquireInner {
    next_id: u64,
    /// Acquires held, registered or holding a wake-up.
    held: usize,
    /// Registered waiters: by org, by label set (sorted, deduplicated), by id (oldest first).
    orgs: HashMap<i64, LabelSets>,
    /// Jobs with a wake-up out, by org.
    reserved: HashMap<i64, HashSet<String>>,
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

/// What a held acquire does after a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterClaim {
    /// It took a job: answer with it.
    Done,
    /// Look at the queue again at once.
    LookAgain,
    /// Wait for a wake-up (or the end of the wait).
    Wait,
}

impl Acquirers {
    /// A registry counting its wake-ups in `wakeups`.
    pub(crate) fn new(wakeups: Counter) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(AcquireInner {
                next_id: 0,
                held: 0,
                orgs: HashMap::new(),
                reserved: HashMap::new(),
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
        inner.enlist(org, &labels, id, &token);
        AcquireWaiter {
            list: Arc::clone(self),
            org,
            labels,
            id,
            token,
        }
    }

    /// A job of `org` entered the queue: wakes the oldest waiter that can take it and reserves
    /// the job for it. Answers whether there was one.
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
    fn enlist(&mut self, org: i64, labels: &[String], id: u64, token: &Arc<Token>) {
        self.orgs
            .entry(org)
            .or_default()
            .entry(labels.to_vec())
            .or_default()
            .insert(id, Arc::clone(token));
    }

    /// Takes waiter `id` out of the registry; whether it was in it.
    fn delist(&mut self, org: i64, labels: &[String], id: u64) -> bool {
        let Some(sets) = self.orgs.get_mut(&org) else {
            return false;
        };
        let Some(waiters) = sets.get_mut(labels) else {
            return false;
        };
        let found = waiters.remove(&id).is_some();
        if waiters.is_empty() {
            sets.remove(labels);
            if sets.is_empty() {
                self.orgs.remove(&org);
            }
        }
        found
    }

    fn unreserve(&mut self, org: i64, job_id: &str) {
        if let Some(jobs) = self.reserved.get_mut(&org) {
            jobs.remove(job_id);
            if jobs.is_empty() {
                self.reserved.remove(&org);
            }
        }
    }

    fn wake_one(&mut self, org: i64, wake: Wake) -> bool {
        let Some(sets) = self.orgs.get(&org) else {
            return false;
        };
        let oldest = sets
            .iter()
            .filter(|(labels, _)| crate::store::labels_match(&wake.labels, labels))
            .filter_map(|(labels, waiters)| {
                let (id, token) = waiters.iter().next()?;
                Some((*id, labels.clone(), Arc::clone(token)))
            })
            .min_by_key(|(id, _, _)| *id);
        let Some((id, labels, token)) = oldest else {
            return false;
        };
        self.delist(org, &labels, id);
        self.reserved
            .entry(org)
            .or_default()
            .insert(wake.job_id.clone());
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

    /// The job this waiter was woken for, if it was (it has left the registry then): the job
    /// its claim asks for. The wake-up stays with the waiter until [`AcquireWaiter::after_claim`].
    pub(crate) fn woken_for(&self) -> Option<String> {
        self.token.lock().as_ref().map(|wake| wake.job_id.clone())
    }

    /// The jobs of the org reserved for woken waiters: a claim other than for its own wake-up
    /// skips them.
    pub(crate) fn reserved(&self) -> Vec<String> {
        self.list
            .lock()
            .reserved
            .get(&self.org)
            .map(|jobs| jobs.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// After a claim that was made woken for `woken` (from [`AcquireWaiter::woken_for`] before
    /// it) and took `claimed`: what to do next (see [`Acquirers`]).
    pub(crate) fn after_claim(&self, woken: Option<&str>, claimed: Option<&str>) -> AfterClaim {
        let mut inner = self.list.lock();
        let mut token = self.token.lock();
        if let Some(woken) = woken {
            // Out of the registry since the wake-up, so no other came: it is used up.
            *token = None;
            inner.unreserve(self.org, woken);
            if claimed.is_some() {
                return AfterClaim::Done;
            }
            inner.enlist(self.org, &self.labels, self.id, &self.token);
            return AfterClaim::LookAgain;
        }
        let Some(claimed) = claimed else {
            // A wake-up that came during the claim wakes the wait at once.
            return AfterClaim::Wait;
        };
        if token.as_ref().is_some_and(|wake| wake.job_id == claimed) {
            // Woken for the very job it took on its own meanwhile.
            *token = None;
            inner.unreserve(self.org, claimed);
        }
        AfterClaim::Done
    }
}

impl Drop for AcquireWaiter {
    fn drop(&mut self) {
        let mut inner = self.list.lock();
        inner.held -= 1;
        if inner.delist(self.org, &self.labels, self.id) {
            return;
        }
        // Woken: a wake-up it did not use goes to the next waiter that can, with the job's
        // reservation; with none left, the job is free for the next acquire's look.
        let unused = self.token.lock().take();
        if let Some(wake) = unused {
            let job_id = wake.job_id.clone();
            if inner.wake_one(self.org, wake) {
                self.list.wakeups.inc();
            } else {
                inner.unreserve(self.org, &job_id);
            }
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
        assert_eq!(plain.reserved(), ["j1"], "reserved for the gpu waiter");
        assert!(other_org.reserved().is_empty(), "reservations are per org");
        assert!(pending(&plain) && pending(&other_org) && pending(&younger));
        assert!(
            !list.wake_one(1, job("j2", &["gpu"])),
            "the gpu waiter left the registry"
        );
        assert_eq!(gpu.after_claim(Some("j1"), Some("j1")), AfterClaim::Done);
        assert!(plain.reserved().is_empty());

        assert!(list.wake_one(1, job("j3", &[])));
        assert!(!pending(&plain), "the oldest of those that can take it");
        assert!(pending(&younger));
        assert_eq!(list.len(), 4, "woken acquires are still held");
        drop((gpu, other_org));
        assert_eq!(list.len(), 2);
    }

    #[tokio::test]
    async fn a_wake_up_left_unused_is_handed_on_with_its_reservation() {
        let list = Acquirers::new(Counter::default());
        let first = list.register(1, &labels(&[]));
        let second = list.register(1, &labels(&[]));
        assert!(list.wake_one(1, job("j1", &[])));
        // `first` leaves with the wake-up unused (its wait ran out as the job came).
        drop(first);
        assert!(!pending(&second), "the wake-up went on to the next waiter");
        assert_eq!(second.woken_for().as_deref(), Some("j1"));
        assert_eq!(second.reserved(), ["j1"]);
        // `second` goes too, mid-claim: nobody is left, the job is free.
        drop(second);
        assert_eq!(list.len(), 0);
        let late = list.register(1, &labels(&[]));
        assert!(
            late.reserved().is_empty(),
            "free for the next acquire's own look"
        );
    }

    #[tokio::test]
    async fn a_woken_waiter_whose_claim_found_nothing_looks_again_from_its_place() {
        let list = Acquirers::new(Counter::default());
        let old = list.register(1, &labels(&[]));
        let young = list.register(1, &labels(&[]));
        assert!(list.wake_one(1, job("j1", &[])));
        // j1 was cancelled before the claim.
        assert_eq!(old.after_claim(Some("j1"), None), AfterClaim::LookAgain);
        assert!(old.reserved().is_empty());
        assert!(list.wake_one(1, job("j2", &[])));
        assert_eq!(
            old.woken_for().as_deref(),
            Some("j2"),
            "back in its place: still the oldest"
        );
        assert!(young.woken_for().is_none());
    }

    #[tokio::test]
    async fn a_wake_up_that_came_during_a_claim_of_another_job_is_handed_on() {
        let list = Acquirers::new(Counter::default());
        let looking = list.register(1, &labels(&[]));
        let parked = list.register(1, &labels(&[]));
        // `looking` claims j0 on its own look while j1 comes and wakes it.
        assert!(list.wake_one(1, job("j1", &[])));
        assert_eq!(looking.after_claim(None, Some("j0")), AfterClaim::Done);
        drop(looking);
        assert_eq!(parked.woken_for().as_deref(), Some("j1"));
        assert_eq!(parked.reserved(), ["j1"]);
        // And one that came for the very job it took is used up.
        let taker = list.register(1, &labels(&[]));
        assert!(list.wake_one(1, job("j2", &[])));
        assert_eq!(taker.after_claim(None, Some("j2")), AfterClaim::Done);
        drop(taker);
        assert_eq!(parked.reserved(), ["j1"]);
    }

    /// The acquire handler's steps against a model queue and store claim, interleaved at random
    /// with enqueues and departures (also in the middle of a claim): whenever every wake-up has
    /// been acted on, no registered waiter is parked while a job it can take is queued.
    #[test]
    fn no_job_waits_while_a_waiter_that_can_take_it_is_parked() {
        use rand::{Rng, SeedableRng};

        #[derive(PartialEq)]
        enum Step {
            /// About to read its wake-up and the reservations.
            Look,
            /// Claiming with what it read.
            Claim {
                woken: Option<String>,
                reserved: Vec<String>,
            },
            Parked,
        }
        struct Sim {
            waiter: AcquireWaiter,
            labels: Vec<String>,
            step: Step,
        }
        type Queue = Vec<(String, Vec<String>)>;
        // The store's claim: the job woken for if it is still queued, else the oldest queued
        // job the labels take that is not reserved.
        fn claim(
            queue: &mut Queue,
            labels: &[String],
            woken: &Option<String>,
            reserved: &[String],
        ) -> Option<String> {
            let at = queue
                .iter()
                .position(|(id, _)| Some(id) == woken.as_ref())
                .or_else(|| {
                    queue.iter().position(|(id, job)| {
                        crate::store::labels_match(job, labels) && !reserved.contains(id)
                    })
                })?;
            Some(queue.remove(at).0)
        }
        /// One step of `sims[at]` (it leaves the list when it is done).
        fn step(sims: &mut Vec<Sim>, at: usize, queue: &mut Queue) {
            let sim = &mut sims[at];
            match std::mem::replace(&mut sim.step, Step::Parked) {
                Step::Look => {
                    sim.step = Step::Claim {
                        woken: sim.waiter.woken_for(),
                        reserved: sim.waiter.reserved(),
                    }
                }
                Step::Claim { woken, reserved } => {
                    let claimed = claim(queue, &sim.labels, &woken, &reserved);
                    match sim.waiter.after_claim(woken.as_deref(), claimed.as_deref()) {
                        AfterClaim::Done => drop(sims.swap_remove(at)),
                        AfterClaim::LookAgain => sim.step = Step::Look,
                        AfterClaim::Wait => sim.step = Step::Parked,
                    }
                }
                Step::Parked if !pending(&sim.waiter) => sim.step = Step::Look,
                Step::Parked => {}
            }
        }
        let sets: [&[&str]; 4] = [&[], &["a"], &["b"], &["a", "b"]];
        for seed in 0..3000 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let list = Acquirers::new(Counter::default());
            let mut queue: Queue = Vec::new();
            let mut sims: Vec<Sim> = Vec::new();
            let mut next_job = 0;
            // The waiters come first; then only jobs (fewer than waiters, so that some stay
            // parked to check), and no fresh acquire's look rescues a job a lost wake-up left.
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
                        step(&mut sims, at, &mut queue);
                    }
                    _ => {}
                }
            }
            // Let every woken or looking waiter finish what it does, in any order.
            loop {
                let busy: Vec<usize> = (0..sims.len())
                    .filter(|&i| {
                        sims[i].step != Step::Parked || sims[i].waiter.woken_for().is_some()
                    })
                    .collect();
                if busy.is_empty() {
                    break;
                }
                let at = busy[rng.random_range(0..busy.len())];
                if sims[at].step == Step::Parked {
                    sims[at].step = Step::Look;
                }
                step(&mut sims, at, &mut queue);
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
