//! keel's wire protocol v1 as a sans-IO codec: no sockets, no runtime, no clock.
//!
//! Bytes in, frames out, and back. [`FrameDecoder`] and [`FrameEncoder`] implement tokio-util's
//! [`Decoder`](tokio_util::codec::Decoder) and [`Encoder`](tokio_util::codec::Encoder) over
//! [`BytesMut`](bytes::BytesMut), so a runtime wraps a socket in `FramedRead`/`FramedWrite`; a test
//! or a fuzzer feeds them bytes directly. docs/PROTOCOL.md is the specification; this crate is its
//! reference implementation.
//!
//! Every frame is a 24-byte header followed by a body. The header carries a CRC-32 of the body and
//! a CRC-32 of itself, so corrupted bytes are *detected*, never decoded as something else:
//! - a corrupt header ends the connection ([`DecodeError::HeaderChecksum`]): its length cannot be
//!   trusted, so neither can anything after it;
//! - a corrupt REQUEST or RESPONSE body fails only that call ([`FrameError`]), because the verified
//!   header says which call it was and where the next frame starts.
//!
//! The length is checked against the limit before any memory is reserved, input may be split at
//! any byte boundary, payloads are zero-copy slices of the received buffer, and no input makes the
//! decoder panic (the crate denies indexing, `unwrap` and `panic!` outside tests).
//!
//! ```
//! use bytes::{Bytes, BytesMut};
//! use rpc_codec::{Frame, FrameDecoder, FrameEncoder, Hello, MethodName, Request, Role, Settings};
//! use tokio_util::codec::{Decoder, Encoder};
//!
//! // The client writes its preface, its HELLO and a request...
//! let mut client = FrameEncoder::new();
//! client.set_peer_settings(Settings::default()); // normally taken from the server's HELLO_ACK
//! let mut wire = BytesMut::new();
//! client.encode(Hello::new(Settings::default()).into(), &mut wire)?;
//! let request = Request::new(1, MethodName::from_static("Echo.echo"), Bytes::from_static(b"hi"));
//! client.encode(request.clone().into(), &mut wire)?;
//!
//! // ...and the server decodes them.
//! let mut server = FrameDecoder::new(Role::Server);
//! assert!(matches!(server.decode(&mut wire)?, Some(Ok(Frame::Hello(_)))));
//! assert_eq!(server.decode(&mut wire)?, Some(Ok(Frame::Request(request))));
//! assert_eq!(server.decode(&mut wire)?, None); // nothing left
//!
//! // One flipped bit in the next header is a checksum error, not a different frame.
//! let mut next = BytesMut::new();
//! client.encode(Request::new(2, MethodName::from_static("Echo.echo"), Bytes::new()).into(), &mut next)?;
//! next[9] ^= 0x04;
//! assert!(server.decode(&mut next).unwrap_err().is_checksum());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )
)]

mod budget;
mod decoder;
mod encoder;
mod error;
pub mod frame;
mod header;
mod kind;
mod preface;
mod settings;
mod wire;

pub use budget::Budget;
pub use decoder::{Decoded, DecoderBuilder, FrameDecoder, Role};
pub use encoder::FrameEncoder;
pub use error::{BodyError, DecodeError, EncodeError, FrameError, RejectReason};
pub use frame::{
    Cancel, Extension, Frame, GoAway, GoAwayCode, Hello, HelloAck, MethodName, Ping, Pong, Request,
    Response,
};
pub use header::HEADER_LEN;
pub use kind::FrameKind;
pub use preface::MAGIC;
pub use settings::{
    DEFAULT_HEARTBEAT_INTERVAL_MS, DEFAULT_MAX_CONCURRENT_CALLS, DEFAULT_MAX_FRAME_SIZE,
    MIN_HEARTBEAT_INTERVAL_MS, MIN_MAX_FRAME_SIZE, SETTING_DEDUPE_INSTANCE,
    SETTING_HEARTBEAT_INTERVAL_MS, SETTING_MAX_CONCURRENT_CALLS, SETTING_MAX_FRAME_SIZE,
    SETTING_MAX_METADATA_SIZE, Settings,
};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// Flag bits, by frame kind.
pub mod flags {
    pub use crate::frame::request::FLAG_IDEMPOTENT;
    pub use crate::frame::response::FLAG_NOT_EXECUTED;
}
