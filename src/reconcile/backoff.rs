//! Retry timing for a failed service or address: 1 s doubling to 60 s.

use std::time::{Duration, Instant};

const FIRST_DELAY: Duration = Duration::from_secs(1);
const MAX_DELAY: Duration = Duration::from_secs(60);

/// Consecutive failures of one thing and when to try it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Backoff {
    pub failures: u32,
    pub retry_at: Instant,
}

impl Backoff {
    /// The backoff after one more failure at `now`.
    pub fn after_failure(previous: Option<Backoff>, now: Instant) -> Backoff {
        let failures = previous.map_or(0, |b| b.failures).saturating_add(1);
        Backoff {
            failures,
            retry_at: now + delay(failures),
        }
    }

    /// Whether the retry is due at `now`.
    pub fn is_due(&self, now: Instant) -> bool {
        self.retry_at <= now
    }
}

/// The wait after the `failures`th consecutive failure.
fn delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(6);
    (FIRST_DELAY * (1 << doublings)).min(MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_one_second_to_a_minute() {
        let expected = [1, 2, 4, 8, 16, 32, 60, 60, 60];
        let now = Instant::now();
        let mut backoff = None;
        for (i, seconds) in expected.into_iter().enumerate() {
            let next = Backoff::after_failure(backoff, now);
            assert_eq!(next.failures, i as u32 + 1);
            assert_eq!(
                next.retry_at - now,
                Duration::from_secs(seconds),
                "failure {}",
                i + 1
            );
            assert!(!next.is_due(now) && next.is_due(next.retry_at));
            backoff = Some(next);
        }
        assert_eq!(delay(u32::MAX), MAX_DELAY);
    }
}
