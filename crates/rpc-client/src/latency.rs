//! Recent latencies per method: an average of answered attempts, to judge whether another attempt
//! fits in a deadline, and percentiles of successful ones for hedging delays.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// Latencies kept per method for percentiles.
const WINDOW: usize = 128;
/// Percentiles are recomputed after this many new samples.
const REFRESH_EVERY: u32 = 16;
/// Weight of a new sample in the moving average.
const EWMA_WEIGHT: f64 = 0.2;

/// Attempts' latencies, per method, shared by a channel's calls.
#[derive(Debug, Default)]
pub(crate) struct LatencyTracker {
    methods: Mutex<foldhash::HashMap<Box<str>, MethodLatency>>,
}

#[derive(Debug)]
struct MethodLatency {
    /// Moving average, in seconds.
    average: f64,
    /// The last [`WINDOW`] samples, in microseconds, as a ring.
    samples: Box<[u32; WINDOW]>,
    count: usize,
    since_refresh: u32,
    /// The last computed percentile: (percentile, value).
    cached: Option<(f64, Duration)>,
}

impl MethodLatency {
    fn new(first: Duration) -> Self {
        Self {
            average: first.as_secs_f64(),
            samples: Box::new([0; WINDOW]),
            count: 0,
            since_refresh: REFRESH_EVERY,
            cached: None,
        }
    }

    fn record(&mut self, latency: Duration, success: bool) {
        self.average += EWMA_WEIGHT * (latency.as_secs_f64() - self.average);
        if !success {
            return;
        }
        let micros = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
        if let Some(slot) = self.samples.get_mut(self.count % WINDOW) {
            *slot = micros;
        }
        self.count += 1;
        self.since_refresh = self.since_refresh.saturating_add(1);
    }

    fn percentile(&mut self, percentile: f64, min_samples: usize) -> Option<Duration> {
        let known = self.count.min(WINDOW);
        if known < min_samples.min(WINDOW) || known == 0 {
            return None;
        }
        if let Some((p, value)) = self.cached {
            if p.total_cmp(&percentile).is_eq() && self.since_refresh < REFRESH_EVERY {
                return Some(value);
            }
        }
        let mut sorted: Vec<u32> = self.samples.iter().take(known).copied().collect();
        sorted.sort_unstable();
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "a rank within 0..known"
        )]
        let rank = ((percentile / 100.0) * (known - 1) as f64).round() as usize;
        let value = Duration::from_micros(u64::from(
            sorted.get(rank.min(known - 1)).copied().unwrap_or(0),
        ));
        self.cached = Some((percentile, value));
        self.since_refresh = 0;
        Some(value)
    }
}

impl LatencyTracker {
    /// Records one answered attempt of `method`; only a `success` counts for percentiles.
    pub(crate) fn record(&self, method: &str, latency: Duration, success: bool) {
        let mut methods = self.methods.lock().unwrap_or_else(PoisonError::into_inner);
        match methods.get_mut(method) {
            Some(stats) => stats.record(latency, success),
            None => {
                let mut stats = MethodLatency::new(latency);
                stats.record(latency, success);
                methods.insert(method.into(), stats);
            }
        }
    }

    /// The moving average latency of `method`'s answered attempts; zero when nothing is known.
    pub(crate) fn average(&self, method: &str) -> Duration {
        let methods = self.methods.lock().unwrap_or_else(PoisonError::into_inner);
        methods
            .get(method)
            .map_or(Duration::ZERO, |s| Duration::from_secs_f64(s.average))
    }

    /// The `percentile` of `method`'s recent successful latencies, once `min_samples` are known.
    pub(crate) fn percentile(
        &self,
        method: &str,
        percentile: f64,
        min_samples: usize,
    ) -> Option<Duration> {
        let mut methods = self.methods.lock().unwrap_or_else(PoisonError::into_inner);
        methods.get_mut(method)?.percentile(percentile, min_samples)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_needs_samples_then_tracks_the_window() {
        let t = LatencyTracker::default();
        for ms in 1..=10 {
            t.record("m", Duration::from_millis(ms), true);
        }
        assert_eq!(t.percentile("m", 95.0, 20), None);
        for ms in 11..=100 {
            t.record("m", Duration::from_millis(ms), true);
        }
        let p50 = t.percentile("m", 50.0, 20).unwrap();
        assert!((Duration::from_millis(49)..=Duration::from_millis(52)).contains(&p50));
        let p95 = t.percentile("m", 95.0, 20).unwrap();
        assert!((Duration::from_millis(94)..=Duration::from_millis(96)).contains(&p95));
        // Only the last WINDOW samples count.
        for _ in 0..WINDOW {
            t.record("m", Duration::from_millis(7), true);
        }
        assert_eq!(t.percentile("m", 95.0, 20), Some(Duration::from_millis(7)));
        assert_eq!(t.percentile("other", 95.0, 1), None);
    }

    #[test]
    fn average_moves_towards_new_samples() {
        let t = LatencyTracker::default();
        assert_eq!(t.average("m"), Duration::ZERO);
        t.record("m", Duration::from_millis(10), true);
        assert_eq!(t.average("m"), Duration::from_millis(10));
        for _ in 0..50 {
            t.record("m", Duration::from_millis(30), false);
        }
        assert!(t.average("m") > Duration::from_millis(29));
        // Failures move the average, not the percentiles.
        assert_eq!(t.percentile("m", 50.0, 1), Some(Duration::from_millis(10)));
    }
}
