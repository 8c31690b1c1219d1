//! Helpers shared by the codec's integration tests: encoding without a handshake, decoders past
//! the handshake, and hand-built frames with arbitrary header fields (for breaking rules on purpose).
#![allow(dead_code, unreachable_pub)]

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;
use rpc_codec::{
    Budget, Cancel, DecodeError, Decoded, Frame, FrameDecoder, FrameEncoder, GoAway, GoAwayCode,
    Hello, HelloAck, MethodName, Ping, Pong, Request, Response, Role, Settings,
};
use rpc_core::{Metadata, MetadataKey, Status, StatusCode};
use tokio_util::codec::{Decoder, Encoder};

/// Peer settings large enough for every test frame.
pub fn roomy_settings() -> Settings {
    Settings {
        max_frame_size: 8 << 20,
        ..Settings::default()
    }
}

/// The bytes of `frame`, no preface.
pub fn encode(frame: &Frame) -> BytesMut {
    let mut encoder = FrameEncoder::without_preface();
    encoder.set_peer_settings(roomy_settings());
    let mut out = BytesMut::new();
    encoder.encode(frame.clone(), &mut out).unwrap();
    out
}

/// A decoder for `role`, past the handshake.
pub fn open_decoder(role: Role) -> FrameDecoder {
    FrameDecoder::builder(role)
        .handshake(false)
        .max_frame_size(8 << 20)
        .build()
}

/// Which side receives frames of this kind.
pub fn receiver_of(frame: &Frame) -> Role {
    match frame {
        Frame::Hello(_) | Frame::Request(_) | Frame::Cancel(_) => Role::Server,
        _ => Role::Client,
    }
}

/// A decoder for the side that receives `frame`, in the phase where `frame` is allowed.
pub fn decoder_for(frame: &Frame) -> FrameDecoder {
    let role = receiver_of(frame);
    match frame {
        Frame::Hello(_) | Frame::HelloAck(_) => {
            FrameDecoder::builder(role).max_frame_size(8 << 20).build()
        }
        Frame::Cancel(c) => {
            // A CANCEL must follow its REQUEST: feed a REQUEST with the same id first.
            let mut decoder = open_decoder(role);
            let mut req = encode(&Frame::Request(Request::new(
                c.call_id,
                MethodName::from_static("T.m"),
                Bytes::new(),
            )));
            decoder.decode(&mut req).unwrap().unwrap().unwrap();
            decoder
        }
        _ => open_decoder(role),
    }
}

/// The bytes a decoder for `frame`'s receiver expects before `frame`: the preface for handshake
/// frames, nothing otherwise.
pub fn wire_bytes(frame: &Frame) -> BytesMut {
    let mut out = BytesMut::new();
    if matches!(frame, Frame::Hello(_) | Frame::HelloAck(_)) {
        out.put_slice(&rpc_codec::MAGIC);
    }
    out.put_slice(&encode(frame));
    out
}

/// Decodes everything in `bytes`, one item per frame, stopping at the first connection error.
pub fn decode_all(
    decoder: &mut FrameDecoder,
    bytes: &mut BytesMut,
) -> (Vec<Decoded>, Option<DecodeError>) {
    let mut items = Vec::new();
    loop {
        match decoder.decode(bytes) {
            Ok(Some(item)) => items.push(item),
            Ok(None) => return (items, None),
            Err(e) => return (items, Some(e)),
        }
    }
}

/// Decodes exactly one frame from `bytes`, which must hold exactly it.
pub fn decode_one(decoder: &mut FrameDecoder, mut bytes: BytesMut) -> Result<Decoded, DecodeError> {
    let item = decoder.decode(&mut bytes)?.expect("a whole frame");
    assert!(bytes.is_empty(), "{} bytes left over", bytes.len());
    Ok(item)
}

/// A frame built by hand: every header field as given, CRCs computed honestly unless overridden.
#[derive(Clone, Debug)]
pub struct RawFrame {
    pub kind: u8,
    pub flags: u8,
    pub reserved: u16,
    pub call_id: u64,
    pub body: Vec<u8>,
    pub body_len: Option<u32>,
    pub body_crc: Option<u32>,
}

impl RawFrame {
    pub fn new(kind: u8, call_id: u64, body: &[u8]) -> Self {
        Self {
            kind,
            flags: 0,
            reserved: 0,
            call_id,
            body: body.to_vec(),
            body_len: None,
            body_crc: None,
        }
    }

    pub fn bytes(&self) -> BytesMut {
        let mut header = BytesMut::new();
        header.put_u32(
            self.body_len
                .unwrap_or_else(|| u32::try_from(self.body.len()).unwrap()),
        );
        header.put_u8(self.kind);
        header.put_u8(self.flags);
        header.put_u16(self.reserved);
        header.put_u64(self.call_id);
        header.put_u32(self.body_crc.unwrap_or_else(|| crc32fast::hash(&self.body)));
        let crc = crc32fast::hash(&header);
        header.put_u32(crc);
        header.put_slice(&self.body);
        header
    }
}

/// A REQUEST envelope built field by field, for malformed-envelope tests.
pub fn request_body(budget: u64, method: &[u8], metadata_block: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.put_u64(budget);
    body.put_u16(u16::try_from(method.len()).unwrap());
    body.put_slice(method);
    body.put_u32(u32::try_from(metadata_block.len()).unwrap());
    body.put_slice(metadata_block);
    body.put_slice(payload);
    body
}

// ---- proptest strategies ----

fn key() -> impl Strategy<Value = MetadataKey> {
    "[a-z0-9._-]{1,20}".prop_map(|k| MetadataKey::try_from(k).unwrap())
}

pub fn metadata() -> impl Strategy<Value = Metadata> {
    proptest::collection::vec((key(), proptest::collection::vec(any::<u8>(), 0..24)), 0..4)
        .prop_map(|entries| {
            entries
                .into_iter()
                .map(|(k, v)| (k, Bytes::from(v)))
                .collect()
        })
}

fn payload() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..200).prop_map(Bytes::from)
}

fn settings() -> impl Strategy<Value = Settings> {
    (
        4096u32..,
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        prop_oneof![Just(0u32), any::<u32>()],
    )
        .prop_map(|(f, c, h, m, d)| Settings {
            max_frame_size: f,
            max_concurrent_calls: c,
            heartbeat_interval_ms: h,
            max_metadata_size: m,
            dedupe_instance: d,
        })
}

fn budget() -> impl Strategy<Value = Budget> {
    prop_oneof![
        Just(Budget::NONE),
        any::<u64>().prop_map(Budget::from_micros)
    ]
}

pub fn request() -> impl Strategy<Value = Request> {
    (
        1u64..,
        any::<bool>(),
        budget(),
        "[A-Za-z][A-Za-z0-9_.]{0,30}",
        metadata(),
        payload(),
    )
        .prop_map(
            |(call_id, idempotent, budget, method, metadata, payload)| Request {
                call_id,
                idempotent,
                budget,
                method: MethodName::try_from(method).unwrap(),
                metadata,
                schema: None,
                payload,
            },
        )
}

pub fn response() -> impl Strategy<Value = Response> {
    (
        1u64..,
        any::<bool>(),
        any::<u32>(),
        ".{0,20}",
        metadata(),
        payload(),
    )
        .prop_map(
            |(call_id, not_executed, code, message, metadata, payload)| Response {
                call_id,
                not_executed,
                status: Status::new(StatusCode::from(code), message).with_metadata(metadata),
                payload,
            },
        )
}

/// Any frame of any kind, with the fields its kind allows.
pub fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (0u16..=1, 1u16..4, settings()).prop_map(|(min_version, max_version, settings)| {
            Frame::Hello(Hello {
                min_version,
                max_version,
                settings,
            })
        }),
        settings().prop_map(|settings| Frame::HelloAck(HelloAck {
            version: 1,
            settings
        })),
        request().prop_map(Frame::Request),
        response().prop_map(Frame::Response),
        (1u64..).prop_map(|call_id| Frame::Cancel(Cancel { call_id })),
        any::<[u8; 8]>().prop_map(|opaque| Frame::Ping(Ping { opaque })),
        any::<[u8; 8]>().prop_map(|opaque| Frame::Pong(Pong { opaque })),
        (any::<u64>(), any::<u32>(), ".{0,30}").prop_map(|(last, code, message)| {
            Frame::GoAway(GoAway::new(last, GoAwayCode::from(code), message))
        }),
    ]
}
