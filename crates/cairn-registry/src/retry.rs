//! Retrying transient failures with capped exponential backoff and jitter.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// How often and how patiently to retry a request that failed transiently (connection errors,
/// timeouts, 5xx, 429, a body stream that broke off). Errors the registry means — 4xx, digest
/// mismatches — are never retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; `1` disables retrying. Default 5.
    pub max_attempts: u32,
    /// The delay before the first retry; it doubles with each further one. Default 200 ms.
    pub base_delay: Duration,
    /// The longest delay between two attempts. Default 5 s.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The delay before attempt `next_attempt` (2 for the first retry): the exponential step,
    /// capped, then jittered into its upper half so that clients that failed together do not
    /// retry together.
    pub(crate) fn delay(&self, next_attempt: u32) -> Duration {
        let step = self.step(next_attempt);
        let half = step / 2;
        let jitter_nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        let jitter = if jitter_nanos == 0 {
            0
        } else {
            random_u64() % jitter_nanos
        };
        half + Duration::from_nanos(jitter)
    }

    /// The un-jittered delay before attempt `next_attempt`.
    fn step(&self, next_attempt: u32) -> Duration {
        let doublings = next_attempt.saturating_sub(2).min(30);
        self.base_delay
            .saturating_mul(1 << doublings)
            .min(self.max_delay)
    }
}

/// A random number from the standard library's per-process hash seed, enough for jitter.
fn random_u64() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let p = RetryPolicy::default();
        assert_eq!(p.step(2), Duration::from_millis(200));
        assert_eq!(p.step(3), Duration::from_millis(400));
        assert_eq!(p.step(4), Duration::from_millis(800));
        assert_eq!(p.step(7), Duration::from_millis(5000));
        assert_eq!(p.step(1000), Duration::from_millis(5000));
        for attempt in 2..10 {
            let d = p.delay(attempt);
            assert!(
                d >= p.step(attempt) / 2 && d <= p.step(attempt),
                "{attempt}: {d:?}"
            );
        }
        let zero = RetryPolicy {
            base_delay: Duration::ZERO,
            ..p
        };
        assert_eq!(zero.delay(3), Duration::ZERO);
    }
}
