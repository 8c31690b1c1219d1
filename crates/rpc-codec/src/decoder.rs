//! Bytes to frames, with the connection's rules enforced.

use std::fmt;

use bytes::{Buf, BytesMut};
use tokio_util::codec::Decoder;

use crate::error::{DecodeError, FrameError, RejectReason};
use crate::frame::{
    Cancel, Extension, Frame, GoAway, Hello, HelloAck, Ping, Pong, Request, Response,
};
use crate::header::{HEADER_LEN, Header};
use crate::settings::{DEFAULT_MAX_FRAME_SIZE, MIN_MAX_FRAME_SIZE};
use crate::{FrameKind, PROTOCOL_VERSION, Settings, preface};

/// Which end of the connection a decoder runs on. A server decoder reads what clients send, and
/// the reverse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The end that sends REQUESTs.
    Client,
    /// The end that answers them.
    Server,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Client => "client",
            Self::Server => "server",
        })
    }
}

/// What the decoder yields per frame: the frame, or a REQUEST/RESPONSE rejected on its own while
/// the connection lives on.
pub type Decoded = Result<Frame, FrameError>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Waiting for the peer's 8-byte preface.
    Preface,
    /// Waiting for HELLO (server) or HELLO_ACK (client).
    Handshake,
    /// Handshake done: calls flow.
    Open,
    /// A connection error happened; nothing more is decoded.
    Failed,
}

/// Decodes one connection's inbound bytes: preface, handshake, then frames, checking every rule of
/// docs/PROTOCOL.md that the byte stream alone can show.
///
/// Order of checks for each frame: header CRC first (nothing in a header is trusted before it),
/// then the reserved field, the kind (known, allowed on this side, in the right phase), the flags,
/// the call id rules, and the length against the limit, all *before* any memory is reserved for the
/// body. Then the body CRC and the body layout.
///
/// - `Err(DecodeError)`: a connection error. The decoder is then spent: later calls discard their
///   input and yield `Ok(None)`, so memory stays bounded.
/// - `Ok(Some(Err(FrameError)))`: one REQUEST or RESPONSE rejected; keep decoding.
/// - `Ok(None)`: more bytes needed; input split at any byte boundary decodes the same.
///
/// ```
/// use bytes::BytesMut;
/// use rpc_codec::{FrameDecoder, Role};
/// use tokio_util::codec::Decoder;
/// let mut decoder = FrameDecoder::new(Role::Server);
/// let mut garbage = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
/// let err = decoder.decode(&mut garbage).unwrap_err();
/// assert_eq!(err.to_string(), "bad magic: byte 0 of the preface is 0x47");
/// ```
#[derive(Debug)]
pub struct FrameDecoder {
    role: Role,
    state: State,
    max_frame_size: u32,
    max_metadata_size: u32,
    last_request_id: u64,
    pending: Option<Header>,
}

/// Configures a [`FrameDecoder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct DecoderBuilder {
    role: Role,
    max_frame_size: u32,
    max_metadata_size: u32,
    handshake: bool,
}

impl DecoderBuilder {
    /// The largest frame body accepted once the handshake is done, in bytes. Default 4 MiB; values
    /// below 4096 are raised to 4096. Must equal the MAX_FRAME_SIZE this side announces.
    pub fn max_frame_size(mut self, max: u32) -> Self {
        self.max_frame_size = max.max(MIN_MAX_FRAME_SIZE);
        self
    }

    /// The largest metadata block accepted, in bytes. Default 16 KiB. Must equal the
    /// MAX_METADATA_SIZE this side announces.
    pub fn max_metadata_size(mut self, max: u32) -> Self {
        self.max_metadata_size = max;
        self
    }

    /// Both limits from the settings this side announces.
    pub fn settings(self, local: &Settings) -> Self {
        self.max_frame_size(local.max_frame_size)
            .max_metadata_size(local.max_metadata_size)
    }

    /// Whether to expect the preface and the handshake frame first. Default `true`; `false` starts
    /// with the handshake done, for transports that handshake elsewhere and for tests.
    pub fn handshake(mut self, expect: bool) -> Self {
        self.handshake = expect;
        self
    }

    /// The decoder.
    #[must_use]
    pub fn build(self) -> FrameDecoder {
        FrameDecoder {
            role: self.role,
            state: if self.handshake {
                State::Preface
            } else {
                State::Open
            },
            max_frame_size: self.max_frame_size,
            max_metadata_size: self.max_metadata_size,
            last_request_id: 0,
            pending: None,
        }
    }
}

impl FrameDecoder {
    /// A decoder for `role` with default limits, expecting the preface and handshake.
    #[must_use]
    pub fn new(role: Role) -> Self {
        Self::builder(role).build()
    }

    /// A builder for `role`.
    pub fn builder(role: Role) -> DecoderBuilder {
        DecoderBuilder {
            role,
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            max_metadata_size: rpc_core::metadata::DEFAULT_MAX_METADATA_SIZE,
            handshake: true,
        }
    }

    /// The side this decoder runs on.
    #[must_use]
    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether the handshake frame has been received.
    #[must_use]
    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    /// The highest REQUEST call id decoded so far (server side), 0 before the first.
    #[must_use]
    pub fn last_request_id(&self) -> u64 {
        self.last_request_id
    }

    fn current_max_frame_size(&self) -> u32 {
        if self.state == State::Open {
            self.max_frame_size
        } else {
            MIN_MAX_FRAME_SIZE
        }
    }

    /// Checks every header rule; nothing here reserves memory.
    fn check_header(&self, h: &Header) -> Result<(), DecodeError> {
        let kind = h.kind;
        if h.reserved != 0 {
            return Err(DecodeError::ReservedBitsSet {
                reserved: h.reserved,
            });
        }
        if !kind.is_defined() && !kind.is_extension() {
            return Err(DecodeError::UnknownKind { kind: kind.as_u8() });
        }
        let allowed = match (self.state, self.role) {
            (State::Open, Role::Server) => matches!(
                kind,
                FrameKind::REQUEST
                    | FrameKind::CANCEL
                    | FrameKind::PING
                    | FrameKind::PONG
                    | FrameKind::GOAWAY
            ),
            (State::Open, Role::Client) => matches!(
                kind,
                FrameKind::RESPONSE | FrameKind::PING | FrameKind::PONG | FrameKind::GOAWAY
            ),
            (_, Role::Server) => kind == FrameKind::HELLO,
            (_, Role::Client) => matches!(kind, FrameKind::HELLO_ACK | FrameKind::GOAWAY),
        };
        if !(allowed || kind.is_extension() && self.state == State::Open) {
            return Err(if self.state == State::Open {
                DecodeError::UnexpectedKind {
                    kind,
                    role: self.role,
                }
            } else {
                DecodeError::FrameBeforeHandshake { kind }
            });
        }
        if !kind.is_extension() {
            let defined = match kind {
                FrameKind::REQUEST => crate::frame::request::FLAG_IDEMPOTENT,
                FrameKind::RESPONSE => crate::frame::response::FLAG_NOT_EXECUTED,
                _ => 0,
            };
            if h.flags & !defined != 0 {
                return Err(DecodeError::UnknownFlags {
                    kind,
                    flags: h.flags & !defined,
                });
            }
            if kind.is_call_scoped() && h.call_id == 0 {
                return Err(DecodeError::ZeroCallId { kind });
            }
            if !kind.is_call_scoped() && h.call_id != 0 {
                return Err(DecodeError::UnexpectedCallId {
                    kind,
                    call_id: h.call_id,
                });
            }
        }
        let last = self.last_request_id;
        if kind == FrameKind::REQUEST && h.call_id <= last {
            return Err(DecodeError::CallIdNotIncreasing {
                call_id: h.call_id,
                last,
            });
        }
        if kind == FrameKind::CANCEL && h.call_id > last {
            return Err(DecodeError::CancelForUnknownCall {
                call_id: h.call_id,
                last,
            });
        }
        let max = self.current_max_frame_size();
        if h.body_len > max {
            return Err(DecodeError::FrameTooLarge {
                kind,
                call_id: h.call_id,
                len: h.body_len,
                max,
            });
        }
        Ok(())
    }

    fn decode_frame(&mut self, src: &mut BytesMut) -> Result<Option<Decoded>, DecodeError> {
        let header = match self.pending {
            Some(header) => header,
            None => {
                let Some(parsed) = Header::parse(src) else {
                    src.reserve(HEADER_LEN.saturating_sub(src.len()));
                    return Ok(None);
                };
                let header = parsed.map_err(|m| DecodeError::HeaderChecksum {
                    stored: m.stored,
                    computed: m.computed,
                })?;
                self.check_header(&header)?;
                self.pending = Some(header);
                header
            }
        };
        // The length passed the limit check, so this reservation is bounded by it.
        let frame_len = HEADER_LEN.saturating_add(crate::wire::usize_from(header.body_len));
        if src.len() < frame_len {
            src.reserve(frame_len - src.len());
            return Ok(None);
        }
        self.pending = None;
        let mut frame = src.split_to(frame_len);
        frame.advance(HEADER_LEN);
        let body = frame.freeze();
        let kind = header.kind;
        if kind == FrameKind::REQUEST {
            self.last_request_id = header.call_id;
        }

        let computed = crc32fast::hash(&body);
        let per_call = matches!(kind, FrameKind::REQUEST | FrameKind::RESPONSE);
        let reject = |reason| FrameError {
            kind,
            call_id: header.call_id,
            flags: header.flags,
            reason,
        };
        if computed != header.body_crc {
            if per_call {
                return Ok(Some(Err(reject(RejectReason::BodyChecksum {
                    stored: header.body_crc,
                    computed,
                }))));
            }
            return Err(DecodeError::BodyChecksum {
                kind,
                stored: header.body_crc,
                computed,
            });
        }

        let malformed = |error| DecodeError::Malformed { kind, error };
        let (flags, call_id, max_md) = (header.flags, header.call_id, self.max_metadata_size);
        let frame = match kind {
            FrameKind::REQUEST => match Request::decode(flags, call_id, body, max_md) {
                Ok(f) => Frame::Request(f),
                Err(e) => return Ok(Some(Err(reject(e.into())))),
            },
            FrameKind::RESPONSE => match Response::decode(flags, call_id, body, max_md) {
                Ok(f) => Frame::Response(f),
                Err(e) => return Ok(Some(Err(reject(e.into())))),
            },
            FrameKind::HELLO => {
                let hello = Hello::decode(body).map_err(malformed)?;
                if !(hello.min_version..=hello.max_version).contains(&PROTOCOL_VERSION) {
                    return Err(DecodeError::UnsupportedVersion {
                        min: hello.min_version,
                        max: hello.max_version,
                    });
                }
                self.state = State::Open;
                Frame::Hello(hello)
            }
            FrameKind::HELLO_ACK => {
                let ack = HelloAck::decode(body).map_err(malformed)?;
                if ack.version != PROTOCOL_VERSION {
                    return Err(DecodeError::UnsupportedVersion {
                        min: ack.version,
                        max: ack.version,
                    });
                }
                self.state = State::Open;
                Frame::HelloAck(ack)
            }
            FrameKind::CANCEL => Frame::Cancel(Cancel::decode(call_id, body).map_err(malformed)?),
            FrameKind::PING => Frame::Ping(Ping::decode(&body).map_err(malformed)?),
            FrameKind::PONG => Frame::Pong(Pong::decode(&body).map_err(malformed)?),
            FrameKind::GOAWAY => Frame::GoAway(GoAway::decode(body).map_err(malformed)?),
            _ => Frame::Extension(Extension {
                kind: kind.as_u8(),
                flags,
                call_id,
                body,
            }),
        };
        Ok(Some(Ok(frame)))
    }

    fn decode_any(&mut self, src: &mut BytesMut) -> Result<Option<Decoded>, DecodeError> {
        loop {
            match self.state {
                State::Failed => {
                    src.clear();
                    return Ok(None);
                }
                State::Preface => match preface::check(src) {
                    Err(offset) => {
                        return Err(DecodeError::BadMagic {
                            offset,
                            byte: src.get(offset).copied().unwrap_or_default(),
                        });
                    }
                    Ok(false) => return Ok(None),
                    Ok(true) => {
                        src.advance(crate::MAGIC.len());
                        self.state = State::Handshake;
                    }
                },
                State::Handshake | State::Open => return self.decode_frame(src),
            }
        }
    }
}

impl Decoder for FrameDecoder {
    type Item = Decoded;
    type Error = DecodeError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, Self::Error> {
        let result = self.decode_any(src);
        if result.is_err() {
            self.state = State::Failed;
            self.pending = None;
            src.clear();
        }
        result
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, Self::Error> {
        match self.decode(src)? {
            Some(item) => Ok(Some(item)),
            None if src.is_empty() => Ok(None),
            None => {
                let buffered = src.len();
                self.state = State::Failed;
                src.clear();
                Err(DecodeError::TruncatedAtEof { buffered })
            }
        }
    }
}
