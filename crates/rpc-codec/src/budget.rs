//! A deadline as it travels on the wire: the remaining budget in microseconds.

use std::time::Duration;

use rpc_core::{Deadline, Instant};

/// The remaining time budget a REQUEST carries, in whole microseconds.
///
/// Relative, so the peers' clocks never need to agree. `u64::MAX` means *no deadline*; `0` means
/// *already expired* (the server answers DEADLINE_EXCEEDED with NOT_EXECUTED without dispatching).
/// Converting from a duration rounds *up*, so a live deadline is never sent as expired.
///
/// ```
/// use std::time::Duration;
/// use rpc_codec::Budget;
/// assert_eq!(Budget::from_duration(Duration::from_nanos(1)).as_micros(), 1);
/// assert_eq!(Budget::from_duration(Duration::from_millis(250)).as_duration(), Some(Duration::from_millis(250)));
/// assert_eq!(Budget::NONE.as_duration(), None);
/// assert!(Budget::from_micros(0).is_expired());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Budget(u64);

impl Budget {
    /// No deadline (`u64::MAX` on the wire).
    pub const NONE: Self = Self(u64::MAX);

    /// A budget of `micros` microseconds; `u64::MAX` is [`Budget::NONE`].
    #[must_use]
    pub const fn from_micros(micros: u64) -> Self {
        Self(micros)
    }

    /// A budget of `duration`, rounded up to the microsecond and capped just below
    /// [`Budget::NONE`].
    #[must_use]
    pub fn from_duration(duration: Duration) -> Self {
        let micros = duration.as_nanos().div_ceil(1_000);
        Self(u64::try_from(micros).unwrap_or(u64::MAX).min(u64::MAX - 1))
    }

    /// The budget left at `now` until `deadline` ([`Budget::NONE`] for no deadline).
    #[must_use]
    pub fn until(deadline: Option<Deadline>, now: Instant) -> Self {
        deadline.map_or(Self::NONE, |d| Self::from_duration(d.remaining(now)))
    }

    /// The deadline this budget sets when it arrives at `now`.
    #[must_use]
    pub fn deadline_from(self, now: Instant) -> Option<Deadline> {
        self.as_duration()
            .map(|budget| Deadline::after(now, budget))
    }

    /// The raw microseconds.
    #[must_use]
    pub const fn as_micros(self) -> u64 {
        self.0
    }

    /// The budget as a duration, `None` for no deadline.
    #[must_use]
    pub const fn as_duration(self) -> Option<Duration> {
        if self.0 == u64::MAX {
            None
        } else {
            Some(Duration::from_micros(self.0))
        }
    }

    /// Whether the budget is zero: the call expired before it was sent.
    #[must_use]
    pub const fn is_expired(self) -> bool {
        self.0 == 0
    }
}
