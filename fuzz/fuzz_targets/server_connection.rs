//! Fuzzes a whole keel server connection: `rpc_server::Server::serve_io` over an in-memory duplex
//! whose client side writes the fuzzer's bytes, and reads back and checks everything the server
//! writes.
//!
//! Input layout: `[config, chunk, wire...]`.
//! - `config` bit 0: prefix the client's bytes with a valid `MAGIC` + HELLO made by the harness
//!   (then `wire` is what follows the handshake); 0 = `wire` is the whole client stream.
//!   Bit 1: rewrite both CRCs of every frame in `wire` (after the `MAGIC` when not prefixed).
//!   Bit 2: keep the client's write side open after the input (the server must end the
//!   connection itself); 0 = shut it down (EOF) after the input.
//!   Bits 3–4: pause between chunks: a yield, 1 ms, 30 ms or 150 ms (virtual time).
//!   Bit 5: dedupe window on. Bit 6: tight server limits (and a drain grace shorter than the dead
//!   bound). Bit 7: a slow reader on a 4 KiB pipe.
//! - `chunk`: the client stream is written in pieces of `chunk + 1` bytes.
//!
//! Each input runs on a fresh current-thread runtime on tokio's paused clock, with a fresh
//! `Server`, so every timer (handshake timeout, heartbeat, drain grace, handler sleeps) runs in
//! virtual time and inputs do not share state. The checks are listed in `fuzz/README.md`.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use rpc_codec::{
    DecodeError, Decoded, Frame, FrameDecoder, FrameEncoder, FrameKind, HEADER_LEN, Hello, MAGIC,
    Pong, Response, Role, Settings,
};
use rpc_core::{CallContext, Status, StatusCode};
use rpc_server::{DedupeConfig, REPLAYED_KEY, REQUEST_ID_KEY, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::codec::{Decoder, Encoder};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(200);
const HEARTBEAT: Duration = Duration::from_millis(100);
const DEAD_AFTER_INTERVALS: u32 = 2;
/// The drain grace: longer than the dead bound by default, shorter with the tight limits (bit 6),
/// so that either bound can be the one that ends a connection that stopped reading after a
/// protocol error or a cancel flood.
const DRAIN_GRACE: Duration = Duration::from_millis(300);
const TIGHT_DRAIN_GRACE: Duration = Duration::from_millis(150);
/// `Echo.sleep` sleeps `4 * payload[0]` ms: up to 1020 ms, past the dead bound and the drain
/// grace, so calls whose handler started can be cut off.
const MAX_SLEEP: Duration = Duration::from_millis(4 * 255);
/// rpc-server's `CLOSE_LINGER` (connection.rs, not configurable): how long a closing connection
/// keeps writing its last frames, and how long a refused handshake waits for the client's EOF.
const CLOSE_LINGER: Duration = Duration::from_secs(1);
/// How long after the input has been written (and, without bit 2, shut down) the server may take
/// to end the connection: each phase's bound once, in sequence (handshake timeout, dead bound,
/// longest handler, drain grace, close linger), plus 500 ms of slack.
const POST_INPUT_BOUND: Duration = HANDSHAKE_TIMEOUT
    .saturating_add(HEARTBEAT.saturating_mul(DEAD_AFTER_INTERVALS))
    .saturating_add(MAX_SLEEP)
    .saturating_add(DRAIN_GRACE)
    .saturating_add(CLOSE_LINGER)
    .saturating_add(Duration::from_millis(500));
/// The slow reader: reads at most this much, then sleeps.
const SLOW_READ: usize = 512;
const SLOW_READ_PAUSE: Duration = Duration::from_millis(2);
/// The longest status message the server writes: `unknown method {:?}` with a 1024-byte name,
/// whose `Debug` escapes take at most 6 characters per byte, plus the fixed text.
const MAX_MESSAGE: usize = 8 * 1024;
/// The most response metadata the server adds: `rpc-replayed: 1` is 18 bytes.
const MAX_RESPONSE_METADATA: usize = 64;
/// A HELLO_ACK with all five settings: header, version, count, 5 × 6.
const MAX_HELLO_ACK: usize = HEADER_LEN + 4 + 5 * 6;
/// A PING or PONG frame.
const PING_FRAME: usize = HEADER_LEN + 8;
/// The client settings of the harness's own HELLO (config bit 0): the smallest MAX_FRAME_SIZE,
/// so echoes of large payloads must be refused rather than sent, and a MAX_METADATA_SIZE of 16
/// bytes (too small for `rpc-replayed: 1`, 18 bytes) without bit 6, 32 bytes with it.
fn prefix_client(config: Config) -> Settings {
    Settings {
        max_frame_size: 4096,
        max_concurrent_calls: 0,
        heartbeat_interval_ms: 0,
        max_metadata_size: if config.tight { 32 } else { 16 },
        dedupe_instance: 0,
    }
}
const PEER: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9);

#[derive(Clone, Copy, Debug)]
struct Config {
    prefix: bool,
    fix_crc: bool,
    keep_open: bool,
    pause: u8,
    dedupe: bool,
    tight: bool,
    slow_reader: bool,
}

impl Config {
    fn new(byte: u8) -> Self {
        Self {
            prefix: byte & 1 != 0,
            fix_crc: byte & 2 != 0,
            keep_open: byte & 4 != 0,
            pause: (byte >> 3) & 3,
            dedupe: byte & 0x20 != 0,
            tight: byte & 0x40 != 0,
            slow_reader: byte & 0x80 != 0,
        }
    }

    fn pause(self) -> Option<Duration> {
        match self.pause {
            0 => None,
            1 => Some(Duration::from_millis(1)),
            2 => Some(Duration::from_millis(30)),
            _ => Some(Duration::from_millis(150)),
        }
    }

    /// What the server announces in HELLO_ACK (its `dedupe_instance` is random: checked apart).
    fn server_settings(self) -> Settings {
        Settings {
            max_frame_size: if self.tight {
                4096
            } else {
                rpc_codec::DEFAULT_MAX_FRAME_SIZE
            },
            max_concurrent_calls: if self.tight { 2 } else { 100 },
            heartbeat_interval_ms: 100,
            max_metadata_size: if self.tight {
                64
            } else {
                rpc_core::metadata::DEFAULT_MAX_METADATA_SIZE
            },
            dedupe_instance: 0,
        }
    }

    fn server(self) -> Server {
        let mut builder = Server::builder()
            .handshake_timeout(HANDSHAKE_TIMEOUT)
            .heartbeat_interval(HEARTBEAT)
            .dead_after_intervals(DEAD_AFTER_INTERVALS)
            // The smallest bound on unsent bytes, so that the reads pause (backpressure) for
            // outputs a 16 KiB input can cause: replays of a recorded 4 KiB result.
            .max_unsent_bytes(64 * 1024)
            .drain_grace(if self.tight {
                TIGHT_DRAIN_GRACE
            } else {
                DRAIN_GRACE
            })
            .register("Echo.echo", |_ctx: CallContext, payload: Bytes| async move {
                Ok::<_, Status>(payload)
            })
            .register("Echo.sleep", |_ctx: CallContext, payload: Bytes| async move {
                let ms = payload.first().map_or(0, |&b| 4 * u64::from(b));
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok::<_, Status>(payload)
            })
            .register("Echo.fail", |_ctx: CallContext, _payload: Bytes| async move {
                Err::<Bytes, _>(Status::new(StatusCode::NOT_FOUND, "nothing here"))
            });
        if self.tight {
            builder = builder
                .max_frame_size(4096)
                .max_metadata_size(64)
                .max_concurrent_calls(2)
                .method_concurrency_limit("Echo.sleep", 1)
                .cancel_flood_limit(2, 50);
        }
        if self.dedupe {
            builder = builder.dedupe(
                DedupeConfig::new()
                    .ttl(Duration::from_millis(500))
                    .max_entries(4)
                    .max_bytes(4096),
            );
        }
        builder.build()
    }
}

fuzz_target!(|data: &[u8]| {
    let [config, chunk, wire @ ..] = data else {
        return;
    };
    let config = Config::new(*config);
    let chunk = usize::from(*chunk) + 1;
    let mut stream = Vec::new();
    if config.prefix {
        let mut hello = BytesMut::new();
        FrameEncoder::new()
            .encode(Frame::Hello(Hello::new(prefix_client(config))), &mut hello)
            .expect("the harness's HELLO encodes");
        stream.extend_from_slice(&hello);
    }
    let at = if config.prefix {
        stream.len()
    } else {
        MAGIC.len()
    };
    stream.extend_from_slice(wire);
    if config.fix_crc {
        fix_checksums(&mut stream, at);
    }

    let input = read_input(&stream, &config.server_settings());
    let run = run(config, &stream, chunk, &input);
    if debug() {
        eprintln!("{config:?}, {chunk}-byte chunks, {} bytes in", stream.len());
        eprintln!("input: {input:#?}");
        eprintln!(
            "input written at {:?}, server ended at {:?}, {} bytes out",
            run.input_done,
            run.server_end,
            run.out.len()
        );
        let mut decoder = FrameDecoder::new(Role::Client);
        let mut buf = BytesMut::from(&run.out[..]);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(item)) => eprintln!("out: {item:?}"),
                Ok(None) => break,
                Err(e) => {
                    eprintln!("out: error {e}");
                    break;
                }
            }
        }
        if let Err(e) = decoder.decode_eof(&mut buf) {
            eprintln!("out: at the end, {e}");
        }
    }
    check(config, &input, &run);
});

/// `FUZZ_DEBUG=1` prints each input's decoded calls, timings and output frames to stderr.
fn debug() -> bool {
    static DEBUG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DEBUG.get_or_init(|| std::env::var_os("FUZZ_DEBUG").is_some())
}

/// One REQUEST of the input, as the server's decoder reads it.
#[derive(Debug)]
struct Call {
    /// `None` when the codec rejected the frame (body CRC, envelope, metadata, length).
    method: Option<String>,
    payload: Bytes,
    idempotent: bool,
    request_id: Option<Bytes>,
    /// Refused by the codec with the frame too large: its id is above `last_request_id`.
    too_large: bool,
    /// Read before a client GOAWAY (or there is none).
    before_client_goaway: bool,
}

impl Call {
    fn registered(&self) -> bool {
        matches!(
            self.method.as_deref(),
            Some("Echo.echo" | "Echo.sleep" | "Echo.fail")
        )
    }
}

/// What the client stream holds, decoded in one piece by a decoder configured like the
/// server's: a superset of what the server reads (it may stop reading earlier).
#[derive(Debug, Default)]
struct Input {
    hello: Option<Settings>,
    calls: BTreeMap<u64, Call>,
    pings: Vec<[u8; 8]>,
    client_goaway: bool,
    max_payload: usize,
    cancels: usize,
    /// The stream holds a HELLO and ends on a frame boundary without a connection error: the
    /// server reads all of it, and more frames could follow.
    clean: bool,
}

impl Input {
    /// Whether the harness answers the server's PINGs after the input (see `run`): the client
    /// keeps its side open (bit 2), the stream ends cleanly, no limit is tight (bit 6) and there
    /// are too few CANCELs for the default cancel-flood limit (100), so that the server has no
    /// reason to end the connection before every call is answered.
    fn answering(&self, config: Config) -> bool {
        config.keep_open && !config.tight && self.clean && self.cancels <= 100
    }
}

fn read_input(stream: &[u8], server: &Settings) -> Input {
    let mut decoder = FrameDecoder::builder(Role::Server).settings(server).build();
    let mut buf = BytesMut::from(stream);
    let mut input = Input::default();
    loop {
        let item: Decoded = match decoder.decode(&mut buf) {
            Ok(Some(item)) => item,
            Ok(None) => {
                input.clean = buf.is_empty() && input.hello.is_some();
                break;
            }
            Err(DecodeError::FrameTooLarge {
                kind: FrameKind::REQUEST,
                call_id,
                ..
            }) => {
                let before_client_goaway = !input.client_goaway;
                input.calls.insert(
                    call_id,
                    Call {
                        method: None,
                        payload: Bytes::new(),
                        idempotent: false,
                        request_id: None,
                        too_large: true,
                        before_client_goaway,
                    },
                );
                break;
            }
            Err(_) => break,
        };
        let before_client_goaway = !input.client_goaway;
        match item {
            Ok(Frame::Hello(hello)) => input.hello = Some(hello.settings),
            Ok(Frame::Request(request)) => {
                input.max_payload = input.max_payload.max(request.payload.len());
                let call = Call {
                    method: Some(request.method.as_str().to_owned()),
                    request_id: request.metadata.get(REQUEST_ID_KEY).cloned(),
                    payload: request.payload,
                    idempotent: request.idempotent,
                    too_large: false,
                    before_client_goaway,
                };
                input.calls.insert(request.call_id, call);
            }
            Err(rejected) => {
                input.calls.insert(
                    rejected.call_id,
                    Call {
                        method: None,
                        payload: Bytes::new(),
                        idempotent: false,
                        request_id: None,
                        too_large: false,
                        before_client_goaway,
                    },
                );
            }
            Ok(Frame::Ping(ping)) => input.pings.push(ping.opaque),
            Ok(Frame::GoAway(_)) => input.client_goaway = true,
            Ok(Frame::Cancel(_)) => input.cancels += 1,
            Ok(_) => {}
        }
    }
    input
}

/// What one connection did.
struct Run {
    out: Vec<u8>,
    /// Virtual time from the start until the last input byte was written (and the write side
    /// shut down, without bit 2), or until writing failed because the server had gone.
    input_done: Duration,
    /// Virtual time from the start until `serve_io` returned.
    server_end: Duration,
}

fn run(config: Config, stream: &[u8], chunk: usize, input: &Input) -> Run {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
    let server = config.server();
    let pieces = stream.len().div_ceil(chunk);
    let backstop = config.pause().unwrap_or_default() * u32::try_from(pieces).unwrap_or(u32::MAX)
        + Duration::from_secs(600);
    runtime.block_on(async {
        let start = Instant::now();
        let capacity = if config.slow_reader { 4096 } else { 1 << 20 };
        let (client, server_io) = tokio::io::duplex(capacity);
        let (mut rd, mut wr) = tokio::io::split(client);
        let mut out = Vec::new();
        let mut input_done = None;
        let mut server_end = None;
        // The reader asks the writer to answer each PING it reads, while `answering`.
        let (pong_tx, mut pong_rx) = tokio::sync::mpsc::unbounded_channel::<[u8; 8]>();
        let mut pong_tx = input.answering(config).then_some(pong_tx);
        let serve = async {
            server.serve_io(server_io, PEER).await;
            server_end = Some(start.elapsed());
        };
        let write = async {
            for (i, piece) in stream.chunks(chunk).enumerate() {
                if i > 0 {
                    match config.pause() {
                        None => tokio::task::yield_now().await,
                        Some(pause) => tokio::time::sleep(pause).await,
                    }
                }
                if wr.write_all(piece).await.is_err() {
                    break;
                }
            }
            if !config.keep_open {
                let _ = wr.shutdown().await;
            }
            input_done = Some(start.elapsed());
            // Answer PINGs at once, as a keel client does, until the reader stops asking.
            while let Some(opaque) = pong_rx.recv().await {
                let mut pong = BytesMut::new();
                FrameEncoder::without_preface()
                    .encode(Frame::Pong(Pong { opaque }), &mut pong)
                    .expect("a PONG encodes");
                if wr.write_all(&pong).await.is_err() {
                    break;
                }
            }
        };
        let read = async {
            let mut buf = vec![0; if config.slow_reader { SLOW_READ } else { 64 * 1024 }];
            let client = input.hello.unwrap_or_default();
            let mut decoder = FrameDecoder::builder(Role::Client).settings(&client).build();
            let mut pending = BytesMut::new();
            let mut answered = BTreeSet::new();
            loop {
                let n = match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        pong_tx = None; // the writer stops waiting for PINGs to answer
                        break;
                    }
                    Ok(n) => n,
                };
                out.extend_from_slice(&buf[..n]);
                if let Some(tx) = &pong_tx {
                    pending.extend_from_slice(&buf[..n]);
                    let mut stop = false;
                    loop {
                        match decoder.decode(&mut pending) {
                            Ok(Some(Ok(Frame::Ping(ping)))) => {
                                let _ = tx.send(ping.opaque);
                            }
                            Ok(Some(Ok(Frame::Response(response)))) => {
                                answered.insert(response.call_id);
                            }
                            Ok(Some(Ok(Frame::GoAway(_)))) | Err(_) => {
                                stop = true;
                                break;
                            }
                            Ok(Some(_)) => {}
                            Ok(None) => break,
                        }
                    }
                    // Every call answered: from now on the client is silent, and the server
                    // ends the connection at its dead bound.
                    if stop || input.calls.keys().all(|id| answered.contains(id)) {
                        pong_tx = None;
                    }
                }
                if config.slow_reader {
                    tokio::time::sleep(SLOW_READ_PAUSE).await;
                }
            }
        };
        let ended = tokio::time::timeout(backstop, async { tokio::join!(serve, write, read) })
            .await
            .is_ok();
        assert!(
            ended,
            "the connection had not ended after {backstop:?} of virtual time (server ended: {}, \
             input written: {}, {} bytes read back)",
            server_end.is_some(),
            input_done.is_some(),
            out.len()
        );
        Run {
            out,
            input_done: input_done.expect("the writer ended"),
            server_end: server_end.expect("the server ended"),
        }
    })
}

/// What the server wrote, as its client decodes it.
#[derive(Debug, Default)]
struct Output {
    frames: usize,
    acked: bool,
    goaways: usize,
    goaway_last: Option<u64>,
    pings: u64,
    pongs: usize,
    answered: BTreeSet<u64>,
    /// RESPONSEs that came after the first GOAWAY.
    after_goaway: Vec<u64>,
    truncated: bool,
}

fn check(config: Config, input: &Input, run: &Run) {
    // Check 1: the output decodes as a client would decode it, under the limits the client
    // announced (defaults when the input has no HELLO).
    let client = input.hello.unwrap_or_default();
    let mut decoder = FrameDecoder::builder(Role::Client).settings(&client).build();
    let mut buf = BytesMut::from(&run.out[..]);
    let mut output = Output::default();
    loop {
        match decoder.decode(&mut buf) {
            Ok(Some(item)) => output.frame(item, config, input),
            Ok(None) => break,
            Err(e) => panic!(
                "the server's output is not a valid frame sequence after {} frames: {e} / {e:?}",
                output.frames
            ),
        }
    }
    // Only a server that had to give up writing (the client shut its side, or read too slowly
    // for the close linger) may end inside a frame.
    let may_truncate = !config.keep_open || config.slow_reader;
    match decoder.decode_eof(&mut buf) {
        Ok(None) => {}
        Err(DecodeError::TruncatedAtEof { .. }) if may_truncate => output.truncated = true,
        other => panic!(
            "the server's output ends badly after {} frames: {other:?}",
            output.frames
        ),
    }

    check_answering(config, input, &output);

    // Check 4: bounded output.
    let pings_bound = run.server_end.as_millis() / HEARTBEAT.as_millis() + 1;
    assert!(
        u128::from(output.pings) <= pings_bound,
        "{} PINGs in {:?}",
        output.pings,
        run.server_end
    );
    let bound = MAGIC.len()
        + MAX_HELLO_ACK
        + 2 * (HEADER_LEN + 4096)
        + PING_FRAME * (input.pings.len() + output.pings as usize)
        + input.calls.len()
            * (HEADER_LEN + 12 + MAX_MESSAGE + MAX_RESPONSE_METADATA + input.max_payload);
    assert!(
        run.out.len() <= bound,
        "the server wrote {} bytes, over the bound of {bound}",
        run.out.len()
    );

    // Check 5: bounded time after the input ended.
    let mut time_bound = POST_INPUT_BOUND;
    if config.slow_reader {
        time_bound += SLOW_READ_PAUSE * u32::try_from(run.out.len() / SLOW_READ + 1).unwrap();
    }
    let after_input = run.server_end.saturating_sub(run.input_done);
    assert!(
        after_input <= time_bound,
        "the server ended {after_input:?} after the input (bound {time_bound:?})"
    );

    // Check 6: with the write side kept open and a fast reader, the server ends the connection
    // itself, says why, and answers every call it read.
    if config.keep_open && !config.slow_reader {
        assert!(
            output.goaways > 0 || (output.acked && input.client_goaway),
            "the server closed the connection without a GOAWAY"
        );
        let unanswered: Vec<u64> = match output.goaway_last {
            Some(last) => input
                .calls
                .range(..=last)
                .map(|(&id, _)| id)
                .filter(|id| !output.answered.contains(id))
                .collect(),
            None => input
                .calls
                .iter()
                .filter(|(_, call)| call.before_client_goaway && !call.too_large)
                .map(|(&id, _)| id)
                .filter(|id| !output.answered.contains(id))
                .collect(),
        };
        assert!(
            unanswered.is_empty(),
            "calls {unanswered:?} were read (GOAWAY last call id {:?}) but never answered",
            output.goaway_last
        );
    }
}

/// Check 7: a client that answers every PING (see `Input::answering`) is not declared dead:
/// once the server has sent HELLO_ACK (the HELLO may have come too late for the handshake
/// timeout), it answers every call before it closes, and writes all it queued.
fn check_answering(config: Config, input: &Input, output: &Output) {
    if !input.answering(config) || !output.acked {
        return;
    }
    assert!(
        !output.truncated,
        "the server cut off its output to a client that answers its PINGs (after {} frames)",
        output.frames
    );
    // A REQUEST the client sends after its own GOAWAY breaks §11 (it said it would send none):
    // the server may close without reading it.
    let unanswered: Vec<u64> = input
        .calls
        .iter()
        .filter(|(id, call)| call.before_client_goaway && !output.answered.contains(id))
        .map(|(id, _)| *id)
        .collect();
    assert!(
        unanswered.is_empty(),
        "calls {unanswered:?} never answered, on a connection whose client answers its PINGs"
    );
    assert!(
        output.after_goaway.is_empty(),
        "calls {:?} answered after the GOAWAY: cut off by a close while their client answers \
         its PINGs",
        output.after_goaway
    );
}

impl Output {
    /// Check 2 (HELLO_ACK, GOAWAY, PING, PONG) and, through `response`, check 3.
    fn frame(&mut self, item: Decoded, config: Config, input: &Input) {
        self.frames += 1;
        match item {
            Err(rejected) => panic!("the server sent a frame its client rejects: {rejected}"),
            Ok(Frame::HelloAck(ack)) => {
                assert!(input.hello.is_some(), "HELLO_ACK without a HELLO");
                let mut settings = ack.settings;
                assert_eq!(
                    settings.dedupe_instance != 0,
                    config.dedupe,
                    "DEDUPE_INSTANCE {} with the dedupe window {}",
                    settings.dedupe_instance,
                    if config.dedupe { "on" } else { "off" }
                );
                settings.dedupe_instance = 0;
                assert_eq!(settings, config.server_settings(), "HELLO_ACK settings");
                self.acked = true;
            }
            Ok(Frame::GoAway(goaway)) => {
                self.goaways += 1;
                assert!(self.goaways <= 2, "{} GOAWAYs", self.goaways);
                let last = goaway.last_call_id;
                if let Some(previous) = self.goaway_last {
                    assert!(
                        last <= previous,
                        "a GOAWAY raised the last call id from {previous} to {last}"
                    );
                }
                assert!(
                    last == 0 || input.calls.get(&last).is_some_and(|call| !call.too_large),
                    "GOAWAY names last call id {last}, a REQUEST the server never read"
                );
                if !self.acked {
                    assert_eq!(last, 0, "GOAWAY before HELLO_ACK with a last call id");
                }
                self.goaway_last = Some(last);
            }
            Ok(Frame::Ping(ping)) => {
                self.pings += 1;
                assert_eq!(
                    ping.opaque,
                    self.pings.to_be_bytes(),
                    "PINGs are numbered from 1"
                );
            }
            Ok(Frame::Pong(pong)) => {
                self.pongs += 1;
                assert!(
                    self.pongs <= input.pings.len(),
                    "{} PONGs for {} PINGs",
                    self.pongs,
                    input.pings.len()
                );
                assert!(
                    input.pings.contains(&pong.opaque),
                    "PONG {:?} answers no PING",
                    pong.opaque
                );
            }
            Ok(Frame::Response(response)) => self.response(response, config, input),
            Ok(other) => panic!("the server sent {other:?}"),
        }
    }

    /// Check 3: one RESPONSE.
    fn response(&mut self, response: Response, config: Config, input: &Input) {
        let id = response.call_id;
        let Some(call) = input.calls.get(&id) else {
            panic!("RESPONSE for call {id}, which the client never sent");
        };
        assert!(self.answered.insert(id), "a second RESPONSE for call {id}");
        if self.goaways > 0 {
            self.after_goaway.push(id);
        }
        if let Some(last) = self.goaway_last {
            assert!(
                id <= last,
                "RESPONSE for call {id} after a GOAWAY with last call id {last}"
            );
        }
        let status = &response.status;
        assert!(
            status.message().len() <= MAX_MESSAGE,
            "a {}-byte status message",
            status.message().len()
        );
        assert!(
            status.metadata().encoded_len() <= MAX_RESPONSE_METADATA,
            "{} bytes of response metadata",
            status.metadata().encoded_len()
        );
        assert!(
            response.payload.len() <= input.max_payload,
            "a {}-byte RESPONSE payload; the largest REQUEST payload is {}",
            response.payload.len(),
            input.max_payload
        );
        let replayed = status.metadata().get(REPLAYED_KEY);
        if let Some(value) = replayed {
            assert_eq!(&value[..], b"1", "{REPLAYED_KEY} value");
            assert!(
                config.dedupe && call.registered() && !call.idempotent && call.request_id.is_some(),
                "call {id} answered as replayed: {call:?}, dedupe {}",
                config.dedupe
            );
        }
        if !call.registered() {
            assert!(
                response.not_executed && !status.is_ok(),
                "call {id} ({call:?}) never reached a handler but was answered {status:?}, \
                 NOT_EXECUTED {}",
                response.not_executed
            );
        }
        if status.is_ok() {
            assert!(!response.not_executed, "an OK RESPONSE flagged NOT_EXECUTED");
            let method = call.method.as_deref().unwrap_or_default();
            assert!(
                matches!(method, "Echo.echo" | "Echo.sleep"),
                "call {id} to {method:?} answered OK"
            );
            if replayed.is_some() {
                let recorded = input.calls.range(..id).any(|(_, earlier)| {
                    earlier.method == call.method
                        && earlier.request_id == call.request_id
                        && !earlier.idempotent
                        && earlier.payload == response.payload
                });
                assert!(
                    recorded,
                    "call {id} replayed a payload no earlier call with its key sent"
                );
            } else {
                assert_eq!(
                    response.payload, call.payload,
                    "call {id} to {method} did not echo its payload"
                );
            }
        } else {
            assert!(
                response.payload.is_empty(),
                "an error RESPONSE with a payload"
            );
        }
    }
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
