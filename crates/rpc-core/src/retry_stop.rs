//! Why a client's retry layer gave up on a call it would otherwise have tried again.

use std::fmt;
use std::time::Duration;

use crate::BoxError;

/// Why the retry layer returned a failure it would otherwise have tried again. It is the cause on
/// top of the last attempt's error, whose own cause chain continues beneath it.
#[derive(Debug)]
pub struct RetryStopped {
    reason: StopReason,
    source: Option<BoxError>,
}

/// Why retrying stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopReason {
    /// The channel's retry budget is spent: retries are already at their share of the calls.
    BudgetExhausted,
    /// The policy's maximum number of attempts was made.
    AttemptsExhausted {
        /// Attempts made.
        attempts: u32,
    },
    /// The call may have run and relies on a server's dedupe window, but the server now reached
    /// has none or is a different instance (it restarted): another attempt could run it twice.
    NoDedupeWindow,
    /// Another attempt could not finish before the deadline.
    NoTimeLeft {
        /// Time left before the deadline.
        remaining: Duration,
        /// The backoff wait plus the method's observed latency.
        needed: Duration,
    },
}

impl RetryStopped {
    /// Retrying stopped for `reason`; `source` is the last attempt's cause (the retry layer puts
    /// this on top of it with [`Error::map_source`](crate::Error::map_source)).
    #[must_use]
    pub fn new(reason: StopReason, source: Option<BoxError>) -> Self {
        Self { reason, source }
    }

    /// Why retrying stopped.
    #[must_use]
    pub fn reason(&self) -> StopReason {
        self.reason
    }
}

impl fmt::Display for RetryStopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason {
            StopReason::BudgetExhausted => f.write_str("not retried: the retry budget is spent"),
            StopReason::NoDedupeWindow => f.write_str(
                "not retried: the server now reached cannot deduplicate the call (restarted, or no window)",
            ),
            StopReason::AttemptsExhausted { attempts } => {
                write!(f, "not retried: {attempts} attempts made")
            }
            StopReason::NoTimeLeft { remaining, needed } => write!(
                f,
                "not retried: {remaining:?} left before the deadline, another attempt needs {needed:?}"
            ),
        }
    }
}

impl std::error::Error for RetryStopped {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}
