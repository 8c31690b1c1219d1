//! The picking rules of each [`Balancer`], over any set of candidates: pure functions of the
//! candidates' weights and loads, the random source and the per-set state, so each rule is tested
//! on its exact sequence without a network.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use tokio::time::Instant;

use super::Balancer;
use super::load::EndpointLoad;
use super::ring::Ring;
use super::rng::PickRng;

/// What a rule reads of a candidate.
pub(crate) trait Candidate {
    fn weight(&self) -> u32;
    fn load(&self) -> &EndpointLoad;
}

/// State a rule keeps per endpoint set; rebuilt when the set changes.
#[derive(Debug, Default)]
pub(crate) struct PickState {
    /// Round robin's next position.
    next: AtomicUsize,
    /// Smooth weighted round robin's running scores.
    scores: Mutex<Vec<i64>>,
    /// The consistent-hashing ring.
    pub(crate) ring: Option<Ring>,
}

impl PickState {
    pub(crate) fn new(ring: Option<Ring>) -> Self {
        Self {
            ring,
            ..Self::default()
        }
    }
}

/// One pick: the index of a candidate for which `eligible` holds, or `None` if none does.
pub(crate) fn pick<C: Candidate>(
    balancer: &Balancer,
    candidates: &[C],
    state: &PickState,
    rng: &PickRng,
    key: Option<u64>,
    now: Instant,
    eligible: impl Fn(usize) -> bool,
) -> Option<usize> {
    match balancer {
        Balancer::RoundRobin => round_robin(state, candidates.len(), &eligible),
        Balancer::WeightedRoundRobin => smooth_weighted(state, candidates, &eligible),
        Balancer::Random { .. } => random(rng, candidates.len(), &eligible),
        Balancer::LeastOutstanding => least_outstanding(state, candidates, &eligible),
        Balancer::PeakEwma(config) => {
            // Only a candidate with no sample yet needs the others' lowest estimate.
            let unknown = std::cell::OnceCell::new();
            let cost = |i: usize| {
                candidates.get(i).map_or(f64::INFINITY, |c| {
                    let load = c.load();
                    let estimate = load.estimate(now, config.decay).unwrap_or_else(|| {
                        *unknown.get_or_init(|| {
                            lowest_estimate(candidates, now, config.decay)
                                .unwrap_or_else(|| nanos(config.default_rtt))
                        })
                    });
                    load.cost_with(estimate)
                })
            };
            two_choices(rng, candidates.len(), &eligible, cost)
        }
        Balancer::ConsistentHash(config) => match (key, &state.ring) {
            (Some(key), Some(ring)) => {
                let bound = config.load_bound.map(|factor| load_cap(candidates, factor));
                ring.clockwise(key).find(|&i| {
                    eligible(i)
                        && bound.is_none_or(|cap| {
                            candidates
                                .get(i)
                                .is_some_and(|c| c.load().outstanding() < cap)
                        })
                })
            }
            _ => round_robin(state, candidates.len(), &eligible),
        },
    }
}

/// The first eligible index at or after `start`, wrapping.
fn first_eligible(n: usize, start: usize, eligible: &impl Fn(usize) -> bool) -> Option<usize> {
    (0..n).map(|k| (start + k) % n).find(|&i| eligible(i))
}

fn round_robin(state: &PickState, n: usize, eligible: &impl Fn(usize) -> bool) -> Option<usize> {
    if n == 0 {
        return None;
    }
    let start = state.next.fetch_add(1, Ordering::Relaxed) % n;
    let chosen = first_eligible(n, start, eligible)?;
    if chosen != start {
        // Skipped ineligible ones: go on from after the chosen one, not from the skipped.
        state.next.store(chosen + 1, Ordering::Relaxed);
    }
    Some(chosen)
}

fn smooth_weighted<C: Candidate>(
    state: &PickState,
    candidates: &[C],
    eligible: &impl Fn(usize) -> bool,
) -> Option<usize> {
    let mut scores = state.scores.lock().unwrap_or_else(PoisonError::into_inner);
    scores.resize(candidates.len(), 0);
    let mut total = 0i64;
    let mut best: Option<usize> = None;
    for (i, candidate) in candidates.iter().enumerate() {
        if !eligible(i) {
            continue;
        }
        let weight = i64::from(candidate.weight().max(1));
        total += weight;
        scores[i] += weight;
        if best.is_none_or(|b| scores[i] > scores[b]) {
            best = Some(i);
        }
    }
    let best = best?;
    scores[best] -= total;
    Some(best)
}

fn random(rng: &PickRng, n: usize, eligible: &impl Fn(usize) -> bool) -> Option<usize> {
    if n == 0 {
        return None;
    }
    first_eligible(n, rng.below(n), eligible)
}

fn least_outstanding<C: Candidate>(
    state: &PickState,
    candidates: &[C],
    eligible: &impl Fn(usize) -> bool,
) -> Option<usize> {
    let n = candidates.len();
    if n == 0 {
        return None;
    }
    // Scanning from a rotating start sends ties round robin.
    let start = state.next.fetch_add(1, Ordering::Relaxed) % n;
    (0..n)
        .map(|k| (start + k) % n)
        .filter(|&i| eligible(i))
        .min_by_key(|&i| {
            candidates
                .get(i)
                .map_or(usize::MAX, |c| c.load().outstanding())
        })
}

/// Power of two choices: two distinct draws, each moved to the next eligible index; the lower
/// cost wins (the first on a tie).
fn two_choices(
    rng: &PickRng,
    n: usize,
    eligible: &impl Fn(usize) -> bool,
    cost: impl Fn(usize) -> f64,
) -> Option<usize> {
    match n {
        0 => None,
        1 => eligible(0).then_some(0),
        _ => {
            let a = rng.below(n);
            let mut b = rng.below(n - 1);
            if b >= a {
                b += 1;
            }
            let a = first_eligible(n, a, eligible)?;
            let b = first_eligible(n, b, eligible)
                .filter(|&b| b != a)
                .or_else(|| first_eligible(n, a + 1, eligible).filter(|&b| b != a));
            match b {
                Some(b) if cost(b) < cost(a) => Some(b),
                _ => Some(a),
            }
        }
    }
}

/// The lowest decayed estimate among the candidates that have one.
fn lowest_estimate<C: Candidate>(
    candidates: &[C],
    now: Instant,
    decay: std::time::Duration,
) -> Option<f64> {
    candidates
        .iter()
        .filter_map(|c| c.load().estimate(now, decay))
        .min_by(f64::total_cmp)
}

/// Bounded loads' cap: an endpoint may hold at most ⌈factor × (total + 1) / n⌉ outstanding
/// calls, the new one counted.
fn load_cap<C: Candidate>(candidates: &[C], factor: f64) -> usize {
    let total: usize = candidates.iter().map(|c| c.load().outstanding()).sum();
    #[expect(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "small positive counts"
    )]
    let cap = (factor * (total + 1) as f64 / candidates.len().max(1) as f64).ceil() as usize;
    cap.max(1)
}

fn nanos(duration: std::time::Duration) -> f64 {
    duration.as_secs_f64() * 1e9
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::balance::{ConsistentHash, PeakEwma};

    struct Fake {
        weight: u32,
        load: EndpointLoad,
    }

    fn fakes(weights: &[u32]) -> (Vec<Fake>, Instant) {
        let epoch = Instant::now();
        let fakes = weights
            .iter()
            .map(|&weight| Fake {
                weight,
                load: EndpointLoad::new(epoch),
            })
            .collect();
        (fakes, epoch)
    }

    impl Candidate for Fake {
        fn weight(&self) -> u32 {
            self.weight
        }
        fn load(&self) -> &EndpointLoad {
            &self.load
        }
    }

    fn picks(
        balancer: &Balancer,
        set: &[Fake],
        n: usize,
        eligible: impl Fn(usize) -> bool,
    ) -> Vec<usize> {
        let state = PickState::default();
        let rng = PickRng::seeded(42);
        let now = Instant::now();
        (0..n)
            .map(|_| pick(balancer, set, &state, &rng, None, now, &eligible).unwrap())
            .collect()
    }

    #[test]
    fn round_robin_gives_each_in_turn_and_skips_the_ineligible() {
        let (set, _) = fakes(&[1, 1, 1]);
        assert_eq!(
            picks(&Balancer::RoundRobin, &set, 7, |_| true),
            [0, 1, 2, 0, 1, 2, 0]
        );
        assert_eq!(
            picks(&Balancer::RoundRobin, &set, 5, |i| i != 1),
            [0, 2, 0, 2, 0]
        );
        assert_eq!(
            pick(
                &Balancer::RoundRobin,
                &set,
                &PickState::default(),
                &PickRng::seeded(1),
                None,
                Instant::now(),
                |_| false
            ),
            None
        );
    }

    #[test]
    fn smooth_weighted_round_robin_gives_nginx_sequence() {
        let (set, _) = fakes(&[5, 1, 1]);
        // nginx's documented sequence for weights 5, 1, 1: a a b a c a a.
        assert_eq!(
            picks(&Balancer::WeightedRoundRobin, &set, 14, |_| true),
            [0, 0, 1, 0, 2, 0, 0, 0, 0, 1, 0, 2, 0, 0]
        );
        let (set, _) = fakes(&[2, 1]);
        assert_eq!(
            picks(&Balancer::WeightedRoundRobin, &set, 6, |_| true),
            [0, 1, 0, 0, 1, 0]
        );
    }

    #[test]
    fn random_is_uniform_and_replays_from_its_seed() {
        let (set, _) = fakes(&[1, 1, 1, 1]);
        let balancer = Balancer::Random { seed: Some(42) };
        let first = picks(&balancer, &set, 8000, |_| true);
        assert_eq!(first, picks(&balancer, &set, 8000, |_| true));
        let mut counts = [0; 4];
        first.iter().for_each(|&i| counts[i] += 1);
        // 2000 expected each; 5 standard deviations is about ±195.
        assert!(
            counts.iter().all(|&c| (1800..2200).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn least_outstanding_prefers_the_idle_endpoint_and_shares_ties() {
        let (set, _) = fakes(&[1, 1, 1]);
        let _busy = (
            set[0].load.start(),
            set[2].load.start(),
            set[2].load.start(),
        );
        assert_eq!(
            picks(&Balancer::LeastOutstanding, &set, 4, |_| true),
            [1, 1, 1, 1]
        );
        let (idle, _) = fakes(&[1, 1, 1]);
        assert_eq!(
            picks(&Balancer::LeastOutstanding, &idle, 6, |_| true),
            [0, 1, 2, 0, 1, 2]
        );
    }

    #[test]
    fn peak_ewma_sends_little_to_a_slow_endpoint_and_spreads_evenly_otherwise() {
        let (set, epoch) = fakes(&[1, 1, 1]);
        for (i, ms) in [(0, 1), (1, 1), (2, 200)] {
            set[i]
                .load
                .observe(Duration::from_millis(ms), epoch, Duration::from_secs(10));
        }
        let balancer = Balancer::PeakEwma(PeakEwma::new().seed(42));
        let chosen = picks(&balancer, &set, 3000, |_| true);
        let slow = chosen.iter().filter(|&&i| i == 2).count();
        assert_eq!(slow, 0, "the slow endpoint loses every comparison");
        let first = chosen.iter().filter(|&&i| i == 0).count();
        // Two equal endpoints: each wins about half (1500 ± 5 sigma ≈ ±140).
        assert!((1360..1640).contains(&first), "{first}");
        assert_eq!(
            chosen,
            picks(&balancer, &set, 3000, |_| true),
            "replays from its seed"
        );
    }

    #[test]
    fn peak_ewma_weighs_outstanding_calls_and_honours_eligibility() {
        let (set, epoch) = fakes(&[1, 1]);
        for load in set.iter().map(|c| &c.load) {
            load.observe(Duration::from_millis(1), epoch, Duration::from_secs(10));
        }
        let _busy: Vec<_> = (0..3).map(|_| set[0].load.start()).collect();
        let balancer = Balancer::PeakEwma(PeakEwma::new().seed(1));
        assert!(picks(&balancer, &set, 50, |_| true).iter().all(|&i| i == 1));
        assert!(
            picks(&balancer, &set, 50, |i| i == 0)
                .iter()
                .all(|&i| i == 0)
        );
    }

    #[test]
    fn consistent_hash_keeps_a_key_on_its_endpoint_and_bounded_load_spills() {
        let (set, _) = fakes(&[1, 1, 1]);
        let names = ["a", "b", "c"];
        let state = PickState::new(Some(Ring::new(names.iter().map(|n| (*n, 1)), 160)));
        let rng = PickRng::seeded(3);
        let now = Instant::now();
        let key = Some(super::super::ring::stable_hash(b"user-7"));
        let plain = Balancer::ConsistentHash(ConsistentHash::new());
        let home = pick(&plain, &set, &state, &rng, key, now, |_| true).unwrap();
        for _ in 0..10 {
            assert_eq!(
                pick(&plain, &set, &state, &rng, key, now, |_| true),
                Some(home)
            );
        }
        let next = pick(&plain, &set, &state, &rng, key, now, |i| i != home).unwrap();
        assert_ne!(next, home, "an ineligible home passes the key clockwise");
        // With a bound of 1.25 and 4 calls already at home, the cap is ceil(1.25 * 5 / 3) = 3.
        let _held: Vec<_> = (0..4).map(|_| set[home].load.start()).collect();
        let bounded = Balancer::ConsistentHash(ConsistentHash::new().bounded_load(1.25));
        assert_eq!(
            pick(&bounded, &set, &state, &rng, key, now, |_| true),
            Some(next)
        );
        assert_eq!(
            pick(&plain, &set, &state, &rng, key, now, |_| true),
            Some(home)
        );
    }
}
