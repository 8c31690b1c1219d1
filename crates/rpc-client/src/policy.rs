//! What the client may do again and how fast: backoff, the retry policy, hedging and the retry
//! budget. Plain configuration; the layers in `retry.rs` and `hedge.rs` act on it.

use std::time::Duration;

use rand::Rng;
use rpc_core::StatusCode;

/// How a wait between attempts is spread.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum Jitter {
    /// No spreading: exactly the backoff ceiling.
    None,
    /// Uniform between zero and the ceiling ("full jitter"): clients that failed together do not
    /// come back together.
    Full,
    /// The ceiling times a uniform factor in `[1 - f, 1 + f]`.
    Proportional(f64),
}

/// Exponential backoff: the `n`-th wait (from 0) is at most `min(max, initial × multiplier^n)`,
/// spread by [`Jitter`].
///
/// ```
/// use std::time::Duration;
/// use keel::client::Backoff;
///
/// let backoff = Backoff::retry_default();
/// assert_eq!(backoff.ceiling(0), Duration::from_millis(50));
/// assert_eq!(backoff.ceiling(2), Duration::from_millis(200));
/// assert_eq!(backoff.ceiling(20), Duration::from_secs(2));
/// assert!(backoff.delay(1) <= Duration::from_millis(100));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    initial: Duration,
    multiplier: f64,
    max: Duration,
    jitter: Jitter,
}

impl Backoff {
    /// A backoff from `initial`, growing by `multiplier` (at least 1) up to `max`.
    #[must_use]
    pub fn new(initial: Duration, multiplier: f64, max: Duration, jitter: Jitter) -> Self {
        Self {
            initial,
            multiplier: if multiplier.is_finite() {
                multiplier.max(1.0)
            } else {
                1.0
            },
            max: max.max(initial),
            jitter,
        }
    }

    /// Between retries of a call: 50 ms, ×2, at most 2 s, full jitter.
    #[must_use]
    pub fn retry_default() -> Self {
        Self::new(
            Duration::from_millis(50),
            2.0,
            Duration::from_secs(2),
            Jitter::Full,
        )
    }

    /// Between connection attempts: 100 ms, ×1.6, at most 500 ms, jitter ±20 % (gRPC's connection
    /// backoff, with a much lower ceiling). The ceiling is what brings a restarted server back
    /// into use within about half a second; gRPC's 120 s and our earlier 10 s left calls waiting
    /// (or a cluster a server short) long after it was back. Probing twice a second costs a server
    /// that is down nothing: its kernel answers each attempt with a reset. One attempt at a time
    /// per endpoint, each bounded by the connect timeout, so a blackholed one costs one socket.
    #[must_use]
    pub fn reconnect_default() -> Self {
        Self::new(
            Duration::from_millis(100),
            1.6,
            Duration::from_millis(500),
            Jitter::Proportional(0.2),
        )
    }

    /// The `n`-th wait (from 0) before jitter.
    #[must_use]
    pub fn ceiling(&self, n: u32) -> Duration {
        let factor = self.multiplier.powi(i32::try_from(n).unwrap_or(i32::MAX));
        let secs = self.initial.as_secs_f64() * factor;
        if secs.is_finite() && secs < self.max.as_secs_f64() {
            Duration::from_secs_f64(secs)
        } else {
            self.max
        }
    }

    /// The `n`-th wait (from 0), jittered.
    #[must_use]
    pub fn delay(&self, n: u32) -> Duration {
        let ceiling = self.ceiling(n);
        match self.jitter {
            Jitter::None => ceiling,
            Jitter::Full => ceiling.mul_f64(rand::rng().random_range(0.0..=1.0)),
            Jitter::Proportional(f) => {
                let f = if f.is_finite() {
                    f.clamp(0.0, 1.0)
                } else {
                    0.0
                };
                ceiling.mul_f64(rand::rng().random_range(1.0 - f..=1.0 + f))
            }
        }
    }
}

/// The most attempts a retry policy allows, the first included.
pub const MAX_ATTEMPTS_CAP: u32 = 5;

/// When a failed call is tried again.
///
/// Whether another attempt is *safe* is decided by the call's outcome alone, in one place
/// ([`Outcome::permits_retry`](rpc_core::Outcome::permits_retry)); this policy decides whether it
/// is *worth it*: which statuses, how many attempts, how long to wait.
///
/// - NOT_SENT: tried again for every method until the deadline; not counted as an attempt and not
///   charged to the retry budget (nothing reached a server). The wait is the channel's
///   connection wait: the reconnect backoff.
/// - NOT_EXECUTED: tried again once for every method and whatever the status (the server did no
///   work: a corrupt request it refused, a full server, a drain), on another connection, not
///   counted and not charged. A second NOT_EXECUTED is an ordinary retry.
/// - EXECUTED and MAYBE_EXECUTED: tried again only for idempotent methods (and MAYBE_EXECUTED
///   also with [`CallOptions::dedupe`](crate::CallOptions::dedupe)), counted and charged.
///
/// Apart from that one free NOT_EXECUTED retry, only the statuses the policy names are retried:
/// by default UNAVAILABLE (connection lost, server draining or down) and DATA_LOSS (a frame
/// failed its checksum: corruption is what a retry recovers from). DEADLINE_EXCEEDED never is:
/// the call's one deadline has passed.
///
/// ```
/// use keel::client::RetryPolicy;
/// use keel::core::StatusCode;
///
/// let policy = RetryPolicy::new().max_attempts(4).retry_on(StatusCode::RESOURCE_EXHAUSTED);
/// assert_eq!(policy.attempts(), 4);
/// assert!(policy.retries(StatusCode::UNAVAILABLE));
/// assert!(policy.retries(StatusCode::DATA_LOSS));
/// assert!(!policy.retries(StatusCode::INTERNAL));
/// ```
#[derive(Clone, Debug, PartialEq)]
#[must_use]
pub struct RetryPolicy {
    max_attempts: u32,
    backoff: Backoff,
    statuses: Vec<StatusCode>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            backoff: Backoff::retry_default(),
            statuses: vec![StatusCode::UNAVAILABLE, StatusCode::DATA_LOSS],
        }
    }
}

impl RetryPolicy {
    /// Defaults: 3 attempts, [`Backoff::retry_default`], retry on UNAVAILABLE and DATA_LOSS.
    pub fn new() -> Self {
        Self::default()
    }

    /// At most this many counted attempts, the first included: between 1 and
    /// [`MAX_ATTEMPTS_CAP`] (5). Default 3.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.clamp(1, MAX_ATTEMPTS_CAP);
        self
    }

    /// The wait before each counted retry. Default [`Backoff::retry_default`].
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Also retry calls that fail with `code` (default: UNAVAILABLE and DATA_LOSS).
    /// DEADLINE_EXCEEDED is never retried: the call's one deadline has passed.
    pub fn retry_on(mut self, code: StatusCode) -> Self {
        if !self.statuses.contains(&code) {
            self.statuses.push(code);
        }
        self
    }

    /// Retry exactly these statuses (default: UNAVAILABLE and DATA_LOSS). The first NOT_EXECUTED
    /// failure of a call is retried whatever its status (see the type's documentation).
    pub fn retryable_statuses(mut self, codes: impl IntoIterator<Item = StatusCode>) -> Self {
        self.statuses = codes.into_iter().collect();
        self
    }

    /// The maximum number of counted attempts.
    #[must_use]
    pub fn attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The backoff between counted attempts.
    #[must_use]
    pub fn backoff_policy(&self) -> &Backoff {
        &self.backoff
    }

    /// Whether a failure with `code` is worth another attempt.
    #[must_use]
    pub fn retries(&self, code: StatusCode) -> bool {
        code != StatusCode::DEADLINE_EXCEEDED && self.statuses.contains(&code)
    }
}

/// When a hedged call sends its backup attempt.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum HedgeDelay {
    /// A fixed delay.
    Fixed(Duration),
    /// The given percentile (0 to 100) of the method's recent successful latencies, once at
    /// least [`HedgePolicy::min_samples`] are known; no hedge before that.
    Percentile(f64),
}

/// Hedged (backup) requests for idempotent methods, off by default: if the first attempt has not
/// answered after the delay, a second one goes out on another connection; the first success wins
/// and the other attempt is cancelled (CANCEL on the wire). A hedge is charged to the retry budget
/// and skipped when the budget is spent or the deadline is too close.
///
/// ```
/// use std::time::Duration;
/// use keel::client::HedgePolicy;
///
/// let fixed = HedgePolicy::after(Duration::from_millis(20));
/// let learned = HedgePolicy::at_percentile(95.0);
/// # drop((fixed, learned));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[must_use]
pub struct HedgePolicy {
    pub(crate) delay: HedgeDelay,
    pub(crate) min_samples: usize,
}

impl HedgePolicy {
    /// Hedge after a fixed delay.
    pub fn after(delay: Duration) -> Self {
        Self {
            delay: HedgeDelay::Fixed(delay),
            min_samples: 20,
        }
    }

    /// Hedge after the method's recent latency percentile (e.g. 95.0 for p95).
    pub fn at_percentile(percentile: f64) -> Self {
        let percentile = if percentile.is_finite() {
            percentile.clamp(0.0, 100.0)
        } else {
            95.0
        };
        Self {
            delay: HedgeDelay::Percentile(percentile),
            min_samples: 20,
        }
    }

    /// How many recent latencies a percentile delay needs before hedging starts. Default 20.
    pub fn min_samples(mut self, samples: usize) -> Self {
        self.min_samples = samples.max(1);
        self
    }

    /// The configured delay.
    #[must_use]
    pub fn delay(&self) -> HedgeDelay {
        self.delay
    }
}

/// The retry budget's configuration: retries (and hedges) may add up to `percent` of the calls
/// made plus `min_per_sec` per second, over a sliding window of `ttl`. Finagle's and tower's
/// defaults: 20 % plus 10 per second over 10 s. One budget is shared by all calls of a channel
/// and its clones.
///
/// ```
/// use std::time::Duration;
/// use keel::client::RetryBudget;
/// let budget = RetryBudget::new().percent(0.1).min_per_sec(5).ttl(Duration::from_secs(5));
/// # drop(budget);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[must_use]
pub struct RetryBudget {
    pub(crate) ttl: Duration,
    pub(crate) min_per_sec: u32,
    pub(crate) percent: f32,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(10),
            min_per_sec: 10,
            percent: 0.2,
        }
    }
}

impl RetryBudget {
    /// Defaults: 20 % of calls plus 10 per second, over 10 s.
    pub fn new() -> Self {
        Self::default()
    }

    /// The window: 1 s to 60 s. Default 10 s.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl.clamp(Duration::from_secs(1), Duration::from_secs(60));
        self
    }

    /// Retries allowed per second whatever the call rate. Default 10.
    pub fn min_per_sec(mut self, n: u32) -> Self {
        self.min_per_sec = n.min(1_000_000);
        self
    }

    /// Retries allowed per call made, as a fraction (0.2 = one retry per five calls), 0 to 1000.
    /// Default 0.2.
    pub fn percent(mut self, fraction: f32) -> Self {
        self.percent = if fraction.is_finite() {
            fraction.clamp(0.0, 1000.0)
        } else {
            0.2
        };
        self
    }

    pub(crate) fn build(self) -> tower::retry::budget::TpsBudget {
        tower::retry::budget::TpsBudget::new(self.ttl, self.min_per_sec, self.percent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_backoff_grows_by_1_6_to_500_ms_with_20_percent_jitter() {
        let b = Backoff::reconnect_default();
        assert_eq!(b.ceiling(0), Duration::from_millis(100));
        assert_eq!(b.ceiling(1), Duration::from_millis(160));
        assert_eq!(b.ceiling(2).as_millis(), 256);
        assert_eq!(b.ceiling(3).as_millis(), 409);
        assert_eq!(b.ceiling(4), Duration::from_millis(500));
        assert_eq!(b.ceiling(30), Duration::from_millis(500));
        for n in 0..12 {
            let d = b.delay(n);
            assert!(d >= b.ceiling(n).mul_f64(0.8) && d <= b.ceiling(n).mul_f64(1.2));
        }
    }

    #[test]
    fn full_jitter_stays_under_the_ceiling_and_spreads() {
        let b = Backoff::retry_default();
        let delays: Vec<Duration> = (0..200).map(|_| b.delay(1)).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(100)));
        let min = delays.iter().min().copied().unwrap_or_default();
        let max = delays.iter().max().copied().unwrap_or_default();
        assert!(max - min > Duration::from_millis(50), "{min:?}..{max:?}");
    }

    #[test]
    fn attempts_are_capped_at_five() {
        assert_eq!(RetryPolicy::new().max_attempts(9).attempts(), 5);
        assert_eq!(RetryPolicy::new().max_attempts(0).attempts(), 1);
        assert_eq!(RetryPolicy::new().attempts(), 3);
    }

    #[test]
    fn deadline_exceeded_is_never_retried() {
        let p = RetryPolicy::new().retry_on(StatusCode::DEADLINE_EXCEEDED);
        assert!(!p.retries(StatusCode::DEADLINE_EXCEEDED));
    }
}
