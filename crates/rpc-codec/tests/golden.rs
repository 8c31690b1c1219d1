//! The worked examples of docs/PROTOCOL.md §16, checked byte for byte in both directions. The hex
//! is read from the document itself, so the spec and the code cannot drift apart.

mod support;

use bytes::{Bytes, BytesMut};
use rpc_codec::{
    Budget, Frame, FrameDecoder, FrameEncoder, GoAway, GoAwayCode, Hello, MethodName, Ping,
    Request, Response, Role, Settings,
};
use rpc_core::{Metadata, MetadataKey, Status, StatusCode};
use support::{decode_one, open_decoder, roomy_settings};
use tokio_util::codec::Encoder;

const PROTOCOL_MD: &str = include_str!("../../../docs/PROTOCOL.md");

/// The bytes of the hex block after `<!-- golden: NAME -->`.
fn golden(name: &str) -> Vec<u8> {
    let marker = format!("<!-- golden: {name} -->");
    let after = PROTOCOL_MD
        .split_once(&marker)
        .unwrap_or_else(|| panic!("PROTOCOL.md has no {marker}"))
        .1;
    let block = after
        .split_once("```hex\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .unwrap_or_else(|| panic!("no hex block after {marker}"))
        .0;
    block
        .split_whitespace()
        .map(|byte| u8::from_str_radix(byte, 16).unwrap())
        .collect()
}

fn encoded_without_preface(frame: Frame) -> Vec<u8> {
    let mut encoder = FrameEncoder::without_preface();
    encoder.set_peer_settings(roomy_settings());
    let mut out = BytesMut::new();
    encoder.encode(frame, &mut out).unwrap();
    out.to_vec()
}

fn check_frame(name: &str, frame: Frame, receiver: Role) {
    let bytes = golden(name);
    assert_eq!(
        encoded_without_preface(frame.clone()),
        bytes,
        "encoding of {name}"
    );
    let decoded = decode_one(&mut open_decoder(receiver), BytesMut::from(&bytes[..])).unwrap();
    assert_eq!(decoded, Ok(frame), "decoding of {name}");
}

#[test]
fn hello_with_preface() {
    let hello = Frame::Hello(Hello::new(Settings::default()));
    let bytes = golden("hello");
    // A fresh encoder writes the preface before its first frame.
    let mut out = BytesMut::new();
    FrameEncoder::new().encode(hello.clone(), &mut out).unwrap();
    assert_eq!(out.to_vec(), bytes);
    let mut decoder = FrameDecoder::new(Role::Server);
    assert_eq!(
        decode_one(&mut decoder, BytesMut::from(&bytes[..])).unwrap(),
        Ok(hello)
    );
    assert!(decoder.is_open());
}

#[test]
fn ping() {
    check_frame(
        "ping",
        Frame::Ping(Ping {
            opaque: *b"keepaliv",
        }),
        Role::Server,
    );
}

#[test]
fn request_with_metadata() {
    let mut metadata = Metadata::new();
    metadata.insert(MetadataKey::from_static("trace-id"), "7f");
    let request = Request {
        call_id: 1,
        idempotent: true,
        budget: Budget::from_micros(250_000),
        method: MethodName::from_static("Echo.echo"),
        metadata,
        schema: None,
        payload: Bytes::from_static(b"hi"),
    };
    check_frame("request", Frame::Request(request), Role::Server);
}

#[test]
fn the_schema_slot_is_an_ordinary_last_metadata_entry_on_the_wire() {
    // What a #[service] client sends: `rpc-schema` in its own slot, written after the entries.
    let fingerprint = Bytes::from_static(&[1, 2, 3, 4, 5, 6, 7, 8]);
    let mut metadata = Metadata::new();
    metadata.insert(MetadataKey::from_static("trace-id"), "7f");
    let mut slotted = Request::new(
        3,
        MethodName::from_static("Kv.cas"),
        Bytes::from_static(b"x"),
    );
    slotted.metadata = metadata.clone();
    slotted.schema = Some(fingerprint.clone());
    // The same entry as plain metadata, as another implementation may send it.
    let mut listed = slotted.clone();
    listed.schema = None;
    listed
        .metadata
        .append(MetadataKey::from_static("rpc-schema"), fingerprint.clone());
    let bytes = support::encode(&Frame::Request(slotted.clone()));
    assert_eq!(
        bytes,
        support::encode(&Frame::Request(listed)),
        "byte for byte the same"
    );
    // Either way the receiver takes the first `rpc-schema` out of the list, into the slot.
    let decoded = decode_one(&mut open_decoder(Role::Server), bytes).unwrap();
    assert_eq!(decoded, Ok(Frame::Request(slotted.clone())));
    // Only the first on the wire goes in the slot (here the listed one, written before the
    // slot's); a second stays in the list.
    let mut twice = slotted.clone();
    twice.metadata.append(
        MetadataKey::from_static("rpc-schema"),
        Bytes::from_static(b"second"),
    );
    let decoded = decode_one(
        &mut open_decoder(Role::Server),
        support::encode(&Frame::Request(twice.clone())),
    )
    .unwrap();
    let Ok(Frame::Request(request)) = decoded else {
        panic!("{decoded:?}")
    };
    assert_eq!(request.schema.as_deref(), Some(&b"second"[..]));
    assert_eq!(request.metadata.get("rpc-schema"), Some(&fingerprint));
    // The slot counts against the metadata limit like any entry.
    assert!(slotted.metadata_fits(2 + 5 + 8 + 5 + 10 + 8));
    assert!(!slotted.metadata_fits(2 + 5 + 8 + 5 + 10 + 8 - 1));
}

#[test]
fn response_with_error_status() {
    let response = Response::error(1, Status::new(StatusCode::RESOURCE_EXHAUSTED, "busy"), true);
    check_frame("response", Frame::Response(response), Role::Client);
}

#[test]
fn goaway_for_a_drain() {
    let goaway = GoAway::new(7, GoAwayCode::NO_ERROR, "drain");
    check_frame("goaway", Frame::GoAway(goaway), Role::Client);
}

#[test]
fn crc_parameters_match_the_spec() {
    // PROTOCOL.md §1: the check value of CRC-32/ISO-HDLC, and the CRC of no bytes.
    assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
    assert_eq!(crc32fast::hash(b""), 0);
}

#[test]
fn every_codec_row_of_the_bad_input_table_names_a_test_that_exists() {
    let tests = include_str!("bad_input.rs");
    let table = PROTOCOL_MD
        .split_once("## 15. Bad input")
        .and_then(|(_, rest)| rest.split_once("## 16."))
        .unwrap()
        .0;
    let mut rows = 0;
    for row in table
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| #"))
    {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        // | # | input | checked by | reaction | connection | outcome | test |
        let (Some(checked_by), Some(test_cell)) = (cells.get(3), cells.get(7)) else {
            continue;
        };
        if !checked_by.starts_with("codec") {
            continue;
        }
        rows += 1;
        let names: Vec<&str> = test_cell
            .split(',')
            .map(|n| n.trim().trim_matches('`'))
            .filter(|n| !n.contains("::"))
            .collect();
        assert!(!names.is_empty(), "codec row without a codec test: {row}");
        for name in names {
            assert!(
                tests.contains(&format!("fn {name}()")),
                "PROTOCOL.md names test `{name}`, which bad_input.rs does not have"
            );
        }
    }
    assert!(rows >= 23, "only {rows} codec rows found in the table");
}
