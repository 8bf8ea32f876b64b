//! Throttling of wrong credentials: failed authentications counted per source address and per
//! key prefix (the first characters of the presented secret), each in a token bucket. A burst
//! beyond the allowance gets `429 rate_limited` with `Retry-After`, and while an address or a
//! prefix is throttled the hub does not check credentials from it at all (a right one
//! included), so guessing goes no faster than the refill. Each burst is logged once.

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

    /// `Err(retry_after)` when `who` is throttled: its credential is not to be checked.
    pub(crate) fn check(&self, who: &Presenter) -> Result<(), Duration> {
        self.check_at(who, Instant::now())
    }

    /// `who` presented a wrong credential. Logs when this starts a throttled burst.
    pub(crate) fn failed(&self, who: &Presenter) {
        self.failed_at(who, Instant::now());
    }

    fn check_at(&self, who: &Presenter, now: Instant) -> Result<(), Duration> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let by_addr = who
            .addr
            .and_then(|addr| waiting(&mut inner.by_addr, &addr, now));
        let by_prefix = waiting(&mut inner.by_prefix, &who.prefix, now);
        match by_addr.max(by_prefix) {
            Some(wait) => Err(wait),
            None => Ok(()),
        }
    }

    fn failed_at(&self, who: &Presenter, now: Instant) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(addr) = who.addr
            && let Some(wait) = spend(&mut inner.by_addr, addr, now)
        {
            tracing::warn!(source = %addr, retry_after = ?wait, "wrong credentials: throttling this address ({BURST} failures, then one every {REFILL:?})");
        }
        if let Some(wait) = spend(&mut inner.by_prefix, who.prefix.clone(), now) {
            tracing::warn!(prefix = ?who.prefix, retry_after = ?wait, "wrong credentials: throttling this key prefix ({BURST} failures, then one every {REFILL:?})");
        }
    }
}

/// How long `key` must wait, refilling its bucket first.
fn waiting<K: Eq + Hash>(
    buckets: &mut HashMap<K, Bucket>,
    key: &K,
    now: Instant,
) -> Option<Duration> {
    let bucket = buckets.get_mut(key)?;
    bucket.refill(now);
    bucket.wait()
}

/// Takes one failure from `key`'s bucket; answers the wait when this begins a burst to log.
fn spend<K: Eq + Hash + Clone>(
    buckets: &mut HashMap<K, Bucket>,
    key: K,
    now: Instant,
) -> Option<Duration> {
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
    bucket.tokens = (bucket.tokens - 1.0).max(0.0);
    let wait = bucket.wait()?;
    if bucket.said {
        return None;
    }
    bucket.said = true;
    Some(wait)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_throttled_then_refills() {
        let throttle = AuthThrottle::new();
        let t0 = Instant::now();
        let who = Presenter::new(Some([10, 0, 0, 1].into()), "opk_0123abcd-and-the-rest");
        assert_eq!(who.prefix, "opk_0123abcd");
        for _ in 0..10 {
            assert!(throttle.check_at(&who, t0).is_ok());
            throttle.failed_at(&who, t0);
        }
        let wait = throttle
            .check_at(&who, t0)
            .expect_err("throttled after the burst");
        assert_eq!(wait, REFILL);
        // Another address with another prefix is not held back; the same prefix from anywhere
        // is.
        let other = Presenter::new(Some([10, 0, 0, 2].into()), "x");
        assert!(throttle.check_at(&other, t0).is_ok());
        let anywhere = Presenter::new(None, "opk_0123abcd");
        assert!(throttle.check_at(&anywhere, t0).is_err());
        let later = t0 + REFILL;
        assert!(
            throttle.check_at(&who, later).is_ok(),
            "one more after a refill period"
        );
        throttle.failed_at(&who, later);
        assert!(throttle.check_at(&who, later).is_err());
        assert!(
            throttle.check_at(&who, later + REFILL * 20).is_ok(),
            "refilled"
        );
    }
}
