//! What can go wrong decoding and encoding, and what each failure means on the wire.
//!
//! Two kinds of decode failure, split by whether the byte stream is still in sync:
//! - [`DecodeError`]: the connection cannot go on (bad magic, a header whose checksum fails, a
//!   broken rule of the protocol). The receiver sends GOAWAY with [`DecodeError::go_away_code`] and
//!   closes. The decoder yields nothing more afterwards.
//! - [`FrameError`]: one REQUEST or RESPONSE was unusable (its body checksum failed, its envelope
//!   was malformed), but its verified header says exactly where the next frame starts and which call
//!   it belonged to. Only that call fails, with [`FrameError::status_code`]; the connection lives.

use std::io;

use rpc_core::{MetadataError, Outcome, StatusCode};

use crate::frame::GoAwayCode;
use crate::{FrameKind, Role};

/// Why a frame body could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    /// The body ended inside a field.
    #[error("body ends inside the {field} field")]
    Truncated {
        /// The field being read.
        field: &'static str,
    },
    /// A fixed-layout body has bytes after its last field.
    #[error("body has {extra} bytes after its last field")]
    TrailingBytes {
        /// How many.
        extra: usize,
    },
    /// A text field is not UTF-8.
    #[error("the {field} field is not valid UTF-8")]
    InvalidUtf8 {
        /// The field.
        field: &'static str,
    },
    /// A method name must be 1 to 1024 bytes.
    #[error("method name is {len} bytes; it must be 1 to 1024")]
    MethodLength {
        /// Its length.
        len: usize,
    },
    /// The metadata block is larger than the receiver's MAX_METADATA_SIZE.
    #[error("metadata is {len} bytes, over the limit of {max}")]
    MetadataTooLarge {
        /// Its length.
        len: u32,
        /// The receiver's limit.
        max: u32,
    },
    /// A metadata key breaks the key rules.
    #[error("invalid metadata key")]
    InvalidMetadataKey(#[source] MetadataError),
    /// A PING or PONG body must be exactly 8 bytes.
    #[error("{kind} body is {len} bytes; it must be 8")]
    PingLength {
        /// PING or PONG.
        kind: FrameKind,
        /// The body length.
        len: usize,
    },
    /// The same setting id appears twice.
    #[error("setting 0x{id:04x} appears twice")]
    DuplicateSetting {
        /// The setting id.
        id: u16,
    },
    /// A setting has a value outside its allowed range.
    #[error("setting 0x{id:04x} has value {value}, outside its allowed range")]
    SettingOutOfRange {
        /// The setting id.
        id: u16,
        /// The value.
        value: u32,
    },
    /// A HELLO's minimum version is above its maximum.
    #[error("version range {min}..={max} is empty")]
    EmptyVersionRange {
        /// Minimum version.
        min: u16,
        /// Maximum version.
        max: u16,
    },
}

/// A failure after which the connection cannot go on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The peer's first bytes are not the keel preface.
    #[error("bad magic: byte {offset} of the preface is 0x{byte:02x}")]
    BadMagic {
        /// Offset of the first wrong byte (0–7).
        offset: usize,
        /// The byte received there.
        byte: u8,
    },
    /// The header CRC does not match the header's bytes: framing can no longer be trusted.
    #[error("header checksum mismatch: stored 0x{stored:08x}, computed 0x{computed:08x}")]
    HeaderChecksum {
        /// The CRC in the header.
        stored: u32,
        /// The CRC of the received bytes.
        computed: u32,
    },
    /// The reserved header field is not zero.
    #[error("reserved header bits set: 0x{reserved:04x}")]
    ReservedBitsSet {
        /// The field's value.
        reserved: u16,
    },
    /// A kind in the must-understand range that this version does not know.
    #[error("unknown frame kind 0x{kind:02x} in the must-understand range")]
    UnknownKind {
        /// The kind byte.
        kind: u8,
    },
    /// Flag bits that the frame's kind does not define.
    #[error("{kind} frame has undefined flag bits 0x{flags:02x}")]
    UnknownFlags {
        /// The kind.
        kind: FrameKind,
        /// The undefined bits.
        flags: u8,
    },
    /// A kind this side never receives (a RESPONSE sent to a server, a second HELLO).
    #[error("{kind} frame is not allowed here ({role} side, handshake done)")]
    UnexpectedKind {
        /// The kind.
        kind: FrameKind,
        /// The receiving side.
        role: Role,
    },
    /// A frame other than the handshake arrived before the handshake completed.
    #[error("{kind} frame arrived before the handshake completed")]
    FrameBeforeHandshake {
        /// The kind.
        kind: FrameKind,
    },
    /// The body length exceeds the receiver's limit; refused before any memory is reserved.
    #[error("{kind} frame (call {call_id}) has a {len}-byte body, over the limit of {max}")]
    FrameTooLarge {
        /// The kind.
        kind: FrameKind,
        /// The call id in the (verified) header.
        call_id: u64,
        /// The body length.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// A REQUEST, RESPONSE or CANCEL with call id 0.
    #[error("{kind} frame has call id 0")]
    ZeroCallId {
        /// The kind.
        kind: FrameKind,
    },
    /// A connection-level frame with a non-zero call id.
    #[error("{kind} frame has call id {call_id}; it must be 0")]
    UnexpectedCallId {
        /// The kind.
        kind: FrameKind,
        /// The call id.
        call_id: u64,
    },
    /// A REQUEST whose call id is not above every earlier one on the connection (reused or
    /// out of order).
    #[error("REQUEST call id {call_id} is not above the previous {last}")]
    CallIdNotIncreasing {
        /// The call id.
        call_id: u64,
        /// The highest call id received before it.
        last: u64,
    },
    /// A CANCEL for a call id no REQUEST has used yet.
    #[error("CANCEL for call {call_id}, above the highest REQUEST id {last}")]
    CancelForUnknownCall {
        /// The call id.
        call_id: u64,
        /// The highest REQUEST id received.
        last: u64,
    },
    /// The body CRC of a connection-level frame does not match: there is no single call to fail.
    #[error("{kind} body checksum mismatch: stored 0x{stored:08x}, computed 0x{computed:08x}")]
    BodyChecksum {
        /// The kind.
        kind: FrameKind,
        /// The CRC in the header.
        stored: u32,
        /// The CRC of the received body.
        computed: u32,
    },
    /// A connection-level frame whose body is malformed.
    #[error("malformed {kind} body")]
    Malformed {
        /// The kind.
        kind: FrameKind,
        /// What is wrong with it.
        #[source]
        error: BodyError,
    },
    /// The peer's versions and ours have nothing in common.
    #[error("no common protocol version: peer offers {min}..={max}, we speak 1..=1")]
    UnsupportedVersion {
        /// Lowest version the peer offers (for a HELLO_ACK: the chosen one).
        min: u16,
        /// Highest version the peer offers.
        max: u16,
    },
    /// The stream ended in the middle of a frame or of the preface.
    #[error("stream ended with {buffered} bytes of an incomplete frame")]
    TruncatedAtEof {
        /// Bytes left over.
        buffered: usize,
    },
    /// Reading from the transport failed.
    #[error("transport read failed")]
    Io(#[from] io::Error),
}

impl DecodeError {
    /// The GOAWAY code the receiver sends before closing.
    #[must_use]
    pub fn go_away_code(&self) -> GoAwayCode {
        match self {
            Self::HeaderChecksum { .. } | Self::BodyChecksum { .. } => GoAwayCode::CHECKSUM_ERROR,
            Self::FrameTooLarge { .. } => GoAwayCode::FRAME_TOO_LARGE,
            Self::UnsupportedVersion { .. } => GoAwayCode::UNSUPPORTED_VERSION,
            Self::Io(_) | Self::TruncatedAtEof { .. } => GoAwayCode::NO_ERROR,
            _ => GoAwayCode::PROTOCOL_ERROR,
        }
    }

    /// Whether the failure is a checksum mismatch (header, or control-frame body).
    #[must_use]
    pub fn is_checksum(&self) -> bool {
        matches!(
            self,
            Self::HeaderChecksum { .. } | Self::BodyChecksum { .. }
        )
    }
}

/// Why one REQUEST or RESPONSE was rejected while its connection lives on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RejectReason {
    /// The body CRC does not match the body.
    #[error("body checksum mismatch: stored 0x{stored:08x}, computed 0x{computed:08x}")]
    BodyChecksum {
        /// The CRC in the header.
        stored: u32,
        /// The CRC of the received body.
        computed: u32,
    },
    /// The body passed its checksum but its envelope breaks the layout.
    #[error(transparent)]
    Malformed(#[from] BodyError),
}

/// One REQUEST or RESPONSE that could not be used; its verified header names the call.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind} for call {call_id} rejected: {reason}")]
pub struct FrameError {
    /// REQUEST or RESPONSE.
    pub kind: FrameKind,
    /// The call it belonged to.
    pub call_id: u64,
    /// The header's flags (checksum-verified, so a RESPONSE's NOT_EXECUTED flag can be trusted).
    pub flags: u8,
    /// What was wrong.
    pub reason: RejectReason,
}

impl FrameError {
    /// The status the call fails with: DATA_LOSS for a checksum mismatch, RESOURCE_EXHAUSTED for
    /// oversize metadata, otherwise INVALID_ARGUMENT for a REQUEST (the caller sent it) and
    /// INTERNAL for a RESPONSE (the server produced it).
    #[must_use]
    pub fn status_code(&self) -> StatusCode {
        match &self.reason {
            RejectReason::BodyChecksum { .. } => StatusCode::DATA_LOSS,
            RejectReason::Malformed(BodyError::MetadataTooLarge { .. }) => {
                StatusCode::RESOURCE_EXHAUSTED
            }
            RejectReason::Malformed(_) if self.kind == FrameKind::REQUEST => {
                StatusCode::INVALID_ARGUMENT
            }
            RejectReason::Malformed(_) => StatusCode::INTERNAL,
        }
    }

    /// For a rejected RESPONSE, the outcome the client reports: NOT_EXECUTED when the verified
    /// header carries the NOT_EXECUTED flag, else MAYBE_EXECUTED (the status could not be read). For
    /// a rejected REQUEST the server answers with the NOT_EXECUTED flag, so the client will see
    /// NOT_EXECUTED.
    #[must_use]
    pub fn outcome(&self) -> Outcome {
        if self.kind == FrameKind::REQUEST
            || self.flags & crate::frame::response::FLAG_NOT_EXECUTED != 0
        {
            Outcome::NotExecuted
        } else {
            Outcome::MaybeExecuted
        }
    }
}

/// Why a frame could not be encoded. Nothing is written to the buffer when encoding fails.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The body would exceed the peer's MAX_FRAME_SIZE.
    #[error("{kind} body would be {len} bytes, over the peer's max frame size of {max} bytes")]
    FrameTooLarge {
        /// The kind.
        kind: FrameKind,
        /// The body length it would have.
        len: usize,
        /// The peer's limit.
        max: u32,
    },
    /// The metadata would exceed the peer's MAX_METADATA_SIZE.
    #[error("metadata would be {len} bytes, over the peer's limit of {max} bytes")]
    MetadataTooLarge {
        /// Its encoded length.
        len: usize,
        /// The peer's limit.
        max: u32,
    },
    /// A REQUEST, RESPONSE or CANCEL with call id 0.
    #[error("{kind} frame needs a non-zero call id")]
    ZeroCallId {
        /// The kind.
        kind: FrameKind,
    },
    /// A method name must be 1 to 1024 bytes.
    #[error("method name is {len} bytes; it must be 1 to 1024")]
    MethodLength {
        /// Its length.
        len: usize,
    },
    /// A field is too long for its length prefix.
    #[error("the {field} field is {len} bytes, too long for its length prefix")]
    FieldTooLong {
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
    },
    /// An extension frame must use a kind in 0x80–0xFF.
    #[error("extension frames need a kind in 0x80..=0xff, not 0x{kind:02x}")]
    NotAnExtensionKind {
        /// The kind byte.
        kind: u8,
    },
    /// Writing to the transport failed.
    #[error("transport write failed")]
    Io(#[from] io::Error),
}
