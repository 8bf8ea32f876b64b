//! Exponential backoff with full jitter: before retry `n` (from 0), sleep a time drawn uniformly
//! from `[0, min(max, initial × 2ⁿ)]`. Full jitter spreads the retries of many clients that
//! failed together (a hub restart) over the whole window instead of bunching them at its end.

use std::time::Duration;

use rand::Rng as _;

/// The bounds of a backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling before the first retry.
    pub initial: Duration,
    /// The largest ceiling.
    pub max: Duration,
}

impl Backoff {
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max }
    }

    /// The ceiling before retry `attempt` (0 for the first): `min(max, initial × 2^attempt)`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The sleep before retry `attempt`: uniform in `[0, ceiling(attempt)]`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let nanos = u64::try_from(self.ceiling(attempt).as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rand::rng().random_range(0..=nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_doubles_up_to_the_cap() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let check = |attempt: u32, millis: u64| {
            assert_eq!(
                b.ceiling(attempt),
                Duration::from_millis(millis),
                "{attempt}"
            );
        };
        check(0, 100);
        check(1, 200);
        check(2, 400);
        check(3, 800);
        check(4, 1000);
        check(40, 1000);
        check(u32::MAX, 1000);
    }

    #[test]
    fn delays_cover_the_whole_window() {
        let b = Backoff::new(Duration::from_millis(64), Duration::from_millis(64));
        let delays: Vec<Duration> = (0..2000).map(|_| b.delay(3)).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(64)));
        // Full jitter, not "equal jitter": the lower quarter of the window is drawn too.
        assert!(delays.iter().any(|d| *d < Duration::from_millis(16)));
        assert!(delays.iter().any(|d| *d > Duration::from_millis(48)));
        assert_eq!(
            Backoff::new(Duration::ZERO, Duration::ZERO).delay(5),
            Duration::ZERO
        );
    }
}
