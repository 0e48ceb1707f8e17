//! Exponential backoff, the one helper behind every retry in the agent: restarting the
//! application, reconnecting to a hook port that refuses, resending a log batch.

use std::time::Duration;

/// Delays that start at `initial`, double per attempt and stop growing at `cap`.
/// With jitter, each delay is drawn from its upper half (`[d/2, d]`), so retries of
/// many guests behind one service spread out instead of arriving together.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    cap: Duration,
    attempt: u32,
    /// xorshift state; zero means no jitter. No cryptography is needed here.
    rng: u64,
}

impl Backoff {
    pub fn new(initial: Duration, cap: Duration) -> Self {
        Backoff {
            initial,
            cap,
            attempt: 0,
            rng: 0,
        }
    }

    /// Jitter drawn from `seed` (any value; zero is replaced).
    pub fn jittered(mut self, seed: u64) -> Self {
        self.rng = seed | 1;
        self
    }

    /// The delay before the next attempt; each call counts one attempt.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.ceiling(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        if self.rng == 0 {
            return d;
        }
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let ms = d.as_millis() as u64;
        Duration::from_millis(ms / 2 + self.rng % (ms / 2 + 1))
    }

    /// Back to `initial`: the thing being retried worked (or ran long enough).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Attempts counted since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    fn ceiling(&self, attempt: u32) -> Duration {
        // 2^20 times any initial delay we use is far past every cap.
        let factor = 1u32 << attempt.min(20);
        self.initial.saturating_mul(factor).min(self.cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn doubles_to_the_cap_without_jitter() {
        let mut b = Backoff::new(ms(10), ms(100));
        let seen: Vec<_> = (0..8).map(|_| b.next_delay()).collect();
        assert_eq!(seen, [10, 20, 40, 80, 100, 100, 100, 100].map(ms).to_vec());
        assert_eq!(b.attempts(), 8);
        b.reset();
        assert_eq!(b.next_delay(), ms(10));
    }

    #[test]
    fn jitter_stays_in_the_upper_half_of_each_step() {
        let mut b = Backoff::new(ms(100), Duration::from_secs(10)).jittered(12345);
        let mut distinct = std::collections::HashSet::new();
        for attempt in 0..40u32 {
            let cap = (ms(100) * 2u32.pow(attempt.min(10))).min(Duration::from_secs(10));
            let d = b.next_delay();
            assert!(d <= cap && d >= cap / 2, "{attempt}: {d:?} vs {cap:?}");
            distinct.insert(d);
        }
        assert!(distinct.len() > 5, "jitter must vary: {distinct:?}");
    }

    #[test]
    fn never_overflows() {
        let mut b = Backoff::new(Duration::from_secs(3600), Duration::MAX);
        for _ in 0..100 {
            b.next_delay();
        }
        assert_eq!(b.attempts(), 100);
    }
}
