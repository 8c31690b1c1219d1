//! HELLO (kind 0x01): the client's first frame, right after its preface.
//!
//! ```text
//! offset  size  field
//! 0       2     lowest version the client speaks (u16)
//! 2       2     highest version the client speaks (u16)
//! 4       2     settings count S (u16)
//! 6       6·S   settings: id (u16), value (u32)
//! ```

use bytes::{BufMut, BytesMut};

use super::WireFrame;
use crate::error::BodyError;
use crate::wire::BodyReader;
use crate::{FrameKind, PROTOCOL_VERSION, Settings};

/// The client's opening.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Lowest version the client speaks.
    pub min_version: u16,
    /// Highest version the client speaks.
    pub max_version: u16,
    /// The client's settings.
    pub settings: Settings,
}

impl Hello {
    /// A HELLO offering exactly this implementation's version.
    #[must_use]
    pub fn new(settings: Settings) -> Self {
        Self {
            min_version: PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            settings,
        }
    }

    pub(crate) fn decode(body: bytes::Bytes) -> Result<Self, BodyError> {
        let mut body = BodyReader::new(body);
        let min_version = body.u16("min version")?;
        let max_version = body.u16("max version")?;
        if min_version > max_version {
            return Err(BodyError::EmptyVersionRange {
                min: min_version,
                max: max_version,
            });
        }
        let settings = Settings::read(&mut body)?;
        body.finish()?;
        Ok(Self {
            min_version,
            max_version,
            settings,
        })
    }
}

impl WireFrame for Hello {
    fn kind(&self) -> FrameKind {
        FrameKind::HELLO
    }

    fn envelope_len(&self) -> usize {
        4 + self.settings.wire_len()
    }

    fn write_envelope(&self, dst: &mut BytesMut) {
        dst.put_u16(self.min_version);
        dst.put_u16(self.max_version);
        self.settings.write(dst);
    }
}
