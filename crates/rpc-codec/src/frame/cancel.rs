//! CANCEL (kind 0x05): the client withdraws a call. Empty body; the call id names the call.
//!
//! The server drops the call's handler if it runs, and still sends the call's one RESPONSE
//! (CANCELLED, with NOT_EXECUTED if the handler never started), so both sides agree when the call's
//! concurrency slot is free.

use bytes::BytesMut;

use super::WireFrame;
use crate::FrameKind;
use crate::error::BodyError;
use crate::wire::BodyReader;

/// A call withdrawn by its client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cancel {
    /// The call withdrawn.
    pub call_id: u64,
}

impl Cancel {
    pub(crate) fn decode(call_id: u64, body: bytes::Bytes) -> Result<Self, BodyError> {
        BodyReader::new(body).finish()?;
        Ok(Self { call_id })
    }
}

impl WireFrame for Cancel {
    fn kind(&self) -> FrameKind {
        FrameKind::CANCEL
    }

    fn call_id(&self) -> u64 {
        self.call_id
    }

    fn envelope_len(&self) -> usize {
        0
    }

    fn write_envelope(&self, _dst: &mut BytesMut) {}
}
