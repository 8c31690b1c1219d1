//! PING (kind 0x06) and PONG (kind 0x07): liveness. Body: exactly 8 opaque bytes, which the PONG
//! echoes. Call id 0. A PING is answered at once, ahead of queued frames.

use bytes::{BufMut, Bytes, BytesMut};

use super::WireFrame;
use crate::FrameKind;
use crate::error::BodyError;

fn opaque(kind: FrameKind, body: &Bytes) -> Result<[u8; 8], BodyError> {
    body.as_ref().try_into().map_err(|_| BodyError::PingLength {
        kind,
        len: body.len(),
    })
}

/// A liveness probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ping {
    /// Opaque bytes the PONG must echo.
    pub opaque: [u8; 8],
}

/// The echo of a [`Ping`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pong {
    /// The PING's opaque bytes.
    pub opaque: [u8; 8],
}

impl Ping {
    /// The PONG answering this PING.
    #[must_use]
    pub fn pong(self) -> Pong {
        Pong {
            opaque: self.opaque,
        }
    }

    pub(crate) fn decode(body: &Bytes) -> Result<Self, BodyError> {
        opaque(FrameKind::PING, body).map(|opaque| Self { opaque })
    }
}

impl Pong {
    pub(crate) fn decode(body: &Bytes) -> Result<Self, BodyError> {
        opaque(FrameKind::PONG, body).map(|opaque| Self { opaque })
    }
}

impl WireFrame for Ping {
    fn kind(&self) -> FrameKind {
        FrameKind::PING
    }

    fn envelope_len(&self) -> usize {
        8
    }

    fn write_envelope(&self, dst: &mut BytesMut) {
        dst.put_slice(&self.opaque);
    }
}

impl WireFrame for Pong {
    fn kind(&self) -> FrameKind {
        FrameKind::PONG
    }

    fn envelope_len(&self) -> usize {
        8
    }

    fn write_envelope(&self, dst: &mut BytesMut) {
        dst.put_slice(&self.opaque);
    }
}
