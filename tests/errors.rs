//! What a failed call says: its message names the real cause once, and queries answer what a
//! caller decides from (did it connect, may it have run, why did retrying stop) without walking
//! the cause chain.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use keel::client::{Backoff, BuildError, Jitter, StopReason};
use keel::core::CallContext;
use keel::{
    Bytes, CallOptions, Channel, ErrorKind, Outcome, RetryPolicy, Server, Status, StatusCode,
};
use support::{Counter, start};
use tokio::io::AsyncWriteExt;

/// An address nothing listens on: a port bound and released.
fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

fn short() -> CallOptions {
    CallOptions::new().timeout(Duration::from_millis(300))
}

async fn call(channel: &Channel, options: CallOptions) -> keel::Error {
    channel
        .call("Echo.echo", Bytes::new(), options)
        .await
        .unwrap_err()
}

#[tokio::test]
async fn a_refused_connection_says_no_server_answered_and_why_once() {
    let addr = closed_port();
    let waiting = Channel::builder(addr).build();
    let err = call(&waiting, short()).await;
    assert_eq!(
        err.to_string(),
        format!(
            "UNAVAILABLE (NOT_SENT): no server answered at {addr} within the call's deadline: \
             Connection refused (os error 111)"
        )
    );
    assert!(err.is_connect());
    assert!(!err.may_have_run());
    assert!(!err.is_cancelled());
    assert_eq!(err.retry_stopped(), None);
    // The alternate form lists the chain, each cause once.
    assert_eq!(
        format!("{err:#}"),
        format!(
            "{err}\n  caused by: could not connect to {addr}\n  caused by: Connection refused \
             (os error 111)"
        )
    );

    let failing_fast = Channel::builder(addr).wait_for_ready(false).build();
    let err = call(&failing_fast, short()).await;
    assert_eq!(
        err.to_string(),
        format!(
            "UNAVAILABLE (NOT_SENT): no connection to {addr} (the call fails fast: \
             wait_for_ready is off): Connection refused (os error 111)"
        )
    );
    assert_eq!(
        (err.kind(), err.outcome()),
        (ErrorKind::Connect, Outcome::NotSent)
    );
}

#[tokio::test]
async fn a_peer_that_is_not_keel_is_named_with_the_byte_that_gave_it_away() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let web = tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let _ = socket.write_all(b"<html>hello</html>\n").await;
        }
    });
    let err = call(&Channel::builder(addr).build(), short()).await;
    assert_eq!(
        err.to_string(),
        format!(
            "UNAVAILABLE (NOT_SENT): the peer at {addr} is not a keel server: bad magic: byte 0 \
             of the preface is 0x3c"
        )
    );
    assert!(err.is_connect());
    web.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_retry_says_why_and_the_call_may_have_run() {
    let runs = Counter::default();
    let counted = runs.clone();
    let server = start(Server::builder().register(
        "Echo.echo",
        move |_ctx: CallContext, _payload: Bytes| {
            counted.bump();
            async { Err(Status::new(StatusCode::UNAVAILABLE, "warming up")) }
        },
    ))
    .await;
    let channel = Channel::builder(server.local_addr()).build();
    let policy = RetryPolicy::new().max_attempts(2).backoff(Backoff::new(
        Duration::from_millis(1),
        1.0,
        Duration::from_millis(1),
        Jitter::None,
    ));
    let err = call(&channel, short().idempotent(true).retry_policy(policy)).await;
    assert_eq!(runs.get(), 2);
    assert_eq!(
        err.to_string(),
        "UNAVAILABLE (EXECUTED): warming up (not retried: 2 attempts made)"
    );
    assert_eq!(
        err.retry_stopped(),
        Some(StopReason::AttemptsExhausted { attempts: 2 })
    );
    assert!(err.may_have_run());
    assert!(!err.is_connect());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_status_is_reported_as_cancelled() {
    let server = start(Server::builder().register(
        "Echo.echo",
        |_ctx: CallContext, _payload: Bytes| async {
            Err(Status::new(StatusCode::CANCELLED, "the job was withdrawn"))
        },
    ))
    .await;
    let err = call(&Channel::builder(server.local_addr()).build(), short()).await;
    assert!(err.is_cancelled());
    assert_eq!(
        err.to_string(),
        "CANCELLED (EXECUTED): the job was withdrawn"
    );
    server.shutdown().await;
}

#[test]
fn building_a_channel_outside_a_tokio_runtime_says_a_runtime_is_needed() {
    let err = Channel::builder(closed_port()).try_build().unwrap_err();
    assert!(matches!(err, BuildError::NoRuntime));
    assert_eq!(
        err.to_string(),
        "keel needs a tokio runtime: build the channel and make its calls inside one (under \
         #[tokio::main], say, with tokio's \"rt-multi-thread\" and \"macros\" features)"
    );
    let panic = std::panic::catch_unwind(|| Channel::builder(closed_port()).build()).unwrap_err();
    assert_eq!(panic.downcast_ref::<String>(), Some(&err.to_string()));
}

#[test]
fn a_call_polled_by_another_executor_fails_with_the_same_message() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let channel = runtime.block_on(async { Channel::builder(closed_port()).build() });
    let err = futures::executor::block_on(call(&channel, short()));
    assert_eq!(
        (err.code(), err.outcome(), err.kind()),
        (
            StatusCode::FAILED_PRECONDITION,
            Outcome::NotSent,
            ErrorKind::Local
        )
    );
    assert!(
        err.to_string().contains("keel needs a tokio runtime"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passed_deadline_is_maybe_executed_whichever_side_notices_first() {
    let server = start(
        Server::builder()
            .register("Slow.sleep", |_ctx: CallContext, _payload: Bytes| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(Bytes::new())
            })
            // What the server answers when its own timer fires first: the handler was stopped.
            .register("Slow.stopped", |_ctx: CallContext, _payload: Bytes| async {
                Err(Status::new(
                    StatusCode::DEADLINE_EXCEEDED,
                    "deadline exceeded",
                ))
            }),
    )
    .await;
    let channel = Channel::builder(server.local_addr()).build();
    for method in ["Slow.sleep", "Slow.stopped"] {
        let err = channel
            .call(
                method,
                Bytes::new(),
                CallOptions::new().timeout(Duration::from_millis(100)),
            )
            .await
            .unwrap_err();
        assert_eq!(
            (err.code(), err.outcome(), err.kind()),
            (
                StatusCode::DEADLINE_EXCEEDED,
                Outcome::MaybeExecuted,
                ErrorKind::Deadline
            ),
            "{method}"
        );
        assert!(err.is_deadline_exceeded() && err.may_have_run(), "{method}");
        assert_eq!(
            err.to_string(),
            "DEADLINE_EXCEEDED (MAYBE_EXECUTED): deadline exceeded"
        );
    }
    server.shutdown().await;
}
