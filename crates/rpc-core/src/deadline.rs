//! Deadlines: an absolute instant locally, a relative budget on the wire.

use std::time::Duration;

/// The clock deadlines are measured on: tokio's, the one the runtimes' timers use, so a test on
/// tokio's paused clock drives deadlines too. Outside a runtime with a paused clock it reads the
/// same as [`std::time::Instant`]; convert one with [`Instant::from_std`].
pub use tokio::time::Instant;

/// The instant by which a call must complete.
///
/// Locally a deadline is an absolute [`Instant`] on tokio's clock, so every layer (retries, hedges, the server's
/// handler) measures against the same point. On the wire it travels as the *remaining budget*, a
/// relative duration, so the two hosts' clocks never need to agree: the receiver adds the budget to
/// its own clock on arrival (see docs/PROTOCOL.md, "Deadlines"). Time spent in flight is not
/// subtracted, so the server's view of the deadline is at most one one-way latency late.
///
/// ```
/// use std::time::Duration;
/// use keel::core::{Deadline, Instant};
/// let now = Instant::now();
/// let deadline = Deadline::after(now, Duration::from_millis(300));
/// assert_eq!(deadline.remaining(now + Duration::from_millis(100)), Duration::from_millis(200));
/// assert!(deadline.is_expired(now + Duration::from_millis(300)));
/// assert_eq!(deadline.remaining(now + Duration::from_secs(1)), Duration::ZERO);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline {
    at: Instant,
}

impl Deadline {
    /// The deadline at `at`.
    #[must_use]
    pub const fn at(at: Instant) -> Self {
        Self { at }
    }

    /// The deadline `budget` after `now`. A budget too large to represent saturates to about
    /// a century from now rather than panicking.
    #[must_use]
    pub fn after(now: Instant, budget: Duration) -> Self {
        const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
        let at = now
            .checked_add(budget)
            .or_else(|| now.checked_add(CENTURY))
            .unwrap_or(now);
        Self { at }
    }

    /// The deadline `budget` from the current time.
    #[must_use]
    pub fn from_now(budget: Duration) -> Self {
        Self::after(Instant::now(), budget)
    }

    /// The instant itself.
    #[must_use]
    pub const fn instant(self) -> Instant {
        self.at
    }

    /// The time left at `now`; zero once expired.
    #[must_use]
    pub fn remaining(self, now: Instant) -> Duration {
        self.at.saturating_duration_since(now)
    }

    /// Whether the deadline has passed at `now` (a deadline is expired *at* its instant).
    #[must_use]
    pub fn is_expired(self, now: Instant) -> bool {
        now >= self.at
    }

    /// The earlier of two deadlines.
    #[must_use]
    pub fn min(self, other: Self) -> Self {
        Ord::min(self, other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_budget_saturates_instead_of_panicking() {
        let now = Instant::now();
        let deadline = Deadline::after(now, Duration::MAX);
        assert!(deadline.instant() > now);
        assert!(!deadline.is_expired(now));
    }

    #[test]
    fn min_picks_earlier() {
        let now = Instant::now();
        let a = Deadline::after(now, Duration::from_millis(5));
        let b = Deadline::after(now, Duration::from_millis(9));
        assert_eq!(a.min(b), a);
        assert_eq!(b.min(a), a);
    }
}
