//! The error a failed call returns to its caller.

use std::error::Error as StdError;
use std::fmt;

use crate::current::InheritedDeadline;
use crate::{Outcome, RetryStopped, Status, StatusCode, StopReason};

/// A boxed cause, as kept in an [`Error`]'s source chain.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Where a failed call failed, as a typed value: what a caller (and keel's own retry layer)
/// decides from, instead of matching messages or searching the cause chain for private types.
///
/// The [`Status`] says what the peer would say; the [`Outcome`] says whether the call may have
/// run; the kind says which part of the path gave up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The server answered the call with this status, or the error was made from a status alone
    /// (as a handler makes it). The default for [`Error::new`].
    Status,
    /// No connection to a server was ready: connecting kept failing until the deadline, or the
    /// call failed fast while it did. Trying again at once would wait for the same.
    Connect,
    /// Every endpoint the call could go to is held by an open circuit breaker.
    BreakerOpen,
    /// The channel has no endpoint to send to (its endpoint set is empty).
    NoEndpoint,
    /// The connection broke, went away, or its server stopped answering while the call was
    /// queued or in flight.
    ConnectionLost,
    /// The call's deadline passed on this side, or too little of it was left to send the call.
    Deadline,
    /// The peer broke the protocol for this call: its response failed a check or could not be
    /// read.
    Protocol,
    /// The call was refused on this side before anything was sent: a request over the server's
    /// limits, a payload that could not be encoded, a full connection queue, a bad method name.
    Local,
    /// A `#[dedupe]` call that may have run could not be tried again: the server now reachable
    /// is not the instance whose dedupe window recorded it, so another attempt could run it twice.
    NoDedupeWindow,
}

/// Why a call failed: its [`Status`], its retry-safety [`Outcome`] and the cause underneath.
///
/// One pointer wide, so `Result<T, Error>` stays small on the happy path. The cause is kept as a
/// real error value, not flattened into the message, so [`std::error::Error::source`] walks the
/// whole chain (an I/O error under a connection loss, say).
///
/// ```
/// use keel::core::{Error, Outcome, Status, StatusCode};
/// let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
/// let err = Error::new(Status::new(StatusCode::UNAVAILABLE, "connection lost"), Outcome::MaybeExecuted)
///     .with_source(io);
/// assert_eq!(err.code(), StatusCode::UNAVAILABLE);
/// assert_eq!(err.outcome(), Outcome::MaybeExecuted);
/// assert_eq!(err.to_string(), "UNAVAILABLE (MAYBE_EXECUTED): connection lost: reset by peer");
/// assert_eq!(std::error::Error::source(&err).unwrap().to_string(), "reset by peer");
/// ```
pub struct Error {
    inner: Box<Inner>,
}

struct Inner {
    status: Status,
    outcome: Outcome,
    kind: ErrorKind,
    source: Option<BoxError>,
}

impl Error {
    /// An error with this status and outcome, of kind [`ErrorKind::Status`], and no cause.
    #[must_use]
    pub fn new(status: Status, outcome: Outcome) -> Self {
        Self {
            inner: Box::new(Inner {
                status,
                outcome,
                kind: ErrorKind::Status,
                source: None,
            }),
        }
    }

    /// This error with `kind` as its kind.
    #[must_use]
    pub fn with_kind(mut self, kind: ErrorKind) -> Self {
        self.inner.kind = kind;
        self
    }

    /// Shorthand for `Error::new(Status::new(code, message), outcome)`.
    pub fn from_code(code: StatusCode, message: impl Into<String>, outcome: Outcome) -> Self {
        Self::new(Status::new(code, message), outcome)
    }

    /// This error with `source` as its cause.
    #[must_use]
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.inner.source = Some(source.into());
        self
    }

    /// This error with its cause replaced by what `wrap` makes of it: how a layer adds its own
    /// cause on top of the chain without losing what is beneath.
    #[must_use]
    pub fn map_source(mut self, wrap: impl FnOnce(Option<BoxError>) -> BoxError) -> Self {
        let source = self.inner.source.take();
        self.inner.source = Some(wrap(source));
        self
    }

    /// This error as the failure of a whole call whose earlier attempts ended `earlier`: the same
    /// status, the combined outcome ([`Outcome::combine`]), and this error as the cause when the
    /// outcome changed. A retry that was never sent must not make a call that may have run look
    /// unsent.
    #[must_use]
    pub fn after_attempts(self, earlier: Outcome) -> Self {
        let outcome = self.outcome().combine(earlier);
        if outcome == self.outcome() {
            return self;
        }
        let kind = self.kind();
        Self::new(self.status().clone(), outcome)
            .with_kind(kind)
            .with_source(self)
    }

    /// The status: code, message and metadata.
    #[must_use]
    pub fn status(&self) -> &Status {
        &self.inner.status
    }

    /// The status code.
    #[must_use]
    pub fn code(&self) -> StatusCode {
        self.inner.status.code()
    }

    /// What is known about whether the call ran on the server.
    #[must_use]
    pub fn outcome(&self) -> Outcome {
        self.inner.outcome
    }

    /// Which part of the path gave up.
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// Whether the call failed at its deadline ([`StatusCode::DEADLINE_EXCEEDED`]).
    #[must_use]
    pub fn is_deadline_exceeded(&self) -> bool {
        self.code() == StatusCode::DEADLINE_EXCEEDED
    }

    /// Whether no connection to a server could be had ([`ErrorKind::Connect`]): connecting kept
    /// failing until the deadline, or failed while the call failed fast. Nothing was sent.
    #[must_use]
    pub fn is_connect(&self) -> bool {
        self.kind() == ErrorKind::Connect
    }

    /// Whether the call was cancelled ([`StatusCode::CANCELLED`]): by the server (a CANCEL it
    /// answered, a drain), or by a handler that returned that status.
    #[must_use]
    pub fn is_cancelled(&self) -> bool {
        self.code() == StatusCode::CANCELLED
    }

    /// Whether the call may have run on the server: its outcome is EXECUTED or
    /// MAYBE_EXECUTED. A call for which this is false certainly did not run, and can be tried
    /// again whatever it does.
    #[must_use]
    pub fn may_have_run(&self) -> bool {
        matches!(self.outcome(), Outcome::Executed | Outcome::MaybeExecuted)
    }

    /// Why the client's retry layer stopped retrying this call, if that is why it failed
    /// (rather than because the failure was not retryable at all).
    ///
    /// ```
    /// use keel::core::{Error, Outcome, RetryStopped, StatusCode, StopReason};
    /// let err = Error::from_code(StatusCode::UNAVAILABLE, "connection lost", Outcome::MaybeExecuted)
    ///     .map_source(|cause| Box::new(RetryStopped::new(StopReason::BudgetExhausted, cause)));
    /// assert_eq!(err.retry_stopped(), Some(StopReason::BudgetExhausted));
    /// assert_eq!(
    ///     err.to_string(),
    ///     "UNAVAILABLE (MAYBE_EXECUTED): connection lost (not retried: the retry budget is spent)"
    /// );
    /// ```
    #[must_use]
    pub fn retry_stopped(&self) -> Option<StopReason> {
        self.causes()
            .find_map(|cause| cause.downcast_ref::<RetryStopped>())
            .map(RetryStopped::reason)
    }

    /// The deadline this call inherited from the call being served, if the call failed by it
    /// (see [`current`](crate::current)): DEADLINE_EXCEEDED because the caller upstream had no
    /// more time, rather than because the server was slow within a budget of the call's own.
    ///
    /// ```
    /// use std::time::Duration;
    /// use keel::core::{CallContext, Deadline, Error, Outcome, StatusCode};
    /// use keel::core::current;
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let ctx = CallContext::new("Shop.checkout")
    ///     .with_call_id(3)
    ///     .with_deadline(Some(Deadline::from_now(Duration::from_millis(40))));
    /// let inherited = current::scope(ctx, async { current::inherited_deadline() }).await.unwrap();
    /// let err = Error::from_code(StatusCode::DEADLINE_EXCEEDED, "deadline exceeded", Outcome::MaybeExecuted);
    /// let err = inherited.explain(err);
    /// assert_eq!(err.deadline_inherited().unwrap().method(), "Shop.checkout");
    /// assert_eq!(
    ///     err.to_string(),
    ///     "DEADLINE_EXCEEDED (MAYBE_EXECUTED): deadline exceeded (the deadline was inherited \
    ///      from the call being served (Shop.checkout, call 3), which had 40ms left when this \
    ///      call started)"
    /// );
    /// # }
    /// ```
    #[must_use]
    pub fn deadline_inherited(&self) -> Option<&InheritedDeadline> {
        self.causes()
            .find_map(|cause| cause.downcast_ref::<InheritedDeadline>())
    }

    /// The cause chain beneath this error, nearest first.
    fn causes(&self) -> impl Iterator<Item = &(dyn StdError + 'static)> {
        std::iter::successors(StdError::source(self), |cause| (*cause).source())
    }

    /// Whether anything in the cause chain is of type `E`.
    #[must_use]
    pub fn has_cause<E: StdError + 'static>(&self) -> bool {
        let mut next = StdError::source(self);
        while let Some(cause) = next {
            if cause.is::<E>() {
                return true;
            }
            next = cause.source();
        }
        false
    }
}

/// Shows the status, the outcome and the message, then the root cause of the chain (the error
/// at its bottom, "Connection refused (os error 111)", say) unless the message already says it,
/// then why retrying stopped, if it did, and that the deadline was inherited from the call being
/// served, if it was: one line with everything a log reader needs, each part once. The alternate
/// form (`{:#}`) adds every cause of the chain on a line of its own.
///
/// ```
/// use keel::core::{Error, Outcome, StatusCode};
/// let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
/// let err = Error::from_code(StatusCode::UNAVAILABLE, "no server at 127.0.0.1:9", Outcome::NotSent)
///     .with_source(refused);
/// assert_eq!(err.to_string(), "UNAVAILABLE (NOT_SENT): no server at 127.0.0.1:9: connection refused");
/// ```
impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.code(), self.inner.outcome)?;
        let detail = Detail(self).to_string();
        match detail.as_bytes().first() {
            None => {}
            Some(b' ') => f.write_str(&detail)?,
            Some(_) => write!(f, ": {detail}")?,
        }
        if f.alternate() {
            let message = self.status().message();
            for cause in self.causes() {
                let text = cause_text(cause);
                if !text.is_empty() && !message.contains(&text) {
                    write!(f, "\n  caused by: {text}")?;
                }
            }
        }
        Ok(())
    }
}

/// What an [`Error`] says after its status code and outcome: the message, the root cause unless
/// the message says it, why retrying stopped, and that the deadline was inherited.
struct Detail<'a>(&'a Error);

impl fmt::Display for Detail<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let err = self.0;
        let message = err.status().message();
        f.write_str(message)?;
        if let Some(root) = err.causes().last() {
            let text = cause_text(root);
            let said_below = root.is::<RetryStopped>() || root.is::<InheritedDeadline>();
            if !said_below && !text.is_empty() && !message.contains(&text) {
                if !message.is_empty() {
                    f.write_str(": ")?;
                }
                f.write_str(&text)?;
            }
        }
        if let Some(stopped) = err.causes().find_map(|c| c.downcast_ref::<RetryStopped>()) {
            write!(f, " ({stopped})")?;
        }
        if let Some(inherited) = err.deadline_inherited() {
            write!(f, " ({inherited})")?;
        }
        Ok(())
    }
}

/// A failed call as the status of the handler that made it, so that a handler returning
/// `Result<T, Status>` can pass a downstream failure on with `?`: the same code, and the
/// error's message with its causes (the inherited deadline included). Not the NOT_EXECUTED
/// flag: that the downstream server did not run its call says nothing of whether this handler
/// did its own work. Not the downstream's metadata either: it was that server's answer.
///
/// ```
/// use keel::core::{Error, Outcome, Status, StatusCode};
/// let refused = Status::new(StatusCode::UNAVAILABLE, "draining").not_executed();
/// let downstream = Error::new(refused, Outcome::NotExecuted);
/// let status = Status::from(downstream);
/// assert_eq!(status.to_string(), "UNAVAILABLE: draining");
/// assert!(!status.is_not_executed());
/// ```
impl From<Error> for Status {
    fn from(err: Error) -> Self {
        Self::new(err.code(), Detail(&err).to_string())
    }
}

/// What a cause says for itself: a keel [`Error`] in the chain (an earlier attempt's) by its
/// message alone, so that status and outcome are not repeated.
fn cause_text(cause: &(dyn StdError + 'static)) -> String {
    match cause.downcast_ref::<Error>() {
        Some(err) => err.status().message().to_owned(),
        None => cause.to_string(),
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("status", &self.inner.status)
            .field("outcome", &self.inner.outcome)
            .field("kind", &self.inner.kind)
            .field("source", &self.inner.source)
            .finish()
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.inner
            .source
            .as_deref()
            .map(|source| source as &(dyn StdError + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_is_one_pointer_wide() {
        assert_eq!(size_of::<Error>(), size_of::<usize>());
    }

    #[test]
    fn cause_chain_is_kept_and_searchable() {
        let io = std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer");
        let err = Error::from_code(StatusCode::UNAVAILABLE, "", Outcome::NotSent).with_source(io);
        assert!(err.has_cause::<std::io::Error>());
        assert!(!err.has_cause::<std::fmt::Error>());
        assert_eq!(err.to_string(), "UNAVAILABLE (NOT_SENT): no answer");
    }

    #[test]
    fn the_kind_survives_the_combined_outcome_of_several_attempts() {
        let err = Error::from_code(StatusCode::UNAVAILABLE, "down", Outcome::NotSent)
            .with_kind(ErrorKind::Connect);
        assert_eq!(err.kind(), ErrorKind::Connect);
        let whole = err.after_attempts(Outcome::MaybeExecuted);
        assert_eq!(
            (whole.kind(), whole.outcome()),
            (ErrorKind::Connect, Outcome::MaybeExecuted)
        );
        let handler = Error::from_code(StatusCode::NOT_FOUND, "", Outcome::Executed);
        assert_eq!(handler.kind(), ErrorKind::Status);
    }
}
