//! Field-level reading and writing shared by the frame bodies: bounds-checked big-endian
//! integers, length-prefixed fields handed out as zero-copy [`Bytes`] slices, and metadata blocks.

use bytes::{BufMut, Bytes, BytesMut};
use rpc_core::metadata::SCHEMA_KEY;
use rpc_core::{Metadata, MetadataKey};

use crate::error::{BodyError, EncodeError};

/// Reads a frame body front to back. Every read is bounds-checked and names its field on failure;
/// slices share the body's buffer instead of copying it.
pub(crate) struct BodyReader {
    body: Bytes,
    pos: usize,
}

impl BodyReader {
    pub(crate) fn new(body: Bytes) -> Self {
        Self { body, pos: 0 }
    }

    fn take(&mut self, len: usize, field: &'static str) -> Result<Bytes, BodyError> {
        let end = self
            .pos
            .checked_add(len)
            .filter(|&end| end <= self.body.len())
            .ok_or(BodyError::Truncated { field })?;
        let slice = self.body.slice(self.pos..end);
        self.pos = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], BodyError> {
        let end = self
            .pos
            .checked_add(N)
            .ok_or(BodyError::Truncated { field })?;
        let bytes: [u8; N] = self
            .body
            .get(self.pos..end)
            .and_then(|s| s.try_into().ok())
            .ok_or(BodyError::Truncated { field })?;
        self.pos = end;
        Ok(bytes)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, BodyError> {
        self.array::<1>(field).map(|[b]| b)
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, BodyError> {
        self.array(field).map(u16::from_be_bytes)
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, BodyError> {
        self.array(field).map(u32::from_be_bytes)
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, BodyError> {
        self.array(field).map(u64::from_be_bytes)
    }

    pub(crate) fn bytes(&mut self, len: usize, field: &'static str) -> Result<Bytes, BodyError> {
        self.take(len, field)
    }

    /// A `u32`-length-prefixed UTF-8 string.
    pub(crate) fn string_u32(&mut self, field: &'static str) -> Result<String, BodyError> {
        let len = self.u32(field)?;
        let bytes = self.take(usize_from(len), field)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| BodyError::InvalidUtf8 { field })
    }

    /// A metadata block: a `u32` length, checked against `max` before any entry is read, then
    /// entries filling exactly that many bytes.
    pub(crate) fn metadata(&mut self, max: u32) -> Result<Metadata, BodyError> {
        self.metadata_entries(max, false)
            .map(|(metadata, _)| metadata)
    }

    /// A REQUEST's metadata block, its first `rpc-schema` entry taken out (no list is allocated
    /// for a block that holds only that one).
    pub(crate) fn metadata_and_schema(
        &mut self,
        max: u32,
    ) -> Result<(Metadata, Option<Bytes>), BodyError> {
        self.metadata_entries(max, true)
    }

    fn metadata_entries(
        &mut self,
        max: u32,
        take_schema: bool,
    ) -> Result<(Metadata, Option<Bytes>), BodyError> {
        let len = self.u32("metadata length")?;
        if len > max {
            return Err(BodyError::MetadataTooLarge { len, max });
        }
        let block = self.take(usize_from(len), "metadata")?;
        let mut metadata = Metadata::new();
        let mut schema = None;
        if block.is_empty() {
            return Ok((metadata, schema));
        }
        let mut entries = Self::new(block);
        while !entries.is_at_end() {
            let key_len = entries.u8("metadata key length")?;
            let key = entries.take(usize::from(key_len), "metadata key")?;
            let key = if take_schema && schema.is_none() && key == SCHEMA_KEY.as_bytes() {
                None
            } else {
                Some(MetadataKey::from_bytes(key).map_err(BodyError::InvalidMetadataKey)?)
            };
            let value_len = entries.u32("metadata value length")?;
            let value = entries.take(usize_from(value_len), "metadata value")?;
            match key {
                Some(key) => metadata.append(key, value),
                None => schema = Some(value),
            }
        }
        Ok((metadata, schema))
    }

    /// Everything not read yet.
    pub(crate) fn rest(&mut self) -> Bytes {
        let rest = self.body.slice(self.pos.min(self.body.len())..);
        self.pos = self.body.len();
        rest
    }

    pub(crate) fn is_at_end(&self) -> bool {
        self.pos >= self.body.len()
    }

    /// Fails if bytes are left, for bodies with a fixed layout.
    pub(crate) fn finish(&self) -> Result<(), BodyError> {
        match self.body.len().saturating_sub(self.pos) {
            0 => Ok(()),
            extra => Err(BodyError::TrailingBytes { extra }),
        }
    }
}

/// Lengths on the wire are u32; usize is at least 32 bits on every target we build for.
pub(crate) fn usize_from(len: u32) -> usize {
    usize::try_from(len).unwrap_or(usize::MAX)
}

/// A length as the `u32` its prefix holds, or [`EncodeError::FieldTooLong`].
pub(crate) fn u32_len(len: usize, field: &'static str) -> Result<u32, EncodeError> {
    u32::try_from(len).map_err(|_| EncodeError::FieldTooLong { field, len })
}

/// Bytes a metadata block takes on the wire, its `u32` length included.
pub(crate) fn metadata_wire_len(metadata: &Metadata) -> usize {
    4 + metadata.encoded_len()
}

/// Checks a metadata block against the peer's limit.
pub(crate) fn check_metadata(metadata: &Metadata, max: u32) -> Result<(), EncodeError> {
    metadata
        .check_size(max)
        .map_err(|_| EncodeError::MetadataTooLarge {
            len: metadata.encoded_len(),
            max,
        })
}

/// Writes a metadata block; [`check_metadata`] must have passed.
pub(crate) fn put_metadata(dst: &mut BytesMut, metadata: &Metadata) {
    put_metadata_with_len(dst, metadata, metadata.encoded_len());
}

/// Writes a metadata block's length `len` and `metadata`'s entries; entries worth the rest of
/// `len` must follow ([`put_entry`]).
pub(crate) fn put_metadata_with_len(dst: &mut BytesMut, metadata: &Metadata, len: usize) {
    dst.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    for (key, value) in metadata.iter() {
        put_entry(dst, key.as_bytes(), value);
    }
}

/// Writes one metadata entry. Keys are at most 255 bytes and the block fits in u32 (checked
/// before): both prefixes are exact.
pub(crate) fn put_entry(dst: &mut BytesMut, key: &[u8], value: &[u8]) {
    dst.put_u8(u8::try_from(key.len()).unwrap_or(u8::MAX));
    dst.put_slice(key);
    dst.put_u32(u32::try_from(value.len()).unwrap_or(u32::MAX));
    dst.put_slice(value);
}

/// What an `rpc-schema` entry with `value` adds to a metadata block.
pub(crate) fn schema_entry_len(value: &[u8]) -> usize {
    1 + SCHEMA_KEY.len() + 4 + value.len()
}
