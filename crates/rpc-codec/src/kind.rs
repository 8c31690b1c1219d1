//! Frame kinds.

use std::fmt;

/// The kind byte of a frame header.
///
/// Kinds `0x01`–`0x08` are defined by protocol v1. Kind `0x00` and `0x09`–`0x7F` are reserved and
/// *must be understood*: a receiver that does not know one closes the connection. Kinds
/// `0x80`–`0xFF` are extensions that a receiver *may skip*: it checks their checksums and drops
/// them. A newtype, so an unknown kind still displays and round-trips.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrameKind(u8);

impl FrameKind {
    /// Opens a connection: versions and settings, client to server.
    pub const HELLO: Self = Self(0x01);
    /// Accepts a connection: chosen version and settings, server to client.
    pub const HELLO_ACK: Self = Self(0x02);
    /// A call, client to server.
    pub const REQUEST: Self = Self(0x03);
    /// The one answer to a call, server to client.
    pub const RESPONSE: Self = Self(0x04);
    /// Withdraws a call, client to server.
    pub const CANCEL: Self = Self(0x05);
    /// Liveness probe, either way.
    pub const PING: Self = Self(0x06);
    /// Echo of a PING, either way.
    pub const PONG: Self = Self(0x07);
    /// The sender is closing the connection, either way.
    pub const GOAWAY: Self = Self(0x08);

    /// The first kind of the skippable extension range.
    pub const FIRST_EXTENSION: u8 = 0x80;

    /// The raw byte.
    #[must_use]
    pub const fn as_u8(self) -> u8 {
        self.0
    }

    /// Whether protocol v1 defines this kind.
    #[must_use]
    pub const fn is_defined(self) -> bool {
        matches!(self.0, 0x01..=0x08)
    }

    /// Whether the kind is in the extension range that a receiver may skip (`0x80`–`0xFF`).
    #[must_use]
    pub const fn is_extension(self) -> bool {
        self.0 >= Self::FIRST_EXTENSION
    }

    /// Whether frames of this kind belong to one call (REQUEST, RESPONSE, CANCEL) and so carry a
    /// non-zero call id.
    #[must_use]
    pub const fn is_call_scoped(self) -> bool {
        matches!(self.0, 0x03..=0x05)
    }

    /// The name as docs/PROTOCOL.md writes it, or `None` outside 0x01–0x08.
    #[must_use]
    pub const fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0x01 => "HELLO",
            0x02 => "HELLO_ACK",
            0x03 => "REQUEST",
            0x04 => "RESPONSE",
            0x05 => "CANCEL",
            0x06 => "PING",
            0x07 => "PONG",
            0x08 => "GOAWAY",
            _ => return None,
        })
    }
}

impl From<u8> for FrameKind {
    fn from(kind: u8) -> Self {
        Self(kind)
    }
}

impl fmt::Display for FrameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "kind 0x{:02x}", self.0),
        }
    }
}

impl fmt::Debug for FrameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
