//! Encoder rules: the peer's limits are enforced before anything is written, and the payload of
//! `encode_head` is handed back, not copied.

mod support;

use bytes::{Bytes, BytesMut};
use rpc_codec::{
    Cancel, EncodeError, Extension, Frame, FrameEncoder, FrameKind, MAGIC, MethodName, Request,
    Settings,
};
use rpc_core::{Metadata, MetadataKey};
use tokio_util::codec::Encoder;

fn encoder(max_frame_size: u32, max_metadata_size: u32) -> FrameEncoder {
    let mut encoder = FrameEncoder::without_preface();
    encoder.set_peer_settings(Settings {
        max_frame_size,
        max_metadata_size,
        ..Settings::default()
    });
    encoder
}

fn request(payload_len: usize) -> Request {
    Request::new(
        1,
        MethodName::from_static("Echo.echo"),
        Bytes::from(vec![0u8; payload_len]),
    )
}

#[test]
fn oversize_frame_is_refused_naming_both_sizes_and_writes_nothing() {
    let mut encoder = encoder(4096, 16 * 1024);
    let mut dst = BytesMut::from(&b"earlier frames"[..]);
    let err = encoder.encode(request(5000).into(), &mut dst).unwrap_err();
    // Envelope: 8 budget + 2 + 9 method + 4 metadata length = 23 bytes, then the payload.
    assert!(matches!(
        err,
        EncodeError::FrameTooLarge {
            kind: FrameKind::REQUEST,
            len: 5023,
            max: 4096
        }
    ));
    assert_eq!(
        err.to_string(),
        "REQUEST body would be 5023 bytes, over the peer's max frame size of 4096 bytes"
    );
    assert_eq!(&dst[..], b"earlier frames");
    // Exactly at the limit is fine.
    encoder.encode(request(4096 - 23).into(), &mut dst).unwrap();
}

#[test]
fn oversize_metadata_is_refused() {
    let mut encoder = encoder(1 << 20, 10);
    let mut req = request(0);
    req.metadata
        .insert(MetadataKey::from_static("k"), vec![0u8; 5]); // 5 + 1 + 5 = 11
    let mut dst = BytesMut::new();
    let err = encoder.encode(req.into(), &mut dst).unwrap_err();
    assert!(matches!(
        err,
        EncodeError::MetadataTooLarge { len: 11, max: 10 }
    ));
    assert!(dst.is_empty());
    let mut ok = request(0);
    ok.metadata = Metadata::new();
    encoder.encode(ok.into(), &mut dst).unwrap();
}

#[test]
fn call_scoped_frames_need_a_call_id() {
    let mut encoder = encoder(1 << 20, 1 << 10);
    let mut dst = BytesMut::new();
    let mut req = request(0);
    req.call_id = 0;
    assert!(matches!(
        encoder.encode(req.into(), &mut dst),
        Err(EncodeError::ZeroCallId {
            kind: FrameKind::REQUEST
        })
    ));
    assert!(matches!(
        encoder.encode(Frame::Cancel(Cancel { call_id: 0 }), &mut dst),
        Err(EncodeError::ZeroCallId {
            kind: FrameKind::CANCEL
        })
    ));
    assert!(dst.is_empty());
}

#[test]
fn extension_frames_must_use_the_extension_range() {
    let mut encoder = encoder(1 << 20, 1 << 10);
    let ext = |kind| {
        Frame::Extension(Extension {
            kind,
            flags: 0,
            call_id: 0,
            body: Bytes::new(),
        })
    };
    let mut dst = BytesMut::new();
    assert!(matches!(
        encoder.encode(ext(0x10), &mut dst),
        Err(EncodeError::NotAnExtensionKind { kind: 0x10 })
    ));
    encoder.encode(ext(0x80), &mut dst).unwrap();
}

#[test]
fn preface_is_written_once_before_the_first_frame() {
    let mut encoder = FrameEncoder::new();
    let mut dst = BytesMut::new();
    // A failed first encode writes no preface either.
    let mut bad = request(0);
    bad.call_id = 0;
    assert!(encoder.encode(bad.into(), &mut dst).is_err());
    assert!(dst.is_empty());
    encoder.encode(request(0).into(), &mut dst).unwrap();
    assert_eq!(&dst[..8], &MAGIC);
    let first = dst.len();
    let mut second = request(0);
    second.call_id = 2;
    encoder.encode(second.into(), &mut dst).unwrap();
    assert_eq!(dst.len() - first, first - 8, "no second preface");
}

#[test]
fn encode_head_hands_the_payload_back_without_copying_it() {
    let mut encoder = encoder(1 << 20, 1 << 10);
    let payload = Bytes::from(vec![9u8; 64 * 1024]);
    let mut req = request(0);
    req.payload = payload.clone();
    let mut head = BytesMut::new();
    let out = encoder.encode_head(&req.clone().into(), &mut head).unwrap();
    assert_eq!(
        out.as_ptr(),
        payload.as_ptr(),
        "the same buffer, not a copy"
    );
    assert_eq!(head.len(), 24 + 23);
    // body_len, which clients check against the peer's limit, is the real body size.
    assert_eq!(req.body_len(), head.len() - 24 + out.len());
    // Head followed by payload is exactly what the copying encoder writes.
    let mut whole = BytesMut::new();
    encoder.encode(req.into(), &mut whole).unwrap();
    assert_eq!([&head[..], &out[..]].concat(), whole.to_vec());
}
