//! HELLO_ACK (kind 0x02): the server's answer to HELLO, right after its preface.
//!
//! ```text
//! offset  size  field
//! 0       2     chosen version (u16)
//! 2       2     settings count S (u16)
//! 4       6·S   settings: id (u16), value (u32)
//! ```

use bytes::{BufMut, BytesMut};

use super::WireFrame;
use crate::error::BodyError;
use crate::wire::BodyReader;
use crate::{FrameKind, PROTOCOL_VERSION, Settings};

/// The server's acceptance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HelloAck {
    /// The version both sides now speak.
    pub version: u16,
    /// The server's settings.
    pub settings: Settings,
}

impl HelloAck {
    /// A HELLO_ACK choosing this implementation's version.
    #[must_use]
    pub fn new(settings: Settings) -> Self {
        Self {
            version: PROTOCOL_VERSION,
            settings,
        }
    }

    pub(crate) fn decode(body: bytes::Bytes) -> Result<Self, BodyError> {
        let mut body = BodyReader::new(body);
        let version = body.u16("version")?;
        let settings = Settings::read(&mut body)?;
        body.finish()?;
        Ok(Self { version, settings })
    }
}

impl WireFrame for HelloAck {
    fn kind(&self) -> FrameKind {
        FrameKind::HELLO_ACK
    }

    fn envelope_len(&self) -> usize {
        2 + self.settings.wire_len()
    }

    fn write_envelope(&self, dst: &mut BytesMut) {
        dst.put_u16(self.version);
        self.settings.write(dst);
    }
}
