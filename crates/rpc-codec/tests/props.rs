//! Property tests: every frame kind round-trips; a byte stream split at any boundaries decodes to
//! the same frames; every single-bit flip is reported as a checksum error, never decoded as another
//! frame; arbitrary bytes never panic the decoder or make it reserve unbounded memory.

mod support;

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use rpc_codec::{
    Cancel, DecodeError, Frame, FrameDecoder, GoAway, GoAwayCode, Hello, HelloAck, MAGIC, Ping,
    Pong, RejectReason, Request, Role, Settings,
};
use support::{decode_all, decoder_for, encode, frame, request, response, wire_bytes};
use tokio_util::codec::Decoder;

/// A valid client-to-server stream (preface, HELLO, then calls, cancels, pings) and its frames.
fn client_stream() -> impl Strategy<Value = (Vec<Frame>, BytesMut)> {
    let step = prop_oneof![
        4 => request().prop_map(Frame::Request),
        1 => any::<[u8; 8]>().prop_map(|opaque| Frame::Ping(Ping { opaque })),
        1 => any::<[u8; 8]>().prop_map(|opaque| Frame::Pong(Pong { opaque })),
        1 => Just(Frame::Cancel(Cancel { call_id: 0 })), // id fixed up below
    ];
    proptest::collection::vec(step, 0..12).prop_map(|steps| {
        let mut frames = vec![Frame::Hello(Hello::new(Settings::default()))];
        let mut next_id = 0u64;
        for step in steps {
            frames.push(match step {
                Frame::Request(mut r) => {
                    next_id += 1 + r.call_id % 3; // increasing, with gaps
                    r.call_id = next_id;
                    Frame::Request(r)
                }
                Frame::Cancel(_) if next_id == 0 => continue,
                Frame::Cancel(_) => Frame::Cancel(Cancel { call_id: next_id }),
                other => other,
            });
        }
        frames.push(Frame::GoAway(GoAway::new(0, GoAwayCode::NO_ERROR, "bye")));
        let mut bytes = BytesMut::from(&MAGIC[..]);
        for f in &frames {
            bytes.put_slice(&encode(f));
        }
        (frames, bytes)
    })
}

/// A valid server-to-client stream (preface, HELLO_ACK, responses in any id order, pings).
fn server_stream() -> impl Strategy<Value = (Vec<Frame>, BytesMut)> {
    let step = prop_oneof![
        4 => response().prop_map(Frame::Response),
        1 => any::<[u8; 8]>().prop_map(|opaque| Frame::Ping(Ping { opaque })),
    ];
    proptest::collection::vec(step, 0..12).prop_map(|steps| {
        let mut frames = vec![Frame::HelloAck(HelloAck::new(Settings::default()))];
        frames.extend(steps);
        let mut bytes = BytesMut::from(&MAGIC[..]);
        for f in &frames {
            bytes.put_slice(&encode(f));
        }
        (frames, bytes)
    })
}

/// Feeds `bytes` to a fresh decoder in the chunks `cuts` describes, collecting every frame.
fn decode_in_chunks(role: Role, bytes: &[u8], cuts: &[usize]) -> Vec<Frame> {
    let mut decoder = FrameDecoder::builder(role).max_frame_size(8 << 20).build();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.push(0);
    points.push(bytes.len());
    points.sort_unstable();
    for pair in points.windows(2) {
        buf.put_slice(&bytes[pair[0]..pair[1]]);
        while let Some(item) = decoder.decode(&mut buf).unwrap() {
            frames.push(item.unwrap());
        }
    }
    assert!(decoder.decode_eof(&mut buf).unwrap().is_none());
    frames
}

proptest! {
    // A fixed seed, so that every run replays the same cases (the fuzz targets explore).
    #![proptest_config(ProptestConfig {
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x6b65_656c),
        ..ProptestConfig::with_cases(512)
    })]

    #[test]
    fn every_frame_round_trips(frame in frame()) {
        let mut decoder = decoder_for(&frame);
        let mut bytes = wire_bytes(&frame);
        let decoded = decoder.decode(&mut bytes).unwrap().unwrap().unwrap();
        prop_assert_eq!(decoded, frame);
        prop_assert!(bytes.is_empty());
    }

    #[test]
    fn client_stream_decodes_the_same_at_any_split(
        (frames, bytes) in client_stream(),
        cuts in proptest::collection::vec(any::<usize>(), 0..40),
    ) {
        prop_assert_eq!(decode_in_chunks(Role::Server, &bytes, &cuts), frames);
    }

    #[test]
    fn server_stream_decodes_the_same_at_any_split(
        (frames, bytes) in server_stream(),
        cuts in proptest::collection::vec(any::<usize>(), 0..40),
    ) {
        prop_assert_eq!(decode_in_chunks(Role::Client, &bytes, &cuts), frames);
    }
}

#[test]
fn byte_at_a_time_decodes_the_same() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    for _ in 0..32 {
        let (frames, bytes) = client_stream().new_tree(&mut runner).unwrap().current();
        let every_byte: Vec<usize> = (0..bytes.len()).collect();
        assert_eq!(decode_in_chunks(Role::Server, &bytes, &every_byte), frames);
    }
}

#[test]
fn every_prefix_of_a_frame_waits_for_more() {
    let request = Frame::Request(Request::new(
        1,
        rpc_codec::MethodName::from_static("Echo.echo"),
        Bytes::from_static(b"hello"),
    ));
    let full = encode(&request);
    for cut in 0..full.len() {
        let mut decoder = support::open_decoder(Role::Server);
        let mut buf = BytesMut::from(&full[..cut]);
        assert_eq!(
            decoder.decode(&mut buf).unwrap(),
            None,
            "prefix of {cut} bytes"
        );
        assert_eq!(buf.len(), cut, "a partial frame is left in the buffer");
        buf.put_slice(&full[cut..]);
        assert_eq!(decoder.decode(&mut buf).unwrap(), Some(Ok(request.clone())));
    }
}

/// What decoding `frame` with one bit flipped yields: it must be a checksum error of the right
/// kind for where the bit is, never a frame.
fn assert_flip_detected(frame: &Frame, bit: usize) {
    let mut bytes = wire_bytes(frame);
    let preface = if matches!(frame, Frame::Hello(_) | Frame::HelloAck(_)) {
        8
    } else {
        0
    };
    bytes[bit / 8] ^= 1 << (bit % 8);
    let mut decoder = decoder_for(frame);
    let (items, err) = decode_all(&mut decoder, &mut bytes);
    let byte = bit / 8;
    let per_call = matches!(frame, Frame::Request(_) | Frame::Response(_));
    if byte < preface {
        assert!(
            matches!(err, Some(DecodeError::BadMagic { .. })),
            "bit {bit}: {err:?}"
        );
    } else if byte < preface + 24 {
        assert!(
            matches!(err, Some(DecodeError::HeaderChecksum { .. })),
            "bit {bit}: {err:?}"
        );
    } else if per_call {
        assert!(err.is_none(), "bit {bit}: {err:?}");
        match items.as_slice() {
            [Err(rejected)] => {
                assert!(
                    matches!(rejected.reason, RejectReason::BodyChecksum { .. }),
                    "bit {bit}"
                );
                assert_eq!(rejected.call_id, frame.call_id());
            }
            other => panic!("bit {bit}: expected one rejected frame, got {other:?}"),
        }
    } else {
        assert!(
            matches!(err, Some(DecodeError::BodyChecksum { .. })),
            "bit {bit}: {err:?}"
        );
    }
    assert!(
        items.iter().all(Result::is_err),
        "bit {bit}: a corrupted frame decoded as {items:?}"
    );
}

#[test]
fn every_single_bit_flip_is_a_checksum_error() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut frames: Vec<Frame> = (0..96)
        .map(|_| frame().new_tree(&mut runner).unwrap().current())
        .collect();
    // Make sure every kind is sampled, whatever the generator drew.
    frames.extend([
        Frame::Hello(Hello::new(Settings::default())),
        Frame::HelloAck(HelloAck::new(Settings::default())),
        Frame::Request(request().new_tree(&mut runner).unwrap().current()),
        Frame::Response(response().new_tree(&mut runner).unwrap().current()),
        Frame::Cancel(Cancel { call_id: 42 }),
        Frame::Ping(Ping { opaque: [0; 8] }),
        Frame::Pong(Pong { opaque: [0xFF; 8] }),
        Frame::GoAway(GoAway::new(1, GoAwayCode::NO_ERROR, "")),
    ]);
    let mut flips = 0;
    for frame in &frames {
        for bit in 0..wire_bytes(frame).len() * 8 {
            assert_flip_detected(frame, bit);
            flips += 1;
        }
    }
    assert!(flips > 50_000, "only {flips} flips checked");
}

/// Every configuration a decoder can be in, for the arbitrary-bytes test.
fn decoders() -> Vec<FrameDecoder> {
    let mut all = Vec::new();
    for role in [Role::Server, Role::Client] {
        all.push(FrameDecoder::builder(role).max_frame_size(65536).build());
        all.push(support::open_decoder(role));
        all.push(
            FrameDecoder::builder(role)
                .handshake(false)
                .max_frame_size(4096)
                .build(),
        );
    }
    all
}

proptest! {
    // A fixed seed, so that every run replays the same cases (the fuzz targets explore).
    #![proptest_config(ProptestConfig {
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x6b65_656c),
        ..ProptestConfig::with_cases(2000)
    })]

    /// Bounded fuzzing in the normal suite: random bytes, and valid streams with random bytes
    /// overwritten, fed in random chunks to every decoder configuration.
    #[test]
    fn arbitrary_bytes_never_panic_or_overreserve(
        random in proptest::collection::vec(any::<u8>(), 0..1024),
        (_, valid) in client_stream(),
        mutations in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        chunk in 1usize..64,
    ) {
        let mut mutated = valid.to_vec();
        for (at, byte) in mutations {
            let len = mutated.len();
            mutated[at % len] = byte;
        }
        for input in [&random[..], &mutated[..]] {
            for mut decoder in decoders() {
                let mut buf = BytesMut::new();
                let mut failed = false;
                for piece in input.chunks(chunk) {
                    buf.put_slice(piece);
                    loop {
                        match decoder.decode(&mut buf) {
                            Ok(Some(_)) => {}
                            Ok(None) => break,
                            Err(_) => { failed = true; break }
                        }
                    }
                    // Never more than one maximal frame (8 MiB in the roomiest config) plus
                    // the input itself; with small limits, far less.
                    prop_assert!(buf.capacity() <= (8 << 20) + 24 + input.len() + 64);
                    if failed {
                        prop_assert!(buf.is_empty());
                    }
                }
                let _ = decoder.decode_eof(&mut buf);
            }
        }
    }
}
