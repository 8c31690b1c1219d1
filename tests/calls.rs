//! Calls over real TCP on 127.0.0.1: multiplexing, deadlines, cancellation, panics, limits.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use keel::core::CallContext;
use keel::{CallOptions, Channel, Outcome, Server, Status, StatusCode};
use support::{Counter, DropFlag, echo_builder, eventually, start};
use tokio::sync::Notify;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_calls_from_eight_tasks_complete_out_of_order_each_to_its_own_caller() {
    // Handlers sleep 0–3 ms chosen by the payload, so responses leave out of order.
    let server = start(Server::builder().register(
        "Echo.slow_echo",
        |_ctx: CallContext, payload: Bytes| async move {
            let delay = u64::from(payload.last().copied().unwrap_or(0) % 4);
            tokio::time::sleep(Duration::from_millis(delay)).await;
            Ok(payload)
        },
    ))
    .await;
    let channel = Channel::builder(server.local_addr()).build();
    let tasks: Vec<_> = (0..8u32)
        .map(|task| {
            let channel = channel.clone();
            tokio::spawn(async move {
                futures::stream::iter(0..1250u32)
                    .map(|i| {
                        let channel = channel.clone();
                        async move {
                            let sent = Bytes::from(format!("task {task} call {i} {}", i * 7919));
                            let reply = channel
                                .call("Echo.slow_echo", sent.clone(), CallOptions::new())
                                .await
                                .unwrap();
                            assert_eq!(reply.payload, sent, "a reply reached the wrong call");
                        }
                    })
                    .buffer_unordered(32)
                    .count()
                    .await
            })
        })
        .collect();
    let mut done = 0;
    for task in tasks {
        done += task.await.unwrap();
    }
    assert_eq!(done, 10_000);
    assert!(eventually(Duration::from_secs(1), || channel.in_flight() == 0).await);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_fails_the_call_at_the_deadline_and_drops_the_handler() {
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&dropped);
    let server = start(echo_builder().register(
        "Slow.sleep",
        move |_ctx: CallContext, _payload: Bytes| {
            let guard = DropFlag(Arc::clone(&flag));
            async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                drop(guard);
                Ok(Bytes::from_static(b"late"))
            }
        },
    ))
    .await;
    let channel = Channel::builder(server.local_addr()).build();
    // Connect first so the measurement is of the call alone.
    channel
        .call("Echo.echo", Bytes::new(), CallOptions::new())
        .await
        .unwrap();

    let started = Instant::now();
    let err = channel
        .call(
            "Slow.sleep",
            Bytes::new(),
            CallOptions::new().timeout(Duration::from_millis(100)),
        )
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.code(), StatusCode::DEADLINE_EXCEEDED);
    // The client's own timer (MAYBE_EXECUTED) normally wins; on a loaded machine the server's
    // DEADLINE_EXCEEDED response for the started handler (EXECUTED) can arrive first. Both are
    // true and neither allows a retry of a non-idempotent call (PROTOCOL.md §9.1).
    assert!(
        matches!(err.outcome(), Outcome::MaybeExecuted | Outcome::Executed),
        "{err:?}"
    );
    assert!(took >= Duration::from_millis(100), "failed early: {took:?}");
    assert!(took <= Duration::from_millis(150), "failed late: {took:?}");
    assert!(
        eventually(Duration::from_millis(200), || dropped
            .load(Ordering::SeqCst))
        .await,
        "the server did not drop the handler"
    );
    // The late response never reaches another call.
    for i in 0..20u8 {
        let reply = channel
            .call("Echo.echo", Bytes::from(vec![i]), CallOptions::new())
            .await
            .unwrap();
        assert_eq!(reply.payload, Bytes::from(vec![i]));
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_call_future_cancels_the_handler_on_the_server() {
    let dropped = Arc::new(AtomicBool::new(false));
    let started = Arc::new(Notify::new());
    let (flag, notify) = (Arc::clone(&dropped), Arc::clone(&started));
    let server = start(Server::builder().register(
        "Slow.forever",
        move |_ctx: CallContext, _payload: Bytes| {
            let guard = DropFlag(Arc::clone(&flag));
            let notify = Arc::clone(&notify);
            async move {
                notify.notify_one();
                std::future::pending::<()>().await;
                drop(guard);
                Ok(Bytes::new())
            }
        },
    ))
    .await;
    let channel = Channel::builder(server.local_addr()).build();
    let call = {
        let channel = channel.clone();
        tokio::spawn(async move {
            channel
                .call("Slow.forever", Bytes::new(), CallOptions::new())
                .await
        })
    };
    tokio::time::timeout(Duration::from_secs(2), started.notified())
        .await
        .unwrap();
    // The client's count is updated by its connection task, which may run a moment after the
    // server started the handler.
    assert!(eventually(Duration::from_secs(1), || channel.in_flight() == 1).await);
    call.abort();
    assert!(
        eventually(Duration::from_secs(1), || dropped.load(Ordering::SeqCst)).await,
        "the server did not drop the handler of the dropped call"
    );
    assert!(eventually(Duration::from_secs(1), || channel.in_flight() == 0).await);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_fails_only_its_own_call() {
    let server = start(echo_builder().register(
        "Bad.panic",
        |_ctx: CallContext, _payload: Bytes| async move {
            panic!("handler bug");
            #[allow(unreachable_code)]
            Ok(Bytes::new())
        },
    ))
    .await;
    let channel = Channel::builder(server.local_addr()).build();
    let slow = {
        let channel = channel.clone();
        tokio::spawn(async move {
            channel
                .call(
                    "Echo.echo",
                    Bytes::from_static(b"alongside"),
                    CallOptions::new(),
                )
                .await
        })
    };
    let err = channel
        .call("Bad.panic", Bytes::new(), CallOptions::new())
        .await
        .unwrap_err();
    assert_eq!(err.code(), StatusCode::INTERNAL);
    assert_eq!(err.outcome(), Outcome::Executed, "the handler did start");
    assert_eq!(slow.await.unwrap().unwrap().payload, "alongside");
    let reply = channel
        .call(
            "Echo.echo",
            Bytes::from_static(b"after"),
            CallOptions::new(),
        )
        .await;
    assert_eq!(reply.unwrap().payload, "after");
    server.shutdown().await;
}

/// A server with `Gate.wait`, whose handlers count their starts and wait for a release.
fn gated(limit: u32) -> (keel::server::ServerBuilder, Counter, Arc<Notify>) {
    let ran = Counter::default();
    let release = Arc::new(Notify::new());
    let (count, gate) = (ran.clone(), Arc::clone(&release));
    let builder = echo_builder().max_concurrent_calls(limit).register(
        "Gate.wait",
        move |_ctx: CallContext, _payload: Bytes| {
            count.bump();
            let gate = Arc::clone(&gate);
            async move {
                gate.notified().await;
                Ok(Bytes::new())
            }
        },
    );
    (builder, ran, release)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_method_is_not_executed() {
    let server = start(echo_builder()).await;
    let channel = Channel::builder(server.local_addr()).build();
    let err = channel
        .call("Echo.missing", Bytes::new(), CallOptions::new())
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.outcome()),
        (StatusCode::UNIMPLEMENTED, Outcome::NotExecuted)
    );
    assert!(err.status().message().contains("Echo.missing"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_concurrency_limit_the_server_refuses_without_running() {
    use keel::codec::{Frame, MethodName, Request, Settings};
    let (builder, ran, release) = gated(2);
    let server = start(builder).await;
    // A peer that ignores the announced limit.
    let (mut raw, announced) =
        support::RawClient::handshake(server.local_addr(), Settings::default()).await;
    assert_eq!(announced.max_concurrent_calls, 2);
    for id in 1..=3 {
        raw.send(Frame::Request(Request::new(
            id,
            MethodName::from_static("Gate.wait"),
            Bytes::new(),
        )))
        .await;
    }
    match raw.recv().await.unwrap().unwrap().unwrap() {
        Frame::Response(r) => {
            assert_eq!(r.call_id, 3);
            assert_eq!(r.status.code(), StatusCode::RESOURCE_EXHAUSTED);
            assert!(r.not_executed);
        }
        other => panic!("expected the refusal of call 3, got {other:?}"),
    }
    assert_eq!(ran.get(), 2, "the refused call never ran");
    release.notify_waiters();
    server.abort().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_holds_calls_beyond_the_servers_limit_until_a_slot_frees() {
    let (builder, ran, release) = gated(2);
    let server = start(builder).await;
    let channel = Channel::builder(server.local_addr()).build();
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let channel = channel.clone();
            tokio::spawn(async move {
                channel
                    .call("Gate.wait", Bytes::new(), CallOptions::new())
                    .await
            })
        })
        .collect();
    assert!(eventually(Duration::from_secs(2), || ran.get() == 2).await);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(ran.get(), 2, "the third call waits on the client, unsent");
    // Free one slot: the held call goes out and runs.
    release.notify_one();
    assert!(eventually(Duration::from_secs(2), || ran.get() == 3).await);
    release.notify_one();
    release.notify_one();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_too_large_for_the_client_is_answered_resource_exhausted() {
    let ran = Counter::default();
    let count = ran.clone();
    let server = start(echo_builder().register(
        "Echo.big",
        move |_ctx: CallContext, _payload: Bytes| {
            count.bump();
            async move { Ok(Bytes::from(vec![7u8; 10_000])) }
        },
    ))
    .await;
    // The client accepts frame bodies of at most 4096 bytes.
    let channel = Channel::builder(server.local_addr())
        .max_frame_size(4096)
        .build();
    let err = channel
        .call("Echo.big", Bytes::new(), CallOptions::new().no_retry())
        .await
        .unwrap_err();
    // The handler ran: EXECUTED, not NOT_EXECUTED.
    assert_eq!(
        (err.code(), err.outcome()),
        (StatusCode::RESOURCE_EXHAUSTED, Outcome::Executed)
    );
    assert!(
        err.status().message().contains("could not be sent"),
        "{err}"
    );
    assert_eq!(ran.get(), 1);
    // The connection is unharmed.
    let reply = channel
        .call("Echo.echo", Bytes::from_static(b"fine"), CallOptions::new())
        .await;
    assert_eq!(reply.unwrap().payload, "fine");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_call_fails_locally_naming_both_sizes() {
    let server = start(echo_builder().max_frame_size(64 * 1024)).await;
    let channel = Channel::builder(server.local_addr()).build();
    let err = channel
        .call(
            "Echo.echo",
            Bytes::from(vec![0u8; 100_000]),
            CallOptions::new(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.outcome()),
        (StatusCode::RESOURCE_EXHAUSTED, Outcome::NotSent)
    );
    assert_eq!(
        err.status().message(),
        "Echo.echo: the request body of 100023 bytes (100000 of them the arguments) exceeds the \
         server's max frame size of 65536 bytes; raise max_frame_size on the server and on the \
         client (the README's \"How large a value can be\")"
    );
    // The connection is unharmed.
    let reply = channel
        .call(
            "Echo.echo",
            Bytes::from(vec![1u8; 60_000]),
            CallOptions::new(),
        )
        .await;
    assert_eq!(reply.unwrap().payload.len(), 60_000);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_see_deadline_metadata_and_peer() {
    let server = start(Server::builder().register(
        "Ctx.describe",
        |ctx: CallContext, _payload: Bytes| async move {
            let left = ctx
                .deadline()
                .map(|d| d.remaining(tokio::time::Instant::now()));
            let ok = left
                .is_some_and(|l| l <= Duration::from_millis(500) && l > Duration::from_millis(300))
                && ctx.metadata().get_str("tenant") == Some("acme")
                && ctx.peer_addr().is_some_and(|p| p.ip().is_loopback())
                && ctx.method() == "Ctx.describe";
            if ok {
                Ok(Bytes::from_static(b"ok"))
            } else {
                Err(Status::new(
                    StatusCode::FAILED_PRECONDITION,
                    format!("{ctx:?}"),
                ))
            }
        },
    ))
    .await;
    let channel = Channel::builder(server.local_addr()).build();
    let mut metadata = keel::Metadata::new();
    metadata.insert(keel::MetadataKey::from_static("tenant"), "acme");
    let reply = channel
        .call(
            "Ctx.describe",
            Bytes::new(),
            CallOptions::new()
                .timeout(Duration::from_millis(500))
                .metadata(metadata),
        )
        .await
        .unwrap();
    assert_eq!(reply.payload, "ok");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_errors_are_executed_with_their_status() {
    let server = start(Server::builder().register(
        "Users.get",
        |_ctx: CallContext, _payload: Bytes| async move {
            Err(Status::new(StatusCode::NOT_FOUND, "no user 7"))
        },
    ))
    .await;
    let channel = Channel::builder(server.local_addr()).build();
    let err = channel
        .call("Users.get", Bytes::new(), CallOptions::new())
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.outcome()),
        (StatusCode::NOT_FOUND, Outcome::Executed)
    );
    assert_eq!(err.to_string(), "NOT_FOUND (EXECUTED): no user 7");
    server.shutdown().await;
}

/// A handler that checks its payload in `start`, before any application code runs.
struct NonEmpty;

impl keel::server::Handler for NonEmpty {
    fn start(
        self: Arc<Self>,
        _ctx: &CallContext,
        payload: Bytes,
    ) -> Result<keel::server::HandlerFuture, Status> {
        if payload.is_empty() {
            return Err(Status::new(StatusCode::INVALID_ARGUMENT, "empty payload"));
        }
        // The server polls the future inside the call's scope.
        Ok(Box::pin(async move {
            let method = keel::server::context::with_current(|c| c.method().to_owned());
            Ok(Bytes::from(method.unwrap_or_default()).into())
        }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_refusing_in_start_is_not_executed_and_its_future_sees_the_context() {
    let server = start(Server::builder().register("Check.non_empty", NonEmpty)).await;
    let channel = Channel::builder(server.local_addr()).build();
    let err = channel
        .call("Check.non_empty", Bytes::new(), CallOptions::new())
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.outcome()),
        (StatusCode::INVALID_ARGUMENT, Outcome::NotExecuted)
    );
    let reply = channel
        .call(
            "Check.non_empty",
            Bytes::from_static(b"x"),
            CallOptions::new(),
        )
        .await;
    assert_eq!(reply.unwrap().payload, "Check.non_empty");
    server.shutdown().await;
}
