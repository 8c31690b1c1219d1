//! A circuit breaker per endpoint, with Hystrix's rules: over a rolling window (10 buckets of
//! 1 s), at least 20 attempts with at least 50 % of them failed open the breaker; an open breaker
//! takes the endpoint out of every balancer's picks for 5 s; then one trial attempt goes through
//! (half-open): its success closes the breaker, its failure opens it again.
//!
//! What fails an attempt here is what ejects an endpoint ([`super::outlier`]) plus a deadline
//! passed on the endpoint: the breaker also guards against a server too slow to be worth calling.
//! Outlier ejection reacts to failures in a row, the breaker to a failure *rate*: a server that
//! fails every other call is never ejected, but its breaker opens.
//!
//! The counters are atomics the callers update: one add per attempt, two when it fails. A bucket
//! is reset by the first attempt that finds it stale; two attempts racing on that may lose one
//! count, which only blurs a rate over hundreds.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use rpc_core::{Error, Outcome, StatusCode};

/// Settings of the circuit breakers; see
/// [`ChannelBuilder::circuit_breaker`](crate::ChannelBuilder::circuit_breaker).
#[derive(Clone, Debug)]
pub struct CircuitBreaker {
    pub(crate) bucket: Duration,
    pub(crate) min_attempts: u32,
    pub(crate) failure_percent: u32,
    pub(crate) open_for: Duration,
}

/// Buckets in the rolling window.
const BUCKETS: usize = 10;

impl CircuitBreaker {
    /// Hystrix's defaults: a 10 s window, at least 20 attempts, 50 % failed, open for 5 s.
    #[must_use]
    pub fn new() -> Self {
        Self {
            bucket: Duration::from_secs(1),
            min_attempts: 20,
            failure_percent: 50,
            open_for: Duration::from_secs(5),
        }
    }

    /// The rolling window (split in 10 buckets). Default 10 s; at least 10 ms.
    #[must_use]
    pub fn window(mut self, window: Duration) -> Self {
        self.bucket = (window / 10).max(Duration::from_millis(1));
        self
    }

    /// Attempts in the window before the rate counts. Default 20.
    #[must_use]
    pub fn min_attempts(mut self, attempts: u32) -> Self {
        self.min_attempts = attempts.max(1);
        self
    }

    /// The failure rate, in percent, that opens the breaker. Default 50.
    #[must_use]
    pub fn failure_percent(mut self, percent: u32) -> Self {
        self.failure_percent = percent.clamp(1, 100);
        self
    }

    /// How long an open breaker stays open before its trial attempt. Default 5 s.
    #[must_use]
    pub fn open_for(mut self, time: Duration) -> Self {
        self.open_for = time;
        self
    }

    fn bucket_nanos(&self) -> u64 {
        u64::try_from(self.bucket.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether an attempt's failure counts for the breaker: what counts for outlier ejection, and a
/// deadline that passed while the endpoint had the call.
pub(crate) fn counts_against(err: &Error) -> bool {
    super::outlier::counts_against(err)
        || (err.code() == StatusCode::DEADLINE_EXCEEDED && err.outcome() == Outcome::MaybeExecuted)
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

#[derive(Debug, Default)]
struct Bucket {
    /// The bucket's number (time / bucket length) + 1; 0 for never used.
    number: AtomicU64,
    attempts: AtomicU32,
    failures: AtomicU32,
}

/// What a result did to the breaker.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Transition {
    None,
    Opened,
    Closed,
}

/// One endpoint's breaker.
#[derive(Debug, Default)]
pub(crate) struct BreakerState {
    buckets: [Bucket; BUCKETS],
    state: AtomicU8,
    /// Open until this many nanoseconds after the channel's epoch.
    open_until: AtomicU64,
    /// The half-open trial is out.
    trial: AtomicBool,
}

impl BreakerState {
    /// Whether the breaker keeps the endpoint out of the picks at `at` (nanoseconds since the
    /// epoch): open and not yet due for its trial, or half-open with the trial out.
    pub(crate) fn blocks(&self, at: u64) -> bool {
        match self.state.load(Ordering::Relaxed) {
            OPEN => self.open_until.load(Ordering::Relaxed) > at,
            HALF_OPEN => self.trial.load(Ordering::Relaxed),
            _ => false,
        }
    }

    /// Called for the endpoint a pick chose: an open breaker past its time lets this attempt
    /// through as its one trial. False if another attempt took the trial first.
    pub(crate) fn admit(&self, at: u64) -> bool {
        match self.state.load(Ordering::Relaxed) {
            CLOSED => true,
            OPEN if self.open_until.load(Ordering::Relaxed) <= at
                && self
                    .trial
                    .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok() =>
            {
                self.state.store(HALF_OPEN, Ordering::Relaxed);
                true
            }
            _ => false,
        }
    }

    /// Whether the breaker is half-open: right after `admit`, whether this attempt is the trial.
    pub(crate) fn is_half_open(&self) -> bool {
        self.state.load(Ordering::Relaxed) == HALF_OPEN
    }

    /// Records an attempt's result at `at`.
    pub(crate) fn record(&self, config: &CircuitBreaker, at: u64, failed: bool) -> Transition {
        match self.state.load(Ordering::Relaxed) {
            HALF_OPEN => {
                self.trial.store(false, Ordering::Relaxed);
                if failed {
                    self.open(config, at);
                    return Transition::Opened;
                }
                for bucket in &self.buckets {
                    bucket.number.store(0, Ordering::Relaxed);
                }
                self.state.store(CLOSED, Ordering::Relaxed);
                return Transition::Closed;
            }
            OPEN => return Transition::None,
            _ => {}
        }
        let number = at / config.bucket_nanos() + 1;
        let Some(bucket) = self
            .buckets
            .get(usize::try_from(number % BUCKETS as u64).unwrap_or(0))
        else {
            return Transition::None;
        };
        if bucket.number.load(Ordering::Relaxed) != number {
            bucket.number.store(number, Ordering::Relaxed);
            bucket.attempts.store(0, Ordering::Relaxed);
            bucket.failures.store(0, Ordering::Relaxed);
        }
        bucket.attempts.fetch_add(1, Ordering::Relaxed);
        if !failed {
            return Transition::None;
        }
        bucket.failures.fetch_add(1, Ordering::Relaxed);
        let (mut attempts, mut failures) = (0u64, 0u64);
        for bucket in &self.buckets {
            let n = bucket.number.load(Ordering::Relaxed);
            if n != 0 && n + (BUCKETS as u64) > number {
                attempts += u64::from(bucket.attempts.load(Ordering::Relaxed));
                failures += u64::from(bucket.failures.load(Ordering::Relaxed));
            }
        }
        if attempts >= u64::from(config.min_attempts)
            && failures * 100 >= attempts * u64::from(config.failure_percent)
        {
            self.open(config, at);
            return Transition::Opened;
        }
        Transition::None
    }

    fn open(&self, config: &CircuitBreaker, at: u64) {
        let until =
            at.saturating_add(u64::try_from(config.open_for.as_nanos()).unwrap_or(u64::MAX));
        self.open_until.store(until, Ordering::Relaxed);
        self.state.store(OPEN, Ordering::Relaxed);
    }
}

/// Why a call was refused without being sent: every endpoint's circuit breaker is open. Not
/// retried: the retry layer would only find them open again.
#[derive(Clone, Copy, Debug)]
pub struct BreakerOpen;

impl std::fmt::Display for BreakerOpen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not sent: the circuit breaker of every endpoint is open")
    }
}

impl std::error::Error for BreakerOpen {}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn a_failure_rate_over_the_volume_opens_then_one_trial_closes_or_reopens() {
        let config = CircuitBreaker::new();
        let breaker = BreakerState::default();
        // 19 failures: below the volume of 20, still closed.
        for i in 0..19 {
            assert_eq!(breaker.record(&config, i * MS, true), Transition::None);
        }
        assert!(!breaker.blocks(20 * MS));
        // The 20th attempt fails too: 100 % of 20.
        assert_eq!(breaker.record(&config, 20 * MS, true), Transition::Opened);
        assert!(breaker.blocks(21 * MS));
        assert!(!breaker.admit(21 * MS));
        // After 5 s, one trial and only one.
        let later = 20 * MS + 5_000 * MS;
        assert!(!breaker.blocks(later));
        assert!(breaker.admit(later));
        assert!(!breaker.admit(later), "one trial at a time");
        assert!(breaker.blocks(later));
        assert_eq!(
            breaker.record(&config, later + MS, true),
            Transition::Opened
        );
        assert!(breaker.blocks(later + 2 * MS));
        let trial = later + MS + 5_000 * MS;
        assert!(breaker.admit(trial));
        assert_eq!(breaker.record(&config, trial, false), Transition::Closed);
        assert!(!breaker.blocks(trial));
        // Closed with its window cleared: it takes another 20 attempts to open.
        for i in 0..19 {
            assert_eq!(
                breaker.record(&config, trial + i * MS, true),
                Transition::None
            );
        }
    }

    #[test]
    fn under_half_failed_stays_closed_and_old_buckets_fall_out() {
        let config = CircuitBreaker::new();
        let breaker = BreakerState::default();
        for i in 0..100u64 {
            // Every third attempt fails: 33 %.
            assert_eq!(
                breaker.record(&config, i * 10 * MS, i % 3 == 0),
                Transition::None
            );
        }
        // 15 failures 11 s ago count no more: then it takes 10 new ones of 20 to open it.
        let breaker = BreakerState::default();
        for i in 0..15 {
            breaker.record(&config, i * MS, true);
        }
        let start = 11_000 * MS;
        for i in 0..10 {
            assert_eq!(
                breaker.record(&config, start + i * MS, false),
                Transition::None
            );
        }
        for i in 10..19 {
            assert_eq!(
                breaker.record(&config, start + i * MS, true),
                Transition::None
            );
        }
        assert_eq!(
            breaker.record(&config, start + 19 * MS, true),
            Transition::Opened
        );
    }

    #[test]
    fn deadlines_count_for_the_breaker_but_not_application_errors() {
        let err = |code, outcome| Error::from_code(code, "x", outcome);
        assert!(counts_against(&err(
            StatusCode::DEADLINE_EXCEEDED,
            Outcome::MaybeExecuted
        )));
        assert!(counts_against(&err(
            StatusCode::INTERNAL,
            Outcome::Executed
        )));
        assert!(!counts_against(&err(
            StatusCode::DEADLINE_EXCEEDED,
            Outcome::NotSent
        )));
        assert!(!counts_against(&err(
            StatusCode::NOT_FOUND,
            Outcome::Executed
        )));
    }
}
