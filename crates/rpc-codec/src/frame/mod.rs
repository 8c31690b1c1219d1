//! The frame kinds of protocol v1, one module each.
//!
//! Each module holds the frame's struct, its body layout, how its body is parsed, and how its
//! envelope is written. [`Frame`] ties them together.

pub(crate) mod cancel;
pub(crate) mod extension;
pub(crate) mod go_away;
pub(crate) mod hello;
pub(crate) mod hello_ack;
pub(crate) mod ping;
pub(crate) mod request;
pub(crate) mod response;

use bytes::{Bytes, BytesMut};

pub use cancel::Cancel;
pub use extension::Extension;
pub use go_away::{GoAway, GoAwayCode};
pub use hello::Hello;
pub use hello_ack::HelloAck;
pub use ping::{Ping, Pong};
pub use request::{MAX_METHOD_LEN, MethodName, Request};
pub use response::Response;

use crate::error::EncodeError;
use crate::{FrameKind, Settings};

/// One frame of protocol v1.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Frame {
    /// Client's opening: versions and settings.
    Hello(Hello),
    /// Server's acceptance: version and settings.
    HelloAck(HelloAck),
    /// A call.
    Request(Request),
    /// A call's one answer.
    Response(Response),
    /// A call withdrawn.
    Cancel(Cancel),
    /// A liveness probe.
    Ping(Ping),
    /// A PING's echo.
    Pong(Pong),
    /// The sender is closing.
    GoAway(GoAway),
    /// An extension frame (kind 0x80–0xFF) that v1 does not define; receivers drop it.
    Extension(Extension),
}

impl Frame {
    /// The frame's kind.
    #[must_use]
    pub fn kind(&self) -> FrameKind {
        match self {
            Self::Hello(_) => FrameKind::HELLO,
            Self::HelloAck(_) => FrameKind::HELLO_ACK,
            Self::Request(_) => FrameKind::REQUEST,
            Self::Response(_) => FrameKind::RESPONSE,
            Self::Cancel(_) => FrameKind::CANCEL,
            Self::Ping(_) => FrameKind::PING,
            Self::Pong(_) => FrameKind::PONG,
            Self::GoAway(_) => FrameKind::GOAWAY,
            Self::Extension(e) => FrameKind::from(e.kind),
        }
    }

    /// The call id in the frame's header (0 for connection-level frames).
    #[must_use]
    pub fn call_id(&self) -> u64 {
        match self {
            Self::Request(f) => f.call_id,
            Self::Response(f) => f.call_id,
            Self::Cancel(f) => f.call_id,
            Self::Extension(f) => f.call_id,
            _ => 0,
        }
    }
}

/// How a frame type writes itself. The body is an *envelope*, written into the head buffer after
/// the header, followed by a *payload* handed back as a shared [`Bytes`] so a large payload is
/// never copied by the codec.
pub(crate) trait WireFrame {
    fn kind(&self) -> FrameKind;
    fn flags(&self) -> u8 {
        0
    }
    fn call_id(&self) -> u64 {
        0
    }
    /// Checks everything that could make encoding fail, against the peer's settings.
    fn check(&self, _peer: &Settings) -> Result<(), EncodeError> {
        Ok(())
    }
    /// Bytes [`WireFrame::write_envelope`] writes.
    fn envelope_len(&self) -> usize;
    fn write_envelope(&self, dst: &mut BytesMut);
    fn payload(&self) -> Bytes {
        Bytes::new()
    }
}

macro_rules! frame_from {
    ($($variant:ident),*) => {$(
        impl From<$variant> for Frame {
            fn from(frame: $variant) -> Self {
                Self::$variant(frame)
            }
        }
    )*};
}
frame_from!(
    Hello, HelloAck, Request, Response, Cancel, Ping, Pong, GoAway, Extension
);
