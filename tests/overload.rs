//! Abuse and overload over real TCP on 127.0.0.1: sockets that never finish their handshake,
//! honest and hostile cancellation, a saturated server, the server-wide concurrency limit, the
//! connection limit's refusal, and a server that stops reading.
//!
//! The heavy tests share a lock, so their load and their timings do not mix.

mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use keel::client::ConnectionError;
use keel::codec::{Cancel, Frame, GoAwayCode, MethodName, Request, Settings};
use keel::core::CallContext;
use keel::{CallOptions, Channel, Outcome, Server, Status, StatusCode};
use rand::{Rng, SeedableRng};
use support::{Counter, RawClient, echo_builder, start};
use tokio::sync::Semaphore;
use tokio_util::codec::Encoder;

/// One heavy test at a time.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Raises the soft open-file limit to the hard one: the handshake flood holds 2,000 sockets on
/// each side.
fn raise_file_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    }
    hard
}

/// `count` echo calls, 32 at a time; returns how long they took. Every one must succeed.
async fn echo_burst(channel: &Channel, count: usize) -> Duration {
    let started = Instant::now();
    let ok = futures::stream::iter(0..count)
        .map(|i| {
            let channel = channel.clone();
            async move {
                let payload = Bytes::from(format!("call {i}"));
                let reply = channel
                    .call("Echo.echo", payload.clone(), CallOptions::new())
                    .await
                    .unwrap_or_else(|err| panic!("call {i} failed: {err}"));
                assert_eq!(reply.payload, payload);
            }
        })
        .buffer_unordered(32)
        .count()
        .await;
    assert_eq!(ok, count);
    started.elapsed()
}

/// 1,000 sockets that send 3 bytes of the preface and 1,000 that send nothing used to hold 1,000
/// of the 1,024 connection slots for the 10 s handshake timeout: a new client's calls took 10.6 s
/// and 64 failed. Handshakes now have a pool of their own (256, the oldest evicted), so both a
/// client connected before the flood and one connecting during it keep at least half their
/// unattacked throughput, and every call succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_and_silent_sockets_do_not_starve_served_clients() {
    let _heavy = HEAVY.lock().await;
    let files = raise_file_limit();
    let sockets_each = if files >= 8_000 { 1_000 } else { 200 };
    let server = start(echo_builder()).await;
    let addr = server.local_addr();
    let before = Channel::builder(addr).build();
    echo_burst(&before, 500).await; // connected and warm
    let unattacked = echo_burst(&before, 5_000).await;

    let mut attackers = Vec::new();
    for i in 0..2 * sockets_each {
        let mut io = tokio::net::TcpStream::connect(addr).await.unwrap();
        if i % 2 == 0 {
            use tokio::io::AsyncWriteExt;
            io.write_all(&keel::codec::MAGIC[..3]).await.unwrap();
        }
        attackers.push(io);
    }
    let during = Channel::builder(addr).build();
    let new_client = echo_burst(&during, 5_000).await;
    let old_client = echo_burst(&before, 5_000).await;
    println!(
        "{} half-open + {} silent sockets: 5,000 calls took {unattacked:?} unattacked, \
         {old_client:?} on the connection made before, {new_client:?} on one made during",
        sockets_each, sockets_each
    );
    assert!(
        old_client <= unattacked * 2 && new_client <= unattacked * 2,
        "throughput fell below half: {unattacked:?} -> {old_client:?} / {new_client:?}"
    );
    drop(attackers);
    server.shutdown().await;
}

/// With `max_handshaking(2)`, a third handshaking socket evicts the oldest at once: it gets
/// GOAWAY HANDSHAKE_TIMEOUT, then the close, long before the handshake timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_handshake_pool_closes_its_oldest_connection() {
    let server = start(echo_builder().max_handshaking(2)).await;
    let mut oldest = RawClient::connect(server.local_addr()).await;
    let _second = RawClient::connect(server.local_addr()).await;
    tokio::time::sleep(Duration::from_millis(50)).await; // both accepted, in that order
    let started = Instant::now();
    let _third = RawClient::connect(server.local_addr()).await;
    let items = tokio::time::timeout(Duration::from_secs(2), oldest.recv_until_closed())
        .await
        .expect("the oldest handshake is closed");
    assert!(
        matches!(items.as_slice(), [Ok(Frame::GoAway(g))] if g.code == GoAwayCode::HANDSHAKE_TIMEOUT),
        "{items:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(500));
    // A client that completes its handshake is served as usual.
    let channel = Channel::builder(server.local_addr()).build();
    echo_burst(&channel, 10).await;
    server.shutdown().await;
}

/// A connection beyond `max_connections` has its HELLO read and gets GOAWAY OVERLOADED, not a
/// reset; a channel refused that way fails with an error whose own message says the server is
/// overloaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_refused_at_the_connection_limit_is_told_the_server_is_overloaded() {
    let server = start(echo_builder().max_connections(1)).await;
    let first = Channel::builder(server.local_addr()).build();
    echo_burst(&first, 5).await;
    for _ in 0..20 {
        let mut raw = RawClient::connect(server.local_addr()).await;
        raw.send(Frame::Hello(keel::codec::Hello::new(Settings::default())))
            .await;
        let items = raw.recv_until_closed().await;
        assert!(
            matches!(items.as_slice(), [Ok(Frame::GoAway(g))] if g.code == GoAwayCode::OVERLOADED),
            "a GOAWAY, then a clean close: {items:?}"
        );
    }
    let refused = Channel::builder(server.local_addr())
        .wait_for_ready(false)
        .build();
    let err = refused
        .call("Echo.echo", Bytes::from_static(b"x"), CallOptions::new())
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.outcome()),
        (StatusCode::UNAVAILABLE, Outcome::NotSent)
    );
    assert!(
        err.to_string().contains(
            "OVERLOADED: the server is overloaded: its limit of 1 connections is reached"
        ),
        "{err}"
    );
    assert!(err.has_cause::<ConnectionError>());
    echo_burst(&first, 5).await;
    server.shutdown().await;
}

/// Honest cancellation: half the calls' futures dropped at random early moments (0–300 µs after
/// the call), from 64 tasks, for 20 s. Before, the rapid-reset defence fired 8 times in 20 s and
/// 188 non-idempotent calls failed MAYBE_EXECUTED. Now every call that was not dropped succeeds,
/// and every call ran on one connection (a TOO_MANY_CANCELS close would make the channel open
/// another).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honest_cancellation_never_trips_the_rapid_reset_defence() {
    let _heavy = HEAVY.lock().await;
    let seed = support::chaos_seed("honest_cancellation");
    let peers = Arc::new(Mutex::new(HashSet::new()));
    let seen = Arc::clone(&peers);
    let server = start(Server::builder().register(
        "Echo.record",
        move |ctx: CallContext, payload: Bytes| {
            let seen = Arc::clone(&seen);
            async move {
                if let Some(peer) = ctx.peer_addr() {
                    seen.lock().unwrap().insert(peer);
                }
                tokio::task::yield_now().await;
                Ok(payload)
            }
        },
    ))
    .await;
    let channel = Channel::builder(server.local_addr()).build();
    let run_for = Duration::from_secs(20);
    let (completed, dropped) = (Counter::default(), Counter::default());
    let tasks: Vec<_> = (0..64_u64)
        .map(|task| {
            let (channel, completed, dropped) =
                (channel.clone(), completed.clone(), dropped.clone());
            tokio::spawn(async move {
                let mut rng = rand::rngs::SmallRng::seed_from_u64(seed ^ task);
                let started = Instant::now();
                while started.elapsed() < run_for {
                    let call = channel.call(
                        "Echo.record",
                        Bytes::from_static(b"x"),
                        CallOptions::new().idempotent(false),
                    );
                    if rng.random_bool(0.5) {
                        let after = Duration::from_micros(rng.random_range(0..300));
                        if tokio::time::timeout(after, call).await.is_err() {
                            dropped.bump();
                            continue;
                        }
                        completed.bump();
                    } else {
                        call.await
                            .unwrap_or_else(|err| panic!("a kept call failed: {err}"));
                        completed.bump();
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let peers = peers.lock().unwrap().len();
    println!(
        "{} calls completed, {} dropped early, over {peers} connection(s)",
        completed.get(),
        dropped.get()
    );
    assert!(dropped.get() > 1_000, "the test must cancel at a high rate");
    assert_eq!(
        peers, 1,
        "a TOO_MANY_CANCELS close makes the channel reconnect"
    );
    server.shutdown().await;
}

/// The attack itself: REQUEST+CANCEL pairs for calls that never start still close the
/// connection with TOO_MANY_CANCELS, and the calls the server was already running are not
/// dropped: they finish and get their RESPONSE (OK, their handler ran to the end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_flood_closes_the_connection_after_its_running_calls_are_answered() {
    let finished = Counter::default();
    let done = finished.clone();
    let server = start(echo_builder().register(
        "Slow.work",
        move |_ctx: CallContext, payload: Bytes| {
            let done = done.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                done.bump();
                Ok(payload)
            }
        },
    ))
    .await;
    let (mut raw, _) = RawClient::handshake(server.local_addr(), Settings::default()).await;
    let mut bytes = BytesMut::new();
    for id in 1..=5_u64 {
        let request = Request::new(id, MethodName::from_static("Slow.work"), Bytes::new());
        raw.encoder
            .encode(Frame::Request(request), &mut bytes)
            .unwrap();
    }
    raw.send_raw(&bytes).await;
    tokio::time::sleep(Duration::from_millis(50)).await; // the five are running
    let mut bytes = BytesMut::new();
    for id in 6..=1_000_u64 {
        let request = Request::new(id, MethodName::from_static("Echo.echo"), Bytes::new());
        raw.encoder
            .encode(Frame::Request(request), &mut bytes)
            .unwrap();
        raw.encoder
            .encode(Frame::Cancel(Cancel { call_id: id }), &mut bytes)
            .unwrap();
    }
    raw.send_raw(&bytes).await;
    let items = raw.recv_until_closed().await;
    let goaway = support::first_goaway(&items);
    assert_eq!(goaway.code, GoAwayCode::TOO_MANY_CANCELS);
    let mut answered = Vec::new();
    for item in &items {
        if let Ok(Frame::Response(r)) = item {
            if r.call_id <= 5 {
                assert_eq!(
                    (r.status.code(), r.not_executed),
                    (StatusCode::OK, false),
                    "running call {} finished",
                    r.call_id
                );
            } else {
                // Cancelled before it started, or refused over the 100 calls per connection
                // (cancelled calls hold theirs until the server next polls its calls).
                assert!(
                    matches!(
                        (r.status.code(), r.not_executed),
                        (StatusCode::CANCELLED | StatusCode::RESOURCE_EXHAUSTED, true)
                    ),
                    "call {}: {:?}",
                    r.call_id,
                    r.status
                );
            }
            answered.push(r.call_id);
        }
    }
    answered.sort_unstable();
    assert!(
        (100..1_000).contains(&goaway.last_call_id),
        "trips past 100 unstarted cancels, long before the end: {goaway:?}"
    );
    assert_eq!(answered, (1..=goaway.last_call_id).collect::<Vec<_>>());
    assert_eq!(finished.get(), 5, "every running handler ran to its end");
    server.shutdown().await;
}

/// §9.2: a CANCEL frees its call's slot before the server reads the next frame. With all 100
/// slots held by running calls, CANCELs for them followed in the same write by a PING and 100 new
/// REQUESTs: every new call is accepted (none refused RESOURCE_EXHAUSTED). Before, a cancelled
/// call kept its slot until the server next polled it, so a client that trusted the PONG (as
/// keel's does) was refused NOT_EXECUTED, and retried on another connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_frees_its_slot_before_the_next_frame_is_read() {
    let server = start(echo_builder().register(
        "Slow.work",
        |_ctx: CallContext, payload: Bytes| async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(payload)
        },
    ))
    .await;
    let (mut raw, _) = RawClient::handshake(server.local_addr(), Settings::default()).await;
    let mut bytes = BytesMut::new();
    for id in 1..=100_u64 {
        let request = Request::new(id, MethodName::from_static("Slow.work"), Bytes::new());
        raw.encoder
            .encode(Frame::Request(request), &mut bytes)
            .unwrap();
    }
    raw.send_raw(&bytes).await;
    tokio::time::sleep(Duration::from_millis(100)).await; // all 100 running
    let mut bytes = BytesMut::new();
    for id in 1..=100_u64 {
        raw.encoder
            .encode(Frame::Cancel(Cancel { call_id: id }), &mut bytes)
            .unwrap();
    }
    raw.encoder
        .encode(
            Frame::Ping(keel::codec::Ping { opaque: [9; 8] }),
            &mut bytes,
        )
        .unwrap();
    for id in 101..=200_u64 {
        let request = Request::new(id, MethodName::from_static("Echo.echo"), Bytes::new());
        raw.encoder
            .encode(Frame::Request(request), &mut bytes)
            .unwrap();
    }
    raw.send_raw(&bytes).await;
    let (mut cancelled, mut echoed, mut pong) = (0, 0, false);
    while echoed < 100 {
        match raw.recv().await.unwrap() {
            Some(Ok(Frame::Response(r))) if r.call_id <= 100 => {
                assert_eq!(r.status.code(), StatusCode::CANCELLED);
                assert!(!r.not_executed, "its handler had started");
                cancelled += 1;
            }
            Some(Ok(Frame::Response(r))) => {
                assert_eq!(
                    r.status.code(),
                    StatusCode::OK,
                    "call {}: {:?}",
                    r.call_id,
                    r.status
                );
                echoed += 1;
            }
            Some(Ok(Frame::Pong(_))) => pong = true,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(cancelled, 100);
    assert!(pong);
    server.shutdown().await;
}

/// What one load window saw.
#[derive(Debug, Default, Clone, Copy)]
struct Window {
    ok: usize,
    refused_early: usize,
    other_failures: usize,
}

/// 1,000 calls in flight on one channel to a server running 100 at once, 200 ms each (500
/// calls/s), with 2 s deadlines. Before, goodput per 10 s fell 334 -> 146 -> 85 -> 55 calls/s and
/// 73 % failed DEADLINE_EXCEEDED or MAYBE_EXECUTED after ~2 s. Now calls that cannot finish are
/// not sent: goodput stays at 90 % of capacity or more in every window, and every failure is
/// NOT_SENT.
async fn overload(windows: usize, window: Duration) {
    let _heavy = HEAVY.lock().await;
    let server = start(
        Server::builder()
            .register(
                "Slow.work",
                |_ctx: CallContext, payload: Bytes| async move {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Ok(payload)
                },
            )
            .server_concurrency_limit(100),
    )
    .await;
    let channel = Channel::builder(server.local_addr()).build();
    let started = Instant::now();
    let end = started + window * u32::try_from(windows).unwrap();
    let counts: Arc<Mutex<Vec<Window>>> = Arc::new(Mutex::new(vec![Window::default(); windows]));
    let workers: Vec<_> = (0..1_000)
        .map(|_| {
            let (channel, counts) = (channel.clone(), Arc::clone(&counts));
            tokio::spawn(async move {
                while Instant::now() < end {
                    let result = channel
                        .call(
                            "Slow.work",
                            Bytes::from_static(b"w"),
                            CallOptions::new().timeout(Duration::from_secs(2)),
                        )
                        .await;
                    let at = started.elapsed().as_nanos() / window.as_nanos();
                    let refused = matches!(&result, Err(err) if err.outcome() == Outcome::NotSent);
                    {
                        let mut counts = counts.lock().unwrap();
                        let Some(slot) = counts.get_mut(usize::try_from(at).unwrap()) else {
                            return;
                        };
                        match result {
                            Ok(_) => slot.ok += 1,
                            Err(_) if refused => slot.refused_early += 1,
                            Err(err) => {
                                slot.other_failures += 1;
                                println!("failed after it was sent: {err}");
                            }
                        }
                    }
                    if refused {
                        // A refused caller backs off a little, as a real one would.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    let counts = counts.lock().unwrap().clone();
    let capacity = 500.0 * window.as_secs_f64();
    for (i, w) in counts.iter().enumerate() {
        println!(
            "window {i}: {} ok ({:.0} % of capacity), {} refused early, {} other failures",
            w.ok,
            100.0 * w.ok as f64 / capacity,
            w.refused_early,
            w.other_failures
        );
    }
    // The first window includes the ramp-up (the first calls teach the client the latency).
    for w in &counts[1..] {
        assert!(w.ok as f64 >= 0.9 * capacity, "{counts:?}");
    }
    assert!(
        counts.iter().all(|w| w.other_failures == 0),
        "every failure is NOT_SENT: {counts:?}"
    );
    server.shutdown().await;
}

/// A short run of [`overload`], for every test run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_server_keeps_its_goodput_and_calls_that_cannot_finish_are_not_sent() {
    overload(4, Duration::from_secs(3)).await;
}

/// The full run: six 10 s windows. `cargo test --test overload -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "60 s; run with `cargo test --test overload -- --ignored --nocapture`"]
async fn a_saturated_server_keeps_its_goodput_for_a_minute() {
    overload(6, Duration::from_secs(10)).await;
}

/// Four channels start 40 calls of a handler that waits for a release, on a server limited to 10
/// calls at once (and `Slow.db` to 3): exactly 10 run, the other 30 are refused at once with
/// RESOURCE_EXHAUSTED and NOT_EXECUTED, before any handler code runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_wide_and_per_method_limits_refuse_calls_over_them_before_they_run() {
    let release = Arc::new(Semaphore::new(0));
    let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let started = Counter::default();
    let handler = {
        let (release, running, most, started) = (
            Arc::clone(&release),
            Arc::clone(&running),
            Arc::clone(&most),
            started.clone(),
        );
        move |_ctx: CallContext, payload: Bytes| {
            let (release, running, most) = (
                Arc::clone(&release),
                Arc::clone(&running),
                Arc::clone(&most),
            );
            started.bump();
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                let _permit = release.acquire().await.unwrap();
                running.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, Status>(payload)
            }
        }
    };
    let server = start(
        Server::builder()
            .register("Slow.wait", handler.clone())
            .register("Slow.db", handler)
            .server_concurrency_limit(10)
            .method_concurrency_limit("Slow.db", 3),
    )
    .await;
    let channels: Vec<Channel> = (0..4)
        .map(|_| {
            Channel::builder(server.local_addr())
                .disable_retries()
                .build()
        })
        .collect();
    let spawn = |i: usize, method: &'static str| {
        let channel = channels[i % 4].clone();
        tokio::spawn(async move {
            channel
                .call(method, Bytes::from_static(b"x"), CallOptions::new())
                .await
                .map(|_| method)
                .map_err(|err| (method, err))
        })
    };
    // The 20 Slow.db calls first, so that they fill their method's limit before the other
    // calls fill the server's: then exactly 3 of them run, whatever the connections' timing.
    let mut calls: Vec<_> = (0..20).map(|i| spawn(i, "Slow.db")).collect();
    assert!(
        support::eventually(Duration::from_secs(5), || started.get() == 3).await,
        "{} handlers started",
        started.get()
    );
    calls.extend((0..20).map(|i| spawn(i, "Slow.wait")));
    assert!(
        support::eventually(Duration::from_secs(5), || started.get() == 10).await,
        "{} handlers started",
        started.get()
    );
    tokio::time::sleep(Duration::from_millis(200)).await; // refusals are immediate
    release.add_permits(1_000);
    let (mut ok, mut refused) = (Vec::new(), Vec::new());
    for call in calls {
        match call.await.unwrap() {
            Ok(method) => ok.push(method),
            Err((method, err)) => {
                assert_eq!(
                    (err.code(), err.outcome()),
                    (StatusCode::RESOURCE_EXHAUSTED, Outcome::NotExecuted),
                    "{err}"
                );
                refused.push((method, err.to_string()));
            }
        }
    }
    assert_eq!((ok.len(), refused.len()), (10, 30), "{refused:?}");
    assert_eq!(ok.iter().filter(|m| **m == "Slow.db").count(), 3);
    assert_eq!(
        most.load(Ordering::SeqCst),
        10,
        "exactly the limit ran at once"
    );
    assert_eq!(
        started.get(),
        10,
        "no refused call reached application code"
    );
    assert!(
        refused
            .iter()
            .any(|(_, m)| m.contains("the server is overloaded"))
    );
    assert!(refused.iter().any(|(_, m)| m.contains("\"Slow.db\"")));
    server.shutdown().await;
}

/// A server that stops reading: the client queues at most 1 MiB of requests unsent, then holds
/// calls (8 here) unsent, then refuses new ones at once with RESOURCE_EXHAUSTED, NOT_SENT,
/// instead of growing its queue with every call. Before, all 300 calls (19 MiB) were queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stops_reading_makes_the_client_hold_then_refuse_calls() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpSocket::new_v4().unwrap();
    listener.set_recv_buffer_size(64 * 1024).unwrap();
    listener.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = listener.listen(8).unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut io, _) = listener.accept().await.unwrap();
        // The handshake, then never another read.
        let mut buf = vec![0_u8; 8 + 24 + 64];
        let n = io.read(&mut buf).await.unwrap();
        assert!(n >= 8);
        let mut out = BytesMut::new();
        let mut encoder = keel::codec::FrameEncoder::new();
        encoder
            .encode(
                Frame::HelloAck(keel::codec::HelloAck::new(Settings::default())),
                &mut out,
            )
            .unwrap();
        io.write_all(&out).await.unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
        drop(io);
    });
    let channel = Channel::builder(addr)
        .max_queued_calls(8)
        .disable_retries()
        .build();
    let payload = Bytes::from(vec![7_u8; 64 * 1024]);
    let calls: Vec<_> = (0..300)
        .map(|_| {
            let (channel, payload) = (channel.clone(), payload.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let result = channel
                    .call(
                        "Echo.echo",
                        payload,
                        CallOptions::new().timeout(Duration::from_millis(1_500)),
                    )
                    .await;
                (result.map(|_| ()), started.elapsed())
            })
        })
        .collect();
    let (mut full, mut late_not_sent, mut maybe) = (0, 0, 0);
    for call in calls {
        let (result, took) = call.await.unwrap();
        let err = result.expect_err("the server answers nothing");
        match (err.code(), err.outcome()) {
            (StatusCode::RESOURCE_EXHAUSTED, Outcome::NotSent) => {
                assert!(
                    took < Duration::from_millis(500),
                    "refused at once: {took:?}"
                );
                full += 1;
            }
            (StatusCode::DEADLINE_EXCEEDED, Outcome::NotSent) => late_not_sent += 1,
            (StatusCode::DEADLINE_EXCEEDED, Outcome::MaybeExecuted) => maybe += 1,
            other => panic!("{other:?}: {err}"),
        }
    }
    println!("{maybe} written, {late_not_sent} held unsent, {full} refused: queue full");
    // Written: 1 MiB queued (16 calls), then held calls as the kernel's buffers (at most some 4
    // MiB) took bytes; the rest refused at once.
    assert!(late_not_sent <= 8, "at most the queue's 8 stay held");
    assert!(maybe <= 16 + 8 + 70, "{maybe} written");
    assert!(full >= 100, "{full} refused");
    server.abort();
}

/// A client busy reading a backlog answers the server's PING late, since the PING is behind the
/// backlog: 24 MiB of responses read at about 8 MB/s, a 100 ms heartbeat and a 1.5 s dead bound.
/// The server counts the client's reading (its writes taken again after a stall) as a sign of
/// life, so the connection lives and a slow call running meanwhile gets its result. Before, the
/// server declared the client dead within 3 s and cut the slow call off (MAYBE_EXECUTED at the
/// client). Found by the `server_connection` fuzz target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reading_a_backlog_is_not_declared_dead() {
    use tokio::io::AsyncReadExt;
    let _heavy = HEAVY.lock().await; // its reading pace matters
    const BIG: usize = 256 * 1024;
    let server = start(
        Server::builder()
            .register("Echo.big", |_ctx: CallContext, _payload: Bytes| async move {
                Ok(Bytes::from(vec![7_u8; BIG]))
            })
            .register("Slow.work", |_ctx: CallContext, payload: Bytes| async move {
                tokio::time::sleep(Duration::from_millis(1_500)).await;
                Ok(payload)
            })
            .heartbeat_interval(Duration::from_millis(100))
            // A 1.5 s dead bound: more than reading what the kernel's buffers hold takes (a few
            // MiB, about 0.5 s), which is not seen (docs/PROTOCOL.md §10), less than the backlog.
            .dead_after_intervals(15)
            // Never backpressured: the backlog sits in the server's queue, below the bound.
            .max_unsent_bytes(64 * 1024 * 1024),
    )
    .await;
    let settings = Settings {
        heartbeat_interval_ms: 100,
        ..Settings::default()
    };
    let (mut raw, _) = RawClient::handshake(server.local_addr(), settings).await;
    let mut bytes = BytesMut::new();
    let slow = Request::new(
        1,
        MethodName::from_static("Slow.work"),
        Bytes::from_static(b"s"),
    );
    raw.encoder
        .encode(Frame::Request(slow), &mut bytes)
        .unwrap();
    for id in 2..=97_u64 {
        let request = Request::new(id, MethodName::from_static("Echo.big"), Bytes::new());
        raw.encoder
            .encode(Frame::Request(request), &mut bytes)
            .unwrap();
    }
    raw.send_raw(&bytes).await;
    let started = Instant::now();
    let (mut big, mut slow_result, mut pings) = (0, None, 0);
    while slow_result.is_none() || big < 96 {
        // Read slowly: 64 KiB every 8 ms, answering every PING at once.
        loop {
            match tokio_util::codec::Decoder::decode(&mut raw.decoder, &mut raw.buf).unwrap() {
                Some(Ok(Frame::Response(r))) if r.call_id == 1 => slow_result = Some(r),
                Some(Ok(Frame::Response(r))) => {
                    assert_eq!(r.payload.len(), BIG, "{:?}", r.status);
                    big += 1;
                }
                Some(Ok(Frame::Ping(ping))) => {
                    use tokio::io::AsyncWriteExt;
                    pings += 1;
                    let mut out = BytesMut::new();
                    raw.encoder
                        .encode(Frame::Pong(ping.pong()), &mut out)
                        .unwrap();
                    if let Err(err) = raw.io.write_all(&out).await {
                        let mut rest = Vec::new();
                        while let Ok(Some(item)) =
                            tokio_util::codec::Decoder::decode(&mut raw.decoder, &mut raw.buf)
                        {
                            rest.push(item);
                        }
                        panic!(
                            "PONG not sent after {:?}, {big} read: {err}; then {rest:?}",
                            started.elapsed()
                        );
                    }
                }
                Some(other) => panic!("{other:?} after {:?}", started.elapsed()),
                None => break,
            }
        }
        raw.buf.reserve(64 * 1024);
        let mut chunk = vec![0_u8; 64 * 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), raw.io.read(&mut chunk))
            .await
            .expect("the server keeps sending")
            .unwrap();
        assert!(n > 0, "the server closed after {:?}", started.elapsed());
        raw.buf.extend_from_slice(&chunk[..n]);
        tokio::time::sleep(Duration::from_millis(8)).await;
    }
    let slow_result = slow_result.unwrap();
    println!(
        "24 MiB read in {:?}, {pings} PINGs answered",
        started.elapsed()
    );
    assert_eq!(
        slow_result.status.code(),
        StatusCode::OK,
        "{:?}",
        slow_result.status
    );
    server.shutdown().await;
}
