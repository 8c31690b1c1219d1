//! Encode and decode throughput of the wire codec (`rpc-codec`), against plain `crc32fast`.
//!
//! The body CRC is the only per-byte work the codec cannot avoid: encoding hashes the frame body
//! once, decoding hashes it once. So each payload size gets one group with the baselines and the
//! codec side by side, all reported as payload bytes per second:
//!
//! - `crc32fast x2`: `crc32fast::hash` over the same payload buffer twice;
//! - `crc32fast x2 recv`: `crc32fast::hash` over the sender's payload, then over the payload in the
//!   freshly copied receive buffer: the same bytes, in the same memory, that `encode+decode` hashes;
//! - `encode+decode`: [`FrameEncoder::encode_head`] of a REQUEST, then decoding that frame from the
//!   receive buffer with a [`FrameDecoder`];
//! - `crc32fast x1`: `crc32fast::hash` over the sender's payload once (what `encode` hashes);
//! - `encode`: [`FrameEncoder::encode_head`] alone, the zero-copy path a vectored writer uses (the
//!   header and envelope go into a reused buffer, the payload comes back as a shared `Bytes`);
//! - `crc32fast x1 recv`: `crc32fast::hash` over the payload in the receive buffer (what `decode`
//!   hashes), with the same setup as `decode`;
//! - `decode`: [`FrameDecoder`] alone, which splits the frame off the receive buffer and checks
//!   both CRCs.
//!
//! A last group, `codec/32B stream`, encodes 64 small REQUESTs into one write buffer and decodes
//! them from one read buffer with one decoder, in frames per second.
//!
//! Decoding needs the frame's bytes in a fresh `BytesMut` each iteration, as a socket read would
//! leave them. That copy, and building the decoder, happen in criterion's untimed setup (the
//! `recv` baselines get the identical setup). Each iteration uses a fresh server-role decoder (a
//! few words of state, no allocation), so the one REQUEST it decodes is always the first on its
//! connection and the call-id rule is checked, and passed, every time.
//!
//! Run with `cargo bench --bench codec`; benches/README.md has the measured figures.

use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput};
use rpc_codec::{Frame, FrameDecoder, FrameEncoder, MethodName, Request, Role, Settings};
use tokio_util::codec::{Decoder, Encoder};

/// Frame size limit on both sides: large enough for the 1 MiB rows.
const MAX_FRAME_SIZE: u32 = 8 << 20;

/// Payload sizes, with their names in the benchmark ids.
const SIZES: [(&str, usize); 4] = [
    ("32B", 32),
    ("1KiB", 1024),
    ("64KiB", 64 * 1024),
    ("1MiB", 1024 * 1024),
];

/// Frames per iteration of the `32B stream` row.
const STREAM_FRAMES: u64 = 64;

/// Deterministic, non-repeating-looking payload bytes (CRC speed does not depend on content, but
/// a zero-filled buffer could hide page-sharing effects).
fn payload(len: usize) -> Bytes {
    let mut state: u32 = 0x9E37_79B9;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state.to_le_bytes()[0]
        })
        .collect::<Vec<u8>>()
        .into()
}

/// A REQUEST as a client sends it: short method name, no metadata, no deadline.
fn request(call_id: u64, payload: Bytes) -> Frame {
    Frame::Request(Request::new(
        call_id,
        MethodName::from_static("Echo.echo"),
        payload,
    ))
}

fn encoder() -> FrameEncoder {
    let mut enc = FrameEncoder::without_preface();
    enc.set_peer_settings(Settings {
        max_frame_size: MAX_FRAME_SIZE,
        ..Settings::default()
    });
    enc
}

fn decoder() -> FrameDecoder {
    FrameDecoder::builder(Role::Server)
        .handshake(false)
        .max_frame_size(MAX_FRAME_SIZE)
        .build()
}

/// Decodes the one frame in `buf`, which must be a valid REQUEST; panics otherwise, so an error
/// path (which returns early and would look fast) can never be what gets measured.
fn decode_request(dec: &mut FrameDecoder, buf: &mut BytesMut) -> Frame {
    match dec.decode(buf) {
        Ok(Some(Ok(frame @ Frame::Request(_)))) => frame,
        other => panic!("expected a decoded REQUEST, got {other:?}"),
    }
}

/// The frame's wire bytes, checked once against the tokio-util encoder and a round trip.
fn wire_bytes(frame: &Frame) -> Bytes {
    let mut head = BytesMut::new();
    let body = encoder()
        .encode_head(frame, &mut head)
        .expect("benchmark frame encodes");
    let mut wire = head;
    wire.extend_from_slice(&body);

    let mut copied = BytesMut::new();
    encoder()
        .encode(frame.clone(), &mut copied)
        .expect("benchmark frame encodes");
    assert_eq!(wire, copied, "encode_head + payload differs from Encoder");

    let mut buf = wire.clone();
    assert_eq!(&decode_request(&mut decoder(), &mut buf), frame);
    assert!(buf.is_empty());
    wire.freeze()
}

fn codec(c: &mut Criterion) {
    for (name, len) in SIZES {
        // The sender's payload is the tail of the encoded frame itself, so the bytes the encoder
        // hashes and the bytes the setup copies into the "received" buffer are the same memory:
        // a 1 MiB row then touches 2 MiB (sent and received copy), not 3.
        let wire = wire_bytes(&request(1, payload(len)));
        let payload = wire.slice(wire.len() - len..);
        let frame = request(1, payload.clone());
        assert_eq!(wire_bytes(&frame), wire);
        let recv_payload = wire.len() - len..;

        // Small inputs: batches keep the timer's ~40 ns under a nanosecond per iteration, while
        // the batch's buffers stay in L2 (8 x 64 KiB = 512 KiB). 1 MiB: one per timed iteration,
        // so the buffer the setup just wrote is as cache-hot as it can be.
        let batch = if len <= 1024 {
            BatchSize::NumIterations(64)
        } else if len <= 64 * 1024 {
            BatchSize::NumIterations(8)
        } else {
            BatchSize::PerIteration
        };
        let received = || (decoder(), BytesMut::from(&wire[..]));

        let mut group = c.benchmark_group(format!("codec/{name}"));
        group.throughput(Throughput::Bytes(
            u64::try_from(len).expect("payload length fits u64"),
        ));

        group.bench_function("crc32fast x2", |b| {
            b.iter(|| {
                let first = crc32fast::hash(black_box(&payload[..]));
                let second = crc32fast::hash(black_box(&payload[..]));
                black_box((first, second))
            });
        });

        group.bench_function("crc32fast x2 recv", |b| {
            b.iter_batched_ref(
                received,
                |(_, buf)| {
                    let sent = crc32fast::hash(black_box(&payload[..]));
                    let got = crc32fast::hash(&buf[recv_payload.clone()]);
                    (sent, got)
                },
                batch,
            );
        });

        let mut enc = encoder();
        let mut head = BytesMut::new();
        group.bench_function("encode+decode", |b| {
            b.iter_batched_ref(
                received,
                |(dec, buf)| {
                    head.clear();
                    let body = enc
                        .encode_head(black_box(&frame), &mut head)
                        .expect("frame encodes");
                    black_box((&head, body));
                    decode_request(dec, buf)
                },
                batch,
            );
        });

        group.bench_function("crc32fast x1", |b| {
            b.iter(|| crc32fast::hash(black_box(&payload[..])));
        });

        group.bench_function("encode", |b| {
            b.iter(|| {
                head.clear();
                let body = enc
                    .encode_head(black_box(&frame), &mut head)
                    .expect("frame encodes");
                black_box((&head, body));
            });
        });

        group.bench_function("crc32fast x1 recv", |b| {
            b.iter_batched_ref(
                received,
                |(_, buf)| crc32fast::hash(&buf[recv_payload.clone()]),
                batch,
            );
        });

        group.bench_function("decode", |b| {
            b.iter_batched_ref(received, |(dec, buf)| decode_request(dec, buf), batch);
        });

        group.finish();
    }
    stream(c);
}

/// Small frames as a connection sees them: [`STREAM_FRAMES`] 32-byte REQUESTs with increasing
/// call ids, coalesced into one write buffer and decoded from one read buffer by one decoder.
/// Reported in frames per second.
fn stream(c: &mut Criterion) {
    let frames: Vec<Frame> = (1..=STREAM_FRAMES)
        .map(|id| request(id, payload(32)))
        .collect();
    let mut enc = encoder();
    let mut out = BytesMut::new();
    let mut encode_all = |out: &mut BytesMut| {
        out.clear();
        for frame in &frames {
            let body = enc
                .encode_head(black_box(frame), out)
                .expect("frame encodes");
            out.extend_from_slice(&body);
        }
    };
    encode_all(&mut out);
    let wire = out.clone().freeze();
    let received = || (decoder(), BytesMut::from(&wire[..]));

    let mut group = c.benchmark_group("codec/32B stream");
    group.throughput(Throughput::Elements(STREAM_FRAMES));
    group.bench_function("encode+decode", |b| {
        b.iter_batched_ref(
            received,
            |(dec, buf)| {
                encode_all(&mut out);
                black_box(&out);
                for _ in 0..STREAM_FRAMES {
                    black_box(decode_request(dec, buf));
                }
            },
            BatchSize::NumIterations(4),
        );
    });
    group.finish();
}

fn main() {
    // By hand rather than `criterion_group!`/`criterion_main!`: the macro's public function
    // cannot carry the doc comment the workspace lints ask for.
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
        .configure_from_args();
    codec(&mut c);
    c.final_summary();
}
