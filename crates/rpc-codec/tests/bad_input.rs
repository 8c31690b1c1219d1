//! One test per codec-checked row of the bad-input table in docs/PROTOCOL.md §15. Each asserts the
//! exact error, the GOAWAY code or status it maps to, and whether the connection survives.

mod support;

use bytes::{BufMut, Bytes, BytesMut};
use rpc_codec::{
    BodyError, DecodeError, Frame, FrameDecoder, FrameKind, GoAwayCode, Hello, MAGIC, MethodName,
    Ping, RejectReason, Request, Response, Role, Settings,
};
use rpc_core::{Outcome, StatusCode};
use support::{RawFrame, decode_all, encode, open_decoder, request_body};
use tokio_util::codec::Decoder;

fn request(call_id: u64) -> Frame {
    Frame::Request(Request::new(
        call_id,
        MethodName::from_static("Echo.echo"),
        Bytes::from_static(b"payload"),
    ))
}

/// Decodes `bytes` with `decoder` and returns the connection error it must end with.
fn fatal(decoder: &mut FrameDecoder, bytes: &[u8]) -> DecodeError {
    let (_, err) = decode_all(decoder, &mut BytesMut::from(bytes));
    err.expect("a connection error")
}

/// A frame decoded after a rejected one arrives intact: the connection survived.
fn assert_survives(decoder: &mut FrameDecoder, next: &Frame) {
    let mut bytes = encode(next);
    assert_eq!(decoder.decode(&mut bytes).unwrap(), Some(Ok(next.clone())));
}

#[test]
fn bad_magic_is_refused_at_the_first_wrong_byte() {
    for role in [Role::Server, Role::Client] {
        // Wrong at byte 0: refused with one byte in hand.
        let err = fatal(&mut FrameDecoder::new(role), b"G");
        assert!(
            matches!(
                err,
                DecodeError::BadMagic {
                    offset: 0,
                    byte: b'G'
                }
            ),
            "{err}"
        );
        assert_eq!(err.go_away_code(), GoAwayCode::PROTOCOL_ERROR);
        // Right for 4 bytes, then a lone LF where CR LF belongs (a line-ending conversion).
        let mut converted = MAGIC[..4].to_vec();
        converted.push(0x0A);
        let err = fatal(&mut FrameDecoder::new(role), &converted);
        assert!(
            matches!(
                err,
                DecodeError::BadMagic {
                    offset: 4,
                    byte: 0x0A
                }
            ),
            "{err}"
        );
    }
    // A correct prefix waits for more.
    let mut decoder = FrameDecoder::new(Role::Server);
    let mut partial = BytesMut::from(&MAGIC[..5]);
    assert_eq!(decoder.decode(&mut partial).unwrap(), None);
}

#[test]
fn header_crc_mismatch_closes() {
    let mut bytes = encode(&request(1));
    bytes[12] ^= 0x10; // inside the call id
    let err = fatal(&mut open_decoder(Role::Server), &bytes);
    assert!(matches!(err, DecodeError::HeaderChecksum { .. }), "{err}");
    assert_eq!(err.go_away_code(), GoAwayCode::CHECKSUM_ERROR);
    // The stored header CRC itself corrupted.
    let mut bytes = encode(&request(1));
    bytes[22] ^= 0x01;
    assert!(fatal(&mut open_decoder(Role::Server), &bytes).is_checksum());
}

#[test]
fn request_body_crc_mismatch_rejects_only_that_call() {
    let mut decoder = open_decoder(Role::Server);
    let mut bytes = encode(&request(5));
    let last = bytes.len() - 1;
    bytes[last] ^= 0x80; // in the payload
    let rejected = decoder.decode(&mut bytes).unwrap().unwrap().unwrap_err();
    assert_eq!(rejected.kind, FrameKind::REQUEST);
    assert_eq!(rejected.call_id, 5);
    assert!(matches!(rejected.reason, RejectReason::BodyChecksum { .. }));
    assert_eq!(rejected.status_code(), StatusCode::DATA_LOSS);
    assert_eq!(rejected.outcome(), Outcome::NotExecuted);
    // Its id still counts: the next REQUEST must be above it, and decodes fine.
    assert_survives(&mut decoder, &request(6));
}

#[test]
fn response_body_crc_mismatch_rejects_only_that_call() {
    for not_executed in [false, true] {
        let mut decoder = open_decoder(Role::Client);
        let mut response = Response::ok(9, Bytes::from_static(b"result"));
        response.not_executed = not_executed;
        let mut bytes = encode(&Frame::Response(response));
        bytes[30] ^= 0x02;
        let rejected = decoder.decode(&mut bytes).unwrap().unwrap().unwrap_err();
        assert_eq!((rejected.kind, rejected.call_id), (FrameKind::RESPONSE, 9));
        assert_eq!(rejected.status_code(), StatusCode::DATA_LOSS);
        let expected = if not_executed {
            Outcome::NotExecuted
        } else {
            Outcome::MaybeExecuted
        };
        assert_eq!(rejected.outcome(), expected);
        assert_survives(
            &mut decoder,
            &Frame::Response(Response::ok(10, Bytes::new())),
        );
    }
}

#[test]
fn control_frame_body_crc_mismatch_closes() {
    let frames = [
        (Role::Server, Frame::Ping(Ping { opaque: [1; 8] })),
        (Role::Client, Frame::Ping(Ping { opaque: [2; 8] })),
        (
            Role::Client,
            Frame::GoAway(rpc_codec::GoAway::new(3, GoAwayCode::NO_ERROR, "bye")),
        ),
    ];
    for (role, frame) in frames {
        let mut bytes = encode(&frame);
        bytes[24] ^= 0x01;
        let err = fatal(&mut open_decoder(role), &bytes);
        assert!(matches!(err, DecodeError::BodyChecksum { .. }), "{err}");
        assert_eq!(err.go_away_code(), GoAwayCode::CHECKSUM_ERROR);
    }
    // A CANCEL's body CRC must be that of no bytes: 0.
    let mut decoder = open_decoder(Role::Server);
    decode_all(&mut decoder, &mut encode(&request(1)));
    let mut cancel = RawFrame::new(0x05, 1, b"");
    cancel.body_crc = Some(0xDEAD_BEEF);
    assert!(matches!(
        fatal(&mut decoder, &cancel.bytes()),
        DecodeError::BodyChecksum { .. }
    ));
    // A HELLO during the handshake.
    let mut hello = BytesMut::from(&MAGIC[..]);
    let mut body = encode(&Frame::Hello(Hello::new(Settings::default())));
    body[30] ^= 0x40;
    hello.put_slice(&body);
    assert!(fatal(&mut FrameDecoder::new(Role::Server), &hello).is_checksum());
}

#[test]
fn length_over_limit_is_refused_without_allocating() {
    let mut decoder = FrameDecoder::builder(Role::Server)
        .handshake(false)
        .max_frame_size(64 * 1024)
        .build();
    let mut raw = RawFrame::new(0x03, 1, b"");
    raw.body_len = Some(u32::MAX);
    let mut bytes = raw.bytes();
    let capacity_before = bytes.capacity();
    let err = decoder.decode(&mut bytes).unwrap_err();
    match err {
        DecodeError::FrameTooLarge {
            kind,
            call_id,
            len,
            max,
        } => {
            assert_eq!(
                (kind, call_id, len, max),
                (FrameKind::REQUEST, 1, u32::MAX, 64 * 1024)
            );
        }
        other => panic!("expected FrameTooLarge, got {other}"),
    }
    assert_eq!(err.go_away_code(), GoAwayCode::FRAME_TOO_LARGE);
    assert!(
        bytes.capacity() <= capacity_before,
        "reserved memory for the body"
    );
    // One byte over the limit is refused too; exactly the limit is accepted.
    let mut decoder = FrameDecoder::builder(Role::Client)
        .handshake(false)
        .max_frame_size(4096)
        .build();
    let mut raw = RawFrame::new(0x04, 1, b"");
    raw.body_len = Some(4097);
    assert!(matches!(
        decoder.decode(&mut raw.bytes()),
        Err(DecodeError::FrameTooLarge {
            len: 4097,
            max: 4096,
            ..
        })
    ));
    let mut decoder = FrameDecoder::builder(Role::Client)
        .handshake(false)
        .max_frame_size(4096)
        .build();
    let mut response = Response::ok(1, Bytes::from(vec![7u8; 4096 - 12]));
    response.status = rpc_core::Status::ok();
    assert!(
        decoder
            .decode(&mut encode(&Frame::Response(response)))
            .unwrap()
            .is_some()
    );
}

#[test]
fn handshake_frames_are_limited_to_4096() {
    let mut bytes = BytesMut::from(&MAGIC[..]);
    let mut raw = RawFrame::new(0x01, 0, b"");
    raw.body_len = Some(4097);
    bytes.put_slice(&raw.bytes());
    // The configured limit is 4 MiB, but it applies only after the handshake.
    let err = fatal(&mut FrameDecoder::new(Role::Server), &bytes);
    assert!(
        matches!(err, DecodeError::FrameTooLarge { max: 4096, .. }),
        "{err}"
    );
}

#[test]
fn unknown_must_understand_kind_closes() {
    for kind in [0x00u8, 0x09, 0x42, 0x7F] {
        let err = fatal(
            &mut open_decoder(Role::Server),
            &RawFrame::new(kind, 0, b"").bytes(),
        );
        assert!(
            matches!(err, DecodeError::UnknownKind { kind: k } if k == kind),
            "{err}"
        );
        assert_eq!(err.go_away_code(), GoAwayCode::PROTOCOL_ERROR);
    }
}

#[test]
fn unknown_extension_kind_is_skipped() {
    for role in [Role::Server, Role::Client] {
        let mut decoder = open_decoder(role);
        let mut raw = RawFrame::new(0xC3, 77, b"future stuff");
        raw.flags = 0xFF;
        let item = decoder.decode(&mut raw.bytes()).unwrap().unwrap().unwrap();
        match item {
            Frame::Extension(ext) => {
                assert_eq!((ext.kind, ext.flags, ext.call_id), (0xC3, 0xFF, 77));
                assert_eq!(&ext.body[..], b"future stuff");
            }
            other => panic!("expected an extension frame, got {other:?}"),
        }
        assert_survives(&mut decoder, &Frame::Ping(Ping { opaque: [0; 8] }));
        // Its checksums are still enforced.
        let mut corrupt = raw.clone();
        corrupt.body_crc = Some(1);
        assert!(fatal(&mut open_decoder(role), &corrupt.bytes()).is_checksum());
    }
}

#[test]
fn reserved_bits_close() {
    let mut raw = RawFrame::new(0x06, 0, &[0; 8]);
    raw.reserved = 0x0100;
    let err = fatal(&mut open_decoder(Role::Server), &raw.bytes());
    assert!(
        matches!(err, DecodeError::ReservedBitsSet { reserved: 0x0100 }),
        "{err}"
    );
    assert_eq!(err.go_away_code(), GoAwayCode::PROTOCOL_ERROR);
    // Also for extension kinds: the reserved field belongs to the header.
    let mut raw = RawFrame::new(0x90, 0, b"");
    raw.reserved = 1;
    assert!(matches!(
        fatal(&mut open_decoder(Role::Server), &raw.bytes()),
        DecodeError::ReservedBitsSet { .. }
    ));
}

#[test]
fn undefined_flags_close() {
    let cases = [
        (Role::Server, 0x03u8, 1u64, 0x02u8), // REQUEST defines only 0x01
        (Role::Client, 0x04, 1, 0x80),        // RESPONSE defines only 0x01
        (Role::Server, 0x06, 0, 0x01),        // PING defines none
    ];
    for (role, kind, call_id, flags) in cases {
        let body = if kind == 0x06 { vec![0; 8] } else { vec![] };
        let mut raw = RawFrame::new(kind, call_id, &body);
        raw.flags = flags;
        let err = fatal(&mut open_decoder(role), &raw.bytes());
        assert!(
            matches!(err, DecodeError::UnknownFlags { flags: f, .. } if f == flags),
            "{err}"
        );
    }
}

#[test]
fn wrong_direction_kind_closes() {
    let response = encode(&Frame::Response(Response::ok(1, Bytes::new())));
    let err = fatal(&mut open_decoder(Role::Server), &response);
    assert!(
        matches!(
            err,
            DecodeError::UnexpectedKind {
                kind: FrameKind::RESPONSE,
                role: Role::Server
            }
        ),
        "{err}"
    );
    for bytes in [encode(&request(1)), RawFrame::new(0x05, 1, b"").bytes()] {
        let err = fatal(&mut open_decoder(Role::Client), &bytes);
        assert!(
            matches!(
                err,
                DecodeError::UnexpectedKind {
                    role: Role::Client,
                    ..
                }
            ),
            "{err}"
        );
    }
}

#[test]
fn second_hello_closes() {
    let mut bytes = BytesMut::from(&MAGIC[..]);
    let hello = encode(&Frame::Hello(Hello::new(Settings::default())));
    bytes.put_slice(&hello);
    bytes.put_slice(&hello);
    let mut decoder = FrameDecoder::new(Role::Server);
    let (items, err) = decode_all(&mut decoder, &mut bytes);
    assert_eq!(items.len(), 1);
    assert!(
        matches!(
            err,
            Some(DecodeError::UnexpectedKind {
                kind: FrameKind::HELLO,
                ..
            })
        ),
        "{err:?}"
    );
}

#[test]
fn frame_before_handshake_closes() {
    // A server expects HELLO first: a REQUEST, a PING or an extension is refused.
    for frame in [
        encode(&request(1)),
        encode(&Frame::Ping(Ping { opaque: [0; 8] })),
    ] {
        let mut bytes = BytesMut::from(&MAGIC[..]);
        bytes.put_slice(&frame);
        let err = fatal(&mut FrameDecoder::new(Role::Server), &bytes);
        assert!(
            matches!(err, DecodeError::FrameBeforeHandshake { .. }),
            "{err}"
        );
    }
    // A client expects HELLO_ACK or GOAWAY first: a RESPONSE is refused, a GOAWAY accepted.
    let mut bytes = BytesMut::from(&MAGIC[..]);
    bytes.put_slice(&encode(&Frame::Response(Response::ok(1, Bytes::new()))));
    let err = fatal(&mut FrameDecoder::new(Role::Client), &bytes);
    assert!(matches!(
        err,
        DecodeError::FrameBeforeHandshake {
            kind: FrameKind::RESPONSE
        }
    ));
    let mut bytes = BytesMut::from(&MAGIC[..]);
    let goaway = rpc_codec::GoAway::new(0, GoAwayCode::UNSUPPORTED_VERSION, "v1 only");
    bytes.put_slice(&encode(&Frame::GoAway(goaway.clone())));
    let mut decoder = FrameDecoder::new(Role::Client);
    assert_eq!(
        decoder.decode(&mut bytes).unwrap(),
        Some(Ok(Frame::GoAway(goaway)))
    );
    assert!(!decoder.is_open());
}

#[test]
fn zero_call_id_closes() {
    let cases = [
        (Role::Server, 0x03u8),
        (Role::Client, 0x04),
        (Role::Server, 0x05),
    ];
    for (role, kind) in cases {
        let err = fatal(
            &mut open_decoder(role),
            &RawFrame::new(kind, 0, b"").bytes(),
        );
        assert!(matches!(err, DecodeError::ZeroCallId { .. }), "{err}");
        assert_eq!(err.go_away_code(), GoAwayCode::PROTOCOL_ERROR);
    }
}

#[test]
fn call_id_on_connection_frame_closes() {
    for (role, kind, body) in [
        (Role::Server, 0x06u8, vec![0u8; 8]),
        (Role::Client, 0x07, vec![0; 8]),
        (Role::Client, 0x08, vec![0; 16]),
    ] {
        let err = fatal(
            &mut open_decoder(role),
            &RawFrame::new(kind, 3, &body).bytes(),
        );
        assert!(
            matches!(err, DecodeError::UnexpectedCallId { call_id: 3, .. }),
            "{err}"
        );
    }
}

#[test]
fn request_call_id_must_increase() {
    for (first, second) in [(5u64, 5u64), (5, 4), (5, 1)] {
        let mut decoder = open_decoder(Role::Server);
        let mut bytes = encode(&request(first));
        bytes.put_slice(&encode(&request(second)));
        let (items, err) = decode_all(&mut decoder, &mut bytes);
        assert_eq!(items.len(), 1);
        assert!(
            matches!(err, Some(DecodeError::CallIdNotIncreasing { call_id, last })
                if call_id == second && last == first),
            "{err:?}"
        );
    }
    // Gaps are allowed.
    let mut decoder = open_decoder(Role::Server);
    let mut bytes = encode(&request(1));
    bytes.put_slice(&encode(&request(1000)));
    let (items, err) = decode_all(&mut decoder, &mut bytes);
    assert_eq!((items.len(), err.is_none()), (2, true));
    assert_eq!(decoder.last_request_id(), 1000);
}

#[test]
fn cancel_for_unsent_call_closes() {
    let mut decoder = open_decoder(Role::Server);
    let mut bytes = encode(&request(3));
    bytes.put_slice(&RawFrame::new(0x05, 3, b"").bytes()); // fine: call 3 was sent
    bytes.put_slice(&RawFrame::new(0x05, 2, b"").bytes()); // fine: an earlier call
    bytes.put_slice(&RawFrame::new(0x05, 4, b"").bytes()); // never sent
    let (items, err) = decode_all(&mut decoder, &mut bytes);
    assert_eq!(items.len(), 3);
    assert!(
        matches!(
            err,
            Some(DecodeError::CancelForUnknownCall {
                call_id: 4,
                last: 3
            })
        ),
        "{err:?}"
    );
}

#[test]
fn wrong_size_ping_closes() {
    for (kind, len) in [(0x06u8, 0usize), (0x06, 7), (0x06, 9), (0x07, 16)] {
        let err = fatal(
            &mut open_decoder(Role::Server),
            &RawFrame::new(kind, 0, &vec![0; len]).bytes(),
        );
        assert!(
            matches!(&err, DecodeError::Malformed { error: BodyError::PingLength { len: l, .. }, .. } if *l == len),
            "{err}"
        );
        assert_eq!(err.go_away_code(), GoAwayCode::PROTOCOL_ERROR);
    }
}

fn handshake_bytes(kind: u8, body: &[u8]) -> BytesMut {
    let mut bytes = BytesMut::from(&MAGIC[..]);
    bytes.put_slice(&RawFrame::new(kind, 0, body).bytes());
    bytes
}

#[test]
fn malformed_control_bodies_close() {
    fn hello(min: u16, max: u16, settings: &[(u16, u32)], extra: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        body.put_u16(min);
        body.put_u16(max);
        body.put_u16(u16::try_from(settings.len()).unwrap());
        for (id, value) in settings {
            body.put_u16(*id);
            body.put_u32(*value);
        }
        body.put_slice(extra);
        body
    }
    let cases: Vec<(&str, BodyError, BytesMut, Role)> = vec![
        (
            "truncated HELLO",
            BodyError::Truncated {
                field: "max version",
            },
            handshake_bytes(0x01, &[0, 1, 0]),
            Role::Server,
        ),
        (
            "HELLO with a setting cut short",
            BodyError::Truncated {
                field: "setting value",
            },
            handshake_bytes(
                0x01,
                &hello(1, 1, &[], &[])[..4]
                    .iter()
                    .copied()
                    .chain([0, 1, 0, 1, 0, 0])
                    .collect::<Vec<_>>(),
            ),
            Role::Server,
        ),
        (
            "HELLO with trailing bytes",
            BodyError::TrailingBytes { extra: 2 },
            handshake_bytes(0x01, &hello(1, 1, &[], &[9, 9])),
            Role::Server,
        ),
        (
            "setting repeated",
            BodyError::DuplicateSetting { id: 3 },
            handshake_bytes(0x01, &hello(1, 1, &[(3, 5), (3, 6)], &[])),
            Role::Server,
        ),
        (
            "MAX_FRAME_SIZE below 4096",
            BodyError::SettingOutOfRange { id: 1, value: 4095 },
            handshake_bytes(0x01, &hello(1, 1, &[(1, 4095)], &[])),
            Role::Server,
        ),
        (
            "empty version range",
            BodyError::EmptyVersionRange { min: 2, max: 1 },
            handshake_bytes(0x01, &hello(2, 1, &[], &[])),
            Role::Server,
        ),
        (
            "HELLO_ACK with trailing bytes",
            BodyError::TrailingBytes { extra: 1 },
            handshake_bytes(0x02, &[0, 1, 0, 0, 7]),
            Role::Client,
        ),
    ];
    for (what, expected, bytes, role) in cases {
        let err = fatal(&mut FrameDecoder::new(role), &bytes);
        match err {
            DecodeError::Malformed { error, .. } => assert_eq!(error, expected, "{what}"),
            other => panic!("{what}: expected Malformed, got {other}"),
        }
    }
    // GOAWAY: message not UTF-8, message longer than the body, trailing bytes.
    let mut goaway = Vec::new();
    goaway.put_u64(0);
    goaway.put_u32(0);
    goaway.put_u32(2);
    let cases = [
        (
            [&goaway[..], &[0xFF, 0xFE]].concat(),
            BodyError::InvalidUtf8 {
                field: "goaway message",
            },
        ),
        (
            [&goaway[..], b"a"].concat(),
            BodyError::Truncated {
                field: "goaway message",
            },
        ),
        (
            [&goaway[..], b"abc"].concat(),
            BodyError::TrailingBytes { extra: 1 },
        ),
    ];
    for (body, expected) in cases {
        let err = fatal(
            &mut open_decoder(Role::Client),
            &RawFrame::new(0x08, 0, &body).bytes(),
        );
        assert!(
            matches!(&err, DecodeError::Malformed { kind: FrameKind::GOAWAY, error } if *error == expected),
            "{err}"
        );
    }
    // CANCEL with a body.
    let mut decoder = open_decoder(Role::Server);
    decode_all(&mut decoder, &mut encode(&request(1)));
    let err = fatal(&mut decoder, &RawFrame::new(0x05, 1, b"x").bytes());
    assert!(
        matches!(
            err,
            DecodeError::Malformed {
                kind: FrameKind::CANCEL,
                ..
            }
        ),
        "{err}"
    );
    // Unknown settings are not malformed: they are ignored.
    let mut decoder = FrameDecoder::new(Role::Server);
    let item = decoder
        .decode(&mut handshake_bytes(
            0x01,
            &hello(1, 1, &[(0x7777, 1), (2, 5)], &[]),
        ))
        .unwrap()
        .unwrap()
        .unwrap();
    match item {
        Frame::Hello(h) => assert_eq!(h.settings.max_concurrent_calls, 5),
        other => panic!("{other:?}"),
    }
}

#[test]
fn unsupported_version_is_refused() {
    let mut body = Vec::new();
    body.put_u16(2);
    body.put_u16(3);
    body.put_u16(0);
    let err = fatal(
        &mut FrameDecoder::new(Role::Server),
        &handshake_bytes(0x01, &body),
    );
    assert!(
        matches!(err, DecodeError::UnsupportedVersion { min: 2, max: 3 }),
        "{err}"
    );
    assert_eq!(err.go_away_code(), GoAwayCode::UNSUPPORTED_VERSION);
    // A range that includes 1 is accepted.
    let mut body = Vec::new();
    body.put_u16(0);
    body.put_u16(9);
    body.put_u16(0);
    let mut decoder = FrameDecoder::new(Role::Server);
    assert!(
        decoder
            .decode(&mut handshake_bytes(0x01, &body))
            .unwrap()
            .unwrap()
            .is_ok()
    );
    // A HELLO_ACK choosing a version the client did not offer.
    let err = fatal(
        &mut FrameDecoder::new(Role::Client),
        &handshake_bytes(0x02, &[0, 2, 0, 0]),
    );
    assert!(
        matches!(err, DecodeError::UnsupportedVersion { min: 2, max: 2 }),
        "{err}"
    );
}

#[test]
fn malformed_request_envelope_rejects_only_that_call() {
    let long_method = vec![b'm'; 1025];
    let cases: Vec<(Vec<u8>, BodyError)> = vec![
        (
            vec![0, 0, 0],
            BodyError::Truncated {
                field: "deadline budget",
            },
        ),
        (
            request_body(1, b"", b"", b""),
            BodyError::MethodLength { len: 0 },
        ),
        (
            request_body(1, &long_method, b"", b""),
            BodyError::MethodLength { len: 1025 },
        ),
        (
            request_body(1, &[0xC3, 0x28], b"", b""),
            BodyError::InvalidUtf8 { field: "method" },
        ),
        (
            request_body(1, b"E.e", &[1, b'A', 0, 0, 0, 0], b""),
            BodyError::InvalidMetadataKey(rpc_core::MetadataError::InvalidKeyByte {
                byte: b'A',
                index: 0,
            }),
        ),
        (
            request_body(1, b"E.e", &[1, b'a', 0, 0, 0, 9, 1], b""),
            BodyError::Truncated {
                field: "metadata value",
            },
        ),
        (
            {
                let mut b = request_body(1, b"E.e", b"", b"");
                b.truncate(b.len() - 2); // metadata length cut short
                b
            },
            BodyError::Truncated {
                field: "metadata length",
            },
        ),
    ];
    let mut decoder = open_decoder(Role::Server);
    for (call_id, (body, expected)) in (1u64..).zip(cases) {
        let mut bytes = RawFrame::new(0x03, call_id, &body).bytes();
        let rejected = decoder.decode(&mut bytes).unwrap().unwrap().unwrap_err();
        assert_eq!(rejected.call_id, call_id);
        assert_eq!(rejected.reason, RejectReason::Malformed(expected));
        assert_eq!(rejected.status_code(), StatusCode::INVALID_ARGUMENT);
        assert_eq!(rejected.outcome(), Outcome::NotExecuted);
    }
    assert_survives(&mut decoder, &request(100));
}

#[test]
fn malformed_response_envelope_rejects_only_that_call() {
    let mut decoder = open_decoder(Role::Client);
    // Status message claims 50 bytes, body has 2.
    let body = [0, 0, 0, 0, 0, 0, 0, 50, b'h', b'i'];
    let mut bytes = RawFrame::new(0x04, 4, &body).bytes();
    let rejected = decoder.decode(&mut bytes).unwrap().unwrap().unwrap_err();
    assert_eq!(
        rejected.reason,
        RejectReason::Malformed(BodyError::Truncated {
            field: "status message"
        })
    );
    assert_eq!(rejected.status_code(), StatusCode::INTERNAL);
    assert_eq!(rejected.outcome(), Outcome::MaybeExecuted);
    let mut flagged = RawFrame::new(0x04, 5, &body);
    flagged.flags = 0x01;
    let rejected = decoder
        .decode(&mut flagged.bytes())
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(rejected.outcome(), Outcome::NotExecuted);
    assert_survives(
        &mut decoder,
        &Frame::Response(Response::ok(6, Bytes::new())),
    );
}

#[test]
fn oversize_metadata_rejects_only_that_call() {
    let mut decoder = FrameDecoder::builder(Role::Server)
        .handshake(false)
        .max_metadata_size(16)
        .build();
    // A block of 17 bytes: refused from its length alone (its entries are not even valid).
    let body = request_body(1, b"E.e", &[0xFF; 17], b"");
    let rejected = decoder
        .decode(&mut RawFrame::new(0x03, 1, &body).bytes())
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(
        rejected.reason,
        RejectReason::Malformed(BodyError::MetadataTooLarge { len: 17, max: 16 })
    );
    assert_eq!(rejected.status_code(), StatusCode::RESOURCE_EXHAUSTED);
    assert_eq!(rejected.outcome(), Outcome::NotExecuted);
    // Exactly at the limit is fine: one entry of 5 + 1 + 10 bytes.
    let block = [&[1u8, b'k', 0, 0, 0, 10][..], &[7u8; 10]].concat();
    let body = request_body(1, b"E.e", &block, b"");
    let ok = decoder
        .decode(&mut RawFrame::new(0x03, 2, &body).bytes())
        .unwrap()
        .unwrap();
    assert!(ok.is_ok());
    // The same rule on a RESPONSE, client side.
    let mut decoder = FrameDecoder::builder(Role::Client)
        .handshake(false)
        .max_metadata_size(16)
        .build();
    let mut body = vec![0, 0, 0, 0, 0, 0, 0, 0];
    body.put_u32(1000);
    let rejected = decoder
        .decode(&mut RawFrame::new(0x04, 1, &body).bytes())
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(rejected.status_code(), StatusCode::RESOURCE_EXHAUSTED);
    assert_eq!(rejected.outcome(), Outcome::MaybeExecuted);
}

#[test]
fn truncated_stream_is_reported_at_eof() {
    let full = encode(&request(1));
    for cut in [1, 23, 24, full.len() - 1] {
        let mut decoder = open_decoder(Role::Server);
        let mut bytes = BytesMut::from(&full[..cut]);
        assert_eq!(decoder.decode(&mut bytes).unwrap(), None, "cut at {cut}");
        let err = decoder.decode_eof(&mut bytes).unwrap_err();
        assert!(
            matches!(err, DecodeError::TruncatedAtEof { buffered } if buffered == cut),
            "{err}"
        );
    }
    // Inside the preface.
    let mut decoder = FrameDecoder::new(Role::Client);
    let mut bytes = BytesMut::from(&MAGIC[..3]);
    assert!(matches!(
        decoder.decode_eof(&mut bytes),
        Err(DecodeError::TruncatedAtEof { buffered: 3 })
    ));
    // A clean end between frames is not an error.
    let mut decoder = open_decoder(Role::Server);
    let mut bytes = full;
    assert!(decoder.decode_eof(&mut bytes).unwrap().is_some());
    assert_eq!(decoder.decode_eof(&mut bytes).unwrap(), None);
}

#[test]
fn decoder_is_spent_after_a_connection_error() {
    let mut decoder = open_decoder(Role::Server);
    let mut bytes = RawFrame::new(0x42, 0, b"").bytes();
    bytes.put_slice(&encode(&request(1)));
    assert!(decoder.decode(&mut bytes).is_err());
    assert!(bytes.is_empty(), "input after the error is discarded");
    let mut more = encode(&request(2));
    assert_eq!(decoder.decode(&mut more).unwrap(), None);
    assert!(more.is_empty());
}
