//! Exponential backoff with full jitter (the AWS Architecture Blog's "full jitter"): retry n
//! waits a uniformly random time in `[0, min(max, base * 2^(n-1))]`, which spreads retries of
//! many failing events instead of making them arrive in waves.

use crate::config::RetryPolicy;

/// The delay before the retry that follows failed delivery number `failures` (1 for the first
/// failure). `random` is any uniformly distributed 64-bit value.
pub fn retry_delay_ms(policy: &RetryPolicy, failures: u32, random: u64) -> u64 {
    let ceiling = exponential_ceiling_ms(policy, failures);
    if ceiling == 0 {
        return 0;
    }
    random % (ceiling + 1)
}

/// `min(backoff_max_ms, backoff_base_ms * 2^(failures-1))`, without overflow.
pub fn exponential_ceiling_ms(policy: &RetryPolicy, failures: u32) -> u64 {
    let doublings = failures.saturating_sub(1).min(63);
    policy
        .backoff_base_ms
        .saturating_mul(1u64 << doublings)
        .min(policy.backoff_max_ms)
}

/// A small, fast generator for jitter (SplitMix64). Not for secrets.
#[derive(Clone, Debug)]
pub struct Jitter(u64);

impl Jitter {
    pub fn new(seed: u64) -> Self {
        Jitter(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_then_caps() {
        let policy = RetryPolicy {
            backoff_base_ms: 100,
            backoff_max_ms: 1_000,
            deliveries_max: 10,
        };
        let ceilings: Vec<u64> = (1..=6)
            .map(|n| exponential_ceiling_ms(&policy, n))
            .collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1_000, 1_000]);
        assert_eq!(exponential_ceiling_ms(&policy, u32::MAX), 1_000);
    }

    #[test]
    fn delays_cover_the_whole_range() {
        let policy = RetryPolicy {
            backoff_base_ms: 1_000,
            backoff_max_ms: 1_000,
            deliveries_max: 10,
        };
        let mut jitter = Jitter::new(7);
        let delays: Vec<u64> = (0..10_000)
            .map(|_| retry_delay_ms(&policy, 1, jitter.next_u64()))
            .collect();
        assert!(delays.iter().all(|&d| d <= 1_000));
        assert!(
            delays.iter().any(|&d| d < 100),
            "full jitter reaches low delays"
        );
        assert!(delays.iter().any(|&d| d > 900), "and high ones");
        let mean = delays.iter().sum::<u64>() as f64 / delays.len() as f64;
        assert!((mean - 500.0).abs() < 25.0, "mean {mean}");
    }
}
