//! The server-side dedupe window end to end, over real TCP on 127.0.0.1, with a client played
//! frame by frame so that CANCELs and dropped connections happen exactly where the test says.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rpc_codec::{
    Budget, Cancel, Frame, FrameDecoder, FrameEncoder, Hello, MethodName, Request, Response, Role,
    Settings,
};
use rpc_core::{CallContext, MetadataKey, Status, StatusCode};
use rpc_server::{
    DedupeConfig, Handler, HandlerFuture, REPLAYED_KEY, REQUEST_ID_KEY, Server, ServerBuilder,
    ServerHandle,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_util::codec::{Decoder, Encoder};

// ---- a raw client ----

struct Raw {
    io: TcpStream,
    decoder: FrameDecoder,
    encoder: FrameEncoder,
    buf: BytesMut,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Self {
        let io = TcpStream::connect(addr).await.unwrap();
        io.set_nodelay(true).unwrap();
        let mut raw = Self {
            io,
            decoder: FrameDecoder::new(Role::Client),
            encoder: FrameEncoder::new(),
            buf: BytesMut::new(),
        };
        raw.send(Frame::Hello(Hello::new(Settings::default())))
            .await;
        match raw.next().await {
            Frame::HelloAck(ack) => raw.encoder.set_peer_settings(ack.settings),
            other => panic!("expected HELLO_ACK, got {other:?}"),
        }
        raw
    }

    async fn send(&mut self, frame: Frame) {
        let mut out = BytesMut::new();
        self.encoder.encode(frame, &mut out).unwrap();
        self.io.write_all(&out).await.unwrap();
    }

    async fn call(&mut self, request: Request) {
        self.send(Frame::Request(request)).await;
    }

    async fn cancel(&mut self, call_id: u64) {
        self.send(Frame::Cancel(Cancel { call_id })).await;
    }

    /// The next frame; fails the test after 5 s or when the server closes.
    async fn next(&mut self) -> Frame {
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Some(item) = self.decoder.decode(&mut self.buf).unwrap() {
                    return item.unwrap();
                }
                let n = self.io.read_buf(&mut self.buf).await.unwrap();
                assert!(n > 0, "the server closed the connection");
            }
        })
        .await
        .expect("a frame within 5 s")
    }

    /// The next RESPONSE (PINGs and the like are skipped).
    async fn response(&mut self) -> Response {
        loop {
            if let Frame::Response(response) = self.next().await {
                return response;
            }
        }
    }

    /// Sends `request` and returns its RESPONSE (no other call may be in flight).
    async fn roundtrip(&mut self, request: Request) -> Response {
        let call_id = request.call_id;
        self.call(request).await;
        let response = self.response().await;
        assert_eq!(response.call_id, call_id);
        response
    }
}

fn request(call_id: u64, method: &'static str, request_id: Option<&[u8]>) -> Request {
    let mut request = Request::new(
        call_id,
        MethodName::from_static(method),
        Bytes::from_static(b"args"),
    );
    if let Some(id) = request_id {
        request.metadata.insert(
            MetadataKey::from_static(REQUEST_ID_KEY),
            Bytes::copy_from_slice(id),
        );
    }
    request
}

fn with_budget(mut request: Request, budget: Duration) -> Request {
    request.budget = Budget::from_duration(budget);
    request
}

fn is_replayed(response: &Response) -> bool {
    match response.status.metadata().get(REPLAYED_KEY) {
        Some(value) => {
            assert_eq!(&value[..], b"1");
            true
        }
        None => false,
    }
}

#[track_caller]
fn assert_ok(response: &Response, payload: &str) {
    assert_eq!(response.status.code(), StatusCode::OK, "{response:?}");
    assert_eq!(&response.payload[..], payload.as_bytes());
    assert!(!response.not_executed);
}

#[track_caller]
fn assert_failed(response: &Response, code: StatusCode, not_executed: bool) {
    assert_eq!(response.status.code(), code, "{response:?}");
    assert_eq!(response.not_executed, not_executed, "{response:?}");
}

/// Polls `check` every 5 ms for up to 5 s.
async fn eventually(mut check: impl FnMut() -> bool) {
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(
            tokio::time::Instant::now() < until,
            "condition not met in 5 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---- handlers that count ----

/// Counts runs and completions of a handler; with a gate, each run waits for a permit.
#[derive(Clone, Default)]
struct Probe {
    runs: Arc<AtomicUsize>,
    finished: Arc<AtomicUsize>,
    dropped: Arc<AtomicBool>,
    gate: Option<Arc<Semaphore>>,
}

impl Probe {
    fn gated() -> Self {
        Self {
            gate: Some(Arc::new(Semaphore::new(0))),
            ..Self::default()
        }
    }

    fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }

    fn finished(&self) -> usize {
        self.finished.load(Ordering::SeqCst)
    }

    fn open(&self) {
        self.gate.as_ref().unwrap().add_permits(1);
    }

    /// A handler answering `run N: <payload>`.
    fn handler(&self) -> impl Handler {
        let probe = self.clone();
        move |_ctx: CallContext, payload: Bytes| {
            let probe = probe.clone();
            async move {
                let n = probe.runs.fetch_add(1, Ordering::SeqCst) + 1;
                let _guard = DropFlag(Arc::clone(&probe.dropped));
                if let Some(gate) = &probe.gate {
                    gate.acquire().await.unwrap().forget();
                }
                probe.finished.fetch_add(1, Ordering::SeqCst);
                let payload = String::from_utf8_lossy(&payload).into_owned();
                Ok(Bytes::from(format!("run {n}: {payload}")))
            }
        }
    }
}

struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

async fn serve(builder: ServerBuilder) -> ServerHandle {
    builder.build().bind("127.0.0.1:0").await.unwrap()
}

fn window() -> ServerBuilder {
    Server::builder().dedupe(DedupeConfig::new())
}

// ---- tests ----

#[tokio::test]
async fn the_same_id_twice_runs_once_and_the_second_is_replayed() {
    let probe = Probe::default();
    let server = serve(window().register("T.run", probe.handler())).await;
    let mut raw = Raw::connect(server.local_addr()).await;

    let first = raw.roundtrip(request(1, "T.run", Some(b"id-1"))).await;
    assert_ok(&first, "run 1: args");
    assert!(!is_replayed(&first));

    let second = raw.roundtrip(request(3, "T.run", Some(b"id-1"))).await;
    assert_ok(&second, "run 1: args");
    assert!(is_replayed(&second));
    assert_eq!(probe.runs(), 1);

    // Another id is another call.
    let other = raw.roundtrip(request(5, "T.run", Some(b"id-2"))).await;
    assert_ok(&other, "run 2: args");
    assert!(!is_replayed(&other));
    assert_eq!(probe.runs(), 2);
    server.abort().await;
}

#[tokio::test]
async fn a_request_arriving_while_the_first_runs_joins_it() {
    let probe = Probe::gated();
    let server = serve(window().register("T.run", probe.handler())).await;
    let mut first = Raw::connect(server.local_addr()).await;
    let mut second = Raw::connect(server.local_addr()).await;

    first.call(request(1, "T.run", Some(b"joined"))).await;
    eventually(|| probe.runs() == 1).await;
    second.call(request(1, "T.run", Some(b"joined"))).await;
    // And once more on the first connection.
    first.call(request(2, "T.run", Some(b"joined"))).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    probe.open();

    let mut on_first = [first.response().await, first.response().await];
    on_first.sort_by_key(|r| r.call_id);
    let joined = second.response().await;
    for response in on_first.iter().chain([&joined]) {
        assert_ok(response, "run 1: args");
    }
    assert!(!is_replayed(&on_first[0]));
    assert!(is_replayed(&on_first[1]));
    assert!(is_replayed(&joined));
    assert_eq!(probe.runs(), 1);
    server.abort().await;
}

#[tokio::test]
async fn a_dropped_connection_does_not_stop_the_execution() {
    let probe = Probe::gated();
    let server = serve(window().register("T.run", probe.handler())).await;
    let mut first = Raw::connect(server.local_addr()).await;
    first.call(request(1, "T.run", Some(b"detached"))).await;
    eventually(|| probe.runs() == 1).await;
    drop(first);

    // A retry on a new connection while it still runs joins it...
    let mut retry = Raw::connect(server.local_addr()).await;
    retry.call(request(1, "T.run", Some(b"detached"))).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !probe.dropped.load(Ordering::SeqCst),
        "the execution was dropped"
    );
    probe.open();
    let joined = retry.response().await;
    assert_ok(&joined, "run 1: args");
    assert!(is_replayed(&joined));
    assert_eq!(probe.finished(), 1);

    // ...and one after it finished gets the recorded result.
    let mut late = Raw::connect(server.local_addr()).await;
    let replay = late.roundtrip(request(7, "T.run", Some(b"detached"))).await;
    assert_ok(&replay, "run 1: args");
    assert!(is_replayed(&replay));
    assert_eq!(probe.runs(), 1);
    server.abort().await;
}

#[tokio::test]
async fn an_execution_orphaned_by_its_connection_finishes_and_is_replayed() {
    let probe = Probe::gated();
    let server = serve(window().register("T.run", probe.handler())).await;
    let mut first = Raw::connect(server.local_addr()).await;
    first.call(request(1, "T.run", Some(b"orphan"))).await;
    eventually(|| probe.runs() == 1).await;
    drop(first);
    tokio::time::sleep(Duration::from_millis(50)).await;
    probe.open();
    eventually(|| probe.finished() == 1).await;

    let mut retry = Raw::connect(server.local_addr()).await;
    let replay = retry.roundtrip(request(1, "T.run", Some(b"orphan"))).await;
    assert_ok(&replay, "run 1: args");
    assert!(is_replayed(&replay));
    assert_eq!(probe.runs(), 1);
    server.abort().await;
}

#[tokio::test]
async fn a_cancel_stops_only_the_waiting() {
    let probe = Probe::gated();
    let server = serve(window().register("T.run", probe.handler())).await;
    let mut raw = Raw::connect(server.local_addr()).await;
    raw.call(request(1, "T.run", Some(b"cancelled"))).await;
    eventually(|| probe.runs() == 1).await;
    raw.cancel(1).await;
    let cancelled = raw.response().await;
    assert_eq!(cancelled.call_id, 1);
    // The execution started and goes on: not NOT_EXECUTED.
    assert_failed(&cancelled, StatusCode::CANCELLED, false);
    assert!(!is_replayed(&cancelled));

    // A joined request can be cancelled the same way.
    raw.call(request(2, "T.run", Some(b"cancelled"))).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    raw.cancel(2).await;
    let cancelled = raw.response().await;
    assert_eq!(cancelled.call_id, 2);
    assert_failed(&cancelled, StatusCode::CANCELLED, false);

    assert!(
        !probe.dropped.load(Ordering::SeqCst),
        "the execution was dropped"
    );
    probe.open();
    eventually(|| probe.finished() == 1).await;
    let replay = raw.roundtrip(request(3, "T.run", Some(b"cancelled"))).await;
    assert_ok(&replay, "run 1: args");
    assert!(is_replayed(&replay));
    assert_eq!(probe.runs(), 1);
    server.abort().await;
}

#[tokio::test]
async fn a_waiters_deadline_stops_only_its_waiting() {
    let probe = Probe::gated();
    let server = serve(window().register("T.run", probe.handler())).await;
    let mut raw = Raw::connect(server.local_addr()).await;
    let first = with_budget(
        request(1, "T.run", Some(b"slow")),
        Duration::from_millis(100),
    );
    let first = raw.roundtrip(first).await;
    assert_failed(&first, StatusCode::DEADLINE_EXCEEDED, false);
    // The execution has its own deadline, the first request's: it ended too, and that is the
    // recorded result.
    eventually(|| probe.dropped.load(Ordering::SeqCst)).await;
    let replay = raw.roundtrip(request(2, "T.run", Some(b"slow"))).await;
    assert_failed(&replay, StatusCode::DEADLINE_EXCEEDED, false);
    assert!(is_replayed(&replay));

    // A later request with a shorter deadline than the execution's stops waiting at its own.
    let long = with_budget(request(3, "T.run", Some(b"long")), Duration::from_secs(5));
    raw.call(long).await;
    eventually(|| probe.runs() == 2).await;
    let short = with_budget(
        request(4, "T.run", Some(b"long")),
        Duration::from_millis(50),
    );
    let short = raw.roundtrip(short).await;
    assert_failed(&short, StatusCode::DEADLINE_EXCEEDED, false);
    assert!(!is_replayed(&short));
    probe.open();
    let long = raw.response().await;
    assert_eq!(long.call_id, 3);
    assert_ok(&long, "run 2: args");
    assert_eq!(probe.runs(), 2);
    server.abort().await;
}

#[tokio::test]
async fn requests_outside_the_window_run_every_time() {
    let probe = Probe::default();
    let other = Probe::default();
    let server = serve(
        window()
            .register("T.run", probe.handler())
            .register("T.other", other.handler()),
    )
    .await;
    let mut raw = Raw::connect(server.local_addr()).await;
    let mut call_id = 0;
    let mut next = || {
        call_id += 1;
        call_id
    };

    // Idempotent: not deduplicated, even with an id.
    for _ in 0..2 {
        let mut idempotent = request(next(), "T.run", Some(b"same"));
        idempotent.idempotent = true;
        let response = raw.roundtrip(idempotent).await;
        assert!(!is_replayed(&response));
    }
    assert_eq!(probe.runs(), 2);

    // No id: not deduplicated.
    for _ in 0..2 {
        let response = raw.roundtrip(request(next(), "T.run", None)).await;
        assert!(!is_replayed(&response));
    }
    assert_eq!(probe.runs(), 4);

    // The same id on another method is another entry.
    let response = raw
        .roundtrip(request(next(), "T.run", Some(b"shared")))
        .await;
    assert_ok(&response, "run 5: args");
    let response = raw
        .roundtrip(request(next(), "T.other", Some(b"shared")))
        .await;
    assert_ok(&response, "run 1: args");
    assert!(!is_replayed(&response));
    assert_eq!((probe.runs(), other.runs()), (5, 1));

    // Unknown methods are refused as always, before the window.
    let response = raw.roundtrip(request(next(), "T.nope", Some(b"x"))).await;
    assert_failed(&response, StatusCode::UNIMPLEMENTED, true);
    server.abort().await;
}

#[tokio::test]
async fn without_the_window_the_same_id_runs_twice() {
    let probe = Probe::default();
    let server = serve(Server::builder().register("T.run", probe.handler())).await;
    let mut raw = Raw::connect(server.local_addr()).await;
    let first = raw.roundtrip(request(1, "T.run", Some(b"id"))).await;
    let second = raw.roundtrip(request(2, "T.run", Some(b"id"))).await;
    assert_ok(&first, "run 1: args");
    assert_ok(&second, "run 2: args");
    assert!(!is_replayed(&second));
    server.abort().await;
}

#[tokio::test]
async fn bad_request_ids_are_refused_before_anything_runs() {
    let probe = Probe::default();
    let server = serve(window().register("T.run", probe.handler())).await;
    let mut raw = Raw::connect(server.local_addr()).await;
    let empty = raw.roundtrip(request(1, "T.run", Some(b""))).await;
    assert_failed(&empty, StatusCode::INVALID_ARGUMENT, true);
    assert!(empty.status.message().contains(REQUEST_ID_KEY), "{empty:?}");
    let long = raw.roundtrip(request(2, "T.run", Some(&[7; 65]))).await;
    assert_failed(&long, StatusCode::INVALID_ARGUMENT, true);
    assert_eq!(probe.runs(), 0);

    // 64 bytes is fine; only the first value of the key counts.
    let mut two_values = request(3, "T.run", Some(&[7; 64]));
    two_values.metadata.append(
        MetadataKey::from_static(REQUEST_ID_KEY),
        Bytes::from_static(b""),
    );
    assert_ok(&raw.roundtrip(two_values).await, "run 1: args");
    let replay = raw.roundtrip(request(4, "T.run", Some(&[7; 64]))).await;
    assert_ok(&replay, "run 1: args");
    assert!(is_replayed(&replay));
    assert_eq!(probe.runs(), 1);
    server.abort().await;
}

/// Refuses its first call in `start`, as a handler whose arguments do not decode would.
struct RefusesOnce {
    refused: AtomicBool,
    runs: Arc<AtomicUsize>,
}

impl Handler for RefusesOnce {
    fn start(
        self: Arc<Self>,
        _ctx: &CallContext,
        _payload: Bytes,
    ) -> Result<HandlerFuture, Status> {
        if !self.refused.swap(true, Ordering::SeqCst) {
            return Err(Status::new(StatusCode::INVALID_ARGUMENT, "not today"));
        }
        let runs = Arc::clone(&self.runs);
        Ok(Box::pin(async move {
            let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(Bytes::from(format!("run {n}")).into())
        }))
    }
}

#[tokio::test]
async fn a_refusal_by_start_keeps_no_entry() {
    let runs = Arc::new(AtomicUsize::new(0));
    let handler = RefusesOnce {
        refused: AtomicBool::new(false),
        runs: Arc::clone(&runs),
    };
    let server = serve(window().register("T.refuse", handler)).await;
    let mut raw = Raw::connect(server.local_addr()).await;
    let refused = raw.roundtrip(request(1, "T.refuse", Some(b"r"))).await;
    assert_failed(&refused, StatusCode::INVALID_ARGUMENT, true);
    assert!(!is_replayed(&refused));

    let ran = raw.roundtrip(request(2, "T.refuse", Some(b"r"))).await;
    assert_ok(&ran, "run 1");
    assert!(!is_replayed(&ran));
    let replay = raw.roundtrip(request(3, "T.refuse", Some(b"r"))).await;
    assert_ok(&replay, "run 1");
    assert!(is_replayed(&replay));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    server.abort().await;
}

#[tokio::test]
async fn a_panic_is_recorded_as_internal_and_replayed() {
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&runs);
    let server = serve(
        window().register("T.panic", move |_ctx: CallContext, _payload: Bytes| {
            let runs = Arc::clone(&counted);
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                panic!("boom");
            }
        }),
    )
    .await;
    let mut raw = Raw::connect(server.local_addr()).await;
    let first = raw.roundtrip(request(1, "T.panic", Some(b"p"))).await;
    assert_failed(&first, StatusCode::INTERNAL, false);
    assert!(!is_replayed(&first));
    let replay = raw.roundtrip(request(2, "T.panic", Some(b"p"))).await;
    assert_failed(&replay, StatusCode::INTERNAL, false);
    assert!(is_replayed(&replay));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    server.abort().await;
}

#[tokio::test]
async fn a_window_full_of_running_executions_refuses_new_ids() {
    let probe = Probe::gated();
    let server = serve(
        Server::builder()
            .dedupe(DedupeConfig::new().max_entries(1))
            .register("T.run", probe.handler()),
    )
    .await;
    let mut raw = Raw::connect(server.local_addr()).await;
    raw.call(request(1, "T.run", Some(b"a"))).await;
    eventually(|| probe.runs() == 1).await;
    let full = raw.roundtrip(request(2, "T.run", Some(b"b"))).await;
    assert_failed(&full, StatusCode::RESOURCE_EXHAUSTED, true);
    // Requests without an id are not affected.
    probe.open();
    let response = raw.response().await;
    assert_eq!(response.call_id, 1);
    probe.open();
    assert_ok(
        &raw.roundtrip(request(3, "T.run", None)).await,
        "run 2: args",
    );
    // Finished, "a" can be evicted to make room for "b".
    probe.open();
    assert_ok(
        &raw.roundtrip(request(4, "T.run", Some(b"b"))).await,
        "run 3: args",
    );
    server.abort().await;
}

#[tokio::test]
async fn a_hard_stop_drops_detached_executions() {
    let probe = Probe::gated();
    let server = serve(window().register("T.run", probe.handler())).await;
    let mut raw = Raw::connect(server.local_addr()).await;
    raw.call(request(1, "T.run", Some(b"stopped"))).await;
    eventually(|| probe.runs() == 1).await;
    drop(raw);
    tokio::time::timeout(Duration::from_secs(5), server.abort())
        .await
        .expect("abort resolves");
    eventually(|| probe.dropped.load(Ordering::SeqCst)).await;
    assert_eq!(probe.finished(), 0);
}

#[tokio::test]
async fn a_graceful_shutdown_waits_for_waiters_and_detached_executions() {
    let probe = Probe::gated();
    let server = serve(window().register("T.run", probe.handler())).await;
    let mut waiting = Raw::connect(server.local_addr()).await;
    waiting.call(request(1, "T.run", Some(b"waited"))).await;
    let mut orphan = Raw::connect(server.local_addr()).await;
    orphan.call(request(1, "T.run", Some(b"orphaned"))).await;
    eventually(|| probe.runs() == 2).await;
    drop(orphan);

    let shutdown = tokio::spawn(server.shutdown());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!shutdown.is_finished());
    probe.open();
    probe.open();
    let response = waiting.response().await;
    assert_eq!(response.call_id, 1);
    assert!(response.status.is_ok(), "{response:?}");
    tokio::time::timeout(Duration::from_secs(5), shutdown)
        .await
        .expect("shutdown resolves")
        .unwrap();
    assert_eq!(probe.finished(), 2);
}
