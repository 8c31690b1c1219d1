//! The retry-safety outcome every failed call carries.

use std::fmt;

/// What is known about whether a failed call ran on the server.
///
/// Every failed call carries exactly one outcome, and retries are decided from it alone (see
/// [`Outcome::permits_retry`]). docs/PROTOCOL.md, section "Retry-safety outcomes", says how a
/// client learns each one from the wire. The order of the variants is from safest to least safe.
///
/// ```
/// use keel::core::{Idempotency, Outcome};
/// assert!(Outcome::NotExecuted.permits_retry(Idempotency::NonIdempotent));
/// assert!(!Outcome::MaybeExecuted.permits_retry(Idempotency::NonIdempotent));
/// assert!(Outcome::MaybeExecuted.permits_retry(Idempotency::Idempotent));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Outcome {
    /// The request never fully left the client: the server cannot have decoded it, because a frame
    /// is only dispatched after its whole body passed its checksum. Always safe to retry.
    NotSent,
    /// The server guarantees the application never saw the call: a RESPONSE with the NOT_EXECUTED
    /// flag, or a call id above the last call id of a GOAWAY. Safe to retry even when not
    /// idempotent.
    NotExecuted,
    /// The server dispatched the call and reported how it ended. Retry only an idempotent method,
    /// and only for a status the retry policy names.
    Executed,
    /// Nobody can tell whether the call ran: the connection was lost, a heartbeat timed out, the
    /// response was corrupt, or the deadline passed after the request was sent. Retry only an
    /// idempotent method.
    MaybeExecuted,
}

/// Whether running a method twice has the same effect as running it once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Idempotency {
    /// Running the method again is harmless; it may be retried after any outcome.
    Idempotent,
    /// Running the method twice may do harm; it is retried only when it surely did not run.
    NonIdempotent,
}

impl Idempotency {
    /// `Idempotent` when `idempotent` is true.
    #[must_use]
    pub const fn from_flag(idempotent: bool) -> Self {
        if idempotent {
            Self::Idempotent
        } else {
            Self::NonIdempotent
        }
    }
}

impl Outcome {
    /// Whether the safety rule allows another attempt of a call that failed with this outcome.
    ///
    /// This is the one place the rule lives: NOT_SENT and NOT_EXECUTED are safe for every method;
    /// EXECUTED and MAYBE_EXECUTED only for idempotent ones. (Whether the *status* is worth
    /// retrying, and whether attempts and budget remain, are the retry policy's business on top of
    /// this.)
    #[must_use]
    pub const fn permits_retry(self, idempotency: Idempotency) -> bool {
        match self {
            Self::NotSent | Self::NotExecuted => true,
            Self::Executed | Self::MaybeExecuted => matches!(idempotency, Idempotency::Idempotent),
        }
    }

    /// The outcome of a call made of several attempts (retries, hedges): the least safe of
    /// theirs. A call of which one attempt may have run may have run, whatever the later attempts
    /// say.
    ///
    /// ```
    /// use keel::core::Outcome;
    /// assert_eq!(Outcome::MaybeExecuted.combine(Outcome::NotSent), Outcome::MaybeExecuted);
    /// assert_eq!(Outcome::NotSent.combine(Outcome::NotExecuted), Outcome::NotExecuted);
    /// ```
    #[must_use]
    pub fn combine(self, other: Self) -> Self {
        self.max(other)
    }

    /// The outcome's name as docs/PROTOCOL.md writes it, e.g. `NOT_EXECUTED`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NotSent => "NOT_SENT",
            Self::NotExecuted => "NOT_EXECUTED",
            Self::Executed => "EXECUTED",
            Self::MaybeExecuted => "MAYBE_EXECUTED",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safety_rule_table() {
        use Idempotency::{Idempotent, NonIdempotent};
        let table = [
            (Outcome::NotSent, true, true),
            (Outcome::NotExecuted, true, true),
            (Outcome::Executed, false, true),
            (Outcome::MaybeExecuted, false, true),
        ];
        for (outcome, non_idempotent, idempotent) in table {
            assert_eq!(
                outcome.permits_retry(NonIdempotent),
                non_idempotent,
                "{outcome}"
            );
            assert_eq!(outcome.permits_retry(Idempotent), idempotent, "{outcome}");
        }
    }
}
