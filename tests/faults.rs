//! Faults over real TCP on 127.0.0.1: a server stopped mid-call, a peer gone silent, a graceful
//! drain, connect failures and reconnects. Each asserts status, outcome and timing.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use keel::client::ConnectionError;
use keel::codec::{Frame, GoAwayCode, MethodName, Request, Settings};
use keel::core::CallContext;
use keel::{CallOptions, Channel, Outcome, Server, StatusCode};
use support::{Counter, RawClient, echo_builder, eventually, start};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// A server whose `Slow.hold` handlers count their starts and wait until released.
fn holding_server() -> (keel::server::ServerBuilder, Counter, Arc<Notify>) {
    let started = Counter::default();
    let release = Arc::new(Notify::new());
    let (count, gate) = (started.clone(), Arc::clone(&release));
    let builder = echo_builder().register("Slow.hold", move |_ctx: CallContext, payload: Bytes| {
        count.bump();
        let gate = Arc::clone(&gate);
        async move {
            gate.notified().await;
            Ok(payload)
        }
    });
    (builder, started, release)
}

fn spawn_calls(
    channel: &Channel,
    n: usize,
    method: &'static str,
) -> Vec<tokio::task::JoinHandle<Result<keel::Reply, keel::Error>>> {
    (0..n)
        .map(|i| {
            let channel = channel.clone();
            tokio::spawn(async move {
                channel
                    .call(
                        method,
                        Bytes::from(vec![u8::try_from(i).unwrap(); 8]),
                        CallOptions::new(),
                    )
                    .await
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_fails_every_pending_call_within_one_heartbeat_bound() {
    let (builder, started, _release) = holding_server();
    let server = start(builder).await;
    let heartbeat = Duration::from_millis(200);
    let channel = Channel::builder(server.local_addr())
        .heartbeat_interval(heartbeat)
        .build();
    let calls = spawn_calls(&channel, 5, "Slow.hold");
    assert!(eventually(Duration::from_secs(2), || started.get() == 5).await);

    let stopped_at = Instant::now();
    server.abort().await;
    for call in calls {
        let err = call.await.unwrap().unwrap_err();
        assert_eq!(err.code(), StatusCode::UNAVAILABLE);
        assert_eq!(
            err.outcome(),
            Outcome::MaybeExecuted,
            "sent and running when the server stopped"
        );
    }
    let took = stopped_at.elapsed();
    assert!(took < 2 * heartbeat, "pending calls took {took:?} to fail");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_goes_silent_after_the_handshake_is_declared_dead_within_the_bound() {
    let heartbeat = Duration::from_millis(100);
    // Completes the handshake, then never answers anything: a hung process.
    let settings = Settings {
        heartbeat_interval_ms: u32::try_from(heartbeat.as_millis()).unwrap(),
        ..Settings::default()
    };
    let addr = support::fake_server(settings, |_| Vec::new()).await;
    let channel = Channel::builder(addr).heartbeat_interval(heartbeat).build();
    let started = Instant::now();
    let err = channel
        .call(
            "Echo.echo",
            Bytes::from_static(b"anyone?"),
            CallOptions::new().timeout(Duration::from_secs(5)),
        )
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.code(), StatusCode::UNAVAILABLE);
    assert_eq!(
        err.outcome(),
        Outcome::MaybeExecuted,
        "the request was written"
    );
    assert!(err.has_cause::<ConnectionError>(), "{err:?}");
    assert_eq!(err.kind(), keel::ErrorKind::ConnectionLost);
    assert!(
        matches!(
            std::error::Error::source(&err).and_then(|s| s.downcast_ref::<ConnectionError>()),
            Some(ConnectionError::HeartbeatTimeout { .. })
        ),
        "{err:?}"
    );
    // Dead bound: 2 intervals of silence after the HELLO_ACK; allow 100 ms for scheduling.
    assert!(
        took >= Duration::from_millis(150),
        "declared dead too early: {took:?}"
    );
    assert!(
        took <= Duration::from_millis(300),
        "declared dead too late: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_calls_in_flight_finish() {
    let slept = Counter::default();
    let count = slept.clone();
    let server = start(
        Server::builder()
            .drain_grace(Duration::from_secs(5))
            .register("Slow.nap", move |_ctx: CallContext, payload: Bytes| {
                count.bump();
                async move {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok(payload)
                }
            }),
    )
    .await;
    let addr = server.local_addr();
    let channel = Channel::builder(addr).build();
    let calls = spawn_calls(&channel, 10, "Slow.nap");
    assert!(eventually(Duration::from_secs(2), || slept.get() == 10).await);

    let shutdown_started = Instant::now();
    server.shutdown().await;
    let took = shutdown_started.elapsed();
    for (i, call) in calls.into_iter().enumerate() {
        let reply = call
            .await
            .unwrap()
            .expect("a call in flight at the drain completes");
        assert_eq!(
            reply.payload,
            Bytes::from(vec![u8::try_from(i).unwrap(); 8])
        );
    }
    assert!(
        took < Duration::from_secs(1),
        "shutdown took {took:?}, the calls needed 300 ms"
    );
    // The listener is gone: a new call cannot connect, and says so at its (short) deadline.
    let err = channel
        .call(
            "Slow.nap",
            Bytes::new(),
            CallOptions::new().timeout(Duration::from_millis(300)),
        )
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.outcome()),
        (StatusCode::UNAVAILABLE, Outcome::NotSent)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_sent_after_the_goaway_are_not_executed() {
    let (builder, started, release) = holding_server();
    let server = start(builder.drain_grace(Duration::from_secs(5))).await;
    let (mut raw, _) = RawClient::handshake(server.local_addr(), Settings::default()).await;
    let hold = |id| {
        Frame::Request(Request::new(
            id,
            MethodName::from_static("Slow.hold"),
            Bytes::from_static(b"held"),
        ))
    };
    raw.send(hold(1)).await;
    assert!(eventually(Duration::from_secs(2), || started.get() == 1).await);

    let shutdown = tokio::spawn(server.shutdown());
    match raw.recv().await.unwrap().unwrap().unwrap() {
        Frame::GoAway(goaway) => {
            assert_eq!(goaway.code, GoAwayCode::NO_ERROR);
            assert_eq!(goaway.last_call_id, 1);
        }
        other => panic!("expected GOAWAY, got {other:?}"),
    }
    // A request that crossed the GOAWAY: refused, never run.
    raw.send(hold(2)).await;
    match raw.recv().await.unwrap().unwrap().unwrap() {
        Frame::Response(r) => {
            assert_eq!(
                (r.call_id, r.status.code(), r.not_executed),
                (2, StatusCode::UNAVAILABLE, true)
            );
        }
        other => panic!("expected the refusal of call 2, got {other:?}"),
    }
    assert_eq!(started.get(), 1);
    // The call below the GOAWAY's id still completes; then the server closes.
    release.notify_one();
    match raw.recv().await.unwrap().unwrap().unwrap() {
        Frame::Response(r) => assert_eq!((r.call_id, r.status.code()), (1, StatusCode::OK)),
        other => panic!("expected the response to call 1, got {other:?}"),
    }
    assert!(raw.recv_until_closed().await.is_empty());
    tokio::time::timeout(Duration::from_secs(2), shutdown)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_that_outlasts_its_grace_period_drops_the_rest() {
    let (builder, started, _release) = holding_server();
    let server = start(builder.drain_grace(Duration::from_millis(300))).await;
    let channel = Channel::builder(server.local_addr()).build();
    let calls = spawn_calls(&channel, 3, "Slow.hold");
    assert!(eventually(Duration::from_secs(2), || started.get() == 3).await);
    let shutdown_started = Instant::now();
    server.shutdown().await;
    let took = shutdown_started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    // Each dropped call is still answered (§7): its handler had started, so not NOT_EXECUTED.
    for call in calls {
        let err = call.await.unwrap().unwrap_err();
        assert_eq!(
            (err.code(), err.outcome()),
            (StatusCode::UNAVAILABLE, Outcome::Executed),
            "{err:?}"
        );
        assert!(err.to_string().contains("grace period ended"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_connect_is_not_sent() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let channel = Channel::builder(addr).build();
    let err = channel
        .call(
            "Echo.echo",
            Bytes::new(),
            CallOptions::new().timeout(Duration::from_millis(300)),
        )
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.outcome()),
        (StatusCode::UNAVAILABLE, Outcome::NotSent)
    );
    assert!(err.has_cause::<ConnectionError>());
    assert!(
        err.has_cause::<std::io::Error>(),
        "the refused connect is in the chain: {err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_connection_is_replaced_on_the_next_call() {
    let first = start(echo_builder()).await;
    let addr = first.local_addr();
    let channel = Channel::builder(addr).build();
    assert_eq!(
        channel
            .call("Echo.echo", Bytes::from_static(b"1"), CallOptions::new())
            .await
            .unwrap()
            .payload,
        "1"
    );
    first.abort().await;
    // Restarted on the same port.
    let second = echo_builder().build().bind(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let reply = channel
        .call("Echo.echo", Bytes::from_static(b"2"), CallOptions::new())
        .await
        .unwrap();
    assert_eq!(reply.payload, "2");
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_announcing_goaway_sends_new_calls_to_a_new_connection() {
    let (builder, started, release) = holding_server();
    let server = start(builder.drain_grace(Duration::from_secs(5))).await;
    let addr = server.local_addr();
    let channel = Channel::builder(addr).build();
    let held = spawn_calls(&channel, 1, "Slow.hold");
    assert!(eventually(Duration::from_secs(2), || started.get() == 1).await);
    let token = server.shutdown_token();
    token.cancel(); // drain: GOAWAY on the connection, listener closed
    tokio::time::sleep(Duration::from_millis(50)).await;
    // A second server takes the port; the draining connection must not be used for new calls.
    let other = echo_builder().build().bind(addr).await.unwrap();
    let reply = channel
        .call(
            "Echo.echo",
            Bytes::from_static(b"fresh"),
            CallOptions::new(),
        )
        .await
        .unwrap();
    assert_eq!(reply.payload, "fresh");
    release.notify_one();
    assert_eq!(
        held.into_iter()
            .next()
            .unwrap()
            .await
            .unwrap()
            .unwrap()
            .payload
            .len(),
        8
    );
    server.stopped().await;
    other.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_accepts_but_never_answers_the_handshake_is_not_sent_within_the_connect_timeout()
 {
    // The kernel completes the TCP connect; nothing ever answers the HELLO (a hung process).
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let (io, _) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
        drop(io);
    });
    // Fail-fast: the call fails with the first connection attempt instead of waiting for the
    // reconnects until its deadline.
    let channel = Channel::builder(addr)
        .connect_timeout(Duration::from_millis(200))
        .wait_for_ready(false)
        .build();
    let started = Instant::now();
    let err = channel
        .call(
            "Echo.echo",
            Bytes::new(),
            CallOptions::new().timeout(Duration::from_secs(5)),
        )
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert_eq!(
        (err.code(), err.outcome()),
        (StatusCode::UNAVAILABLE, Outcome::NotSent)
    );
    let cause = std::error::Error::source(&err)
        .and_then(|s| s.downcast_ref::<keel::client::NoConnection>())
        .and_then(keel::client::NoConnection::last_failure);
    assert!(
        matches!(cause, Some(ConnectionError::Handshake { .. })),
        "{err:?}"
    );
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_millis(400),
        "{took:?}"
    );
    hold.abort();
}

/// A server played by hand on 127.0.0.1:0 that completes every handshake, never answers a call
/// or a CANCEL, and answers each PING with a PING of its own instead of a PONG: it looks alive to
/// a heartbeat but never proves a withdrawn call's slot free. Returns its address, how many
/// connections it accepted, and the GOAWAYs it received.
async fn never_answering_server() -> (
    std::net::SocketAddr,
    Arc<std::sync::atomic::AtomicUsize>,
    Arc<std::sync::Mutex<Vec<keel::codec::GoAway>>>,
) {
    use keel::codec::{FrameDecoder, FrameEncoder, HelloAck, Ping, Role};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_util::codec::{Decoder, Encoder};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let goaways = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (count, seen) = (Arc::clone(&accepted), Arc::clone(&goaways));
    tokio::spawn(async move {
        while let Ok((mut io, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let mut decoder = FrameDecoder::new(Role::Server);
                let mut encoder = FrameEncoder::new();
                let mut buf = bytes::BytesMut::new();
                let serve = async {
                    loop {
                        let mut out = bytes::BytesMut::new();
                        while let Ok(Some(Ok(frame))) = decoder.decode(&mut buf) {
                            let reply = match frame {
                                Frame::Hello(hello) => {
                                    encoder.set_peer_settings(hello.settings);
                                    Some(Frame::HelloAck(HelloAck::new(Settings::default())))
                                }
                                Frame::Ping(_) => Some(Frame::Ping(Ping { opaque: [9; 8] })),
                                Frame::GoAway(goaway) => {
                                    seen.lock().unwrap().push(goaway);
                                    None
                                }
                                _ => None,
                            };
                            if let Some(reply) = reply {
                                encoder.encode(reply, &mut out).unwrap();
                            }
                        }
                        io.write_all(&out).await.unwrap();
                        if io.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                            return;
                        }
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(10), serve).await;
            });
        }
    });
    (addr, accepted, goaways)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_holding_a_slot_past_deadline_and_dead_bound_is_replaced() {
    let (addr, accepted, goaways) = never_answering_server().await;
    let heartbeat = Duration::from_millis(100);
    let channel = Channel::builder(addr).heartbeat_interval(heartbeat).build();
    let options = || {
        CallOptions::new()
            .timeout(Duration::from_millis(100))
            .no_retry()
    };
    let err = channel
        .call("Echo.echo", Bytes::from_static(b"lost"), options())
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.outcome()),
        (StatusCode::DEADLINE_EXCEEDED, Outcome::MaybeExecuted)
    );
    // The withdrawn call holds its slot: no RESPONSE, no PONG. Past its deadline plus the dead
    // bound (2 x 100 ms), the connection says GOAWAY and is dropped from the channel.
    assert_eq!(channel.in_flight(), 1);
    let started = Instant::now();
    assert!(
        eventually(Duration::from_secs(2), || !goaways
            .lock()
            .unwrap()
            .is_empty())
        .await,
        "no GOAWAY from the client"
    );
    let took = started.elapsed();
    let goaway = goaways.lock().unwrap()[0].clone();
    assert_eq!(
        (goaway.code, goaway.last_call_id, goaway.message.as_str()),
        (
            GoAwayCode::NO_ERROR,
            0,
            "calls unanswered past their deadline"
        )
    );
    // The bound (200 ms after the deadline) and at most one probe interval (200 ms) on top.
    assert!(
        took <= Duration::from_millis(600),
        "replaced after {took:?}"
    );
    assert_eq!(channel.in_flight(), 0);
    // The next call goes to a new connection.
    let _ = channel
        .call("Echo.echo", Bytes::from_static(b"next"), options())
        .await;
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
}
