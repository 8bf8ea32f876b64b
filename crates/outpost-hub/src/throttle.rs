//! Throttling of wrong credentials: failed authentications counted per source address and per
//! key prefix (the first characters of the presented secret), each in a token bucket. Past a
//! burst, a wrong credential from that address or with that prefix is answered `429
//! rate_limited` with `Retry-After` instead of `401`, and each burst is logged once.
//!
//! A right credential always passes, throttled address or not: many runners of an organization
//! often share one address (a NAT, a proxy), and one of them with a stale token must not lock the
//! others out, nor can anyone lock out a key by sending wrong ones with its prefix. (The secrets
//! the hub makes have 256 random bits, so guessing is hopeless anyway; the throttle tells clients
//! that keep presenting wrong ones to back off, and keeps the log to one line per burst.)

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Failures allowed in a burst, per address and per prefix.
pub(crate) const BURST: f64 = 10.0;
/// One more failure allowed every this long.
pub(crate) const REFILL: Duration = Duration::from_secs(6);
/// How many characters of a presented secret make its prefix (`opk_` and 8 hex digits).
pub(crate) const PREFIX_CHARS: usize = 12;
/// Buckets kept per kind before those that have refilled are forgotten.
const MAX_TRACKED: usize = 10_000;

/// The failed authentications of the hub.
pub(crate) struct AuthThrottle {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_addr: HashMap<IpAddr, Bucket>,
    by_prefix: HashMap<String, Bucket>,
}

/// Failures allowed now, refilling over time.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
    /// This burst was logged.
    said: bool,
}

impl Bucket {
    fn full(now: Instant) -> Bucket {
        Bucket {
            tokens: BURST,
            at: now,
            said: false,
        }
    }

    fn refill(&mut self, now: Instant) {
        let gained = now.saturating_duration_since(self.at).as_secs_f64() / REFILL.as_secs_f64();
        self.tokens = (self.tokens + gained).min(BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.said = false;
        }
    }

    /// How long until one more failure is allowed; `None` when one is allowed now.
    fn wait(&self) -> Option<Duration> {
        (self.tokens < 1.0).then(|| REFILL.mul_f64(1.0 - self.tokens))
    }
}

/// Who a credential came from: a source address (when known) and the secret's prefix.
#[derive(Debug, Clone)]
pub(crate) struct Presenter {
    pub addr: Option<IpAddr>,
    pub prefix: String,
}

impl Presenter {
    pub(crate) fn new(addr: Option<IpAddr>, secret: &str) -> Presenter {
        Presenter {
            addr,
            prefix: secret.chars().take(PREFIX_CHARS).collect(),
        }
    }
}

impl AuthThrottle {
    pub(crate) fn new() -> AuthThrottle {
        AuthThrottle {
            inner: Mutex::new(Inner::default()),
        }
    }

    /// `who` presented a wrong credential: `Some(retry_after)` when this is past the burst
    /// allowed for its address or its prefix (answer `429`), `None` for a plain `401`. The first
    /// `429` of a burst is logged.
    pub(crate) fn failed(&self, who: &Presenter) -> Option<Duration> {
        self.failed_at(who, Instant::now())
    }

    fn failed_at(&self, who: &Presenter, now: Instant) -> Option<Duration> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let by_addr = who.addr.and_then(|addr| {
            let (wait, first) = spend(&mut inner.by_addr, addr, now)?;
            if first {
                tracing::warn!(source = %addr, retry_after = ?wait, "wrong credentials: throttling this address ({BURST} failures, then one every {REFILL:?})");
            }
            Some(wait)
        });
        let by_prefix = spend(&mut inner.by_prefix, who.prefix.clone(), now).map(|(wait, first)| {
            if first {
                tracing::warn!(prefix = ?who.prefix, retry_after = ?wait, "wrong credentials: throttling this key prefix ({BURST} failures, then one every {REFILL:?})");
            }
            wait
        });
        by_addr.max(by_prefix)
    }
}

/// One more failure for `key`: taken from its bucket while it has one to give (`None`); past
/// the burst, how long until the next is allowed, and whether this is the burst's first.
fn spend<K: Eq + Hash + Clone>(
    buckets: &mut HashMap<K, Bucket>,
    key: K,
    now: Instant,
) -> Option<(Duration, bool)> {
    if buckets.len() >= MAX_TRACKED && !buckets.contains_key(&key) {
        buckets.retain(|_, b| {
            b.refill(now);
            b.tokens < BURST
        });
        if buckets.len() >= MAX_TRACKED {
            // Every one of them is failing: forget them rather than grow without bound.
            buckets.clear();
        }
    }
    let bucket = buckets.entry(key).or_insert_with(|| Bucket::full(now));
    bucket.refill(now);
    if bucket.tokens >= 1.0 {
        bucket.tokens -= 1.0;
        return None;
    }
    let wait = bucket.wait()?;
    let first = !std::mem::replace(&mut bucket.said, true);
    Some((wait, first))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_a_burst_wrong_credentials_wait_then_refill() {
        let throttle = AuthThrottle::new();
        let t0 = Instant::now();
        let who = Presenter::new(Some([10, 0, 0, 1].into()), "opk_0123abcd-and-the-rest");
        assert_eq!(who.prefix, "opk_0123abcd");
        for i in 0..10 {
            assert_eq!(
                throttle.failed_at(&who, t0),
                None,
                "failure {i} is a plain 401"
            );
        }
        assert_eq!(throttle.failed_at(&who, t0), Some(REFILL), "past the burst");
        // The same prefix from another address waits too; another prefix from another address
        // does not.
        let same_prefix = Presenter::new(Some([10, 0, 0, 2].into()), "opk_0123abcd");
        assert!(throttle.failed_at(&same_prefix, t0).is_some());
        let other = Presenter::new(Some([10, 0, 0, 3].into()), "x");
        assert_eq!(throttle.failed_at(&other, t0), None);
        // One more allowed per refill period.
        let later = t0 + REFILL;
        assert_eq!(throttle.failed_at(&who, later), None);
        assert!(throttle.failed_at(&who, later).is_some());
        assert_eq!(
            throttle.failed_at(&who, later + REFILL * 20),
            None,
            "refilled"
        );
    }

    #[test]
    fn a_burst_is_said_once() {
        let mut buckets = HashMap::new();
        let t0 = Instant::now();
        let firsts: Vec<bool> = (0..30)
            .filter_map(|_| spend(&mut buckets, "k", t0))
            .map(|(_, first)| first)
            .collect();
        assert_eq!(firsts.len(), 20);
        assert_eq!(firsts.iter().filter(|f| **f).count(), 1);
        // After a refill, a new burst is said again.
        let later = t0 + REFILL * 20;
        for _ in 0..10 {
            assert!(spend(&mut buckets, "k", later).is_none());
        }
        assert_eq!(spend(&mut buckets, "k", later).map(|(_, f)| f), Some(true));
    }
}
