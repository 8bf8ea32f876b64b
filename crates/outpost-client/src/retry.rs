//! Backoff arithmetic of the retry loop: full jitter, `Retry-After`, and the policy's bounds.

use std::time::{Duration, Instant, SystemTime};

use http::HeaderMap;
use outpost_time::Backoff;

use crate::config::RetryPolicy;

/// The backoff of a policy (full jitter, `outpost_time::Backoff`).
fn backoff(policy: &RetryPolicy) -> Backoff {
    Backoff::new(policy.base_delay, policy.max_delay)
}

/// The delay a `Retry-After` header asks for: delay-seconds or an HTTP date (past dates are
/// zero). `None` when absent or unreadable.
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Where one call stands in its retry budget.
pub(crate) struct Budget<'a> {
    policy: &'a RetryPolicy,
    started: Instant,
    attempts: u32,
}

impl<'a> Budget<'a> {
    pub(crate) fn start(policy: &'a RetryPolicy) -> Self {
        Self {
            policy,
            started: Instant::now(),
            attempts: 0,
        }
    }

    /// Counts one attempt about to be made.
    pub(crate) fn attempt(&mut self) {
        self.attempts = self.attempts.saturating_add(1);
    }

    /// The sleep before the next attempt, or `None` when the policy says stop. `asked` is the
    /// hub's `Retry-After`, which replaces the jittered backoff.
    pub(crate) fn next_delay(&self, asked: Option<Duration>) -> Option<Duration> {
        let policy = self.policy;
        if policy.max_attempts != 0 && self.attempts >= policy.max_attempts {
            return None;
        }
        let delay = match asked {
            Some(asked) => asked,
            None => backoff(policy).delay(self.attempts.saturating_sub(1)),
        };
        if !policy.max_elapsed.is_zero() && self.started.elapsed() + delay > policy.max_elapsed {
            return None;
        }
        Some(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_attempts: u32, max_elapsed: Duration) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            max_elapsed,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        }
    }

    #[test]
    fn the_policy_bounds_the_backoff() {
        let policy = policy(0, Duration::ZERO);
        assert_eq!(backoff(&policy).ceiling(0), Duration::from_millis(100));
        assert_eq!(backoff(&policy).ceiling(40), Duration::from_secs(1));
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        let check = |value: &str, expected: Option<Duration>| {
            let mut headers = HeaderMap::new();
            headers.insert(
                http::header::RETRY_AFTER,
                value.parse().expect("header value"),
            );
            assert_eq!(retry_after(&headers, now), expected, "{value}");
        };
        check("3", Some(Duration::from_secs(3)));
        check(" 0 ", Some(Duration::ZERO));
        // 784111777 is Sun, 06 Nov 1994 08:49:37 GMT.
        check(
            "Sun, 06 Nov 1994 08:49:47 GMT",
            Some(Duration::from_secs(10)),
        );
        check("Sun, 06 Nov 1994 08:49:00 GMT", Some(Duration::ZERO));
        check("soon", None);
        check("-1", None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn budget_stops_at_max_attempts() {
        let policy = policy(3, Duration::ZERO);
        let mut budget = Budget::start(&policy);
        budget.attempt();
        assert!(budget.next_delay(None).is_some());
        budget.attempt();
        assert!(budget.next_delay(None).is_some());
        budget.attempt();
        assert_eq!(budget.next_delay(None), None);
    }

    #[test]
    fn budget_refuses_a_retry_after_past_max_elapsed() {
        let policy = policy(0, Duration::from_secs(60));
        let mut budget = Budget::start(&policy);
        budget.attempt();
        assert_eq!(
            budget.next_delay(Some(Duration::from_secs(5))),
            Some(Duration::from_secs(5))
        );
        assert_eq!(budget.next_delay(Some(Duration::from_secs(3600))), None);
    }

    #[test]
    fn unlimited_policy_keeps_going() {
        let policy = policy(0, Duration::ZERO);
        let mut budget = Budget::start(&policy);
        for _ in 0..100 {
            budget.attempt();
            assert!(budget.next_delay(None).is_some());
        }
    }
}
