//! Retry schedules: pure functions, no I/O, so they can be property-tested.
//!
//! Retries use "full jitter" exponential backoff (AWS Architecture Blog, "Exponential
//! Backoff and Jitter"): the n-th retry waits a uniformly random time in
//! `[delay/2, delay]` where `delay = min(cap, base * 2^(n-1))`. Keeping half of the delay
//! fixed means a retry never fires immediately, while the random half spreads a burst of
//! failures so they do not hammer a recovering dependency in lockstep.

use std::time::Duration;

/// Parameters of an exponential backoff schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first retry.
    pub base: Duration,
    /// Upper bound of any delay.
    pub cap: Duration,
}

impl Backoff {
    /// The un-jittered delay before retry number `retry` (1-based).
    pub fn ceiling(&self, retry: u32) -> Duration {
        let shift = retry.saturating_sub(1).min(32);
        let base = self.base.as_millis() as u64;
        let d = base.saturating_mul(1u64 << shift);
        Duration::from_millis(d.min(self.cap.as_millis() as u64))
    }

    /// The delay before retry number `retry`, jittered with `unit` in `[0, 1)`.
    pub fn delay(&self, retry: u32, unit: f64) -> Duration {
        let c = self.ceiling(retry).as_millis() as f64;
        let unit = unit.clamp(0.0, 1.0);
        Duration::from_millis((c / 2.0 + unit * c / 2.0).round() as u64)
    }

    /// The delay before retry number `retry` with a random jitter.
    pub fn delay_random(&self, retry: u32) -> Duration {
        self.delay(retry, rand::random::<f64>())
    }
}

/// The delay to use when a handler asked for one (`Retry-After`): the larger of the
/// schedule's delay and the request, but never above a day.
pub fn honour_retry_after(scheduled: Duration, requested: Option<Duration>) -> Duration {
    match requested {
        Some(r) => scheduled.max(r).min(Duration::from_secs(86_400)),
        None => scheduled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const B: Backoff = Backoff {
        base: Duration::from_millis(100),
        cap: Duration::from_secs(10),
    };

    #[test]
    fn doubles_until_cap() {
        assert_eq!(B.ceiling(1), Duration::from_millis(100));
        assert_eq!(B.ceiling(2), Duration::from_millis(200));
        assert_eq!(B.ceiling(4), Duration::from_millis(800));
        assert_eq!(B.ceiling(30), Duration::from_secs(10));
        assert_eq!(B.ceiling(u32::MAX), Duration::from_secs(10));
    }

    #[test]
    fn retry_after_wins_when_longer() {
        let s = Duration::from_millis(100);
        assert_eq!(
            honour_retry_after(s, Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        assert_eq!(honour_retry_after(s, Some(Duration::from_millis(1))), s);
        assert_eq!(honour_retry_after(s, None), s);
    }

    proptest! {
        #[test]
        fn delay_within_half_and_full_ceiling(retry in 1u32..200, unit in 0.0f64..1.0) {
            let d = B.delay(retry, unit);
            let c = B.ceiling(retry);
            prop_assert!(d <= c);
            prop_assert!(d >= c / 2);
        }

        #[test]
        fn ceiling_is_monotonic(retry in 1u32..100) {
            prop_assert!(B.ceiling(retry) <= B.ceiling(retry + 1));
        }
    }
}
