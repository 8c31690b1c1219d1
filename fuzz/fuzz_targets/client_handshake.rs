//! Fuzzes the client side of the handshake, `rpc_transport::handshake::connect`, over an
//! in-memory duplex whose server side replays the fuzzer's bytes.
//!
//! Input layout: `[config, chunk, wire...]`.
//! - `config` bit 0: prefix `wire` with the 8-byte `MAGIC`. Bit 1: rewrite both CRCs of every
//!   frame in `wire` (after the `MAGIC` when not prefixed). Bit 2: keep the server's write side
//!   open after the bytes (0 = shut it down, EOF). Bits 3–4: pause between chunks: a yield,
//!   7 ms, 61 ms or 130 ms of virtual time (none divides the 500 ms timeout, so no chunk arrives
//!   exactly when it fires). Bit 5: the client announces small limits (MAX_FRAME_SIZE 4096,
//!   MAX_METADATA_SIZE 64, no heartbeat) instead of a client's defaults.
//! - `chunk`: the server's bytes are written in pieces of `chunk + 1` bytes.
//!
//! Each input runs on a fresh current-thread runtime on tokio's paused clock. The harness works
//! out, from its own decoder fed the same pieces at the same virtual times, what `connect` must
//! return; the checks are listed in `fuzz/README.md`.
#![no_main]

use std::time::Duration;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use rpc_codec::{
    DecodeError, Frame, FrameDecoder, FrameEncoder, GoAwayCode, HEADER_LEN, Hello, HelloAck,
    MAGIC, Role, Settings,
};
use rpc_transport::HandshakeError;
use rpc_transport::handshake::connect;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::codec::Decoder;

const TIMEOUT: Duration = Duration::from_millis(500);
/// rpc-transport's `GOAWAY_LINGER` (handshake.rs): the most a failed handshake spends sending
/// its GOAWAY.
const GOAWAY_LINGER: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, Debug)]
struct Config {
    prefix: bool,
    fix_crc: bool,
    keep_open: bool,
    pause: u8,
    small: bool,
}

impl Config {
    fn new(byte: u8) -> Self {
        Self {
            prefix: byte & 1 != 0,
            fix_crc: byte & 2 != 0,
            keep_open: byte & 4 != 0,
            pause: (byte >> 3) & 3,
            small: byte & 0x20 != 0,
        }
    }

    fn pause(self) -> Duration {
        Duration::from_millis(match self.pause {
            0 => 0,
            1 => 7,
            2 => 61,
            _ => 130,
        })
    }

    fn local(self) -> Settings {
        if self.small {
            Settings {
                max_frame_size: 4096,
                max_concurrent_calls: 0,
                heartbeat_interval_ms: 0,
                max_metadata_size: 64,
                dedupe_instance: 0,
            }
        } else {
            Settings {
                max_concurrent_calls: 0,
                ..Settings::default()
            }
        }
    }
}

/// What `connect` must return.
#[derive(Debug)]
enum Expected {
    /// HELLO_ACK, and where in the stream its frame ends.
    Ack(HelloAck, usize),
    Refused(GoAwayCode, String),
    /// The decoder's error, as `Debug` text, and the GOAWAY the client must send for it.
    Protocol(String, Option<(GoAwayCode, String)>),
    Closed,
    Timeout,
}

fuzz_target!(|data: &[u8]| {
    let [config, chunk, wire @ ..] = data else {
        return;
    };
    let config = Config::new(*config);
    let chunk = usize::from(*chunk) + 1;
    let mut stream = Vec::new();
    if config.prefix {
        stream.extend_from_slice(&MAGIC);
    }
    stream.extend_from_slice(wire);
    if config.fix_crc {
        fix_checksums(&mut stream, MAGIC.len());
    }

    let expected = expect(config, &stream, chunk);
    let local = config.local();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
    let (result, buf, open, peer, elapsed, sent) = runtime.block_on(async {
        let start = Instant::now();
        let (mut client_io, server_io) = tokio::io::duplex(1 << 20);
        let (mut server_rd, mut server_wr) = tokio::io::split(server_io);
        let client = async move {
            let mut buf = BytesMut::new();
            let mut decoder = FrameDecoder::builder(Role::Client).settings(&local).build();
            let mut encoder = FrameEncoder::new();
            let result = connect(
                &mut client_io,
                &mut buf,
                &mut decoder,
                &mut encoder,
                local,
                TIMEOUT,
            )
            .await;
            let elapsed = start.elapsed();
            drop(client_io);
            (
                result,
                buf,
                decoder.is_open(),
                *encoder.peer_settings(),
                elapsed,
            )
        };
        let replay = async {
            for (i, piece) in stream.chunks(chunk).enumerate() {
                if i > 0 {
                    if config.pause == 0 {
                        tokio::task::yield_now().await;
                    } else {
                        tokio::time::sleep(config.pause()).await;
                    }
                }
                if server_wr.write_all(piece).await.is_err() {
                    return;
                }
            }
            if !config.keep_open {
                let _ = server_wr.shutdown().await;
            }
        };
        let read = async {
            let mut sent = Vec::new();
            let _ = server_rd.read_to_end(&mut sent).await;
            sent
        };
        let backstop = Duration::from_secs(3600);
        let ((result, buf, open, peer, elapsed), (), sent) =
            tokio::time::timeout(backstop, async { tokio::join!(client, replay, read) })
                .await
                .expect("the handshake had not ended after an hour of virtual time");
        (result, buf, open, peer, elapsed, sent)
    });

    // Check 2: bounded time.
    assert!(
        elapsed <= TIMEOUT + GOAWAY_LINGER,
        "connect took {elapsed:?} (timeout {TIMEOUT:?})"
    );

    // Check 3: the result is what the bytes say.
    let goaway = match (&expected, &result) {
        (Expected::Ack(ack, end), Ok(got)) => {
            assert_eq!(got, ack, "connect returned another HELLO_ACK than was sent");
            assert_eq!(&peer, &ack.settings, "the encoder's peer settings");
            assert!(open, "the decoder is not open after HELLO_ACK");
            assert!(elapsed < TIMEOUT, "connect succeeded after its timeout");
            let rest = &stream[*end..];
            assert!(
                buf.len() <= rest.len() && buf[..] == rest[..buf.len()],
                "the {} bytes left in the read buffer are not those after HELLO_ACK",
                buf.len()
            );
            None
        }
        (Expected::Refused(code, message), Err(HandshakeError::Refused { code: c, message: m })) => {
            assert_eq!((c, m), (code, message), "the GOAWAY's code and message");
            None
        }
        (Expected::Protocol(debug, goaway), Err(HandshakeError::Protocol(err))) => {
            assert_eq!(&format!("{err:?}"), debug, "the protocol error");
            goaway.clone()
        }
        (Expected::Closed, Err(HandshakeError::Closed)) => None,
        (Expected::Timeout, Err(HandshakeError::Timeout(after))) => {
            assert_eq!(*after, TIMEOUT);
            assert_eq!(elapsed, TIMEOUT, "a timeout fired after {elapsed:?}");
            Some((
                GoAwayCode::HANDSHAKE_TIMEOUT,
                format!("no HELLO_ACK within {TIMEOUT:?}"),
            ))
        }
        (expected, result) => {
            panic!("connect returned {result:?}; the bytes call for {expected:?}")
        }
    };

    // Check 4: what the client wrote is its preface, its HELLO and, when the handshake failed on
    // the server's fault, one GOAWAY saying why.
    let mut decoder = FrameDecoder::new(Role::Server);
    let mut sent = BytesMut::from(&sent[..]);
    let mut frames = Vec::new();
    loop {
        match decoder.decode(&mut sent) {
            Ok(Some(Ok(frame))) => frames.push(frame),
            Ok(Some(Err(rejected))) => panic!("the client sent a frame it should not: {rejected}"),
            Ok(None) => break,
            Err(e) => panic!("the client's output is not a valid frame sequence: {e} / {e:?}"),
        }
    }
    if let Err(e) = decoder.decode_eof(&mut sent) {
        panic!("the client's output ends badly: {e:?}");
    }
    let mut frames = frames.into_iter();
    match frames.next() {
        Some(Frame::Hello(hello)) => assert_eq!(hello, Hello::new(local), "the client's HELLO"),
        other => panic!("the client's first frame is {other:?}, not HELLO"),
    }
    match (goaway, frames.next()) {
        (None, None) => {}
        (Some((code, message)), Some(Frame::GoAway(got))) => {
            assert_eq!(got.last_call_id, 0, "a client's GOAWAY names call 0");
            assert_eq!((got.code, got.message), (code, message), "the client's GOAWAY");
        }
        (goaway, frame) => {
            panic!("after its HELLO the client sent {frame:?}; expected GOAWAY {goaway:?}")
        }
    }
    if let Some(frame) = frames.next() {
        panic!("the client sent {frame:?} after its handshake");
    }
});

/// Feeds `stream` to a client decoder in the pieces, and at the virtual times, the replay writes
/// them, and says what `connect` must make of it.
fn expect(config: Config, stream: &[u8], chunk: usize) -> Expected {
    let mut decoder = FrameDecoder::builder(Role::Client)
        .settings(&config.local())
        .build();
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut at = Duration::ZERO;
    for (i, piece) in stream.chunks(chunk).enumerate() {
        at = config.pause() * u32::try_from(i).unwrap_or(u32::MAX);
        if at >= TIMEOUT {
            return Expected::Timeout;
        }
        buf.extend_from_slice(piece);
        fed += piece.len();
        match decoder.decode(&mut buf) {
            Ok(None) => {}
            Ok(Some(item)) => return from_item(item, fed - buf.len()),
            Err(e) => return from_error(&e),
        }
    }
    if config.keep_open || at >= TIMEOUT {
        return Expected::Timeout;
    }
    match decoder.decode_eof(&mut buf) {
        Ok(None) => Expected::Closed,
        Ok(Some(item)) => from_item(item, fed - buf.len()),
        Err(e) => from_error(&e),
    }
}

fn from_item(item: rpc_codec::Decoded, end: usize) -> Expected {
    match item {
        Ok(Frame::HelloAck(ack)) => Expected::Ack(ack, end),
        Ok(Frame::GoAway(goaway)) => Expected::Refused(goaway.code, goaway.message),
        _ => Expected::Closed,
    }
}

fn from_error(e: &DecodeError) -> Expected {
    let goaway = match e {
        DecodeError::TruncatedAtEof { .. } => None,
        e => Some((e.go_away_code(), e.to_string())),
    };
    Expected::Protocol(format!("{e:?}"), goaway)
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
