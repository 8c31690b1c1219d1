//! REQUEST (kind 0x03): a call, client to server.
//!
//! ```text
//! offset  size  field
//! 0       8     deadline budget, microseconds (u64; u64::MAX = none, 0 = expired)
//! 8       2     method name length M (u16, 1..=1024)
//! 10      M     method name, UTF-8
//! 10+M    4     metadata length L (u32, at most the receiver's MAX_METADATA_SIZE)
//! 14+M    L     metadata entries
//! 14+M+L  rest  payload
//! ```
//! Flags: `0x01` IDEMPOTENT. Call id: non-zero, above every earlier REQUEST id on the connection.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use rpc_core::Metadata;

use super::WireFrame;
use crate::error::{BodyError, EncodeError};
use crate::wire::{
    BodyReader, check_metadata, put_entry, put_metadata, put_metadata_with_len, schema_entry_len,
};
use crate::{Budget, FrameKind, Settings};
use rpc_core::metadata::SCHEMA_KEY;

/// REQUEST flag: the method is idempotent, so the call may be retried after an unknown outcome.
pub const FLAG_IDEMPOTENT: u8 = 0x01;

/// The longest method name, in bytes.
pub const MAX_METHOD_LEN: usize = 1024;

/// A method name: 1 to 1024 bytes of UTF-8, shared with the frame it was decoded from.
///
/// ```
/// use rpc_codec::MethodName;
/// let m = MethodName::from_static("Echo.echo");
/// assert_eq!(m.as_str(), "Echo.echo");
/// assert!(MethodName::try_from(String::new()).is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct MethodName(Bytes);

impl MethodName {
    /// A method name from a static string; no allocation.
    ///
    /// # Panics
    /// If `name` is empty or longer than 1024 bytes: a static name is program text.
    #[must_use]
    #[allow(
        clippy::panic,
        reason = "static names are program text; a bad one is a bug"
    )]
    pub fn from_static(name: &'static str) -> Self {
        if name.is_empty() || name.len() > MAX_METHOD_LEN {
            panic!("method name must be 1 to 1024 bytes: {name:?}");
        }
        Self(Bytes::from_static(name.as_bytes()))
    }

    /// The name.
    #[must_use]
    pub fn as_str(&self) -> &str {
        // Constructed only from validated UTF-8; the fallback keeps the codec panic-free.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The name's bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    fn from_wire(bytes: Bytes) -> Result<Self, BodyError> {
        if bytes.is_empty() || bytes.len() > MAX_METHOD_LEN {
            return Err(BodyError::MethodLength { len: bytes.len() });
        }
        std::str::from_utf8(&bytes).map_err(|_| BodyError::InvalidUtf8 { field: "method" })?;
        Ok(Self(bytes))
    }
}

impl TryFrom<String> for MethodName {
    type Error = EncodeError;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        if name.is_empty() || name.len() > MAX_METHOD_LEN {
            return Err(EncodeError::MethodLength { len: name.len() });
        }
        Ok(Self(Bytes::from(name)))
    }
}

impl TryFrom<&str> for MethodName {
    type Error = EncodeError;

    fn try_from(name: &str) -> Result<Self, Self::Error> {
        Self::try_from(name.to_owned())
    }
}

impl fmt::Debug for MethodName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for MethodName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The call id: non-zero, above every earlier REQUEST id on the connection.
    pub call_id: u64,
    /// Whether the method is idempotent (flag `0x01`).
    pub idempotent: bool,
    /// The time the call has left.
    pub budget: Budget,
    /// The method to run.
    pub method: MethodName,
    /// The call's metadata.
    pub metadata: Metadata,
    /// The first `rpc-schema` entry of the metadata block (docs/PROTOCOL.md §5.8), kept apart
    /// so that the one entry every `#[service]` call sends needs no metadata list: encoded after
    /// the entries of [`metadata`](Self::metadata), and decoded out of them.
    pub schema: Option<Bytes>,
    /// The serialized arguments.
    pub payload: Bytes,
}

impl Request {
    /// A non-idempotent request with no deadline and no metadata.
    #[must_use]
    pub fn new(call_id: u64, method: MethodName, payload: Bytes) -> Self {
        Self {
            call_id,
            idempotent: false,
            budget: Budget::NONE,
            method,
            metadata: Metadata::new(),
            schema: None,
            payload,
        }
    }

    /// The encoded length of the metadata block's entries, the schema entry included: what the
    /// peer's MAX_METADATA_SIZE limits.
    #[must_use]
    pub fn metadata_len(&self) -> usize {
        self.metadata.encoded_len() + self.schema.as_ref().map_or(0, |s| schema_entry_len(s))
    }

    /// Whether the metadata block, the schema entry included, fits a limit of `max` bytes.
    #[must_use]
    pub fn metadata_fits(&self, max: u32) -> bool {
        u32::try_from(self.metadata_len()).is_ok_and(|len| len <= max)
    }

    /// The length of this request's frame body on the wire: its envelope and its payload. This
    /// is what the peer's MAX_FRAME_SIZE limits.
    #[must_use]
    pub fn body_len(&self) -> usize {
        self.envelope_len() + self.payload.len()
    }

    pub(crate) fn decode(
        flags: u8,
        call_id: u64,
        body: Bytes,
        max_metadata: u32,
    ) -> Result<Self, BodyError> {
        let mut body = BodyReader::new(body);
        let budget = Budget::from_micros(body.u64("deadline budget")?);
        let method_len = body.u16("method length")?;
        let method = MethodName::from_wire(body.bytes(usize::from(method_len), "method")?)?;
        let (metadata, schema) = body.metadata_and_schema(max_metadata)?;
        Ok(Self {
            call_id,
            idempotent: flags & FLAG_IDEMPOTENT != 0,
            budget,
            method,
            metadata,
            schema,
            payload: body.rest(),
        })
    }
}

impl WireFrame for Request {
    fn kind(&self) -> FrameKind {
        FrameKind::REQUEST
    }

    fn flags(&self) -> u8 {
        if self.idempotent { FLAG_IDEMPOTENT } else { 0 }
    }

    fn call_id(&self) -> u64 {
        self.call_id
    }

    fn check(&self, peer: &Settings) -> Result<(), EncodeError> {
        if self.schema.is_none() {
            return check_metadata(&self.metadata, peer.max_metadata_size);
        }
        if self.metadata_fits(peer.max_metadata_size) {
            Ok(())
        } else {
            Err(EncodeError::MetadataTooLarge {
                len: self.metadata_len(),
                max: peer.max_metadata_size,
            })
        }
    }

    fn envelope_len(&self) -> usize {
        8 + 2 + self.method.as_bytes().len() + 4 + self.metadata_len()
    }

    fn write_envelope(&self, dst: &mut BytesMut) {
        dst.put_u64(self.budget.as_micros());
        // MethodName holds at most 1024 bytes.
        dst.put_u16(u16::try_from(self.method.as_bytes().len()).unwrap_or(u16::MAX));
        dst.put_slice(self.method.as_bytes());
        match &self.schema {
            None => put_metadata(dst, &self.metadata),
            Some(schema) => {
                put_metadata_with_len(dst, &self.metadata, self.metadata_len());
                put_entry(dst, SCHEMA_KEY.as_bytes(), schema);
            }
        }
    }

    fn payload(&self) -> Bytes {
        self.payload.clone()
    }
}
