//! Status codes and the [`Status`] a call ends with.

use std::fmt;

use crate::Metadata;

/// A call's status code, numbered as gRPC numbers them (0–16).
///
/// A newtype rather than an enum so that a code this version does not know (sent by a newer peer)
/// still round-trips unchanged: `StatusCode(42)` decodes, displays as `CODE_42` and encodes as 42.
///
/// ```
/// use keel::core::StatusCode;
/// assert_eq!(StatusCode::UNAVAILABLE.as_u32(), 14);
/// assert_eq!(StatusCode::from(14), StatusCode::UNAVAILABLE);
/// assert_eq!(StatusCode::from(42).to_string(), "CODE_42");
/// assert!(!StatusCode::from(42).is_known());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StatusCode(u32);

macro_rules! status_codes {
    ($($(#[$doc:meta])* $name:ident = $value:expr;)*) => {
        impl StatusCode {
            $($(#[$doc])* pub const $name: Self = Self($value);)*

            /// The code's name as written in docs/PROTOCOL.md, or `None` for a code this version
            /// does not know.
            #[must_use]
            pub const fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($value => Some(stringify!($name)),)*
                    _ => None,
                }
            }
        }
    };
}

status_codes! {
    /// The call succeeded.
    OK = 0;
    /// The call was cancelled, usually by the caller.
    CANCELLED = 1;
    /// An error that fits no other code.
    UNKNOWN = 2;
    /// The caller sent an argument that is invalid whatever the server's state.
    INVALID_ARGUMENT = 3;
    /// The deadline passed before the call completed.
    DEADLINE_EXCEEDED = 4;
    /// A requested entity was not found.
    NOT_FOUND = 5;
    /// The entity the caller tried to create already exists.
    ALREADY_EXISTS = 6;
    /// The caller lacks permission for this call.
    PERMISSION_DENIED = 7;
    /// A resource ran out: a size limit, a concurrency limit, a quota.
    RESOURCE_EXHAUSTED = 8;
    /// The system is not in the state the call needs.
    FAILED_PRECONDITION = 9;
    /// The call was aborted, typically by a concurrency conflict.
    ABORTED = 10;
    /// The call went past a valid range.
    OUT_OF_RANGE = 11;
    /// The server does not implement this method.
    UNIMPLEMENTED = 12;
    /// An invariant the system relies on is broken.
    INTERNAL = 13;
    /// The service is unavailable right now: connection lost, draining, not reachable.
    UNAVAILABLE = 14;
    /// Data was lost or corrupted: a checksum mismatch on the wire.
    DATA_LOSS = 15;
    /// The caller is not authenticated.
    UNAUTHENTICATED = 16;
}

impl StatusCode {
    /// The numeric code sent on the wire.
    #[must_use]
    pub const fn as_u32(self) -> u32 {
        self.0
    }

    /// Whether this is one of the seventeen codes above (0–16).
    #[must_use]
    pub const fn is_known(self) -> bool {
        self.0 <= 16
    }

    /// Whether this is [`StatusCode::OK`].
    #[must_use]
    pub const fn is_ok(self) -> bool {
        self.0 == 0
    }
}

impl From<u32> for StatusCode {
    fn from(code: u32) -> Self {
        Self(code)
    }
}

impl From<StatusCode> for u32 {
    fn from(code: StatusCode) -> Self {
        code.0
    }
}

impl fmt::Display for StatusCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "CODE_{}", self.0),
        }
    }
}

impl fmt::Debug for StatusCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}({})", self.0)
    }
}

/// How a call ended, as the server reports it: a code, a human-readable message and metadata.
///
/// ```
/// use keel::core::{Status, StatusCode};
/// let status = Status::new(StatusCode::NOT_FOUND, "no user 7");
/// assert_eq!(status.code(), StatusCode::NOT_FOUND);
/// assert_eq!(status.to_string(), "NOT_FOUND: no user 7");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Status {
    code: StatusCode,
    message: String,
    metadata: Metadata,
    not_executed: bool,
}

impl Default for StatusCode {
    fn default() -> Self {
        Self::OK
    }
}

impl Status {
    /// A status with `code` and `message` and no metadata.
    pub fn new(code: StatusCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            metadata: Metadata::new(),
            not_executed: false,
        }
    }

    /// The successful status: [`StatusCode::OK`] with an empty message.
    #[must_use]
    pub fn ok() -> Self {
        Self::default()
    }

    /// This status with `metadata` attached.
    #[must_use]
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// This status, declared by a handler that refused the call before changing anything: the
    /// server sends it with the NOT_EXECUTED flag, so the caller knows the call did not run and
    /// may retry it anywhere, even a call that is not idempotent. Only for a refusal that
    /// happened before any of the call's effects (an authorisation check, a full queue, a
    /// validation); a status returned after the call did part of its work must not be marked.
    ///
    /// ```
    /// use keel::core::{Status, StatusCode};
    /// let busy = Status::new(StatusCode::UNAVAILABLE, "queue full").not_executed();
    /// assert!(busy.is_not_executed());
    /// assert!(!Status::new(StatusCode::UNAVAILABLE, "lost").is_not_executed());
    /// ```
    #[must_use]
    pub fn not_executed(mut self) -> Self {
        self.not_executed = true;
        self
    }

    /// Whether this status is [`not_executed`](Self::not_executed): declared so by a handler,
    /// or, on a client, received with the NOT_EXECUTED flag. (A failed call's
    /// [`Error::outcome`](crate::Error::outcome) is the full answer to "did it run?": it also
    /// covers calls that were never sent and attempts before the last.)
    #[must_use]
    pub fn is_not_executed(&self) -> bool {
        self.not_executed
    }

    /// The code.
    #[must_use]
    pub fn code(&self) -> StatusCode {
        self.code
    }

    /// The message, meant for people, not for matching on.
    #[must_use]
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The metadata the server attached.
    #[must_use]
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The metadata, mutably.
    pub fn metadata_mut(&mut self) -> &mut Metadata {
        &mut self.metadata
    }

    /// Whether the code is [`StatusCode::OK`].
    #[must_use]
    pub fn is_ok(&self) -> bool {
        self.code.is_ok()
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message.is_empty() {
            write!(f, "{}", self.code)
        } else {
            write!(f, "{}: {}", self.code, self.message)
        }
    }
}

impl std::error::Error for Status {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_code_has_its_grpc_number_and_name() {
        let expected = [
            "OK",
            "CANCELLED",
            "UNKNOWN",
            "INVALID_ARGUMENT",
            "DEADLINE_EXCEEDED",
            "NOT_FOUND",
            "ALREADY_EXISTS",
            "PERMISSION_DENIED",
            "RESOURCE_EXHAUSTED",
            "FAILED_PRECONDITION",
            "ABORTED",
            "OUT_OF_RANGE",
            "UNIMPLEMENTED",
            "INTERNAL",
            "UNAVAILABLE",
            "DATA_LOSS",
            "UNAUTHENTICATED",
        ];
        for (number, name) in (0u32..).zip(expected) {
            let code = StatusCode::from(number);
            assert!(code.is_known());
            assert_eq!(code.name(), Some(name));
            assert_eq!(code.to_string(), name);
        }
        assert_eq!(StatusCode::from(17).name(), None);
    }

    #[test]
    fn unknown_codes_round_trip() {
        for raw in [17u32, 255, 1 << 20, u32::MAX] {
            let code = StatusCode::from(raw);
            assert_eq!(u32::from(code), raw);
            assert!(!code.is_known());
            assert_eq!(code.to_string(), format!("CODE_{raw}"));
        }
    }
}
