//! Extension frames (kinds 0x80–0xFF): defined by later versions or private agreements. A v1
//! receiver verifies both checksums, then drops them; their flags and call id are theirs to define.

use bytes::{Bytes, BytesMut};

use super::WireFrame;
use crate::FrameKind;

/// A frame of a kind in the skippable extension range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extension {
    /// The kind byte, 0x80–0xFF.
    pub kind: u8,
    /// Flags, as the extension defines them.
    pub flags: u8,
    /// Call id, as the extension defines it.
    pub call_id: u64,
    /// The body, unparsed.
    pub body: Bytes,
}

impl WireFrame for Extension {
    fn kind(&self) -> FrameKind {
        FrameKind::from(self.kind)
    }

    fn flags(&self) -> u8 {
        self.flags
    }

    fn call_id(&self) -> u64 {
        self.call_id
    }

    fn envelope_len(&self) -> usize {
        0
    }

    fn write_envelope(&self, _dst: &mut BytesMut) {}

    fn payload(&self) -> Bytes {
        self.body.clone()
    }
}
