//! GOAWAY (kind 0x08): the sender is closing the connection.
//!
//! ```text
//! offset  size  field
//! 0       8     last call id (u64): the highest REQUEST id the sender processed or will process
//! 8       4     code (u32, see GoAwayCode)
//! 12      4     message length N (u32)
//! 16      N     message, UTF-8, for people
//! ```
//! Call id 0, no flags. Every REQUEST above the last call id is guaranteed never to run, so the
//! client may retry it anywhere, idempotent or not.

use std::fmt;

use bytes::{BufMut, BytesMut};

use super::WireFrame;
use crate::error::{BodyError, EncodeError};
use crate::wire::{BodyReader, u32_len};
use crate::{FrameKind, Settings};

/// Why a connection is closing. A newtype, so codes from a newer peer round-trip.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct GoAwayCode(u32);

macro_rules! go_away_codes {
    ($($(#[$doc:meta])* $name:ident = $value:expr;)*) => {
        impl GoAwayCode {
            $($(#[$doc])* pub const $name: Self = Self($value);)*

            /// The code's name, or `None` for one this version does not know.
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

go_away_codes! {
    /// Graceful: drain or shutdown, or a client closing.
    NO_ERROR = 0;
    /// The peer broke a rule of the protocol.
    PROTOCOL_ERROR = 1;
    /// A header checksum, or a connection-level frame's body checksum, did not match.
    CHECKSUM_ERROR = 2;
    /// A frame's body exceeded the receiver's MAX_FRAME_SIZE.
    FRAME_TOO_LARGE = 3;
    /// The peers share no protocol version.
    UNSUPPORTED_VERSION = 4;
    /// The handshake did not complete within the handshake timeout.
    HANDSHAKE_TIMEOUT = 5;
    /// The peer was silent past the heartbeat bound.
    HEARTBEAT_TIMEOUT = 6;
    /// The peer cancelled too many calls that never ran (the rapid-reset defence).
    TOO_MANY_CANCELS = 7;
    /// The sender failed internally.
    INTERNAL_ERROR = 8;
    /// The sender is at its connection limit; connect elsewhere or later.
    OVERLOADED = 9;
}

impl GoAwayCode {
    /// The raw code.
    #[must_use]
    pub const fn as_u32(self) -> u32 {
        self.0
    }
}

impl From<u32> for GoAwayCode {
    fn from(code: u32) -> Self {
        Self(code)
    }
}

impl fmt::Display for GoAwayCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "GOAWAY_CODE_{}", self.0),
        }
    }
}

impl fmt::Debug for GoAwayCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}({})", self.0)
    }
}

/// The sender is closing the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoAway {
    /// The highest REQUEST id the sender processed or will process (0: none). A client sends 0.
    pub last_call_id: u64,
    /// Why.
    pub code: GoAwayCode,
    /// Details for people.
    pub message: String,
}

impl GoAway {
    /// A GOAWAY with `code` and `message`.
    pub fn new(last_call_id: u64, code: GoAwayCode, message: impl Into<String>) -> Self {
        Self {
            last_call_id,
            code,
            message: message.into(),
        }
    }

    pub(crate) fn decode(body: bytes::Bytes) -> Result<Self, BodyError> {
        let mut body = BodyReader::new(body);
        let last_call_id = body.u64("last call id")?;
        let code = GoAwayCode::from(body.u32("goaway code")?);
        let message = body.string_u32("goaway message")?;
        body.finish()?;
        Ok(Self {
            last_call_id,
            code,
            message,
        })
    }
}

impl WireFrame for GoAway {
    fn kind(&self) -> FrameKind {
        FrameKind::GOAWAY
    }

    fn check(&self, _peer: &Settings) -> Result<(), EncodeError> {
        u32_len(self.message.len(), "goaway message").map(drop)
    }

    fn envelope_len(&self) -> usize {
        8 + 4 + 4 + self.message.len()
    }

    fn write_envelope(&self, dst: &mut BytesMut) {
        dst.put_u64(self.last_call_id);
        dst.put_u32(self.code.as_u32());
        dst.put_u32(u32::try_from(self.message.len()).unwrap_or(u32::MAX));
        dst.put_slice(self.message.as_bytes());
    }
}
