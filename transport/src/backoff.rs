//! Exponential backoff with full jitter for reconnect loops, seeded so a test can replay it.
//!
//! The n-th delay is uniform in `[base/2, min(cap, base * 2^n)]`: jitter spreads a fleet of nodes that lost
//! the hub at the same moment, the cap bounds how long a node waits once the hub is back.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Duration;

/// Backoff state: call [`Backoff::next_delay`] after each failure, [`Backoff::reset`] after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    base_ms: u64,
    cap_ms: u64,
    attempt: u32,
    rng: StdRng,
}

impl Backoff {
    /// Delays start around `base_ms` and never exceed `cap_ms`; `seed` drives the jitter.
    pub fn new(base_ms: u64, cap_ms: u64, seed: u64) -> Self {
        Self {
            base_ms: base_ms.max(1),
            cap_ms: cap_ms.max(base_ms.max(1)),
            attempt: 0,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.base_ms.saturating_mul(1u64 << self.attempt.min(32));
        let high = exp.min(self.cap_ms);
        let low = (self.base_ms / 2).min(high);
        self.attempt = self.attempt.saturating_add(1);
        Duration::from_millis(self.rng.random_range(low..=high))
    }

    /// Failures since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Call after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Calls `attempt` until it succeeds or `attempts_max` attempts failed, sleeping per `backoff` in between.
/// Returns the last error when giving up.
pub async fn retry<T, E, F, Fut>(backoff: &mut Backoff, attempts_max: u32, mut attempt: F) -> Result<T, E>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut n = 0;
    loop {
        match attempt(n).await {
            Ok(v) => {
                backoff.reset();
                return Ok(v);
            }
            Err(e) if n + 1 >= attempts_max => return Err(e),
            Err(_) => {
                n += 1;
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_are_capped_and_replay_from_seed() {
        let mut a = Backoff::new(100, 2_000, 7);
        let delays: Vec<Duration> = (0..12).map(|_| a.next_delay()).collect();
        for (i, d) in delays.iter().enumerate() {
            let high = (100u64 << i).min(2_000);
            assert!(*d >= Duration::from_millis(50) && *d <= Duration::from_millis(high), "{i}: {d:?}");
        }
        let mut b = Backoff::new(100, 2_000, 7);
        assert_eq!(delays, (0..12).map(|_| b.next_delay()).collect::<Vec<_>>());
        a.reset();
        assert!(a.next_delay() <= Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_gives_up_after_attempts_max() {
        let mut b = Backoff::new(10, 100, 1);
        let mut calls = 0;
        let r: Result<(), u32> = retry(&mut b, 4, |n| {
            calls += 1;
            async move { Err(n) }
        })
        .await;
        assert_eq!(r, Err(3));
        assert_eq!(calls, 4);
        let r: Result<u32, u32> = retry(&mut b, 4, |n| async move { if n == 2 { Ok(n) } else { Err(n) } }).await;
        assert_eq!(r, Ok(2));
    }
}
