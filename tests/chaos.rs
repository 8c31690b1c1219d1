//! Real faults through rpc-chaos's proxy and real server processes: corruption, blackholes, kills,
//! hangs, latency, slicing, resets at every byte, drains. Each test asserts exact outcomes: which
//! calls failed, with which status and outcome, how many times each handler ran, and how long
//! detection took against the configured bound. tests/README.md lists them.
//!
//! Randomness comes from a seed printed at the start of each test; set `KEEL_CHAOS_SEED` to replay.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures::StreamExt;
use keel::codec::{Frame, FrameEncoder, Hello, MethodName, Request, Response, Settings};
use keel::core::CallContext;
use keel::{Bytes, CallOptions, Channel, Error, Outcome, Server, ServerHandle, StatusCode};
use rpc_chaos::{Direction, DropMode, Faults, Proxy, ServerProcess};
use tokio_util::codec::Encoder;

/// How many times the server ran its handler for each payload.
#[derive(Clone, Default)]
struct Runs(Arc<Mutex<HashMap<Bytes, usize>>>);

impl Runs {
    fn of(&self, payload: &[u8]) -> usize {
        self.0.lock().unwrap().get(payload).copied().unwrap_or(0)
    }
    fn total(&self) -> usize {
        self.0.lock().unwrap().values().sum()
    }
}

/// An in-process server whose `Echo.echo` counts its runs per payload, and whose `Echo.sleep`
/// sleeps for the milliseconds in its 8-byte payload.
async fn counting_server(heartbeat: Duration) -> (ServerHandle, Runs) {
    let runs = Runs::default();
    let record = runs.clone();
    let server = Server::builder()
        .heartbeat_interval(heartbeat)
        .register("Echo.echo", move |_ctx: CallContext, payload: Bytes| {
            *record.0.lock().unwrap().entry(payload.clone()).or_default() += 1;
            async move { Ok(payload) }
        })
        .register(
            "Echo.sleep",
            |_ctx: CallContext, payload: Bytes| async move {
                let millis = u64::from_be_bytes(payload[..8].try_into().unwrap());
                tokio::time::sleep(Duration::from_millis(millis)).await;
                Ok(payload)
            },
        )
        .build()
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    (server, runs)
}

/// A channel without the retry layer, failing fast while connecting fails: these scenarios observe
/// what one attempt sees (its status, outcome and detection time). tests/retries.rs covers what the
/// retry layer and the reconnect backoff make of them.
fn channel(addr: SocketAddr, heartbeat: Duration) -> Channel {
    Channel::builder(addr)
        .heartbeat_interval(heartbeat)
        .disable_retries()
        .wait_for_ready(false)
        .build()
}

/// Bytes a client sends before its first REQUEST: preface and HELLO.
fn client_preamble() -> u64 {
    let mut out = BytesMut::new();
    let hello = Frame::Hello(Hello::new(Settings::default()));
    FrameEncoder::new().encode(hello, &mut out).unwrap();
    out.len() as u64
}

/// Bytes a server sends before its first RESPONSE: preface and HELLO_ACK.
fn server_preamble() -> u64 {
    let mut out = BytesMut::new();
    let ack = Frame::HelloAck(keel::codec::HelloAck::new(Settings::default()));
    FrameEncoder::new().encode(ack, &mut out).unwrap();
    out.len() as u64
}

fn encoded_len(frame: Frame) -> u64 {
    let mut encoder = FrameEncoder::without_preface();
    encoder.set_peer_settings(Settings::default());
    let mut out = BytesMut::new();
    encoder.encode(frame, &mut out).unwrap();
    out.len() as u64
}

/// Bytes of an `Echo.echo` REQUEST (no metadata) carrying `payload`.
fn echo_request_len(payload: &[u8]) -> u64 {
    let request = Request::new(
        1,
        MethodName::from_static("Echo.echo"),
        Bytes::copy_from_slice(payload),
    );
    encoded_len(Frame::Request(request))
}

/// Bytes of a successful RESPONSE carrying `payload`.
fn response_len(payload: &[u8]) -> u64 {
    encoded_len(Frame::Response(Response::ok(
        1,
        Bytes::copy_from_slice(payload),
    )))
}

fn assert_failed(result: &Result<keel::Reply, Error>, code: StatusCode, outcome: Outcome) {
    match result {
        Err(err) => assert_eq!((err.code(), err.outcome()), (code, outcome), "{err:?}"),
        Ok(reply) => panic!(
            "expected {code} ({outcome}), got a reply {:?}",
            reply.payload
        ),
    }
}

const HEARTBEAT: Duration = Duration::from_millis(100);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_bit_in_a_request_body_is_data_loss_and_never_runs() {
    let (server, runs) = counting_server(Duration::from_secs(10)).await;
    let proxy = Proxy::start(server.local_addr(), support::chaos_seed("request body"))
        .await
        .unwrap();
    let payload = b"request body payload";
    // The last byte of the first REQUEST.
    let at = client_preamble() + echo_request_len(payload) - 1;
    proxy.set_faults(Direction::ClientToServer, Faults::none().flip_bit(at, 0x10));
    let channel = channel(proxy.local_addr(), Duration::from_secs(10));
    let result = channel
        .call("Echo.echo", Bytes::from_static(payload), CallOptions::new())
        .await;
    assert_failed(&result, StatusCode::DATA_LOSS, Outcome::NotExecuted);
    assert_eq!(
        runs.total(),
        0,
        "the corrupt request never reached the handler"
    );
    // The connection lives on.
    let reply = channel
        .call("Echo.echo", Bytes::from_static(b"next"), CallOptions::new())
        .await;
    assert_eq!(reply.unwrap().payload, "next");
    assert_eq!(proxy.accepted(), 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_bit_in_a_request_header_closes_that_connection_only() {
    let (server, runs) = counting_server(Duration::from_secs(10)).await;
    let proxy = Proxy::start(server.local_addr(), support::chaos_seed("request header"))
        .await
        .unwrap();
    let first = b"first call";
    // Byte 10 of the second REQUEST's header: inside its call id.
    let at = client_preamble() + echo_request_len(first) + 10;
    proxy.set_faults(Direction::ClientToServer, Faults::none().flip_bit(at, 0x01));
    let victim = channel(proxy.local_addr(), Duration::from_secs(10));
    let bystander = channel(server.local_addr(), Duration::from_secs(10));
    assert_eq!(
        victim
            .call("Echo.echo", Bytes::from_static(first), CallOptions::new())
            .await
            .unwrap()
            .payload,
        "first call"
    );
    let result = victim
        .call(
            "Echo.echo",
            Bytes::from_static(b"second call"),
            CallOptions::new(),
        )
        .await;
    // The server answered GOAWAY(CHECKSUM_ERROR, last call id 1): call 2 is above it.
    assert_failed(&result, StatusCode::UNAVAILABLE, Outcome::NotExecuted);
    let err = result.unwrap_err();
    assert!(
        matches!(
            std::error::Error::source(&err)
                .and_then(|c| c.downcast_ref::<keel::client::ConnectionError>()),
            Some(keel::client::ConnectionError::GoAway {
                code: keel::codec::GoAwayCode::CHECKSUM_ERROR,
                ..
            })
        ),
        "{err:?}"
    );
    assert_eq!(runs.of(b"second call"), 0);
    // Another connection is unaffected; the victim reconnects on its next call.
    assert_eq!(
        bystander
            .call("Echo.echo", Bytes::from_static(b"fine"), CallOptions::new())
            .await
            .unwrap()
            .payload,
        "fine"
    );
    proxy.clear_faults();
    assert_eq!(
        victim
            .call(
                "Echo.echo",
                Bytes::from_static(b"again"),
                CallOptions::new()
            )
            .await
            .unwrap()
            .payload,
        "again"
    );
    assert_eq!(proxy.accepted(), 2);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_bit_in_a_response_body_is_data_loss_maybe_executed() {
    let (server, runs) = counting_server(Duration::from_secs(10)).await;
    let proxy = Proxy::start(server.local_addr(), support::chaos_seed("response body"))
        .await
        .unwrap();
    let payload = b"response body payload";
    let at = server_preamble() + response_len(payload) - 1;
    proxy.set_faults(Direction::ServerToClient, Faults::none().flip_bit(at, 0x80));
    let channel = channel(proxy.local_addr(), Duration::from_secs(10));
    let result = channel
        .call("Echo.echo", Bytes::from_static(payload), CallOptions::new())
        .await;
    assert_failed(&result, StatusCode::DATA_LOSS, Outcome::MaybeExecuted);
    assert_eq!(runs.of(payload), 1, "it did run once");
    server.shutdown().await;
}

/// What one call of the random-flip run should end with, given the flips the proxy made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Expected {
    Ok,
    Failed(StatusCode, Outcome),
}

/// The frame layout of the random-flip run: every REQUEST and every OK RESPONSE has the same
/// size (the payloads do), and the frames the server sends on bad input have sizes known from
/// the codec.
struct Layout {
    client_preamble: u64,
    server_preamble: u64,
    request: u64,
    response: u64,
    /// The server's GOAWAY after a REQUEST header failed its checksum.
    checksum_goaway: u64,
}

impl Layout {
    /// The RESPONSE refusing call `call_id`, whose REQUEST body failed its checksum.
    fn data_loss_response(call_id: u64) -> u64 {
        let rejected = keel::codec::FrameError {
            kind: keel::codec::FrameKind::REQUEST,
            call_id,
            flags: 0,
            reason: keel::codec::RejectReason::BodyChecksum {
                stored: 0,
                computed: 0,
            },
        };
        let status = keel::Status::new(StatusCode::DATA_LOSS, rejected.to_string());
        encoded_len(Frame::Response(Response::error(call_id, status, true)))
    }
}

/// The outcome of each of `calls` sequential calls, from the flips the proxy made: the model of
/// what the protocol says happens to a call whose frames, or whose connection's handshake, a flip
/// hits (docs/PROTOCOL.md §13-§15). `flipped(connection, direction, range)` says whether any byte
/// in `range` of that stream was flipped.
fn predict(
    calls: usize,
    layout: &Layout,
    flipped: impl Fn(u64, Direction, std::ops::Range<u64>) -> bool,
) -> Vec<(Expected, usize)> {
    use Direction::{ClientToServer as Up, ServerToClient as Down};
    const HEADER: u64 = 24;
    let mut expected = Vec::with_capacity(calls);
    // The proxy numbers connections in the order the channel opens them, one at a time.
    let mut next_connection = 0;
    // The established connection: its number, and where the next frame starts each way.
    let mut open: Option<(u64, u64, u64)> = None;
    let mut call_id = 0;
    while expected.len() < calls {
        let Some((c, up, down)) = open else {
            // A flip in either handshake fails the attempt; the waiting call takes the next one.
            let c = next_connection;
            next_connection += 1;
            let failed = flipped(c, Up, 0..layout.client_preamble)
                || flipped(c, Down, 0..layout.server_preamble);
            assert!(
                !(failed && flipped(c, Down, 0..8) && c > 0 && flipped(c - 1, Down, 0..8)),
                "two server prefaces in a row corrupted: not modelled (one seed in ten million)"
            );
            if !failed {
                open = Some((c, layout.client_preamble, layout.server_preamble));
                call_id = 0;
            }
            continue;
        };
        call_id += 1;
        let request = up..up + layout.request;
        let next_up = request.end;
        let (result, ran, down_after, still_open) =
            if flipped(c, Up, request.start..request.start + HEADER) {
                // The server closes with GOAWAY(CHECKSUM_ERROR, the call before): this one never
                // ran, unless the GOAWAY itself is hit and the client cannot read it.
                let goaway = down..down + layout.checksum_goaway;
                let outcome = if flipped(c, Down, goaway.clone()) {
                    Outcome::MaybeExecuted
                } else {
                    Outcome::NotExecuted
                };
                (
                    Expected::Failed(StatusCode::UNAVAILABLE, outcome),
                    0,
                    goaway.end,
                    false,
                )
            } else if flipped(c, Up, request.start + HEADER..request.end) {
                // Refused DATA_LOSS, NOT_EXECUTED; a flip in that RESPONSE's header closes the
                // connection and leaves the client unsure; one in its body keeps the flag.
                let refusal = down..down + Layout::data_loss_response(call_id);
                if flipped(c, Down, refusal.start..refusal.start + HEADER) {
                    (
                        Expected::Failed(StatusCode::UNAVAILABLE, Outcome::MaybeExecuted),
                        0,
                        refusal.end,
                        false,
                    )
                } else {
                    (
                        Expected::Failed(StatusCode::DATA_LOSS, Outcome::NotExecuted),
                        0,
                        refusal.end,
                        true,
                    )
                }
            } else {
                let response = down..down + layout.response;
                if flipped(c, Down, response.start..response.start + HEADER) {
                    (
                        Expected::Failed(StatusCode::UNAVAILABLE, Outcome::MaybeExecuted),
                        1,
                        response.end,
                        false,
                    )
                } else if flipped(c, Down, response.start + HEADER..response.end) {
                    (
                        Expected::Failed(StatusCode::DATA_LOSS, Outcome::MaybeExecuted),
                        1,
                        response.end,
                        true,
                    )
                } else {
                    (Expected::Ok, 1, response.end, true)
                }
            };
        expected.push((result, ran));
        open = still_open.then_some((c, next_up, down_after));
    }
    expected
}

/// A counting server behind a proxy flipping about one byte in 20,000 both ways, and a channel
/// to it that makes one attempt per call and waits for connections (a flip in a handshake costs
/// the waiting call one backoff step, not a failure).
async fn through_random_flips(seed: u64) -> (ServerHandle, Runs, Proxy, Channel) {
    let (server, runs) = counting_server(Duration::from_secs(10)).await;
    let proxy = Proxy::start(server.local_addr(), seed).await.unwrap();
    for direction in [Direction::ClientToServer, Direction::ServerToClient] {
        proxy.set_faults(direction, Faults::none().flip_random(0.000_05));
    }
    let channel = Channel::builder(proxy.local_addr())
        .disable_retries()
        .build();
    (server, runs, proxy, channel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_calls_through_random_bit_flips_end_exactly_as_the_seed_dictates() {
    let seed = support::chaos_seed("random flips");
    // Some 90 calls hit, both ways.
    let (server, runs, proxy, channel) = through_random_flips(seed).await;
    let payload = |i: usize| Bytes::from(format!("call {i:05} {}", "x".repeat(40)));
    let mut observed = Vec::new();
    // One call at a time, so each call's frames sit at offsets the model can tell.
    for i in 0..10_000 {
        let options = CallOptions::new().timeout(Duration::from_secs(5));
        let sent = payload(i);
        let result = channel.call("Echo.echo", sent.clone(), options).await;
        observed.push(match result {
            Ok(reply) => {
                assert_eq!(
                    reply.payload, sent,
                    "call {i}: a corrupted value was returned"
                );
                Expected::Ok
            }
            Err(err) => Expected::Failed(err.code(), err.outcome()),
        });
    }
    let layout = Layout {
        client_preamble: client_preamble(),
        server_preamble: server_preamble(),
        request: echo_request_len(&payload(0)),
        response: response_len(&payload(0)),
        checksum_goaway: encoded_len(Frame::GoAway(keel::codec::GoAway::new(
            0,
            keel::codec::GoAwayCode::CHECKSUM_ERROR,
            keel::codec::DecodeError::HeaderChecksum {
                stored: 0,
                computed: 0,
            }
            .to_string(),
        ))),
    };
    let flips = proxy.flips();
    let flipped = |connection: u64, direction: Direction, range: std::ops::Range<u64>| {
        flips.iter().any(|f| {
            f.connection == connection && f.direction == direction && range.contains(&f.offset)
        })
    };
    let expected = predict(observed.len(), &layout, flipped);
    let mut by_kind: HashMap<Expected, usize> = HashMap::new();
    for (i, (seen, (want, ran))) in observed.iter().zip(&expected).enumerate() {
        assert_eq!(seen, want, "call {i} (seed {seed})");
        assert_eq!(
            runs.of(&payload(i)),
            *ran,
            "handler runs of call {i} (seed {seed})"
        );
        *by_kind.entry(*seen).or_default() += 1;
    }
    println!(
        "{} flips over {} connections; calls by outcome: {by_kind:?}",
        flips.len(),
        proxy.accepted()
    );
    assert!(
        by_kind.len() > 2,
        "the seed's flips hit too few kinds of frame to say much: {by_kind:?} (seed {seed})"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_through_random_bit_flips_never_return_a_wrong_value_or_a_false_outcome() {
    let seed = support::chaos_seed("random flips, 32 in flight");
    let (server, runs, proxy, channel) = through_random_flips(seed).await;
    // Which calls share a batch, and so which a flip hits, depends on timing here: what holds
    // for every call is that its outcome is true and no value is wrong.
    let outcomes: Vec<(Bytes, Result<(), Error>)> = futures::stream::iter(0..5_000u32)
        .map(|i| {
            let channel = channel.clone();
            async move {
                let sent = Bytes::from(format!("call {i:05} {}", "x".repeat(40)));
                let options = CallOptions::new()
                    .timeout(Duration::from_secs(5))
                    .idempotent(true);
                let result = channel.call("Echo.echo", sent.clone(), options).await;
                if let Ok(reply) = &result {
                    assert_eq!(
                        reply.payload, sent,
                        "a corrupted value was returned as a success"
                    );
                }
                (sent, result.map(drop))
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let mut failures = 0;
    for (sent, result) in &outcomes {
        let ran = runs.of(sent);
        match result {
            Ok(()) => assert_eq!(ran, 1),
            Err(err) => {
                failures += 1;
                assert!(
                    matches!(
                        (err.code(), err.outcome()),
                        (
                            StatusCode::DATA_LOSS,
                            Outcome::NotExecuted | Outcome::MaybeExecuted
                        ) | (StatusCode::UNAVAILABLE, _)
                    ),
                    "undocumented failure {err:?} (seed {seed})"
                );
                match err.outcome() {
                    Outcome::NotSent | Outcome::NotExecuted => {
                        assert_eq!(ran, 0, "{err:?} but it ran (seed {seed})")
                    }
                    _ => assert!(ran <= 1),
                }
            }
        }
    }
    println!(
        "{failures} of {} failed; {} flips",
        outcomes.len(),
        proxy.flips().len()
    );
    server.shutdown().await;
}

/// A blackhole in `direction`: the call fails UNAVAILABLE once a heartbeat bound passes, and
/// after the blackhole lifts a new connection serves the next call.
///
/// Towards the client, the client hears nothing and declares the connection dead after its bound
/// (2 intervals): MAYBE_EXECUTED, since its request was written. Towards the server, the client
/// still hears the server's PINGs, so it is the server that hears nothing: after its bound (3
/// intervals) it sends GOAWAY(HEARTBEAT_TIMEOUT) with the last call it received, and the client
/// learns, truthfully, that its call never ran: NOT_EXECUTED.
async fn blackhole(direction: Direction, outcome: Outcome, bound: Duration) {
    let (server, runs) = counting_server(HEARTBEAT).await;
    let proxy = Proxy::start(server.local_addr(), support::chaos_seed("blackhole"))
        .await
        .unwrap();
    let channel = channel(proxy.local_addr(), HEARTBEAT);
    assert_eq!(
        channel
            .call("Echo.echo", Bytes::from_static(b"warm"), CallOptions::new())
            .await
            .unwrap()
            .payload,
        "warm"
    );

    proxy.set_faults(direction, Faults::none().blackhole());
    let started = Instant::now();
    let options = CallOptions::new().timeout(Duration::from_secs(5));
    let result = channel
        .call("Echo.echo", Bytes::from_static(b"lost"), options)
        .await;
    let took = started.elapsed();
    assert_failed(&result, StatusCode::UNAVAILABLE, outcome);
    assert!(
        took <= bound + Duration::from_millis(150),
        "{direction:?}: detected after {took:?}"
    );
    if outcome == Outcome::NotExecuted {
        assert_eq!(runs.of(b"lost"), 0);
    }

    proxy.clear_faults();
    let reply = channel
        .call("Echo.echo", Bytes::from_static(b"back"), CallOptions::new())
        .await;
    assert_eq!(reply.unwrap().payload, "back");
    assert_eq!(proxy.accepted(), 2, "a new connection");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackhole_towards_the_server_is_detected_within_the_heartbeat_bound() {
    blackhole(
        Direction::ClientToServer,
        Outcome::NotExecuted,
        3 * HEARTBEAT,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackhole_towards_the_client_is_detected_within_the_heartbeat_bound() {
    blackhole(
        Direction::ServerToClient,
        Outcome::MaybeExecuted,
        2 * HEARTBEAT,
    )
    .await;
}

/// `Echo.sleep`'s arguments, as the example's typed client would encode them.
fn sleep_args(millis: u64) -> Bytes {
    use keel::PayloadCodec;
    keel::Bincode::new().encode(&(millis,)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_fails_pending_calls_at_once_and_a_restart_serves_again() {
    let mut server = ServerProcess::start(support::echo_example(), Vec::<String>::new())
        .await
        .unwrap();
    let channel = channel(server.addr(), Duration::from_secs(1));
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let channel = channel.clone();
            tokio::spawn(async move {
                let options = CallOptions::new().timeout(Duration::from_secs(10));
                channel.call("Echo.sleep", sleep_args(5_000), options).await
            })
        })
        .collect();
    assert!(support::eventually(Duration::from_secs(5), || channel.in_flight() == 4).await);
    let killed = Instant::now();
    server.kill().await.unwrap();
    for call in calls {
        assert_failed(
            &call.await.unwrap(),
            StatusCode::UNAVAILABLE,
            Outcome::MaybeExecuted,
        );
    }
    assert!(
        killed.elapsed() < Duration::from_millis(500),
        "{:?}, deadline was 10 s",
        killed.elapsed()
    );

    server.restart().await.unwrap();
    let reply = channel
        .call("Echo.sleep", sleep_args(1), CallOptions::new())
        .await
        .unwrap();
    assert_eq!(reply.payload, sleep_args(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_is_detected_by_heartbeat_and_recovers_on_sigcont() {
    let server = ServerProcess::start(support::echo_example(), Vec::<String>::new())
        .await
        .unwrap();
    let heartbeat = Duration::from_millis(200);
    let channel = channel(server.addr(), heartbeat);
    channel
        .call("Echo.sleep", sleep_args(1), CallOptions::new())
        .await
        .unwrap();

    server.stop().unwrap();
    let stopped = Instant::now();
    let options = CallOptions::new().timeout(Duration::from_secs(10));
    let result = channel.call("Echo.sleep", sleep_args(1), options).await;
    let took = stopped.elapsed();
    assert_failed(&result, StatusCode::UNAVAILABLE, Outcome::MaybeExecuted);
    assert!(
        took <= 2 * heartbeat + Duration::from_millis(150),
        "detected after {took:?}"
    );

    server.resume().unwrap();
    let reply = channel
        .call("Echo.sleep", sleep_args(1), CallOptions::new())
        .await;
    assert_eq!(reply.unwrap().payload, sleep_args(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_and_slicing_keep_every_call_correct_and_deadlines_exact() {
    let (server, runs) = counting_server(Duration::from_secs(10)).await;
    let proxy = Proxy::start(
        server.local_addr(),
        support::chaos_seed("latency and slicing"),
    )
    .await
    .unwrap();
    let latency = Duration::from_millis(40);
    let faults = Faults::none()
        .latency(latency, Duration::from_millis(10))
        .slice(5, Duration::ZERO);
    proxy.set_faults(Direction::ClientToServer, faults.clone());
    proxy.set_faults(Direction::ServerToClient, faults);
    let channel = channel(proxy.local_addr(), Duration::from_secs(10));
    let replies: Vec<bool> = futures::stream::iter(0..300u32)
        .map(|i| {
            let channel = channel.clone();
            async move {
                let sent = Bytes::from(vec![
                    u8::try_from(i % 256).unwrap();
                    usize::try_from(i).unwrap() * 7
                ]);
                channel
                    .call("Echo.echo", sent.clone(), CallOptions::new())
                    .await
                    .unwrap()
                    .payload
                    == sent
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(replies.iter().all(|&ok| ok));
    assert_eq!(runs.total(), 300);

    // A deadline shorter than the round trip fails at the deadline.
    let started = Instant::now();
    let options = CallOptions::new().timeout(Duration::from_millis(60));
    let result = channel
        .call("Echo.echo", Bytes::from_static(b"too slow"), options)
        .await;
    let took = started.elapsed();
    assert_failed(
        &result,
        StatusCode::DEADLINE_EXCEEDED,
        Outcome::MaybeExecuted,
    );
    assert!(
        took >= Duration::from_millis(60) && took <= Duration::from_millis(110),
        "{took:?}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_at_every_byte_of_a_call_ends_it_with_a_true_outcome() {
    let (server, runs) = counting_server(Duration::from_secs(10)).await;
    let proxy = Proxy::start(
        server.local_addr(),
        support::chaos_seed("reset at every byte"),
    )
    .await
    .unwrap();
    let upto_request = client_preamble() + echo_request_len(b"call 0000") + 4;
    let upto_response = server_preamble() + response_len(b"call 0000") + 4;
    let cases = (0..upto_request)
        .map(|n| (Direction::ClientToServer, n, DropMode::Reset))
        .chain((0..upto_response).map(|n| (Direction::ServerToClient, n, DropMode::Reset)))
        .chain(
            (0..upto_request)
                .step_by(7)
                .map(|n| (Direction::ClientToServer, n, DropMode::Close)),
        )
        .chain(
            (0..upto_response)
                .step_by(7)
                .map(|n| (Direction::ServerToClient, n, DropMode::Close)),
        );
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, (direction, n, mode)) in cases.enumerate() {
        proxy.clear_faults();
        proxy.set_faults(direction, Faults::none().drop_after(n, mode));
        let payload = Bytes::from(format!("call {i:04}"));
        let channel = channel(proxy.local_addr(), Duration::from_secs(10));
        let options = CallOptions::new().timeout(Duration::from_secs(3));
        let result = channel.call("Echo.echo", payload.clone(), options).await;
        let ran = runs.of(&payload);
        let label = match &result {
            Ok(reply) => {
                assert_eq!(reply.payload, payload);
                assert_eq!(ran, 1);
                "ok".to_owned()
            }
            Err(err) => {
                assert_eq!(
                    err.code(),
                    StatusCode::UNAVAILABLE,
                    "{direction:?} cut at {n}: {err:?}"
                );
                match err.outcome() {
                    // Never claimed unless true.
                    Outcome::NotSent | Outcome::NotExecuted => {
                        assert_eq!(
                            ran,
                            0,
                            "{direction:?} cut at {n}: claimed {} but ran",
                            err.outcome()
                        )
                    }
                    Outcome::MaybeExecuted => assert!(ran <= 1),
                    other => panic!("{direction:?} cut at {n}: outcome {other}"),
                }
                err.outcome().to_string()
            }
        };
        *seen.entry(label).or_default() += 1;
        // Cuts inside the handshake are NOT_SENT: no request was written.
        let preamble = match direction {
            Direction::ClientToServer => client_preamble(),
            Direction::ServerToClient => server_preamble(),
        };
        if n < preamble {
            assert!(
                matches!(&result, Err(e) if e.outcome() == Outcome::NotSent),
                "{direction:?} cut at {n} inside the handshake: {result:?}"
            );
        }
    }
    println!("outcomes over every cut: {seen:?}");
    assert!(
        seen.contains_key("NOT_SENT")
            && seen.contains_key("MAYBE_EXECUTED")
            && seen.contains_key("ok")
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_through_the_proxy_loses_no_call() {
    let (server, runs) = counting_server(Duration::from_secs(10)).await;
    let proxy = Proxy::start(server.local_addr(), support::chaos_seed("drain"))
        .await
        .unwrap();
    proxy.set_faults(
        Direction::ServerToClient,
        Faults::none().latency(Duration::from_millis(20), Duration::ZERO),
    );
    let channel = channel(proxy.local_addr(), Duration::from_secs(10));
    channel
        .call(
            "Echo.echo",
            Bytes::from_static(b"connect first"),
            CallOptions::new(),
        )
        .await
        .unwrap();
    let calls: Vec<_> = (0..400u32)
        .map(|i| {
            let channel = channel.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(u64::from(i % 40))).await;
                let payload = Bytes::from(format!("drain {i}"));
                (
                    payload.clone(),
                    channel.call("Echo.echo", payload, CallOptions::new()).await,
                )
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(15)).await;
    server.shutdown().await;
    let (mut ok, mut refused) = (0, 0);
    for call in calls {
        let (payload, result) = call.await.unwrap();
        match result {
            Ok(reply) => {
                assert_eq!(reply.payload, payload);
                assert_eq!(runs.of(&payload), 1);
                ok += 1;
            }
            Err(err) => {
                // Refused, never run: safe to send again anywhere.
                assert!(
                    matches!(err.outcome(), Outcome::NotExecuted | Outcome::NotSent),
                    "{err:?}"
                );
                assert_eq!(runs.of(&payload), 0, "{err:?}");
                refused += 1;
            }
        }
    }
    println!("{ok} completed, {refused} refused before running");
    assert!(ok > 0);
    assert_eq!(ok + refused, 400);
}

/// Resident memory of this process, in KiB (`VmRSS` of /proc/self/status).
fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Five minutes (`KEEL_SOAK_SECS` to change) of mixed faults at a steady 200 calls/s of
/// non-idempotent calls. Run with
/// `cargo test --release --test chaos -- --ignored soak --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a 5-minute soak; run it by name"]
async fn soak_mixed_faults_at_steady_load() {
    use rand::{Rng, SeedableRng};
    let seed = support::chaos_seed("soak");
    let secs: u64 = std::env::var("KEEL_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    // One run counter per call, indexed by the call's number: bookkeeping that stays small, so
    // the memory samples show keel and not the test.
    let calls = usize::try_from(secs * 200 + 1000).unwrap();
    let runs: Arc<Vec<std::sync::atomic::AtomicU8>> = Arc::new(
        (0..calls)
            .map(|_| std::sync::atomic::AtomicU8::new(0))
            .collect(),
    );
    let record = Arc::clone(&runs);
    let server = Server::builder()
        .heartbeat_interval(HEARTBEAT)
        .register("Soak.once", move |_ctx: CallContext, payload: Bytes| {
            let index =
                usize::try_from(u64::from_be_bytes(payload[..8].try_into().unwrap())).unwrap();
            record[index].fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move { Ok(payload) }
        })
        .build()
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let proxy = Arc::new(Proxy::start(server.local_addr(), seed).await.unwrap());
    // With the retry layer on: the soak checks its safety rule under every fault.
    let channel = Channel::builder(proxy.local_addr())
        .heartbeat_interval(HEARTBEAT)
        .build();
    let end = Instant::now() + Duration::from_secs(secs);

    // Faults change every 3 s, chosen by the seed.
    let chaos = {
        let proxy = Arc::clone(&proxy);
        tokio::spawn(async move {
            let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
            while Instant::now() < end {
                proxy.clear_faults();
                proxy.refuse_new(false);
                proxy.resume();
                let dir = if rng.random::<bool>() {
                    Direction::ClientToServer
                } else {
                    Direction::ServerToClient
                };
                let fault = rng.random_range(0..8);
                match fault {
                    0 => {}
                    1 => proxy.set_faults(
                        dir,
                        Faults::none()
                            .latency(Duration::from_millis(30), Duration::from_millis(30)),
                    ),
                    2 => proxy.set_faults(dir, Faults::none().slice(3, Duration::ZERO)),
                    3 => proxy.set_faults(dir, Faults::none().flip_random(0.000_1)),
                    4 => proxy.set_faults(dir, Faults::none().blackhole()),
                    5 => proxy.set_faults(
                        dir,
                        Faults::none().drop_after(rng.random_range(0..20_000), DropMode::Reset),
                    ),
                    6 => {
                        proxy.refuse_new(true);
                        proxy.cut_all(DropMode::Reset);
                    }
                    _ => proxy.pause(),
                }
                println!(
                    "t={:.1}s fault {fault} {dir:?}",
                    (Instant::now() + Duration::from_secs(secs))
                        .saturating_duration_since(end)
                        .as_secs_f64()
                );
                tokio::time::sleep(Duration::from_secs(if fault == 4 || fault == 7 {
                    1
                } else {
                    3
                }))
                .await;
            }
            proxy.clear_faults();
            proxy.refuse_new(false);
            proxy.resume();
        })
    };

    let mut rss = vec![(0u64, resident_kib())];
    let mut results: HashMap<String, usize> = HashMap::new();
    // The result of each call, as an index into `names`: compact, like `runs`.
    let mut names: Vec<String> = Vec::new();
    let mut label_of_call: Vec<u8> = vec![u8::MAX; calls];
    let mut ticker = tokio::time::interval(Duration::from_millis(5));
    let mut in_flight = futures::stream::FuturesUnordered::new();
    let started = Instant::now();
    let mut i = 0u64;
    while Instant::now() < end || !in_flight.is_empty() {
        tokio::select! {
            _ = ticker.tick(), if Instant::now() < end => {
                let payload = Bytes::copy_from_slice(&i.to_be_bytes());
                let index = i;
                i += 1;
                let channel = channel.clone();
                in_flight.push(async move {
                    let result = channel.call("Soak.once", payload, CallOptions::new().timeout(Duration::from_secs(2))).await;
                    (index, result)
                });
                if i % 6000 == 0 {
                    rss.push((started.elapsed().as_secs(), resident_kib()));
                }
            }
            Some((index, result)) = in_flight.next() => {
                let label = match result {
                    Ok(_) => "ok".to_owned(),
                    Err(err) => format!("{} {}", err.code(), err.outcome()),
                };
                let code = names.iter().position(|n| *n == label).unwrap_or_else(|| {
                    names.push(label.clone());
                    names.len() - 1
                });
                label_of_call[usize::try_from(index).unwrap()] = u8::try_from(code).unwrap();
                *results.entry(label).or_default() += 1;
            }
        }
    }
    chaos.await.unwrap();
    rss.push((started.elapsed().as_secs(), resident_kib()));
    let made = usize::try_from(i).unwrap();
    let doubled: Vec<usize> = (0..made)
        .filter(|&i| runs[i].load(std::sync::atomic::Ordering::SeqCst) > 1)
        .collect();
    let double_runs = doubled.len();
    for &i in doubled.iter().take(30) {
        let label = names
            .get(usize::from(label_of_call[i]))
            .map_or("unfinished", String::as_str);
        println!(
            "double run: call {i} (sent at {:.2}s) ended {label}",
            i as f64 / 200.0
        );
    }
    println!("calls made: {made}");
    let mut labels: Vec<_> = results.iter().collect();
    labels.sort();
    for (label, n) in labels {
        println!("  {label}: {n}");
    }
    println!("handler double runs (non-idempotent calls): {double_runs}");
    println!("resident memory (s, KiB): {rss:?}");
    assert_eq!(double_runs, 0);
    assert!(results.get("ok").copied().unwrap_or(0) > made / 2);
    // Memory settles: the last sample is within 25% (plus 16 MiB of allocator slack) of the
    // sample at the end of the first minute.
    if let (Some(&(_, minute)), Some(&(_, last))) = (rss.get(1), rss.last()) {
        assert!(
            last <= minute + minute / 4 + 16 * 1024,
            "resident memory kept growing: {rss:?}"
        );
    }
    server.shutdown().await;
}
