//! A seedable random source the callers of one channel share without a lock: SplitMix64 over an
//! atomic counter. Picks made one after another from a seed replay the same values; picks made
//! concurrently draw the same values in an order the scheduler decides.

use std::sync::atomic::{AtomicU64, Ordering};

/// SplitMix64's increment (the golden ratio in 64 bits).
const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// Random numbers for picks; one atomic add per draw.
#[derive(Debug)]
pub(crate) struct PickRng {
    state: AtomicU64,
}

impl PickRng {
    /// A source that replays from `seed`.
    pub(crate) fn seeded(seed: u64) -> Self {
        Self {
            state: AtomicU64::new(seed),
        }
    }

    /// A source seeded from the thread's random generator.
    pub(crate) fn from_entropy() -> Self {
        Self::seeded(rand::random())
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&self) -> u64 {
        let state = self
            .state
            .fetch_add(GAMMA, Ordering::Relaxed)
            .wrapping_add(GAMMA);
        mix(state)
    }

    /// A number in `0..n` (`n` > 0), by multiply-shift: no division, bias below 2^-32 for the
    /// sizes a channel has.
    pub(crate) fn below(&self, n: usize) -> usize {
        let n = n as u64;
        #[expect(clippy::cast_possible_truncation, reason = "the result is below n")]
        let index = ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as usize;
        index
    }
}

/// SplitMix64's finaliser: spreads every input bit over the output. Also the ring's point hash.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_replays_and_draws_stay_in_range() {
        let (a, b) = (PickRng::seeded(7), PickRng::seeded(7));
        let first: Vec<u64> = (0..8).map(|_| a.next_u64()).collect();
        let second: Vec<u64> = (0..8).map(|_| b.next_u64()).collect();
        assert_eq!(first, second);
        let other = PickRng::seeded(8);
        assert_ne!(first, (0..8).map(|_| other.next_u64()).collect::<Vec<_>>());
        let rng = PickRng::seeded(1);
        let mut seen = [0u32; 5];
        for _ in 0..5000 {
            seen[rng.below(5)] += 1;
        }
        // Each of 5 values about 1000 times: far outside 800..1200 would be a broken draw.
        assert!(seen.iter().all(|&n| (800..1200).contains(&n)), "{seen:?}");
    }
}
