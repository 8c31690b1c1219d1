//! RESPONSE (kind 0x04): the one answer to a call, server to client.
//!
//! ```text
//! offset  size  field
//! 0       4     status code (u32, gRPC numbering; unknown codes are kept)
//! 4       4     status message length N (u32)
//! 8       N     status message, UTF-8
//! 8+N     4     metadata length L (u32, at most the receiver's MAX_METADATA_SIZE)
//! 12+N    L     metadata entries
//! 12+N+L  rest  payload
//! ```
//! Flags: `0x01` NOT_EXECUTED. Call id: that of the REQUEST it answers.

use bytes::{BufMut, Bytes, BytesMut};
use rpc_core::{Status, StatusCode};

use super::WireFrame;
use crate::error::{BodyError, EncodeError};
use crate::wire::{BodyReader, check_metadata, metadata_wire_len, put_metadata, u32_len};
use crate::{FrameKind, Settings};

/// RESPONSE flag: the server guarantees the application never saw the call.
pub const FLAG_NOT_EXECUTED: u8 = 0x01;

/// A call's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The call id of the REQUEST answered.
    pub call_id: u64,
    /// Whether the server guarantees the application never saw the call (flag `0x01`).
    pub not_executed: bool,
    /// How the call ended: code, message and metadata.
    pub status: Status,
    /// The serialized result (usually empty unless the status is OK).
    pub payload: Bytes,
}

impl Response {
    /// A successful response carrying `payload`.
    #[must_use]
    pub fn ok(call_id: u64, payload: Bytes) -> Self {
        Self {
            call_id,
            not_executed: false,
            status: Status::ok(),
            payload,
        }
    }

    /// An error response with no payload.
    #[must_use]
    pub fn error(call_id: u64, status: Status, not_executed: bool) -> Self {
        Self {
            call_id,
            not_executed,
            status,
            payload: Bytes::new(),
        }
    }

    pub(crate) fn decode(
        flags: u8,
        call_id: u64,
        body: Bytes,
        max_metadata: u32,
    ) -> Result<Self, BodyError> {
        let mut body = BodyReader::new(body);
        let code = StatusCode::from(body.u32("status code")?);
        let message = body.string_u32("status message")?;
        let metadata = body.metadata(max_metadata)?;
        Ok(Self {
            call_id,
            not_executed: flags & FLAG_NOT_EXECUTED != 0,
            status: Status::new(code, message).with_metadata(metadata),
            payload: body.rest(),
        })
    }
}

impl WireFrame for Response {
    fn kind(&self) -> FrameKind {
        FrameKind::RESPONSE
    }

    fn flags(&self) -> u8 {
        if self.not_executed {
            FLAG_NOT_EXECUTED
        } else {
            0
        }
    }

    fn call_id(&self) -> u64 {
        self.call_id
    }

    fn check(&self, peer: &Settings) -> Result<(), EncodeError> {
        u32_len(self.status.message().len(), "status message")?;
        check_metadata(self.status.metadata(), peer.max_metadata_size)
    }

    fn envelope_len(&self) -> usize {
        4 + 4 + self.status.message().len() + metadata_wire_len(self.status.metadata())
    }

    fn write_envelope(&self, dst: &mut BytesMut) {
        dst.put_u32(self.status.code().as_u32());
        dst.put_u32(u32::try_from(self.status.message().len()).unwrap_or(u32::MAX));
        dst.put_slice(self.status.message().as_bytes());
        put_metadata(dst, self.status.metadata());
    }

    fn payload(&self) -> Bytes {
        self.payload.clone()
    }
}
