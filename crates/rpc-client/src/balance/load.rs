//! The load of one endpoint as a balancer sees it: calls outstanding (sent, or queued inside the
//! endpoint) and a peak-EWMA latency estimate. Both are plain atomics the callers update, so
//! reading a load takes no lock; concurrent updates of the estimate may lose one sample, which
//! only blurs an estimate that is a blur anyway.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// No sample recorded yet.
const UNKNOWN: u64 = u64::MAX;

/// One endpoint's load.
#[derive(Debug)]
pub(crate) struct EndpointLoad {
    outstanding: AtomicUsize,
    /// The estimate in nanoseconds, as `f64` bits; [`UNKNOWN`] before the first sample.
    estimate: AtomicU64,
    /// When the estimate was last updated, in nanoseconds since `epoch`.
    updated: AtomicU64,
    epoch: Instant,
}

impl EndpointLoad {
    pub(crate) fn new(epoch: Instant) -> Self {
        Self {
            outstanding: AtomicUsize::new(0),
            estimate: AtomicU64::new(UNKNOWN),
            updated: AtomicU64::new(0),
            epoch,
        }
    }

    /// Calls outstanding now.
    pub(crate) fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// Counts a call until the guard drops.
    pub(crate) fn start(&self) -> Outstanding<'_> {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        Outstanding(self)
    }

    /// The estimate decayed to `now`, in nanoseconds; `None` before the first sample.
    pub(crate) fn estimate(&self, now: Instant, decay: Duration) -> Option<f64> {
        let bits = self.estimate.load(Ordering::Relaxed);
        if bits == UNKNOWN {
            return None;
        }
        let since = self
            .nanos(now)
            .saturating_sub(self.updated.load(Ordering::Relaxed));
        Some(f64::from_bits(bits) * weight_of_old(since, decay))
    }

    /// Peak-EWMA cost: the estimate × (outstanding + 1); `unknown` stands in for the estimate
    /// before the first sample.
    #[cfg(test)]
    pub(crate) fn cost(&self, now: Instant, decay: Duration, unknown: f64) -> f64 {
        self.cost_with(self.estimate(now, decay).unwrap_or(unknown))
    }

    /// Peak-EWMA cost for a given estimate: the estimate × (outstanding + 1).
    pub(crate) fn cost_with(&self, estimate: f64) -> f64 {
        #[expect(clippy::cast_precision_loss, reason = "call counts are far below 2^52")]
        let pending = (self.outstanding() + 1) as f64;
        estimate * pending
    }

    /// Records a latency sample taken at `now`: above the estimate it becomes the estimate, below
    /// it pulls the estimate down by the time since the last update.
    pub(crate) fn observe(&self, sample: Duration, now: Instant, decay: Duration) {
        #[expect(clippy::cast_precision_loss, reason = "nanoseconds of a latency")]
        let sample = sample.as_nanos().min(u128::from(u64::MAX >> 12)) as f64;
        let at = self.nanos(now);
        let next = match self.estimate(now, decay) {
            Some(old) if old > sample => {
                let since = at.saturating_sub(self.updated.load(Ordering::Relaxed));
                let keep = weight_of_old(since, decay);
                old * keep + sample * (1.0 - keep)
            }
            _ => sample,
        };
        self.estimate.store(next.to_bits(), Ordering::Relaxed);
        self.updated.store(at, Ordering::Relaxed);
    }

    /// Starts the estimate at `nanos` if it has no sample yet (a new endpoint joining others).
    pub(crate) fn seed_estimate(&self, nanos: f64, now: Instant) {
        let at = self.nanos(now);
        if self
            .estimate
            .compare_exchange(
                UNKNOWN,
                nanos.to_bits(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_ok()
        {
            self.updated.store(at, Ordering::Relaxed);
        }
    }

    fn nanos(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }
}

/// The weight the old estimate keeps after `since` nanoseconds: e^(−since / decay).
fn weight_of_old(since: u64, decay: Duration) -> f64 {
    #[expect(clippy::cast_precision_loss, reason = "a ratio of durations")]
    let ratio = since as f64 / decay.as_nanos().max(1) as f64;
    (-ratio).exp()
}

/// One outstanding call of an endpoint, counted until dropped.
#[derive(Debug)]
pub(crate) struct Outstanding<'a>(&'a EndpointLoad);

impl Drop for Outstanding<'_> {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DECAY: Duration = Duration::from_secs(10);

    #[test]
    fn a_peak_replaces_the_estimate_and_a_low_sample_pulls_it_down_slowly() {
        let epoch = Instant::now();
        let load = EndpointLoad::new(epoch);
        assert_eq!(load.estimate(epoch, DECAY), None);
        load.observe(Duration::from_millis(10), epoch, DECAY);
        load.observe(Duration::from_millis(200), epoch, DECAY);
        let peak = load.estimate(epoch, DECAY).unwrap();
        assert!((peak - 200e6).abs() < 1.0, "{peak}");
        // 1 s later, a 10 ms sample: the old estimate keeps e^-0.1 of its weight.
        let later = epoch + Duration::from_secs(1);
        load.observe(Duration::from_millis(10), later, DECAY);
        let decayed = 200e6 * (-0.1f64).exp();
        let expected = decayed * (-0.1f64).exp() + 10e6 * (1.0 - (-0.1f64).exp());
        let got = load.estimate(later, DECAY).unwrap();
        assert!((got - expected).abs() < 1e3, "{got} vs {expected}");
        // With no samples it decays towards zero.
        let much_later = later + Duration::from_secs(50);
        assert!(load.estimate(much_later, DECAY).unwrap() < got * 0.01);
    }

    #[test]
    fn cost_counts_outstanding_calls_and_a_seed_applies_only_before_samples() {
        let epoch = Instant::now();
        let load = EndpointLoad::new(epoch);
        assert!((load.cost(epoch, DECAY, 5.0) - 5.0).abs() < 1e-9);
        let (a, b) = (load.start(), load.start());
        assert_eq!(load.outstanding(), 2);
        assert!((load.cost(epoch, DECAY, 5.0) - 15.0).abs() < 1e-9);
        drop((a, b));
        assert_eq!(load.outstanding(), 0);
        load.seed_estimate(7.0, epoch);
        assert!((load.estimate(epoch, DECAY).unwrap() - 7.0).abs() < 1e-9);
        load.observe(Duration::from_nanos(100), epoch, DECAY);
        load.seed_estimate(7.0, epoch);
        assert!((load.estimate(epoch, DECAY).unwrap() - 100.0).abs() < 1e-9);
    }
}
