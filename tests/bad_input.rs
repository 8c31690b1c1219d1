//! The runtime rows of docs/PROTOCOL.md §15 and the server's reaction to raw bad bytes, over real
//! TCP. Each names what the peer sends, what comes back, and that a well-behaved client on another
//! connection is served throughout.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use keel::codec::{
    Budget, Cancel, Frame, GoAway, GoAwayCode, MAGIC, MethodName, Request, Response, Settings,
};
use keel::core::CallContext;
use keel::{CallOptions, Channel, Outcome, ServerHandle, StatusCode};
use support::{Counter, RawClient, echo_builder, start};
use tokio_util::codec::Encoder;

fn echo(id: u64, payload: &'static [u8]) -> Frame {
    Frame::Request(Request::new(
        id,
        MethodName::from_static("Echo.echo"),
        Bytes::from_static(payload),
    ))
}

fn expect_response(item: Option<Result<Frame, keel::codec::FrameError>>) -> Response {
    match item {
        Some(Ok(Frame::Response(r))) => r,
        other => panic!("expected a RESPONSE, got {other:?}"),
    }
}

/// The GOAWAY a raw connection ends with, and that it then closes.
async fn expect_goaway_and_close(raw: &mut RawClient) -> GoAway {
    support::first_goaway(&raw.recv_until_closed().await)
}

/// A well-behaved client calling in a loop while a test misbehaves on other connections; its
/// calls must all succeed.
struct Bystander {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Bystander {
    fn start(server: &ServerHandle) -> Self {
        let channel = Channel::builder(server.local_addr()).build();
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let (s, o) = (Arc::clone(&stop), Arc::clone(&ok));
        let task = tokio::spawn(async move {
            while !s.load(Ordering::SeqCst) {
                let reply = channel
                    .call(
                        "Echo.echo",
                        Bytes::from_static(b"still here"),
                        CallOptions::new(),
                    )
                    .await
                    .expect("the bystander's call succeeds");
                assert_eq!(reply.payload, "still here");
                o.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        Self { stop, ok, task }
    }

    async fn finish(self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap();
        self.ok.load(Ordering::SeqCst)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_bad_magic_get_a_goaway_and_a_close() {
    let server = start(echo_builder()).await;
    let bystander = Bystander::start(&server);
    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &[0x8B, b'K', b'E', b'L', 0x0A][..],
        &[0u8; 64][..],
    ] {
        let mut raw = RawClient::connect(server.local_addr()).await;
        raw.send_raw(garbage).await;
        let goaway = expect_goaway_and_close(&mut raw).await;
        assert_eq!(goaway.code, GoAwayCode::PROTOCOL_ERROR);
        assert!(
            goaway.message.starts_with("bad magic"),
            "{}",
            goaway.message
        );
    }
    assert!(bystander.finish().await > 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_with_a_bad_crc_closes_only_its_connection() {
    let server = start(echo_builder()).await;
    let bystander = Bystander::start(&server);
    let (mut raw, _) = RawClient::handshake(server.local_addr(), Settings::default()).await;
    raw.send(echo(1, b"fine")).await;
    assert!(expect_response(raw.recv().await.unwrap()).status.is_ok());
    let mut bytes = BytesMut::new();
    raw.encoder.encode(echo(2, b"corrupt"), &mut bytes).unwrap();
    bytes[10] ^= 0x20; // inside the call id
    raw.send_raw(&bytes).await;
    let goaway = expect_goaway_and_close(&mut raw).await;
    assert_eq!(
        (goaway.code, goaway.last_call_id),
        (GoAwayCode::CHECKSUM_ERROR, 1)
    );
    assert!(bystander.finish().await > 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_length_of_four_gib_is_refused_before_allocation() {
    let server = start(echo_builder()).await;
    let bystander = Bystander::start(&server);
    let (mut raw, _) = RawClient::handshake(server.local_addr(), Settings::default()).await;
    // A REQUEST header claiming a 0xFFFFFFFF-byte body, with an honest header CRC.
    let mut header = BytesMut::new();
    header.put_u32(u32::MAX);
    header.put_u8(0x03);
    header.put_u8(0);
    header.put_u16(0);
    header.put_u64(7);
    header.put_u32(0);
    let crc = crc32fast::hash(&header);
    header.put_u32(crc);
    raw.send_raw(&header).await;
    let items = raw.recv_until_closed().await;
    let response = expect_response(items.first().cloned());
    assert_eq!(
        (response.call_id, response.status.code()),
        (7, StatusCode::RESOURCE_EXHAUSTED)
    );
    assert!(response.not_executed);
    assert!(
        matches!(items.last(), Some(Ok(Frame::GoAway(g))) if g.code == GoAwayCode::FRAME_TOO_LARGE),
        "{items:?}"
    );
    assert!(bystander.finish().await > 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_connections_that_never_finish_the_handshake_do_not_stop_service() {
    let server = start(echo_builder().handshake_timeout(Duration::from_millis(500))).await;
    let bystander = Bystander::start(&server);
    let mut stalled = Vec::new();
    for i in 0..200 {
        let mut raw = RawClient::connect(server.local_addr()).await;
        // Half of them send part of the preface, half send nothing at all.
        if i % 2 == 0 {
            raw.send_raw(&MAGIC[..5]).await;
        }
        stalled.push(raw);
    }
    let started = Instant::now();
    for raw in &mut stalled {
        let goaway = expect_goaway_and_close(raw).await;
        assert_eq!(goaway.code, GoAwayCode::HANDSHAKE_TIMEOUT);
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(
        bystander.finish().await > 10,
        "the well-behaved client kept being served"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_scoped_faults_fail_only_their_call() {
    let ran = Counter::default();
    let count = ran.clone();
    let server = start(
        echo_builder().register("Count.me", move |_ctx: CallContext, p: Bytes| {
            count.bump();
            async move { Ok(p) }
        }),
    )
    .await;
    let (mut raw, _) = RawClient::handshake(server.local_addr(), Settings::default()).await;

    // Body CRC mismatch: DATA_LOSS, never run.
    let mut bytes = BytesMut::new();
    let count_me = |id| {
        Frame::Request(Request::new(
            id,
            MethodName::from_static("Count.me"),
            Bytes::from_static(b"abc"),
        ))
    };
    raw.encoder.encode(count_me(1), &mut bytes).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    raw.send_raw(&bytes).await;
    let r = expect_response(raw.recv().await.unwrap());
    assert_eq!(
        (r.call_id, r.status.code(), r.not_executed),
        (1, StatusCode::DATA_LOSS, true)
    );

    // Budget 0: expired on arrival, never run.
    let mut expired = Request::new(2, MethodName::from_static("Count.me"), Bytes::new());
    expired.budget = Budget::from_micros(0);
    raw.send(Frame::Request(expired)).await;
    let r = expect_response(raw.recv().await.unwrap());
    assert_eq!(
        (r.call_id, r.status.code(), r.not_executed),
        (2, StatusCode::DEADLINE_EXCEEDED, true)
    );

    // Malformed envelope: a method name that is not UTF-8.
    let mut body = Vec::new();
    body.put_u64(u64::MAX);
    body.put_u16(2);
    body.put_slice(&[0xC3, 0x28]);
    body.put_u32(0);
    let mut header = BytesMut::new();
    header.put_u32(u32::try_from(body.len()).unwrap());
    header.put_slice(&[0x03, 0, 0, 0]);
    header.put_u64(3);
    header.put_u32(crc32fast::hash(&body));
    let crc = crc32fast::hash(&header);
    header.put_u32(crc);
    header.put_slice(&body);
    raw.send_raw(&header).await;
    let r = expect_response(raw.recv().await.unwrap());
    assert_eq!(
        (r.call_id, r.status.code(), r.not_executed),
        (3, StatusCode::INVALID_ARGUMENT, true)
    );

    // The connection lives on, and none of the three ran.
    raw.send(count_me(4)).await;
    let r = expect_response(raw.recv().await.unwrap());
    assert_eq!(
        (r.call_id, r.status.code(), &r.payload[..]),
        (4, StatusCode::OK, &b"abc"[..])
    );
    assert_eq!(ran.get(), 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_cancels_for_calls_that_never_ran_closes_the_connection() {
    let server = start(echo_builder().cancel_flood_limit(20, 90)).await;
    let bystander = Bystander::start(&server);
    let (mut raw, _) = RawClient::handshake(server.local_addr(), Settings::default()).await;
    // Each REQUEST is cancelled in the same write, before the server can start it.
    let mut bytes = BytesMut::new();
    for id in 1..=100u64 {
        raw.encoder.encode(echo(id, b"x"), &mut bytes).unwrap();
        raw.encoder
            .encode(Frame::Cancel(Cancel { call_id: id }), &mut bytes)
            .unwrap();
    }
    raw.send_raw(&bytes).await;
    let items = raw.recv_until_closed().await;
    let goaway = support::first_goaway(&items);
    assert_eq!(goaway.code, GoAwayCode::TOO_MANY_CANCELS);
    // Exactly one RESPONSE for every call at or below the last call id (§7), the call whose
    // CANCEL tripped the limit included: cancelled before it started, so NOT_EXECUTED.
    let mut answered: Vec<u64> = items
        .iter()
        .filter_map(|item| match item {
            Ok(Frame::Response(r)) => {
                assert_eq!(
                    (r.status.code(), r.not_executed),
                    (StatusCode::CANCELLED, true),
                    "call {}",
                    r.call_id
                );
                Some(r.call_id)
            }
            _ => None,
        })
        .collect();
    answered.sort_unstable();
    assert!(goaway.last_call_id >= 21, "{goaway:?}");
    assert_eq!(answered, (1..=goaway.last_call_id).collect::<Vec<_>>());
    assert!(bystander.finish().await > 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_silent_past_the_bound_is_closed_by_the_server() {
    let server = start(echo_builder().heartbeat_interval(Duration::from_millis(100))).await;
    let settings = Settings {
        heartbeat_interval_ms: 100,
        ..Settings::default()
    };
    let (mut raw, _) = RawClient::handshake(server.local_addr(), settings).await;
    let started = Instant::now();
    // Read without ever answering the server's PINGs.
    let items = raw.recv_until_closed().await;
    let took = started.elapsed();
    assert!(
        items.iter().any(|i| matches!(i, Ok(Frame::Ping(_)))),
        "{items:?}"
    );
    assert!(
        matches!(items.last(), Some(Ok(Frame::GoAway(g))) if g.code == GoAwayCode::HEARTBEAT_TIMEOUT),
        "{items:?}"
    );
    // The server's bound is 3 intervals.
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(600),
        "{took:?}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_are_answered_even_while_calls_are_queued() {
    let server = start(echo_builder()).await;
    let (mut raw, _) = RawClient::handshake(server.local_addr(), Settings::default()).await;
    let mut bytes = BytesMut::new();
    for id in 1..=50 {
        raw.encoder.encode(echo(id, b"queued"), &mut bytes).unwrap();
    }
    raw.encoder
        .encode(
            Frame::Ping(keel::codec::Ping {
                opaque: *b"liveness",
            }),
            &mut bytes,
        )
        .unwrap();
    raw.send_raw(&bytes).await;
    let mut pong_at = None;
    let mut responses = 0;
    while responses < 50 {
        match raw.recv().await.unwrap() {
            Some(Ok(Frame::Pong(p))) => {
                assert_eq!(&p.opaque, b"liveness");
                pong_at = Some(responses);
            }
            Some(Ok(Frame::Response(_))) => responses += 1,
            other => panic!("{other:?}"),
        }
    }
    // All 50 requests and the PING arrived in one read: the PONG overtakes their responses.
    assert_eq!(pong_at, Some(0), "PONG came after {pong_at:?} responses");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_for_a_call_never_sent_closes_the_client_connection() {
    // Answers every REQUEST with a RESPONSE for call 99, which the client never sent.
    let addr = support::fake_server(Settings::default(), |frame| match frame {
        Frame::Request(_) => vec![Frame::Response(Response::ok(99, Bytes::new()))],
        _ => Vec::new(),
    })
    .await;
    let channel = Channel::builder(addr).build();
    let err = channel
        .call("Echo.echo", Bytes::new(), CallOptions::new())
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.outcome()),
        (StatusCode::UNAVAILABLE, Outcome::MaybeExecuted)
    );
    assert!(
        matches!(
            std::error::Error::source(&err)
                .and_then(|s| s.downcast_ref::<keel::client::ConnectionError>()),
            Some(keel::client::ConnectionError::UnknownCallId {
                call_id: 99,
                last_sent: 1
            })
        ),
        "{err:?}"
    );
}

/// Every `file::name` that docs/PROTOCOL.md §15 gives as a test exists in that file, and every row
/// checked by a runtime names one (the codec's rows are checked by the codec's own suite).
#[test]
fn every_runtime_row_of_the_bad_input_table_names_a_test_that_exists() {
    let protocol = include_str!("../docs/PROTOCOL.md");
    let files = [
        ("calls", include_str!("calls.rs")),
        ("faults", include_str!("faults.rs")),
        ("bad_input", include_str!("bad_input.rs")),
        ("service", include_str!("service.rs")),
        ("overload", include_str!("overload.rs")),
        ("memory_bounds", include_str!("memory_bounds.rs")),
    ];
    let table = protocol
        .split_once("## 15. Bad input")
        .and_then(|(_, rest)| rest.split_once("## 16."))
        .unwrap()
        .0;
    let mut checked = 0;
    for row in table
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| #"))
    {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (Some(checked_by), Some(test_cell)) = (cells.get(3), cells.get(7)) else {
            continue;
        };
        let names: Vec<&str> = test_cell
            .split(',')
            .map(|n| n.trim().trim_matches('`'))
            .filter(|n| n.contains("::"))
            .collect();
        let runtime_row = !checked_by.starts_with("codec");
        if runtime_row && !test_cell.contains("#[service]") {
            assert!(
                !names.is_empty(),
                "runtime row without an end-to-end test: {row}"
            );
        }
        for name in names {
            let (file, function) = name.split_once("::").unwrap();
            let source = files
                .iter()
                .find(|(f, _)| *f == file)
                .unwrap_or_else(|| panic!("PROTOCOL.md names unknown test file {file}"))
                .1;
            assert!(
                source.contains(&format!("fn {function}()")),
                "PROTOCOL.md names `{name}`, which tests/{file}.rs does not have"
            );
            checked += 1;
        }
    }
    assert!(checked >= 14, "only {checked} end-to-end tests named");
}

/// A frame's bytes as a peer may send them, valid or not: the 24-byte header with both CRCs,
/// then `body`.
fn raw_frame(kind: u8, call_id: u64, body: &[u8]) -> Vec<u8> {
    let mut header = BytesMut::new();
    header.put_u32(u32::try_from(body.len()).unwrap());
    header.put_u8(kind);
    header.put_u8(0);
    header.put_u16(0);
    header.put_u64(call_id);
    header.put_u32(crc32fast::hash(body));
    let crc = crc32fast::hash(&header);
    header.put_u32(crc);
    header.extend_from_slice(body);
    header.to_vec()
}

/// A server played by hand for one connection: it reads the client's preface and HELLO, answers
/// with `answer` (raw bytes), then returns every frame the client sends until it closes.
async fn raw_server(
    answer: Vec<u8>,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<Vec<Frame>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_util::codec::Decoder;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut io, _) = listener.accept().await.unwrap();
        let mut decoder = keel::codec::FrameDecoder::new(keel::codec::Role::Server);
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        let mut answered = false;
        let read = async {
            loop {
                while let Ok(Some(Ok(frame))) = decoder.decode(&mut buf) {
                    frames.push(frame);
                }
                if !answered && frames.iter().any(|f| matches!(f, Frame::Hello(_))) {
                    io.write_all(&answer).await.unwrap();
                    answered = true;
                }
                if io.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                    return;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .expect("the client closed the connection within 5 s");
        frames
    });
    (addr, task)
}

/// HELLO_ACK body: `version`, then the settings as (id, value) pairs.
fn hello_ack_body(version: u16, settings: &[(u16, u32)]) -> Vec<u8> {
    let mut body = BytesMut::new();
    body.put_u16(version);
    body.put_u16(u16::try_from(settings.len()).unwrap());
    for &(id, value) in settings {
        body.put_u16(id);
        body.put_u32(value);
    }
    body.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_answers_a_bad_handshake_with_the_documented_goaway() {
    let with_preface = |frame: Vec<u8>| [&MAGIC[..], &frame].concat();
    let cases = [
        (
            "HELLO_ACK choosing version 2",
            with_preface(raw_frame(0x02, 0, &hello_ack_body(2, &[]))),
            GoAwayCode::UNSUPPORTED_VERSION,
        ),
        (
            "HELLO_ACK with MAX_FRAME_SIZE twice",
            with_preface(raw_frame(
                0x02,
                0,
                &hello_ack_body(1, &[(1, 65_536), (1, 65_536)]),
            )),
            GoAwayCode::PROTOCOL_ERROR,
        ),
        (
            "a PING before the HELLO_ACK",
            with_preface(raw_frame(0x06, 0, b"12345678")),
            GoAwayCode::PROTOCOL_ERROR,
        ),
        (
            "an HTTP answer (bad preface)",
            b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec(),
            GoAwayCode::PROTOCOL_ERROR,
        ),
    ];
    for (case, answer, code) in cases {
        let (addr, server) = raw_server(answer).await;
        let channel = Channel::builder(addr).wait_for_ready(false).build();
        let err = channel
            .call("Echo.echo", Bytes::new(), CallOptions::new())
            .await
            .unwrap_err();
        assert_eq!(
            (err.code(), err.outcome()),
            (StatusCode::UNAVAILABLE, Outcome::NotSent),
            "{case}"
        );
        drop(channel);
        let frames = server.await.unwrap();
        let goaways: Vec<&GoAway> = frames
            .iter()
            .filter_map(|f| match f {
                Frame::GoAway(g) => Some(g),
                _ => None,
            })
            .collect();
        assert!(
            matches!(goaways.as_slice(), [g] if g.code == code && g.last_call_id == 0),
            "{case}: the client sent {frames:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_does_not_speak_keel_fails_calls_at_once() {
    // An HTTP server: every connection gets the same answer to keel's preface.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let attempts = Counter::default();
    let accepted = attempts.clone();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut io, _)) = listener.accept().await {
            accepted.bump();
            tokio::spawn(async move {
                let mut request = [0u8; 64];
                let _ = io.read(&mut request).await;
                let _ = io
                    .write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    // Wait-for-ready, with a long deadline: a configuration error must not spend it.
    let channel = Channel::builder(addr).build();
    let started = Instant::now();
    let err = channel
        .call(
            "Echo.echo",
            Bytes::new(),
            CallOptions::new().timeout(Duration::from_secs(10)),
        )
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        (err.code(), err.outcome()),
        (StatusCode::UNAVAILABLE, Outcome::NotSent)
    );
    assert!(
        err.to_string().contains(&format!(
            "the peer at {addr} is not a keel server: bad magic"
        )),
        "{err}"
    );
    let cause = std::error::Error::source(&err)
        .and_then(|c| c.downcast_ref::<keel::client::NoConnection>())
        .and_then(keel::client::NoConnection::last_failure)
        .expect("a NoConnection cause with the failed attempt");
    assert!(cause.is_incompatible_peer(), "{cause:?}");
    // Two attempts, one backoff step apart (once could be a corrupted byte); the next call fails
    // at once, and the channel keeps reconnecting with backoff, not in a loop.
    assert_eq!(attempts.get(), 2);
    let started = Instant::now();
    let again = channel
        .call("Echo.echo", Bytes::new(), CallOptions::new())
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(50));
    assert_eq!(again.outcome(), Outcome::NotSent);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(attempts.get() <= 3, "{} attempts", attempts.get());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_announcing_a_1_ms_heartbeat_is_pinged_at_the_minimum_and_kept_alive() {
    let server = start(echo_builder()).await;
    let settings = Settings {
        heartbeat_interval_ms: 1,
        ..Settings::default()
    };
    let (mut raw, _) = RawClient::handshake(server.local_addr(), settings).await;
    // Answer every PING for 1 s, sending nothing else: the server's only traffic is its PINGs.
    let mut pings = 0;
    let until = tokio::time::Instant::now() + Duration::from_secs(1);
    while tokio::time::Instant::now() < until {
        let item = tokio::time::timeout_at(until, raw.recv()).await;
        match item {
            Err(_elapsed) => break,
            Ok(Ok(Some(Ok(Frame::Ping(ping))))) => {
                pings += 1;
                raw.send(Frame::Pong(ping.pong())).await;
            }
            Ok(other) => panic!("the server sent {other:?} to a peer answering every PING"),
        }
    }
    // One PING per 100 ms of silence (the minimum), not one per millisecond.
    assert!((5..=11).contains(&pings), "{pings} PINGs in 1 s");
    // Still open and serving.
    raw.send(echo(1, b"alive")).await;
    loop {
        match raw.recv().await.unwrap().unwrap() {
            Ok(Frame::Ping(ping)) => raw.send(Frame::Pong(ping.pong())).await,
            Ok(Frame::Response(r)) => {
                assert_eq!((r.call_id, r.payload.as_ref()), (1, &b"alive"[..]));
                break;
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pong_overtakes_responses_queued_for_a_peer_that_stopped_reading() {
    const BIG: usize = 256 * 1024;
    let ran = Counter::default();
    let count = ran.clone();
    let server = start(echo_builder().register(
        "Echo.big",
        move |_ctx: CallContext, _payload: Bytes| {
            count.bump();
            async move { Ok(Bytes::from(vec![7u8; BIG])) }
        },
    ))
    .await;
    // A small receive window, so little of the 20 MiB of responses fits in the kernel's buffers
    // and most of it waits in the server's write queue.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    let io = socket.connect(server.local_addr()).await.unwrap();
    let mut raw = RawClient {
        io,
        decoder: keel::codec::FrameDecoder::new(keel::codec::Role::Client),
        encoder: keel::codec::FrameEncoder::new(),
        buf: BytesMut::new(),
    };
    raw.send(Frame::Hello(keel::codec::Hello::new(Settings::default())))
        .await;
    match raw.recv().await.unwrap() {
        Some(Ok(Frame::HelloAck(ack))) => raw.encoder.set_peer_settings(ack.settings),
        other => panic!("{other:?}"),
    }
    // 80 calls whose 256 KiB responses the client does not read yet.
    let mut bytes = BytesMut::new();
    for id in 1..=80 {
        let request = Request::new(id, MethodName::from_static("Echo.big"), Bytes::new());
        raw.encoder
            .encode(Frame::Request(request), &mut bytes)
            .unwrap();
    }
    raw.send_raw(&bytes).await;
    assert!(support::eventually(Duration::from_secs(5), || ran.get() >= 8).await);
    // Let the responses reach the write queue. (Were they late, the PONG would only have an
    // easier race: this wait makes the test sharper, never flaky.)
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Backpressure: with 1 MiB unsent (4 responses) the server stops starting handlers until
    // the client reads; only what the kernel took (some 17 responses) ran besides.
    let ran_unread = ran.get();
    println!("{ran_unread} of 80 handlers ran while the client read nothing");
    assert!(ran_unread <= 40, "{ran_unread} handlers ran");
    raw.send(Frame::Ping(keel::codec::Ping {
        opaque: *b"stopped?",
    }))
    .await;
    let mut before_pong = None;
    let mut responses = 0;
    while responses < 80 || before_pong.is_none() {
        match raw.recv().await.unwrap() {
            Some(Ok(Frame::Pong(p))) => {
                assert_eq!(&p.opaque, b"stopped?");
                before_pong = Some(responses);
            }
            Some(Ok(Frame::Response(r))) => {
                assert_eq!(r.payload.len(), BIG);
                responses += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    // Only what the kernel had already taken (Linux's default send buffer is at most 4 MiB, plus
    // the 64 KiB window: some 17 responses) and the rest of the frame being written may go first;
    // before the fix, all 80 did. Half of them is the bound, for kernels that buffer more.
    let before_pong = before_pong.unwrap();
    println!("{before_pong} of 80 responses arrived before the PONG");
    assert!(
        before_pong <= 40,
        "the PONG came after {before_pong} of the 80 queued responses"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_ends_inside_the_preface_or_a_frame_is_closed_without_a_goaway() {
    use tokio::io::AsyncWriteExt;
    let server = start(echo_builder()).await;
    let bystander = Bystander::start(&server);
    // Inside the preface.
    let mut raw = RawClient::connect(server.local_addr()).await;
    raw.send_raw(&MAGIC[..5]).await;
    raw.io.shutdown().await.unwrap();
    assert!(
        raw.recv_until_closed().await.is_empty(),
        "nothing, not even a GOAWAY"
    );
    // Inside a frame, after the handshake.
    let (mut raw, _) = RawClient::handshake(server.local_addr(), Settings::default()).await;
    let mut bytes = BytesMut::new();
    raw.encoder
        .encode(echo(1, b"cut short"), &mut bytes)
        .unwrap();
    raw.send_raw(&bytes[..10]).await;
    raw.io.shutdown().await.unwrap();
    assert!(
        raw.recv_until_closed().await.is_empty(),
        "nothing, not even a GOAWAY"
    );
    assert!(bystander.finish().await > 0);
    server.shutdown().await;
}
