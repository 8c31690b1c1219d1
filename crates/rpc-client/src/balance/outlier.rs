//! Passive health: outlier ejection on call results, as Envoy and gRPC (A50) do it, with
//! Finagle's probation on return.
//!
//! An endpoint whose attempts fail [`OutlierDetection::consecutive_failures`] times in a row is
//! ejected: no balancer picks it for the base ejection time × the number of times it has been
//! ejected (capped). When the time is up, a probe runs: a new connection, its handshake and a
//! PING answered. Failed, the endpoint is ejected again, for longer; passed, it is on probation:
//! picked again, but its next failure ejects it at once, for longer; its next success clears it. Ejection never takes out more than
//! [`OutlierDetection::max_ejected_percent`] of the endpoints (at least one may always be
//! ejected), and when fewer than [`OutlierDetection::panic_threshold_percent`] are healthy the
//! balancer ignores ejection altogether (Envoy's panic mode): sending to a failing endpoint beats
//! sending nowhere.

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use rpc_core::{Error, Outcome, StatusCode};
use tokio::time::Instant;

/// Settings of outlier ejection; see [`ChannelBuilder::outlier_detection`](crate::ChannelBuilder::outlier_detection).
///
/// ```
/// use std::time::Duration;
/// use keel::client::OutlierDetection;
///
/// let strict = OutlierDetection::new()
///     .consecutive_failures(3)
///     .base_ejection_time(Duration::from_secs(10));
/// # let _ = strict;
/// ```
#[derive(Clone, Debug)]
pub struct OutlierDetection {
    pub(crate) consecutive_failures: u32,
    pub(crate) base_ejection: Duration,
    pub(crate) max_ejection: Duration,
    pub(crate) max_ejected_percent: u32,
    pub(crate) panic_threshold_percent: u32,
    pub(crate) success_rate: Option<SuccessRate>,
}

/// Envoy's success-rate rule: every `interval`, among the endpoints with at least
/// `request_volume` attempts in it, if there are at least `minimum_hosts`, eject those whose
/// success rate is below the mean less `stdev_factor` standard deviations. It catches a server
/// that fails often but never 5 times in a row.
#[derive(Clone, Copy, Debug)]
pub struct SuccessRate {
    pub(crate) interval: Duration,
    pub(crate) minimum_hosts: usize,
    pub(crate) request_volume: u32,
    pub(crate) stdev_factor: f64,
}

impl SuccessRate {
    /// Envoy's defaults: every 10 s, at least 5 endpoints with at least 100 attempts each,
    /// 1.9 standard deviations.
    #[must_use]
    pub fn new() -> Self {
        Self {
            interval: Duration::from_secs(10),
            minimum_hosts: 5,
            request_volume: 100,
            stdev_factor: 1.9,
        }
    }

    /// How often the rates are compared. Default 10 s; at least 10 ms.
    #[must_use]
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(10));
        self
    }

    /// Endpoints with enough attempts needed for the rule to apply. Default 5.
    #[must_use]
    pub fn minimum_hosts(mut self, hosts: usize) -> Self {
        self.minimum_hosts = hosts.max(2);
        self
    }

    /// Attempts an endpoint needs in an interval to count. Default 100.
    #[must_use]
    pub fn request_volume(mut self, attempts: u32) -> Self {
        self.request_volume = attempts.max(1);
        self
    }

    /// How many standard deviations below the mean eject. Default 1.9 (Envoy).
    #[must_use]
    pub fn stdev_factor(mut self, factor: f64) -> Self {
        self.stdev_factor = if factor.is_finite() {
            factor.max(0.0)
        } else {
            1.9
        };
        self
    }
}

impl Default for SuccessRate {
    fn default() -> Self {
        Self::new()
    }
}

/// Of endpoints' (attempts, failures) in an interval, the indices the success-rate rule ejects.
pub(crate) fn success_rate_outliers(config: &SuccessRate, counts: &[(u32, u32)]) -> Vec<usize> {
    let rates: Vec<(usize, f64)> = counts
        .iter()
        .enumerate()
        .filter(|(_, (attempts, _))| *attempts >= config.request_volume)
        .map(|(i, &(attempts, failures))| {
            (
                i,
                1.0 - f64::from(failures.min(attempts)) / f64::from(attempts),
            )
        })
        .collect();
    if rates.len() < config.minimum_hosts {
        return Vec::new();
    }
    #[expect(clippy::cast_precision_loss, reason = "a handful of endpoints")]
    let n = rates.len() as f64;
    let mean = rates.iter().map(|(_, r)| r).sum::<f64>() / n;
    let deviation = (rates
        .iter()
        .map(|(_, r)| (r - mean) * (r - mean))
        .sum::<f64>()
        / n)
        .sqrt();
    let threshold = mean - config.stdev_factor * deviation;
    rates
        .into_iter()
        .filter(|&(_, rate)| rate < threshold)
        .map(|(i, _)| i)
        .collect()
}

impl OutlierDetection {
    /// The defaults: 5 failures in a row, 30 s × times ejected up to 300 s, at most 50 % of the
    /// endpoints ejected, panic below 50 % healthy.
    #[must_use]
    pub fn new() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejected_percent: 50,
            panic_threshold_percent: 50,
            success_rate: Some(SuccessRate::new()),
        }
    }

    /// The success-rate rule's settings. Default [`SuccessRate::new`] (Envoy's).
    #[must_use]
    pub fn success_rate(mut self, rule: SuccessRate) -> Self {
        self.success_rate = Some(rule);
        self
    }

    /// No success-rate rule: only failures in a row eject.
    #[must_use]
    pub fn without_success_rate(mut self) -> Self {
        self.success_rate = None;
        self
    }

    /// Failures in a row that eject an endpoint. Default 5 (Envoy, gRPC, Finagle). At least 1.
    #[must_use]
    pub fn consecutive_failures(mut self, failures: u32) -> Self {
        self.consecutive_failures = failures.max(1);
        self
    }

    /// The first ejection's length; the n-th lasts n times as long. Default 30 s (Envoy, gRPC).
    #[must_use]
    pub fn base_ejection_time(mut self, time: Duration) -> Self {
        self.base_ejection = time;
        self
    }

    /// The longest ejection. Default 300 s (gRPC).
    #[must_use]
    pub fn max_ejection_time(mut self, time: Duration) -> Self {
        self.max_ejection = time;
        self
    }

    /// The most endpoints ejected at once, as a percentage (one may always be). Default 50 %:
    /// Envoy's 10 % would eject nothing in a cluster of 3 to 9, which is where most of our users
    /// are; 50 % keeps a majority in rotation.
    #[must_use]
    pub fn max_ejected_percent(mut self, percent: u32) -> Self {
        self.max_ejected_percent = percent.min(100);
        self
    }

    /// Below this percentage of healthy endpoints, ejection is ignored (panic mode). Default 50 %
    /// (Envoy). 0 turns panic mode off.
    #[must_use]
    pub fn panic_threshold_percent(mut self, percent: u32) -> Self {
        self.panic_threshold_percent = percent.min(100);
        self
    }

    fn ejection_time(&self, times: u32) -> Duration {
        self.base_ejection
            .saturating_mul(times.max(1))
            .min(self.max_ejection.max(self.base_ejection))
    }
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether an attempt's failure counts against its endpoint: a server that is connected and
/// answering, but whose calls fail as only a broken server's do. That is an UNAVAILABLE or
/// INTERNAL the server ran the call into (EXECUTED: a handler that fails or panics), or a
/// DATA_LOSS (bytes corrupted on the way to or from it).
///
/// What does not count, because other parts handle it and readmit at once when it passes:
/// - a connection lost, or a server gone silent (UNAVAILABLE, MAYBE_EXECUTED): the connection's
///   state and suspicion take the endpoint out, and a reconnect or the next byte brings it back;
/// - refusals before running (NOT_EXECUTED: draining, overloaded): a drained server comes back
///   as a new instance, and ejecting a busy one would pile its load on the others;
/// - deadlines: a slow server gets less traffic from peak-EWMA;
/// - application errors: the endpoint works.
pub(crate) fn counts_against(err: &Error) -> bool {
    match err.code() {
        StatusCode::DATA_LOSS => true,
        StatusCode::UNAVAILABLE | StatusCode::INTERNAL => err.outcome() == Outcome::Executed,
        _ => false,
    }
}

/// What happened to an endpoint's ejection state after a result.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Transition {
    None,
    Ejected { times: u32, for_how_long: Duration },
    Readmitted,
}

/// One endpoint's ejection state.
#[derive(Debug, Default)]
pub(crate) struct OutlierState {
    /// Attempts and failures (that count) in the current success-rate interval.
    interval_attempts: AtomicU32,
    interval_failures: AtomicU32,
    failures: AtomicU32,
    /// Ejected until this many nanoseconds after the channel's epoch; 0 when not ejected.
    ejected_until: AtomicU64,
    /// Times ejected so far.
    times: AtomicU32,
    /// The readmission probe after an ejection: [`PROBE_IDLE`], running, or passed.
    probe: AtomicU8,
}

/// No probe since the last ejection.
const PROBE_IDLE: u8 = 0;
const PROBE_RUNNING: u8 = 1;
const PROBE_PASSED: u8 = 2;

impl OutlierState {
    /// Whether the endpoint is out of rotation at `at` (nanoseconds since the epoch): its
    /// ejection time is not over, or it is and no readmission probe has passed yet.
    pub(crate) fn is_ejected(&self, at: u64) -> bool {
        match self.ejected_until.load(Ordering::Relaxed) {
            0 => false,
            until => until > at || self.probe.load(Ordering::Relaxed) != PROBE_PASSED,
        }
    }

    /// Whether the ejection time is not over at `at`.
    fn in_ejection_time(&self, at: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > at
    }

    /// Whether a readmission probe should start now (the ejection time is over and none ran):
    /// true for one caller only.
    pub(crate) fn claim_probe(&self, at: u64) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0
            && until <= at
            && self
                .probe
                .compare_exchange(
                    PROBE_IDLE,
                    PROBE_RUNNING,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// The probe's result: passed, the endpoint is picked again (on probation); failed, it is
    /// ejected again, for longer.
    pub(crate) fn probed(&self, passed: bool, config: &OutlierDetection, at: u64) -> Transition {
        if passed {
            self.probe.store(PROBE_PASSED, Ordering::Relaxed);
            return Transition::None;
        }
        self.eject(config, at)
    }

    /// Counts an attempt (and whether it failed) for the success-rate rule.
    pub(crate) fn count(&self, failed: bool) {
        self.interval_attempts.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.interval_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The interval's (attempts, failures), starting the next interval.
    pub(crate) fn take_interval(&self) -> (u32, u32) {
        (
            self.interval_attempts.swap(0, Ordering::Relaxed),
            self.interval_failures.swap(0, Ordering::Relaxed),
        )
    }

    /// Ejects now, whatever the failures in a row (the success-rate rule).
    pub(crate) fn eject(&self, config: &OutlierDetection, at: u64) -> Transition {
        if self.in_ejection_time(at) {
            return Transition::None;
        }
        let times = self.times.fetch_add(1, Ordering::Relaxed) + 1;
        let for_how_long = config.ejection_time(times);
        let until = at.saturating_add(u64::try_from(for_how_long.as_nanos()).unwrap_or(u64::MAX));
        self.ejected_until.store(until.max(1), Ordering::Relaxed);
        self.probe.store(PROBE_IDLE, Ordering::Relaxed);
        self.failures.store(0, Ordering::Relaxed);
        Transition::Ejected {
            times,
            for_how_long,
        }
    }

    /// Records a success: a probation ends, the failure count starts again.
    pub(crate) fn succeeded(&self) -> Transition {
        // Read first: on the common path nothing is written, so calls on other threads keep the
        // cache line shared.
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.ejected_until.load(Ordering::Relaxed) != 0
            && self.ejected_until.swap(0, Ordering::Relaxed) != 0
        {
            Transition::Readmitted
        } else {
            Transition::None
        }
    }

    /// Records a failure that counts; ejects if that makes `consecutive_failures` in a row (or
    /// the endpoint is on probation) and `may_eject` allows it.
    pub(crate) fn failed(
        &self,
        config: &OutlierDetection,
        at: u64,
        may_eject: impl FnOnce() -> bool,
    ) -> Transition {
        let on_probation = self.ejected_until.load(Ordering::Relaxed) != 0;
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if self.in_ejection_time(at) || (failures < config.consecutive_failures && !on_probation) {
            return Transition::None;
        }
        if !may_eject() {
            return Transition::None;
        }
        self.eject(config, at)
    }
}

/// Nanoseconds from `epoch` to `now`.
pub(crate) fn since(epoch: Instant, now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX)
}

/// Whether `ejected` of `total` endpoints is past the panic threshold: then ejection is ignored.
pub(crate) fn in_panic(config: &OutlierDetection, ejected: usize, total: usize) -> bool {
    let healthy = total.saturating_sub(ejected);
    // healthy / total < threshold / 100, in integers.
    ejected > 0 && healthy * 100 < total * config.panic_threshold_percent as usize
}

/// Whether one more of `total` endpoints may be ejected when `ejected` already are.
pub(crate) fn may_eject_another(config: &OutlierDetection, ejected: usize, total: usize) -> bool {
    ejected == 0 || (ejected + 1) * 100 <= total * config.max_ejected_percent as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    #[test]
    fn five_failures_eject_for_base_times_count_and_probation_re_ejects_at_once() {
        let config = OutlierDetection::new().base_ejection_time(Duration::from_secs(30));
        let state = OutlierState::default();
        for _ in 0..4 {
            assert_eq!(state.failed(&config, 0, || true), Transition::None);
        }
        assert_eq!(
            state.failed(&config, 0, || true),
            Transition::Ejected {
                times: 1,
                for_how_long: Duration::from_secs(30)
            }
        );
        assert!(state.is_ejected(29 * SECOND));
        // Time up: still out until a probe passes, and one caller runs it.
        assert!(state.is_ejected(30 * SECOND));
        assert!(!state.claim_probe(29 * SECOND));
        assert!(state.claim_probe(30 * SECOND));
        assert!(!state.claim_probe(30 * SECOND), "one probe at a time");
        assert_eq!(state.probed(true, &config, 30 * SECOND), Transition::None);
        assert!(!state.is_ejected(30 * SECOND));
        // On probation after 30 s: one failure ejects again, for twice as long.
        assert_eq!(
            state.failed(&config, 31 * SECOND, || true),
            Transition::Ejected {
                times: 2,
                for_how_long: Duration::from_secs(60)
            }
        );
        assert!(state.is_ejected(90 * SECOND));
        // A failed probe ejects again, for longer still.
        assert!(state.claim_probe(91 * SECOND));
        assert_eq!(
            state.probed(false, &config, 91 * SECOND),
            Transition::Ejected {
                times: 3,
                for_how_long: Duration::from_secs(90)
            }
        );
        assert!(state.claim_probe(181 * SECOND));
        state.probed(true, &config, 181 * SECOND);
        // After that, a success readmits and clears the count.
        assert_eq!(state.succeeded(), Transition::Readmitted);
        assert!(!state.is_ejected(182 * SECOND));
        assert_eq!(state.succeeded(), Transition::None);
        for _ in 0..4 {
            assert_eq!(
                state.failed(&config, 200 * SECOND, || true),
                Transition::None
            );
        }
        // The cap: 300 s however often.
        let capped = OutlierDetection::new().consecutive_failures(1);
        let state = OutlierState::default();
        for n in 0..20u64 {
            let _ = state.failed(&capped, n * 1000 * SECOND, || true);
        }
        assert!(!state.claim_probe(19_000 * SECOND + 299 * SECOND));
        assert!(state.claim_probe(19_000 * SECOND + 300 * SECOND));
    }

    #[test]
    fn a_refused_ejection_leaves_the_endpoint_in_and_a_success_in_between_resets() {
        let config = OutlierDetection::new();
        let state = OutlierState::default();
        for _ in 0..4 {
            state.failed(&config, 0, || true);
        }
        assert_eq!(state.succeeded(), Transition::None);
        for _ in 0..4 {
            assert_eq!(state.failed(&config, 0, || true), Transition::None);
        }
        assert_eq!(state.failed(&config, 0, || false), Transition::None);
        assert!(!state.is_ejected(0));
    }

    #[test]
    fn the_ejection_cap_and_the_panic_threshold() {
        let config = OutlierDetection::new();
        // 50 %: of 3, one may be ejected; of 4, two; of 1, one (always one).
        assert!(may_eject_another(&config, 0, 3));
        assert!(!may_eject_another(&config, 1, 3));
        assert!(may_eject_another(&config, 1, 4));
        assert!(!may_eject_another(&config, 2, 4));
        assert!(may_eject_another(&config, 0, 1));
        // Panic below 50 % healthy.
        assert!(!in_panic(&config, 1, 3));
        assert!(in_panic(&config, 2, 3));
        assert!(!in_panic(&config, 2, 4));
        assert!(in_panic(&config, 1, 1));
        assert!(!in_panic(&config.panic_threshold_percent(0), 3, 3));
    }

    #[test]
    fn the_success_rate_rule_ejects_the_outlier_among_enough_busy_endpoints() {
        let rule = SuccessRate::new().request_volume(100);
        // Four at 100 %, one at 50 %: with five, a lone outlier is 2 deviations below the mean.
        let counts = [(200, 0), (200, 0), (150, 75), (200, 0), (200, 0)];
        assert_eq!(success_rate_outliers(&rule, &counts), [2]);
        // Under the volume, an endpoint is not judged, and four are too few.
        let counts = [(200, 0), (200, 0), (99, 90), (200, 0), (200, 0)];
        assert!(success_rate_outliers(&rule, &counts).is_empty());
        // All alike: nobody is an outlier.
        let counts = [(200, 20); 6];
        assert!(success_rate_outliers(&rule, &counts).is_empty());
        // Spread evenly: nothing below 1.9 deviations.
        let counts = [(100, 0), (100, 5), (100, 10), (100, 15), (100, 20)];
        assert!(success_rate_outliers(&rule, &counts).is_empty());
    }

    #[test]
    fn only_failures_of_the_endpoint_count() {
        let failing = |code, outcome| Error::from_code(code, "x", outcome);
        assert!(counts_against(&failing(
            StatusCode::UNAVAILABLE,
            Outcome::Executed
        )));
        assert!(counts_against(&failing(
            StatusCode::INTERNAL,
            Outcome::Executed
        )));
        assert!(counts_against(&failing(
            StatusCode::DATA_LOSS,
            Outcome::MaybeExecuted
        )));
        for (code, outcome) in [
            (StatusCode::UNAVAILABLE, Outcome::MaybeExecuted),
            (StatusCode::UNAVAILABLE, Outcome::NotExecuted),
            (StatusCode::DEADLINE_EXCEEDED, Outcome::MaybeExecuted),
            (StatusCode::RESOURCE_EXHAUSTED, Outcome::NotExecuted),
            (StatusCode::NOT_FOUND, Outcome::Executed),
        ] {
            assert!(!counts_against(&failing(code, outcome)), "{code} {outcome}");
        }
    }
}
