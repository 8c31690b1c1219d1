//! The retry layer, hedging, reconnects and the server's dedupe window, under real faults: killed
//! server processes, a fault-injecting proxy, draining servers. Every scenario counts handler runs
//! on the server and asserts exact outcomes.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel::client::{RetryStopped, StopReason};
use keel::server::DedupeConfig;
use keel::{
    Bytes, CallContext, CallOptions, Channel, Error, HedgePolicy, Outcome, PayloadCodec, Server,
    Status, StatusCode,
};
use rpc_chaos::{Direction, DropMode, Faults, Proxy, ServerProcess};

const CODEC: keel::Bincode = keel::Bincode::new();

/// Handler runs per payload.
#[derive(Clone, Debug, Default)]
struct Runs(Arc<Mutex<HashMap<Bytes, usize>>>);

impl Runs {
    fn record(&self, payload: &Bytes) {
        *self.0.lock().unwrap().entry(payload.clone()).or_default() += 1;
    }
    fn of(&self, payload: &[u8]) -> usize {
        self.0.lock().unwrap().get(payload).copied().unwrap_or(0)
    }
    fn total(&self) -> usize {
        self.0.lock().unwrap().values().sum()
    }
}

fn args<T: serde::Serialize>(value: T) -> Bytes {
    CODEC.encode(&(value,)).unwrap()
}

fn outcome_of(result: &Result<keel::Reply, Error>) -> Option<(StatusCode, Outcome)> {
    result.as_ref().err().map(|e| (e.code(), e.outcome()))
}

fn stop_reason(err: &Error) -> Option<StopReason> {
    std::error::Error::source(err)
        .and_then(|c| c.downcast_ref::<RetryStopped>())
        .map(RetryStopped::reason)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_calls_all_succeed_across_a_killed_and_restarted_server() {
    let mut server = ServerProcess::start(support::echo_example(), Vec::<String>::new())
        .await
        .unwrap();
    let channel = Channel::builder(server.addr())
        .heartbeat_interval(Duration::from_secs(1))
        .build();
    let options = || {
        CallOptions::new()
            .idempotent(true)
            .timeout(Duration::from_secs(10))
    };
    // Slow calls, surely in flight at the kill.
    let slow: Vec<_> = (0..4)
        .map(|_| {
            let channel = channel.clone();
            tokio::spawn(async move { channel.call("Echo.sleep", args(300u64), options()).await })
        })
        .collect();
    // A steady stream: one call every 10 ms for 2 s.
    let stream = {
        let channel = channel.clone();
        tokio::spawn(async move {
            let mut calls = Vec::new();
            for i in 0..200u32 {
                let channel = channel.clone();
                calls.push(tokio::spawn(async move {
                    let sent = args(Bytes::from(format!("call {i}")));
                    let reply = channel
                        .call("Echo.echo_bytes", sent.clone(), options())
                        .await;
                    (sent, reply)
                }));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            calls
        })
    };
    assert!(support::eventually(Duration::from_secs(5), || channel.in_flight() >= 4).await);
    server.kill().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.restart().await.unwrap();

    for call in slow {
        let reply = call
            .await
            .unwrap()
            .expect("a slow idempotent call was lost");
        assert_eq!(reply.payload, args(300u64));
    }
    for call in stream.await.unwrap() {
        let (sent, reply) = call.await.unwrap();
        assert_eq!(reply.expect("an idempotent call was lost").payload, sent);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_idempotent_calls_across_a_kill_run_at_most_once_and_unsent_ones_wait() {
    let journal = std::env::temp_dir().join(format!("keel-journal-{}", std::process::id()));
    let _ = std::fs::remove_file(&journal);
    let mut server = ServerProcess::start(
        support::echo_example(),
        ["--journal".into(), journal.clone().into_os_string()],
    )
    .await
    .unwrap();
    let channel = Channel::builder(server.addr())
        .heartbeat_interval(Duration::from_secs(1))
        .build();
    let options = || CallOptions::new().timeout(Duration::from_secs(10));
    let slow: Vec<_> = (0..4u64)
        .map(|i| {
            let channel = channel.clone();
            tokio::spawn(
                async move { channel.call("Echo.sleep", args(5_000 + i), options()).await },
            )
        })
        .collect();
    assert!(support::eventually(Duration::from_secs(5), || channel.in_flight() == 4).await);
    let before: Vec<_> = (0..20u32).map(|i| format!("before {i}")).collect();
    for text in &before {
        channel
            .call("Echo.echo", args(text.clone()), options())
            .await
            .unwrap();
    }
    server.kill().await.unwrap();
    // Calls made while the server is down: never sent until it is back.
    let during: Vec<_> = (0..20u32)
        .map(|i| {
            let channel = channel.clone();
            let text = format!("during {i}");
            tokio::spawn(async move {
                let result = channel
                    .call("Echo.echo", args(text.clone()), options())
                    .await;
                (text, result)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.restart().await.unwrap();

    for call in slow {
        let result = call.await.unwrap();
        assert_eq!(
            outcome_of(&result),
            Some((StatusCode::UNAVAILABLE, Outcome::MaybeExecuted)),
            "{result:?}"
        );
    }
    let mut succeeded = before.clone();
    for call in during {
        let (text, result) = call.await.unwrap();
        result.unwrap_or_else(|e| panic!("{text}: {e:?}"));
        succeeded.push(text);
    }
    let journal = std::fs::read_to_string(&journal).unwrap();
    let mut runs: HashMap<&str, usize> = HashMap::new();
    for line in journal.lines() {
        *runs.entry(line).or_default() += 1;
    }
    assert!(
        runs.values().all(|&n| n == 1),
        "a handler ran twice: {runs:?}"
    );
    for text in &succeeded {
        assert_eq!(
            runs.get(format!("echo {text}").as_str()),
            Some(&1),
            "{text}"
        );
    }
    for i in 0..4u64 {
        assert_eq!(runs.get(format!("sleep {}", 5_000 + i).as_str()), Some(&1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_dedupe_window_a_lost_response_is_retried_and_runs_once() {
    let runs = Runs::default();
    let record = runs.clone();
    let server = Server::builder()
        .heartbeat_interval(Duration::from_millis(100))
        .dedupe(DedupeConfig::new())
        .register("Ledger.append", move |_ctx: CallContext, payload: Bytes| {
            record.record(&payload);
            async move { Ok(payload) }
        })
        .build()
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let proxy = Proxy::start(server.local_addr(), support::chaos_seed("dedupe"))
        .await
        .unwrap();
    let channel = Channel::builder(proxy.local_addr())
        .heartbeat_interval(Duration::from_millis(100))
        .build();
    // Connect, then lose every byte towards the client on that first connection.
    let first = channel
        .call(
            "Ledger.append",
            Bytes::from_static(b"warm-up"),
            CallOptions::new().dedupe(true),
        )
        .await
        .unwrap();
    assert!(first.metadata.get("rpc-replayed").is_none());
    assert!(proxy.set_connection_faults(0, Direction::ServerToClient, Faults::none().blackhole()));

    let started = Instant::now();
    let reply = channel
        .call(
            "Ledger.append",
            Bytes::from_static(b"entry"),
            CallOptions::new()
                .dedupe(true)
                .timeout(Duration::from_secs(5)),
        )
        .await
        .unwrap();
    assert_eq!(reply.payload, "entry");
    assert_eq!(
        reply.metadata.get("rpc-replayed").map(|v| &v[..]),
        Some(&b"1"[..]),
        "the retry was answered from the recorded result"
    );
    assert_eq!(runs.of(b"entry"), 1);
    // Detected by the heartbeat (2 intervals), then one backoff and a reconnect.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // Without dedupe the same loss is MAYBE_EXECUTED and is not retried.
    let other = Proxy::start(server.local_addr(), support::chaos_seed("no dedupe"))
        .await
        .unwrap();
    let plain = Channel::builder(other.local_addr())
        .heartbeat_interval(Duration::from_millis(100))
        .build();
    plain
        .call(
            "Ledger.append",
            Bytes::from_static(b"w"),
            CallOptions::new(),
        )
        .await
        .unwrap();
    other.set_connection_faults(0, Direction::ServerToClient, Faults::none().blackhole());
    let result = plain
        .call(
            "Ledger.append",
            Bytes::from_static(b"plain"),
            CallOptions::new(),
        )
        .await;
    assert_eq!(
        outcome_of(&result),
        Some((StatusCode::UNAVAILABLE, Outcome::MaybeExecuted))
    );
    assert_eq!(runs.of(b"plain"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_with_calls_queued_retries_them_transparently_each_once() {
    let runs = Runs::default();
    let gate = Arc::new(tokio::sync::Notify::new());
    let open = Arc::new(AtomicBool::new(false));
    let server = |gated: bool| {
        let record = runs.clone();
        let gate = Arc::clone(&gate);
        let open = Arc::clone(&open);
        Server::builder()
            .max_concurrent_calls(2)
            .register("Queue.push", move |_ctx: CallContext, payload: Bytes| {
                record.record(&payload);
                let gate = Arc::clone(&gate);
                let open = Arc::clone(&open);
                async move {
                    while gated && !open.load(Ordering::SeqCst) {
                        gate.notified().await;
                    }
                    Ok(payload)
                }
            })
            .build()
    };
    let old = server(true).bind("127.0.0.1:0").await.unwrap();
    let new = server(false).bind("127.0.0.1:0").await.unwrap();
    let proxy = Proxy::start(old.local_addr(), support::chaos_seed("drain"))
        .await
        .unwrap();
    let channel = Channel::builder(proxy.local_addr()).build();
    let calls: Vec<_> = (0..10u32)
        .map(|i| {
            let channel = channel.clone();
            tokio::spawn(async move {
                let payload = Bytes::from(format!("item {i}"));
                let reply = channel
                    .call("Queue.push", payload.clone(), CallOptions::new())
                    .await;
                (payload, reply)
            })
        })
        .collect();
    // Two run on the old server (its limit); eight wait, unsent, in the client.
    assert!(support::eventually(Duration::from_secs(5), || runs.total() == 2).await);
    proxy.set_upstream(new.local_addr());
    let draining = tokio::spawn(old.shutdown());
    // The queued calls go to the new server while the old one finishes its two.
    assert!(support::eventually(Duration::from_secs(5), || runs.total() == 10).await);
    open.store(true, Ordering::SeqCst);
    gate.notify_waiters();
    for call in calls {
        let (payload, reply) = call.await.unwrap();
        assert_eq!(reply.unwrap().payload, payload);
        assert_eq!(runs.of(&payload), 1, "{payload:?}");
    }
    draining.await.unwrap();
    new.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_server_under_load_gets_retries_only_within_the_budget() {
    let attempts = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&attempts);
    let server = Server::builder()
        .register("Sick.call", move |_ctx: CallContext, _payload: Bytes| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move { Err(Status::new(StatusCode::UNAVAILABLE, "down")) }
        })
        .build()
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let channel = Channel::builder(server.local_addr()).build();
    // 250 idempotent calls over 5 s, each failing UNAVAILABLE (EXECUTED) on every attempt.
    let mut calls = Vec::new();
    for _ in 0..250 {
        let channel = channel.clone();
        calls.push(tokio::spawn(async move {
            let options = CallOptions::new().idempotent(true);
            channel.call("Sick.call", Bytes::new(), options).await
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut budget_stops = 0;
    for call in calls {
        let err = call.await.unwrap().unwrap_err();
        assert_eq!(
            (err.code(), err.outcome()),
            (StatusCode::UNAVAILABLE, Outcome::Executed)
        );
        if stop_reason(&err) == Some(StopReason::BudgetExhausted) {
            budget_stops += 1;
        }
    }
    // Without a budget: 3 attempts each, 750. The budget allows 20 % of 250 calls plus its
    // reserve of 10 per second over the 10 s window.
    let attempts = attempts.load(Ordering::SeqCst);
    let allowed = 250 + 250 / 5 + 100;
    assert!(
        attempts <= allowed,
        "{attempts} attempts, budget allows {allowed}"
    );
    assert!(attempts > 250, "some retries happened: {attempts}");
    assert!(
        budget_stops > 100,
        "{budget_stops} calls stopped by the budget"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_down_for_5_s_under_load_is_reconnected_with_backoff_and_no_call_is_lost() {
    let server = support::start(support::echo_builder()).await;
    let proxy = Proxy::start(server.local_addr(), support::chaos_seed("down 5 s"))
        .await
        .unwrap();
    let channel = Channel::builder(proxy.local_addr()).build();
    channel
        .call("Echo.echo", Bytes::new(), CallOptions::new())
        .await
        .unwrap();
    let load = {
        let channel = channel.clone();
        tokio::spawn(async move {
            let mut calls = Vec::new();
            for i in 0..150u32 {
                let channel = channel.clone();
                calls.push(tokio::spawn(async move {
                    let payload = Bytes::from(format!("{i}"));
                    let options = CallOptions::new()
                        .idempotent(true)
                        .timeout(Duration::from_secs(15));
                    (
                        payload.clone(),
                        channel.call("Echo.echo", payload, options).await,
                    )
                }));
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            calls
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Down: established connections reset, new ones reset at once.
    let down_at = Instant::now();
    proxy.refuse_new(true);
    proxy.cut_all(DropMode::Reset);
    let accepted_before = proxy.accepted();
    let mut attempts_at = Vec::new();
    let mut seen = accepted_before;
    while down_at.elapsed() < Duration::from_secs(5) {
        let now = proxy.accepted();
        if now > seen {
            attempts_at.push(down_at.elapsed());
            seen = now;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    proxy.refuse_new(false);
    let attempts = proxy.accepted() - accepted_before;
    // Backoff 100 ms ×1.6 up to 500 ms (±20 %): about 13 attempts in 5 s, whatever the number
    // of waiting calls.
    assert!(
        (8..=17).contains(&attempts),
        "{attempts} connection attempts: {attempts_at:?}"
    );
    let gaps: Vec<Duration> = attempts_at.windows(2).map(|w| w[1] - w[0]).collect();
    for (i, gap) in gaps.iter().enumerate() {
        // The backoff's floor (80 % of its ceiling), less a little for the 2 ms polling here.
        let ceiling = Duration::from_millis(100)
            .mul_f64(1.6f64.powi(i32::try_from(i).unwrap_or(i32::MAX)))
            .min(Duration::from_millis(500));
        assert!(
            *gap + Duration::from_millis(10) >= ceiling.mul_f64(0.8),
            "attempts are not spread out: {attempts_at:?}"
        );
    }
    for call in load.await.unwrap() {
        let (payload, result) = call.await.unwrap();
        assert_eq!(result.expect("a call was lost").payload, payload);
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_stay_inside_a_300_ms_deadline() {
    let runs = Runs::default();
    let record = runs.clone();
    let server = Server::builder()
        .register("Flaky.twice", move |_ctx: CallContext, payload: Bytes| {
            record.record(&payload);
            let failing = record.of(&payload) <= 2;
            async move {
                if failing {
                    Err(Status::new(StatusCode::UNAVAILABLE, "not yet"))
                } else {
                    Ok(payload)
                }
            }
        })
        .register(
            "Flaky.slow",
            |_ctx: CallContext, _payload: Bytes| async move {
                tokio::time::sleep(Duration::from_millis(120)).await;
                Err(Status::new(StatusCode::UNAVAILABLE, "slow and failing"))
            },
        )
        .build()
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let channel = Channel::builder(server.local_addr()).build();
    let deadline = Duration::from_millis(300);
    let slack = Duration::from_millis(60);
    // Fails twice, then succeeds: the attempts fit (backoff at most 50 + 100 ms).
    let calls: Vec<_> = (0..20u32)
        .map(|i| {
            let channel = channel.clone();
            tokio::spawn(async move {
                let payload = Bytes::from(format!("{i}"));
                let started = Instant::now();
                let options = CallOptions::new().idempotent(true).timeout(deadline);
                let result = channel.call("Flaky.twice", payload.clone(), options).await;
                (payload, result, started.elapsed())
            })
        })
        .collect();
    for call in calls {
        let (payload, result, took) = call.await.unwrap();
        assert_eq!(result.unwrap().payload, payload);
        assert_eq!(runs.of(&payload), 3);
        assert!(took <= deadline + slack, "{took:?}");
    }
    // 120 ms per failing attempt: a third cannot fit, and no attempt runs past the deadline.
    for _ in 0..5 {
        let started = Instant::now();
        let options = CallOptions::new().idempotent(true).timeout(deadline);
        let err = channel
            .call("Flaky.slow", Bytes::new(), options)
            .await
            .unwrap_err();
        let took = started.elapsed();
        assert!(took <= deadline + slack, "{took:?}");
        assert_eq!(err.code(), StatusCode::UNAVAILABLE, "{err:?}");
        assert!(
            matches!(stop_reason(&err), Some(StopReason::NoTimeLeft { .. })),
            "{err:?}"
        );
    }
    server.shutdown().await;
}

/// Latency percentile (0 to 100) of a sorted sample.
fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(p * (sorted.len() - 1) + 50) / 100]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedging_bounds_latency_when_the_first_connection_stalls() {
    let runs = Runs::default();
    let record = runs.clone();
    let server = Server::builder()
        .register("Echo.echo", move |_ctx: CallContext, payload: Bytes| {
            record.record(&payload);
            async move { Ok(payload) }
        })
        .build()
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let proxy = Proxy::start(server.local_addr(), support::chaos_seed("hedge"))
        .await
        .unwrap();
    let hedge_after = Duration::from_millis(50);
    let channel = Channel::builder(proxy.local_addr())
        .hedge_policy(HedgePolicy::after(hedge_after))
        .build();
    let normal = Channel::builder(proxy.local_addr()).build();
    let idempotent = || CallOptions::new().idempotent(true);
    channel
        .call("Echo.echo", Bytes::new(), idempotent())
        .await
        .unwrap();
    // The first connection (the channel's) answers 1 s late from now on.
    assert!(proxy.set_connection_faults(
        0,
        Direction::ServerToClient,
        Faults::none().latency(Duration::from_secs(1), Duration::ZERO),
    ));
    let mut normal_latency = Vec::new();
    let mut hedged_latency = Vec::new();
    for i in 0..40u32 {
        let started = Instant::now();
        normal
            .call("Echo.echo", Bytes::new(), CallOptions::new())
            .await
            .unwrap();
        normal_latency.push(started.elapsed());

        let payload = Bytes::from(format!("{i}"));
        let started = Instant::now();
        let reply = channel
            .call("Echo.echo", payload.clone(), idempotent())
            .await
            .unwrap();
        hedged_latency.push(started.elapsed());
        assert_eq!(reply.payload, payload);
    }
    normal_latency.sort();
    hedged_latency.sort();
    let bound = hedge_after + percentile(&normal_latency, 99) + Duration::from_millis(30);
    let p99 = percentile(&hedged_latency, 99);
    assert!(
        p99 < bound,
        "hedged p99 {p99:?}, bound {bound:?} (stall 1 s)"
    );
    // Non-idempotent calls are never hedged: they wait out the stall.
    let started = Instant::now();
    channel
        .call("Echo.echo", Bytes::from_static(b"once"), CallOptions::new())
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(runs.of(b"once"), 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_losing_hedge_is_cancelled_on_the_server() {
    let dropped = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&dropped);
    let server = Server::builder()
        .register("Echo.echo", move |ctx: CallContext, payload: Bytes| {
            let flag = Arc::new(AtomicBool::new(false));
            let guard = support::DropFlag(Arc::clone(&flag));
            let seen = Arc::clone(&seen);
            async move {
                // The first attempt stalls in the server; the hedge (attempt 2) answers at once.
                if ctx.attempt() == 1 {
                    struct CountDrop(Arc<AtomicUsize>);
                    impl Drop for CountDrop {
                        fn drop(&mut self) {
                            self.0.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    let _count = CountDrop(seen);
                    tokio::time::sleep(Duration::from_secs(10)).await;
                }
                drop(guard);
                Ok(payload)
            }
        })
        .build()
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let channel = Channel::builder(server.local_addr())
        .hedge_policy(HedgePolicy::after(Duration::from_millis(30)))
        .build();
    let started = Instant::now();
    let reply = channel
        .call(
            "Echo.echo",
            Bytes::from_static(b"x"),
            CallOptions::new().idempotent(true),
        )
        .await
        .unwrap();
    assert_eq!(reply.payload, "x");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(
        support::eventually(Duration::from_secs(2), || dropped.load(Ordering::SeqCst)
            == 1)
        .await,
        "the stalled first attempt was not cancelled on the server"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_wait_for_a_server_that_comes_up_or_fail_fast_when_told() {
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr: SocketAddr = unused.local_addr().unwrap();
    drop(unused);
    let channel = Channel::builder(addr).build();
    let waiting = {
        let channel = channel.clone();
        tokio::spawn(async move {
            let options = CallOptions::new().timeout(Duration::from_secs(5));
            channel
                .call("Echo.echo", Bytes::from_static(b"late"), options)
                .await
        })
    };
    // Fail-fast calls fail at once while connecting fails.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let started = Instant::now();
    let err = channel
        .call(
            "Echo.echo",
            Bytes::new(),
            CallOptions::new().wait_for_ready(false),
        )
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_millis(50),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        (err.code(), err.outcome()),
        (StatusCode::UNAVAILABLE, Outcome::NotSent)
    );
    assert!(err.has_cause::<keel::client::NoConnection>());
    assert_eq!(err.kind(), keel::ErrorKind::Connect);
    // The server comes up on that address: the waiting call goes through.
    let server = support::echo_builder().build().bind(addr).await.unwrap();
    assert_eq!(waiting.await.unwrap().unwrap().payload, "late");
    server.shutdown().await;
    // A call whose deadline passes while the server stays down fails NOT_SENT at its deadline.
    let down = Channel::builder(addr).build();
    let started = Instant::now();
    let err = down
        .call(
            "Echo.echo",
            Bytes::new(),
            CallOptions::new().timeout(Duration::from_millis(300)),
        )
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert_eq!(
        (err.code(), err.outcome()),
        (StatusCode::UNAVAILABLE, Outcome::NotSent)
    );
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_millis(450),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_attempt_carries_its_number_and_the_remaining_deadline() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let server = Server::builder()
        .register("Flaky.once", move |ctx: CallContext, payload: Bytes| {
            let left = ctx
                .deadline()
                .map(|d| d.remaining(tokio::time::Instant::now()))
                .unwrap_or_default();
            record.lock().unwrap().push((ctx.attempt(), left));
            let first = ctx.attempt() == 1;
            async move {
                if first {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Err(Status::new(StatusCode::UNAVAILABLE, "first fails"))
                } else {
                    Ok(payload)
                }
            }
        })
        .build()
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let channel = Channel::builder(server.local_addr()).build();
    let options = CallOptions::new()
        .idempotent(true)
        .timeout(Duration::from_secs(2));
    channel
        .call("Flaky.once", Bytes::new(), options)
        .await
        .unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [1, 2]);
    let (first_left, second_left) = (seen[0].1, seen[1].1);
    assert!(first_left <= Duration::from_secs(2) && first_left > Duration::from_millis(1800));
    assert!(
        second_left + Duration::from_millis(100) <= first_left,
        "the retry got the remaining budget: {first_left:?} then {second_left:?}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dedupe_retry_never_goes_to_a_server_that_cannot_deduplicate_it() {
    let runs = Runs::default();
    let server = |dedupe: bool| {
        let record = runs.clone();
        let builder = Server::builder().heartbeat_interval(Duration::from_millis(100));
        let builder = if dedupe {
            builder.dedupe(DedupeConfig::new())
        } else {
            builder
        };
        builder
            .register("Ledger.append", move |_ctx: CallContext, payload: Bytes| {
                record.record(&payload);
                async move { Ok(payload) }
            })
            .build()
    };
    // A restart: the response is lost, and the retry would reach a new instance (an empty window).
    let first = server(true).bind("127.0.0.1:0").await.unwrap();
    let restarted = server(true).bind("127.0.0.1:0").await.unwrap();
    // No window at all.
    let plain = server(false).bind("127.0.0.1:0").await.unwrap();
    for (name, to) in [
        ("restarted", restarted.local_addr()),
        ("no window", plain.local_addr()),
    ] {
        let proxy = Proxy::start(first.local_addr(), support::chaos_seed(name))
            .await
            .unwrap();
        let channel = Channel::builder(proxy.local_addr())
            .heartbeat_interval(Duration::from_millis(100))
            .build();
        let options = || {
            CallOptions::new()
                .dedupe(true)
                .timeout(Duration::from_secs(5))
        };
        channel
            .call(
                "Ledger.append",
                Bytes::from(format!("warm-up {name}")),
                options(),
            )
            .await
            .unwrap();
        proxy.set_connection_faults(0, Direction::ServerToClient, Faults::none().blackhole());
        proxy.set_upstream(to);
        let payload = Bytes::from(format!("entry {name}"));
        let err = channel
            .call("Ledger.append", payload.clone(), options())
            .await
            .unwrap_err();
        assert_eq!(
            (err.code(), err.outcome()),
            (StatusCode::UNAVAILABLE, Outcome::MaybeExecuted),
            "{name}: {err:?}"
        );
        assert_eq!(
            stop_reason(&err),
            Some(StopReason::NoDedupeWindow),
            "{name}: {err:?}"
        );
        assert_eq!(
            runs.of(&payload),
            1,
            "{name}: ran once, on the first server"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hedge_that_cannot_get_a_second_connection_goes_on_the_first() {
    let server = Server::builder()
        .register("Echo.echo", |ctx: CallContext, payload: Bytes| async move {
            // The first attempt stalls in the server; any later one answers at once.
            if ctx.attempt() == 1 {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            Ok(payload)
        })
        .build()
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let proxy = Proxy::start(
        server.local_addr(),
        support::chaos_seed("hedge, one connection"),
    )
    .await
    .unwrap();
    let channel = Channel::builder(proxy.local_addr())
        .hedge_policy(HedgePolicy::after(Duration::from_millis(30)))
        .build();
    // Opens the connection (attempt 1 stalls, so the call ends at its deadline).
    let warm_up = CallOptions::new().timeout(Duration::from_millis(50));
    channel
        .call("Echo.echo", Bytes::new(), warm_up)
        .await
        .unwrap_err();
    // No second connection can be made: the hedge must not wait for one.
    proxy.refuse_new(true);
    let started = Instant::now();
    let reply = channel
        .call(
            "Echo.echo",
            Bytes::from_static(b"x"),
            CallOptions::new()
                .idempotent(true)
                .timeout(Duration::from_secs(3)),
        )
        .await
        .unwrap();
    assert_eq!(reply.payload, "x");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        proxy.accepted(),
        2,
        "the connection, and one refused attempt at a second"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fail_fast_channel_reconnects_to_a_restarted_server_within_one_backoff_step() {
    let mut server = ServerProcess::start(support::echo_example(), Vec::<String>::new())
        .await
        .unwrap();
    // No jitter, so the test knows when each connection attempt is due.
    let backoff = keel::client::Backoff::new(
        Duration::from_millis(100),
        1.6,
        Duration::from_secs(10),
        keel::client::Jitter::None,
    );
    let channel = Channel::builder(server.addr())
        .wait_for_ready(false)
        .reconnect_backoff(backoff)
        .build();
    let echo = |i: u32| {
        let channel = channel.clone();
        async move {
            let options = CallOptions::new().timeout(Duration::from_millis(500));
            let sent = args(Bytes::from(format!("call {i}")));
            channel.call("Echo.echo_bytes", sent, options).await
        }
    };
    echo(0).await.unwrap();
    server.kill().await.unwrap();
    let killed = Instant::now();
    // Fail-fast calls every 10 ms while the server is down and after it is back.
    let mut i = 1;
    let mut restarted_at = None;
    let first_success = loop {
        if restarted_at.is_none() && killed.elapsed() >= Duration::from_millis(300) {
            server.restart().await.unwrap();
            restarted_at = Some(killed.elapsed());
        }
        let result = echo(i).await;
        i += 1;
        match result {
            Ok(_) if restarted_at.is_some() => break killed.elapsed(),
            Ok(_) => panic!("a call succeeded while the server was down"),
            Err(err) => assert_eq!(
                (err.code(), err.outcome()),
                (StatusCode::UNAVAILABLE, Outcome::NotSent),
                "{err:?}"
            ),
        }
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "no call succeeded within 5 s of the kill"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // Attempts follow the backoff from the kill: 0, 100, 260, 516, 926 ms... The first attempt
    // due after the restart connects; allow 100 ms for the connection and the call.
    let restarted_at = restarted_at.unwrap();
    let mut due = Duration::ZERO;
    let mut step = 0;
    while due < restarted_at {
        due += backoff.ceiling(step);
        step += 1;
    }
    assert!(
        first_success <= due + Duration::from_millis(100),
        "back at {restarted_at:?}, attempt due at {due:?}, first success at {first_success:?}"
    );
}
