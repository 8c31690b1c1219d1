//! Frames to bytes.

use bytes::{BufMut, Bytes, BytesMut};
use tokio_util::codec::Encoder;

use crate::error::EncodeError;
use crate::frame::{Frame, WireFrame};
use crate::header::{HEADER_LEN, Header};
use crate::settings::MIN_MAX_FRAME_SIZE;
use crate::{FrameKind, MAGIC, Settings};

/// Encodes frames for one connection, enforcing the peer's announced limits.
///
/// Writes the 8-byte preface before the first frame (unless built with
/// [`FrameEncoder::without_preface`]). Until [`FrameEncoder::set_peer_settings`] is called the
/// peer is assumed to accept only the protocol's minimum MAX_FRAME_SIZE of 4096 bytes, which every
/// handshake frame fits in.
///
/// Two ways to encode:
/// - [`FrameEncoder::encode_head`] appends the header and envelope to a buffer and hands the payload
///   back as a shared [`Bytes`], so a writer can coalesce many small frames in one buffer and send a
///   large payload with a vectored write, never copying it.
/// - The tokio-util [`Encoder`] impl copies the payload into the buffer: simplest for small frames.
///
/// Encoding checks everything first and writes nothing when it fails.
#[derive(Debug, Clone)]
pub struct FrameEncoder {
    peer: Settings,
    preface_pending: bool,
}

impl Default for FrameEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameEncoder {
    /// An encoder that writes the preface before its first frame.
    #[must_use]
    pub fn new() -> Self {
        Self {
            peer: Settings {
                max_frame_size: MIN_MAX_FRAME_SIZE,
                ..Settings::default()
            },
            preface_pending: true,
        }
    }

    /// An encoder that writes no preface, for transports that handshake elsewhere and for tests.
    #[must_use]
    pub fn without_preface() -> Self {
        Self {
            preface_pending: false,
            ..Self::new()
        }
    }

    /// Records the limits the peer announced in its HELLO or HELLO_ACK.
    pub fn set_peer_settings(&mut self, settings: Settings) {
        self.peer = settings;
    }

    /// The peer's limits as last recorded.
    #[must_use]
    pub fn peer_settings(&self) -> &Settings {
        &self.peer
    }

    /// Appends `frame`'s header and envelope (and the preface, if still pending) to `dst`, and
    /// returns the payload, which must be written right after them.
    ///
    /// # Errors
    /// [`EncodeError`] when the frame breaks a rule or exceeds the peer's limits; `dst` is then
    /// unchanged.
    pub fn encode_head(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<Bytes, EncodeError> {
        match frame {
            Frame::Hello(f) => self.encode_wire(f, dst),
            Frame::HelloAck(f) => self.encode_wire(f, dst),
            Frame::Request(f) => self.encode_wire(f, dst),
            Frame::Response(f) => self.encode_wire(f, dst),
            Frame::Cancel(f) => self.encode_wire(f, dst),
            Frame::Ping(f) => self.encode_wire(f, dst),
            Frame::Pong(f) => self.encode_wire(f, dst),
            Frame::GoAway(f) => self.encode_wire(f, dst),
            Frame::Extension(f) if FrameKind::from(f.kind).is_extension() => {
                self.encode_wire(f, dst)
            }
            Frame::Extension(f) => Err(EncodeError::NotAnExtensionKind { kind: f.kind }),
        }
    }

    fn encode_wire<F: WireFrame>(
        &mut self,
        frame: &F,
        dst: &mut BytesMut,
    ) -> Result<Bytes, EncodeError> {
        let kind = frame.kind();
        if kind.is_call_scoped() && frame.call_id() == 0 {
            return Err(EncodeError::ZeroCallId { kind });
        }
        frame.check(&self.peer)?;
        let payload = frame.payload();
        let envelope_len = frame.envelope_len();
        let max = self.peer.max_frame_size;
        let body_len = envelope_len
            .checked_add(payload.len())
            .and_then(|len| u32::try_from(len).ok())
            .filter(|&len| len <= max)
            .ok_or_else(|| EncodeError::FrameTooLarge {
                kind,
                len: envelope_len.saturating_add(payload.len()),
                max,
            })?;

        let preface = if self.preface_pending { MAGIC.len() } else { 0 };
        dst.reserve(preface + HEADER_LEN + envelope_len);
        if self.preface_pending {
            dst.put_slice(&MAGIC);
            self.preface_pending = false;
        }
        let at = dst.len();
        dst.put_bytes(0, HEADER_LEN);
        frame.write_envelope(dst);
        debug_assert_eq!(dst.len() - at - HEADER_LEN, envelope_len);

        let mut crc = crc32fast::Hasher::new();
        crc.update(dst.get(at + HEADER_LEN..).unwrap_or_default());
        crc.update(&payload);
        let header = Header {
            body_len,
            kind,
            flags: frame.flags(),
            reserved: 0,
            call_id: frame.call_id(),
            body_crc: crc.finalize(),
        };
        header.write_at(dst, at);
        Ok(payload)
    }
}

impl Encoder<Frame> for FrameEncoder {
    type Error = EncodeError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), Self::Error> {
        let payload = self.encode_head(&frame, dst)?;
        dst.extend_from_slice(&payload);
        Ok(())
    }
}
