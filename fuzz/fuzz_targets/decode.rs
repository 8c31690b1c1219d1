//! Fuzzes `rpc_codec::FrameDecoder` with arbitrary bytes, split at arbitrary byte boundaries.
//!
//! Input layout: `[config, chunk, wire...]`.
//! - `config` bit 0: role (0 = server, 1 = client). Bit 1: expect the preface and handshake
//!   (`MAGIC`, then HELLO or `HELLO_ACK`), or start with the handshake done. Bit 2: rewrite both
//!   CRCs of every frame in `wire` to be correct, so mutations get past the checksums to the
//!   header rules and body parsers.
//! - `chunk`: `wire` is fed in pieces of `chunk + 1` bytes.
//!
//! Checked besides "no panic":
//! - feeding `wire` in one piece and in chunks gives the same items and the same error;
//! - after `Ok(None)` the buffer holds less than one maximal frame (no stall on a complete frame);
//! - the buffer's capacity stays within twice (bytes fed + one maximal frame), so no length from
//!   the wire is reserved before it is checked against the limit;
//! - after an `Err` the buffer is cleared and the decoder yields `Ok(None)` for any more input,
//!   from `decode` and `decode_eof` alike.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use rpc_codec::{FrameDecoder, HEADER_LEN, MAGIC, Role};
use tokio_util::codec::Decoder;

/// Body limit of every decoder here: small, so the capacity bound is meaningful.
const MAX_FRAME_SIZE: u32 = 64 * 1024;
const MAX_FRAME: usize = HEADER_LEN + MAX_FRAME_SIZE as usize;

fuzz_target!(|data: &[u8]| {
    let [config, chunk, wire @ ..] = data else {
        return;
    };
    let role = if config & 1 == 0 {
        Role::Server
    } else {
        Role::Client
    };
    let handshake = config & 2 != 0;
    let mut wire = wire.to_vec();
    if config & 4 != 0 {
        fix_checksums(&mut wire, if handshake { MAGIC.len() } else { 0 });
    }
    let chunk = usize::from(*chunk) + 1;

    let whole = decode_all(role, handshake, &wire, wire.len().max(1));
    let split = decode_all(role, handshake, &wire, chunk);
    assert_eq!(
        whole, split,
        "feeding the input in {chunk}-byte chunks changed the result"
    );
});

/// Feeds `wire` to a fresh decoder `chunk` bytes at a time, then ends the stream; returns every
/// item and error as text, checking the invariants along the way.
fn decode_all(role: Role, handshake: bool, wire: &[u8], chunk: usize) -> Vec<String> {
    let mut decoder = FrameDecoder::builder(role)
        .handshake(handshake)
        .max_frame_size(MAX_FRAME_SIZE)
        .build();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut failed = false;
    let mut fed = 0;
    for piece in wire.chunks(chunk) {
        buf.extend_from_slice(piece);
        fed += piece.len();
        while !failed {
            let result = decoder.decode(&mut buf);
            // BytesMut grows like Vec: at most twice what was asked for, hence the factor 2.
            let bound = 2 * (fed + MAX_FRAME);
            assert!(
                buf.capacity() <= bound,
                "capacity {} > {bound}",
                buf.capacity()
            );
            match result {
                Ok(Some(item)) => out.push(format!("{item:?}")),
                Ok(None) => {
                    assert!(
                        buf.len() < MAX_FRAME,
                        "Ok(None) with {} bytes buffered",
                        buf.len()
                    );
                    break;
                }
                Err(e) => {
                    out.push(format!("error: {e} / {e:?}"));
                    failed = true;
                }
            }
        }
        if failed {
            assert_spent(&mut decoder, &mut buf);
        }
    }
    while !failed {
        match decoder.decode_eof(&mut buf) {
            Ok(Some(item)) => out.push(format!("{item:?}")),
            Ok(None) => break,
            Err(e) => {
                out.push(format!("error: {e} / {e:?}"));
                failed = true;
            }
        }
    }
    if failed {
        buf.extend_from_slice(wire);
        assert_spent(&mut decoder, &mut buf);
    }
    out
}

/// A decoder that returned `Err` discards its input and yields nothing more.
fn assert_spent(decoder: &mut FrameDecoder, buf: &mut BytesMut) {
    assert!(
        matches!(decoder.decode(buf), Ok(None)),
        "decode after an error"
    );
    assert!(buf.is_empty(), "input kept after an error");
    assert!(
        matches!(decoder.decode_eof(buf), Ok(None)),
        "decode_eof after an error"
    );
}

/// Rewrites the body CRC (header bytes 16..20) and header CRC (20..24) of each frame from `at`
/// on, walking the frames by their length fields.
fn fix_checksums(wire: &mut [u8], mut at: usize) {
    while let Some(header) = wire.get(at..at + HEADER_LEN) {
        let body_len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let body_start = at + HEADER_LEN;
        let body_end = body_start.saturating_add(body_len).min(wire.len());
        let body_crc = crc32fast::hash(&wire[body_start..body_end]);
        wire[at + 16..at + 20].copy_from_slice(&body_crc.to_be_bytes());
        let header_crc = crc32fast::hash(&wire[at..at + 20]);
        wire[at + 20..at + 24].copy_from_slice(&header_crc.to_be_bytes());
        at = body_start.saturating_add(body_len);
    }
}
