//! The fixed 24-byte frame header.
//!
//! ```text
//!  0               4     5     6           8                      16          20          24
//!  +---------------+-----+-----+-----------+----------------------+-----------+-----------+
//!  | body length   |kind |flags| reserved  | call id              | body CRC  | header CRC|
//!  | u32           | u8  | u8  | u16 = 0   | u64                  | u32       | u32       |
//!  +---------------+-----+-----+-----------+----------------------+-----------+-----------+
//! ```
//! All integers big-endian. The header CRC covers bytes 0–19, so it also protects the body CRC.

use bytes::{BufMut, BytesMut};

use crate::FrameKind;

/// Bytes in a frame header.
pub const HEADER_LEN: usize = 24;

/// A frame header whose checksum has been verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) body_len: u32,
    pub(crate) kind: FrameKind,
    pub(crate) flags: u8,
    pub(crate) reserved: u16,
    pub(crate) call_id: u64,
    pub(crate) body_crc: u32,
}

/// A header whose stored CRC does not match its bytes.
pub(crate) struct ChecksumMismatch {
    pub(crate) stored: u32,
    pub(crate) computed: u32,
}

impl Header {
    /// Parses and verifies the header at the start of `buf`. `None` if fewer than 24 bytes.
    pub(crate) fn parse(buf: &[u8]) -> Option<Result<Self, ChecksumMismatch>> {
        let bytes: &[u8; HEADER_LEN] = buf.get(..HEADER_LEN)?.try_into().ok()?;
        let [
            l0,
            l1,
            l2,
            l3,
            kind,
            flags,
            r0,
            r1,
            c0,
            c1,
            c2,
            c3,
            c4,
            c5,
            c6,
            c7,
            b0,
            b1,
            b2,
            b3,
            h0,
            h1,
            h2,
            h3,
        ] = *bytes;
        let stored = u32::from_be_bytes([h0, h1, h2, h3]);
        let computed = crc32fast::hash(bytes.get(..20)?);
        if stored != computed {
            return Some(Err(ChecksumMismatch { stored, computed }));
        }
        Some(Ok(Self {
            body_len: u32::from_be_bytes([l0, l1, l2, l3]),
            kind: FrameKind::from(kind),
            flags,
            reserved: u16::from_be_bytes([r0, r1]),
            call_id: u64::from_be_bytes([c0, c1, c2, c3, c4, c5, c6, c7]),
            body_crc: u32::from_be_bytes([b0, b1, b2, b3]),
        }))
    }

    /// The 24 header bytes, header CRC included.
    pub(crate) fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        let mut w = &mut out[..];
        w.put_u32(self.body_len);
        w.put_u8(self.kind.as_u8());
        w.put_u8(self.flags);
        w.put_u16(self.reserved);
        w.put_u64(self.call_id);
        w.put_u32(self.body_crc);
        let crc = crc32fast::hash(out.get(..20).unwrap_or_default());
        if let Some(tail) = out.get_mut(20..) {
            tail.copy_from_slice(&crc.to_be_bytes());
        }
        out
    }

    /// Writes the header over the 24 placeholder bytes at `at` in `dst`.
    pub(crate) fn write_at(self, dst: &mut BytesMut, at: usize) {
        if let Some(slot) = dst.get_mut(at..at.saturating_add(HEADER_LEN)) {
            slot.copy_from_slice(&self.to_bytes());
        }
    }
}
