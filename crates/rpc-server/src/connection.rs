//! One accepted connection: handshake, then a single task that reads, dispatches, runs calls,
//! keeps the heartbeat and writes, until the connection ends.
//!
//! Driving contract: [`Connection`] is a future polled by its own task. Each poll, in order:
//! 1. the stop signal (hard stop: return at once) and the drain signal (send GOAWAY, finish);
//! 2. reading: decode every buffered frame and handle it (dispatch, cancel, answer PING, refuse);
//! 3. completed calls: turn each into its RESPONSE;
//! 4. timers: send PING after an interval of silence, close after the dead bound, end a drain at
//!    its grace period;
//! 5. writing: one vectored write per batch of queued frames.
//!
//! Calls run inside this task (a `FuturesUnordered`), so a call costs no task spawn and no
//! cross-thread wake-up; responses leave in the order calls complete.

use foldhash::HashMap as FastMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rpc_codec::{
    DecodeError, Decoded, Frame, FrameDecoder, FrameEncoder, FrameKind, GoAway, GoAwayCode, Ping,
    Request, Response, Role,
};
use rpc_core::{CallContext, Idempotency, Status, StatusCode};
use rpc_transport::{
    Beat, Heartbeat, IDLE_READ_ROOM, WriteQueue, handshake, poll_fill, poll_timer,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::call::Answer;
use crate::call::{self, CallDone, CallFuture, RunningCall, dispatch, start};
use crate::config::ServerConfig;
use crate::dedupe::{self, Claim, DedupeTable, REQUEST_ID_KEY};
use crate::handler::{Handler, Router};
use crate::handshake_pool::{HandshakePool, Ticket};
use crate::limit::{CallPermit, Limits, Refused};

/// What every connection of a server shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: ServerConfig,
    pub(crate) router: Router,
    /// The dedupe window's table, when it is on: one per server, for all its connections.
    pub(crate) dedupe: Option<Arc<DedupeTable>>,
    /// The concurrency limits across all connections.
    pub(crate) limits: Limits,
    /// The serving slots: one per connection past its handshake.
    pub(crate) slots: Arc<Semaphore>,
    /// The connections in their handshake.
    pub(crate) handshaking: Arc<HandshakePool>,
}

/// What a connection needs to start detached executions (the dedupe window): the server's task
/// tracker, so a graceful shutdown waits for them, and its hard-stop token, which drops them.
#[derive(Debug)]
pub(crate) struct Detach {
    pub(crate) tracker: TaskTracker,
    pub(crate) stop: CancellationToken,
}

/// Frames handled per poll before yielding, so one busy connection cannot starve the others on
/// its worker thread.
const FRAMES_PER_POLL: usize = 256;

/// How long a closing connection keeps trying to write its last frames (GOAWAY) to a peer that
/// may not be reading.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Accepts one connection: handshake under its timeout (or until a newer connection evicts it
/// from the handshake pool), a serving slot, then the connection's life.
pub(crate) async fn serve_connection<S>(
    mut io: S,
    peer: SocketAddr,
    shared: Arc<Shared>,
    ticket: Ticket,
    drain: CancellationToken,
    stop: CancellationToken,
    tracker: TaskTracker,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = &shared.config;
    let local = config.settings();
    // Grown by the handshake as bytes arrive: a socket that sends nothing costs no buffer.
    let mut read_buf = BytesMut::new();
    let mut decoder = FrameDecoder::builder(Role::Server).settings(&local).build();
    let mut encoder = FrameEncoder::new();
    let read = tokio::select! {
        read = handshake::read_hello(
            &mut io, &mut read_buf, &mut decoder, &mut encoder, config.handshake_timeout,
        ) => read,
        () = ticket.evicted().cancelled() => {
            debug!(%peer, "handshake evicted by newer connections");
            let goaway = GoAway::new(
                0,
                GoAwayCode::HANDSHAKE_TIMEOUT,
                "too many connections in their handshake: the oldest was closed",
            );
            refuse(&mut io, &mut encoder, goaway).await;
            return;
        }
        () = stop.cancelled() => return,
    };
    drop(ticket);
    let hello = match read {
        Ok(hello) => hello,
        Err(handshake::HandshakeError::Timeout(after)) => {
            debug!(%peer, ?after, "handshake timed out");
            let goaway = GoAway::new(0, GoAwayCode::HANDSHAKE_TIMEOUT, "no HELLO in time");
            refuse(&mut io, &mut encoder, goaway).await;
            return;
        }
        Err(err) => {
            debug!(%peer, error = %err, "handshake failed");
            return;
        }
    };
    let Ok(slot) = Arc::clone(&shared.slots).try_acquire_owned() else {
        warn!(%peer, "connection limit reached; refusing");
        let goaway = GoAway::new(
            0,
            GoAwayCode::OVERLOADED,
            format!(
                "the server is overloaded: its limit of {} connections is reached",
                config.max_connections
            ),
        );
        refuse(&mut io, &mut encoder, goaway).await;
        return;
    };
    if let Err(err) = handshake::send_hello_ack(&mut io, &mut encoder, local).await {
        debug!(%peer, error = %err, "handshake failed");
        return;
    }
    let heartbeat = local.negotiated_heartbeat(&hello.settings).map(|interval| {
        Heartbeat::new(interval, shared.config.dead_after_intervals, Instant::now())
    });
    let connection = Connection {
        io,
        read_buf,
        decoder,
        queue: WriteQueue::new(encoder),
        calls: FuturesUnordered::new(),
        running: FastMap::default(),
        shared: Arc::clone(&shared),
        peer,
        heartbeat,
        pings_sent: 0,
        timer: Box::pin(tokio::time::sleep(Duration::from_secs(3600))),
        drain: Box::pin(drain.cancelled_owned()),
        stop: Box::pin(stop.clone().cancelled_owned()),
        detach: Detach { tracker, stop },
        phase: Phase::Open,
        goaway_last: None,
        peer_going_away: false,
        cancels: CancelShare::default(),
        backpressured: false,
        shrink_when_idle: false,
    };
    connection.await;
    drop(slot);
}

/// Sends `goaway` to a connection that is not taken, then closes it so the client reads the
/// GOAWAY rather than a reset: our side is shut down and what the client sends is read and
/// dropped until it closes, for at most [`CLOSE_LINGER`].
async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    encoder: &mut FrameEncoder,
    goaway: GoAway,
) {
    let linger = async {
        handshake::send_goaway(io, encoder, goaway).await?;
        io.shutdown().await?;
        let mut sink = [0_u8; 512];
        while io.read(&mut sink).await? > 0 {}
        Ok::<(), handshake::HandshakeError>(())
    };
    let _ = tokio::time::timeout(CLOSE_LINGER, linger).await;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Calls flow.
    Open,
    /// GOAWAY sent: running calls finish (until the deadline), new ones are refused.
    Finishing { until: Instant, read: bool },
    /// Running calls dropped; writing the last frames, then closing.
    Closing { until: Instant },
    /// The peer is gone; close now.
    Closed,
}

/// The rapid-reset defence's counts: recent calls, and those of them cancelled before their
/// handler started. Both are halved whenever the calls reach [`CANCEL_DECAY_CALLS`], so the share
/// follows what the connection does now, not over its whole life.
#[derive(Debug, Default)]
struct CancelShare {
    calls: u32,
    unstarted_cancels: u32,
}

/// Calls after which the rapid-reset counts are halved.
const CANCEL_DECAY_CALLS: u32 = 2048;

impl CancelShare {
    fn called(&mut self) {
        self.calls += 1;
        if self.calls >= CANCEL_DECAY_CALLS {
            self.calls /= 2;
            self.unstarted_cancels /= 2;
        }
    }

    /// Counts a cancel of a call that had not started; true when the limit is passed.
    fn cancelled_unstarted(&mut self, limit: &crate::config::CancelFloodLimit) -> bool {
        self.unstarted_cancels += 1;
        self.unstarted_cancels > limit.min_cancels
            && u64::from(self.unstarted_cancels) * 100
                > u64::from(self.calls) * u64::from(limit.max_share_percent)
    }
}

struct Connection<S> {
    io: S,
    read_buf: BytesMut,
    decoder: FrameDecoder,
    queue: WriteQueue,
    calls: FuturesUnordered<CallFuture>,
    /// Keyed by call id with foldhash (randomly seeded per process; the map is bounded by
    /// MAX_CONCURRENT_CALLS), not sip: hashing was about 3 % of a call's instructions.
    running: FastMap<u64, RunningCall>,
    shared: Arc<Shared>,
    peer: SocketAddr,
    heartbeat: Option<Heartbeat>,
    /// PINGs sent so far: each PING's opaque bytes.
    pings_sent: u64,
    timer: Pin<Box<Sleep>>,
    drain: Pin<Box<WaitForCancellationFutureOwned>>,
    stop: Pin<Box<WaitForCancellationFutureOwned>>,
    detach: Detach,
    phase: Phase,
    /// The last call id of the GOAWAY we sent, if any.
    goaway_last: Option<u64>,
    /// The client sent GOAWAY: it will send no more calls.
    peer_going_away: bool,
    cancels: CancelShare,
    /// Reading is paused because the unsent bytes reached their bound.
    backpressured: bool,
    /// A heartbeat frame (PING or PONG) arrived: once the connection is idle, its buffers
    /// shrink (a heartbeat means there was an interval of silence).
    shrink_when_idle: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    fn config(&self) -> &ServerConfig {
        &self.shared.config
    }

    fn reading(&self) -> bool {
        match self.phase {
            Phase::Open => true,
            Phase::Finishing { read, .. } => read,
            Phase::Closing { .. } | Phase::Closed => false,
        }
    }

    /// Reads and handles frames. Returns whether anything happened.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> bool {
        let mut handled = 0;
        loop {
            loop {
                if !self.reading() {
                    return handled > 0;
                }
                if self.over_unsent_bound() {
                    // Until the client reads: no frame is decoded, no call dispatched, and TCP
                    // pushes back on a client that keeps sending.
                    self.backpressured = true;
                    return handled > 0;
                }
                match tokio_util::codec::Decoder::decode(&mut self.decoder, &mut self.read_buf) {
                    Ok(Some(item)) => {
                        self.handle(item);
                        handled += 1;
                        if handled >= FRAMES_PER_POLL {
                            cx.waker().wake_by_ref();
                            return true;
                        }
                    }
                    Ok(None) => break,
                    Err(err) => {
                        self.connection_error(err);
                        return true;
                    }
                }
            }
            match poll_fill(&mut self.io, &mut self.read_buf, cx) {
                Poll::Pending => return handled > 0,
                Poll::Ready(Ok(0)) => {
                    debug!(peer = %self.peer, "client closed the connection");
                    self.phase = Phase::Closed;
                    return true;
                }
                Poll::Ready(Ok(_)) => {
                    if let Some(heartbeat) = &mut self.heartbeat {
                        heartbeat.received(Instant::now());
                    }
                }
                Poll::Ready(Err(err)) => {
                    debug!(peer = %self.peer, error = %err, "read failed");
                    self.phase = Phase::Closed;
                    return true;
                }
            }
        }
    }

    fn handle(&mut self, item: Decoded) {
        match item {
            Ok(Frame::Request(request)) => self.on_request(request),
            Ok(Frame::Cancel(cancel)) => self.on_cancel(cancel.call_id),
            Ok(Frame::Ping(ping)) => {
                // Answered ahead of every queued response; a newer PING's PONG replaces one
                // not yet written, so a PING flood queues one PONG.
                let _ = self.queue.replace_pong(&Frame::Pong(ping.pong()));
                self.shrink_when_idle = true;
            }
            Ok(Frame::Pong(_)) => self.shrink_when_idle = true,
            Ok(Frame::GoAway(goaway)) => {
                debug!(peer = %self.peer, code = %goaway.code, "client is going away");
                self.peer_going_away = true;
            }
            // Extensions are skipped.
            Ok(_) => {}
            Err(rejected) => self.respond(
                rejected.call_id,
                Err(Status::new(rejected.status_code(), rejected.to_string())),
                true,
                false,
            ),
        }
    }

    fn refuse(&mut self, call_id: u64, code: StatusCode, message: String) {
        self.respond(call_id, Err(Status::new(code, message)), true, false);
    }

    fn on_request(&mut self, request: Request) {
        let id = request.call_id;
        if self.goaway_last.is_some_and(|last| id > last) || self.phase != Phase::Open {
            return self.refuse(id, StatusCode::UNAVAILABLE, "server is draining".into());
        }
        if request.budget.is_expired() {
            return self.refuse(
                id,
                StatusCode::DEADLINE_EXCEEDED,
                "deadline expired before dispatch".into(),
            );
        }
        // Checked as UTF-8 once here, not at each use.
        let method = request.method.as_str();
        let Some((method, handler)) = self.shared.router.get_named(method) else {
            let message = format!("unknown method {method:?}");
            return self.refuse(id, StatusCode::UNIMPLEMENTED, message);
        };
        let (method, handler) = (Arc::clone(method), Arc::clone(handler));
        let limit = self.config().max_concurrent_calls;
        if self.running.len() >= usize::try_from(limit).unwrap_or(usize::MAX) {
            let message = format!("{limit} calls already running on this connection");
            return self.refuse(id, StatusCode::RESOURCE_EXHAUSTED, message);
        }
        let permit = match self.shared.limits.acquire(&request.method) {
            Ok(permit) => permit,
            Err(refused) => {
                let message = match refused {
                    Refused::Server { max } => {
                        format!("the server is overloaded: {max} calls already running")
                    }
                    Refused::Method { max } => {
                        format!("{max} calls of {method:?} already running on the server")
                    }
                };
                return self.refuse(id, StatusCode::RESOURCE_EXHAUSTED, message);
            }
        };
        // The dedupe window: with it off, this one `Option` check is all it costs.
        let dedupe = match &self.shared.dedupe {
            Some(table) if !request.idempotent => request
                .metadata
                .get(REQUEST_ID_KEY)
                .map(|request_id| (Arc::clone(table), request_id.clone())),
            _ => None,
        };
        let now = Instant::now();
        let deadline = request.budget.deadline_from(now);
        let ctx = CallContext::new(method)
            .with_call_id(id)
            .with_deadline(deadline)
            .with_metadata(request.metadata)
            .with_schema_fingerprint(request.schema)
            .with_peer_addr(self.peer)
            .with_idempotency(Idempotency::from_flag(request.idempotent))
            .with_decode_limit(
                rpc_core::Bincode::for_frame_limit(self.config().max_frame_size).limit(),
            );
        if let Some((table, request_id)) = dedupe {
            return self.on_deduped(&table, &request_id, handler, ctx, request.payload, permit);
        }
        let span = call_span(&ctx, self.peer);
        match span.in_scope(|| start(handler, &ctx, request.payload)) {
            Ok(work) => {
                let work = call::in_span(work, span);
                let (future, mut running) = dispatch(ctx, work);
                running.permit = Some(permit);
                self.run(id, future, running);
            }
            Err((status, not_executed)) => self.respond(id, Err(status), not_executed, false),
        }
    }

    /// A non-idempotent request with a request id, the dedupe window on: the first with its key
    /// starts a detached execution and waits for it; later ones wait for the same execution, or
    /// get its recorded result at once.
    fn on_deduped(
        &mut self,
        table: &Arc<DedupeTable>,
        request_id: &Bytes,
        handler: Arc<dyn Handler>,
        ctx: CallContext,
        payload: Bytes,
        permit: CallPermit,
    ) {
        let (id, deadline) = (ctx.call_id(), ctx.deadline());
        let span = call_span(&ctx, self.peer);
        let claim = match table.claim(ctx.method_name(), request_id) {
            Ok(claim) => claim,
            Err(refusal) => return self.respond(id, Err(refusal.into()), true, false),
        };
        let (future, running) = match claim {
            Claim::Replay(result) => return self.respond(id, result, false, true),
            Claim::Join(waiter) => call::wait(id, deadline, waiter, true),
            Claim::Run(runner) => match span.in_scope(|| start(handler, &ctx, payload)) {
                Ok(work) => {
                    let waiter = runner.waiter();
                    let stop = self.detach.stop.clone();
                    let tracker = &self.detach.tracker;
                    let work = call::in_span(work, span);
                    call::detach(ctx, work, runner, stop, tracker);
                    call::wait(id, deadline, waiter, false)
                }
                Err((status, true)) => {
                    // Refused before anything ran: no entry, so a later attempt may run.
                    runner.refuse(status.clone());
                    return self.respond(id, Err(status), true, false);
                }
                Err((status, false)) => {
                    // `start` panicked: application code may have run, so this is the result.
                    runner.finish(Err(status.clone()));
                    return self.respond(id, Err(status), false, false);
                }
            },
        };
        let mut running = running;
        running.permit = Some(permit);
        self.run(id, future, running);
    }

    /// Starts tracking a dispatched call. Only these count as calls for the rapid-reset
    /// defence: a refused REQUEST cost nothing, and its CANCEL finds no call.
    fn run(&mut self, id: u64, future: CallFuture, running: RunningCall) {
        self.cancels.called();
        self.calls.push(future);
        self.running.insert(id, running);
    }

    fn on_cancel(&mut self, call_id: u64) {
        // The slot is freed now, before any later frame is read: a PING after this CANCEL is
        // answered only once the call no longer counts against MAX_CONCURRENT_CALLS (§9.2), and
        // its RESPONSE is queued now. The aborted future's own ending is ignored (`finish`).
        let Some(call) = self.running.remove(&call_id) else {
            return; // already finished: its response stands
        };
        let never_started = !call.has_started();
        call.abort.abort();
        drop(call); // and its places under the concurrency limits
        let cancelled = Status::new(StatusCode::CANCELLED, "cancelled by the client");
        self.respond(call_id, Err(cancelled), never_started, false);
        let limit = &self.shared.config.cancel_flood;
        if never_started && self.cancels.cancelled_unstarted(limit) && self.phase == Phase::Open {
            warn!(peer = %self.peer, "most calls cancelled before they ran; closing");
            // Calls already running finish and are answered: the defence must not turn work the
            // server did into MAYBE_EXECUTED. Nothing more is read from this peer.
            let last = self.decoder.last_request_id();
            self.send_goaway(GoAway::new(
                last,
                GoAwayCode::TOO_MANY_CANCELS,
                "too many calls cancelled before they ran",
            ));
            self.phase = Phase::Finishing {
                until: Instant::now() + self.config().drain_grace,
                read: false,
            };
        }
    }

    fn finish(&mut self, done: CallDone) {
        if self.running.remove(&done.call_id).is_none() {
            return; // cancelled: answered when the CANCEL came
        }
        self.respond(done.call_id, done.result, done.not_executed, done.replayed);
    }

    /// Queues a call's one RESPONSE; `replayed` adds `rpc-replayed: 1` (the dedupe window).
    fn respond(&mut self, call_id: u64, result: Answer, not_executed: bool, replayed: bool) {
        tracing::trace!(
            call_id,
            code = %result.as_ref().err().map_or(StatusCode::OK, Status::code),
            not_executed,
            replayed,
            "responding"
        );
        let mut response = match result {
            Ok(reply) => {
                let mut response = Response::ok(call_id, reply.payload);
                response.status = response.status.with_metadata(reply.metadata);
                response
            }
            Err(status) => Response::error(call_id, status, not_executed),
        };
        if replayed {
            dedupe::mark_replayed(&mut response.status);
        }
        if let Err(err) = self.queue.push(&Frame::Response(response)) {
            // The result breaks the client's limits: say so instead of dropping the call.
            let status = Status::new(
                StatusCode::RESOURCE_EXHAUSTED,
                format!(
                    "the response could not be sent: {err}; raise max_frame_size on the client \
                     (the README's \"How large a value can be\")"
                ),
            );
            let fallback = Response::error(call_id, status, not_executed);
            if let Err(err) = self.queue.push(&Frame::Response(fallback)) {
                warn!(call_id, error = %err, "could not queue a response");
            }
        }
    }

    /// A connection error found while decoding: answer what can be answered, send GOAWAY, stop
    /// reading, let running calls finish within the drain grace period.
    fn connection_error(&mut self, err: DecodeError) {
        if let DecodeError::Io(io) = &err {
            debug!(peer = %self.peer, error = %io, "read failed");
            self.phase = Phase::Closed;
            return;
        }
        warn!(peer = %self.peer, error = %err, "closing connection: protocol error");
        if let DecodeError::FrameTooLarge {
            kind: FrameKind::REQUEST,
            call_id,
            len,
            max,
        } = err
        {
            let message = format!("request body of {len} bytes exceeds the limit of {max}");
            self.refuse(call_id, StatusCode::RESOURCE_EXHAUSTED, message);
        }
        let last = self.decoder.last_request_id();
        self.send_goaway(GoAway::new(last, err.go_away_code(), err.to_string()));
        self.phase = Phase::Finishing {
            until: Instant::now() + self.config().drain_grace,
            read: false,
        };
    }

    fn send_goaway(&mut self, mut goaway: GoAway) {
        // A later GOAWAY never raises the last call id.
        if let Some(last) = self.goaway_last {
            goaway.last_call_id = goaway.last_call_id.min(last);
        }
        self.goaway_last = Some(goaway.last_call_id);
        let _ = self.queue.push(&Frame::GoAway(goaway));
    }

    /// Graceful drain: GOAWAY with the last call dispatched; running calls finish.
    fn begin_drain(&mut self) {
        if self.phase != Phase::Open {
            return;
        }
        let last = self.decoder.last_request_id();
        debug!(peer = %self.peer, last, "draining");
        self.send_goaway(GoAway::new(
            last,
            GoAwayCode::NO_ERROR,
            "server is shutting down",
        ));
        self.phase = Phase::Finishing {
            until: Instant::now() + self.config().drain_grace,
            read: true,
        };
    }

    /// Drops every running call and closes after writing `goaway`.
    fn close(&mut self, goaway: GoAway) {
        self.send_goaway(goaway);
        self.drop_running("the connection closed while the call ran");
    }

    /// Drops every running call, then closes once the last frames are written. Each dropped call
    /// still gets its one RESPONSE (§7: every call at or below the last call id does):
    /// UNAVAILABLE with NOT_EXECUTED if its handler never started, else UNAVAILABLE with `why`,
    /// without the flag, since the handler did start. (Cancelled calls were answered already.)
    fn drop_running(&mut self, why: &str) {
        self.calls = FuturesUnordered::new();
        for (call_id, call) in std::mem::take(&mut self.running) {
            let never_started = !call.has_started();
            let status = if never_started {
                Status::new(StatusCode::UNAVAILABLE, "the connection is closing")
            } else {
                Status::new(StatusCode::UNAVAILABLE, why)
            };
            self.respond(call_id, Err(status), never_started, false);
        }
        self.phase = Phase::Closing {
            until: Instant::now() + CLOSE_LINGER,
        };
    }

    /// Heartbeat and phase deadlines. Returns the next instant anything is due.
    fn check_timers(&mut self, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut due = |at: Instant| next = Some(next.map_or(at, |n| n.min(at)));
        let open = !matches!(self.phase, Phase::Closing { .. } | Phase::Closed);
        if let Some(heartbeat) = self.heartbeat.as_mut().filter(|_| open) {
            match heartbeat.poll(now) {
                Beat::Dead { silent_for } => {
                    debug!(peer = %self.peer, ?silent_for, "client silent past the dead bound; closing");
                    let last = self.decoder.last_request_id();
                    self.close(GoAway::new(
                        last,
                        GoAwayCode::HEARTBEAT_TIMEOUT,
                        "no frames within the heartbeat bound",
                    ));
                }
                beat => {
                    due(heartbeat.next_due());
                    if beat == Beat::Ping {
                        self.pings_sent += 1;
                        let opaque = self.pings_sent.to_be_bytes();
                        let _ = self.queue.push(&Frame::Ping(Ping { opaque }));
                    }
                }
            }
        }
        match self.phase {
            Phase::Finishing { until, .. } if now >= until => {
                debug!(peer = %self.peer, running = self.running.len(), "drain grace over");
                self.drop_running("the drain's grace period ended before the call finished");
                if let Phase::Closing { until } = self.phase {
                    due(until);
                }
            }
            Phase::Closing { until } if now >= until => self.phase = Phase::Closed,
            Phase::Finishing { until, .. } | Phase::Closing { until } => due(until),
            Phase::Open | Phase::Closed => {}
        }
        next
    }

    /// Whether the queue holds as many unsent bytes as allowed: reading and finishing calls wait.
    fn over_unsent_bound(&self) -> bool {
        self.queue.unsent_bytes() >= self.config().max_unsent_bytes
    }

    /// After a write while reads are paused: true when the queue is back under its bound and
    /// reading resumes.
    fn relieve_backpressure(&mut self) -> bool {
        if !self.over_unsent_bound() {
            self.backpressured = false;
            return true;
        }
        false
    }

    /// Frees the read buffer's and write queue's spare capacity once a heartbeat shows the
    /// connection idle: nothing running, nothing buffered either way.
    fn shrink_if_idle(&mut self) {
        if self.shrink_when_idle
            && self.running.is_empty()
            && self.read_buf.is_empty()
            && self.queue.is_empty()
        {
            self.shrink_when_idle = false;
            self.read_buf = BytesMut::with_capacity(IDLE_READ_ROOM);
            self.queue.shrink_when_empty();
        }
    }

    fn is_done(&self) -> bool {
        let flushed = self.queue.is_empty();
        match self.phase {
            Phase::Closed => true,
            Phase::Closing { .. } => flushed,
            Phase::Finishing { .. } => flushed && self.running.is_empty(),
            Phase::Open => self.peer_going_away && flushed && self.running.is_empty(),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Future for Connection<S> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.stop.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        if this.phase == Phase::Open && this.drain.as_mut().poll(cx).is_ready() {
            this.begin_drain();
        }
        for _ in 0..32 {
            let mut progress = this.poll_read(cx);
            // While the client does not read, handlers wait too: their responses would only
            // pile up.
            while !this.over_unsent_bound() {
                let Poll::Ready(Some(done)) = this.calls.poll_next_unpin(cx) else {
                    break;
                };
                this.finish(done);
                progress = true;
            }
            this.backpressured |= this.over_unsent_bound();
            let next = this.check_timers(Instant::now());
            if let Poll::Ready(Err(err)) = this.queue.poll_write(&mut this.io, cx) {
                debug!(peer = %this.peer, error = %err, "write failed");
                return Poll::Ready(());
            }
            if this.queue.take_peer_read() {
                // The client is reading our backlog (its PONG may be behind it, and while reads
                // are paused its frames are not read at all): it is alive.
                if let Some(heartbeat) = &mut this.heartbeat {
                    heartbeat.received(Instant::now());
                }
            }
            if this.backpressured {
                progress |= this.relieve_backpressure();
            }
            if this.is_done() {
                return Poll::Ready(());
            }
            progress |= poll_timer(&mut this.timer, next, cx);
            if !progress {
                this.shrink_if_idle();
                return Poll::Pending;
            }
        }
        // Still busy after a full round: yield to other tasks, come back at once.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// The span of one call (off unless a subscriber wants DEBUG), around its handler: the client's
/// span of the same attempt has the same method, attempt and call id.
fn call_span(ctx: &CallContext, peer: SocketAddr) -> tracing::Span {
    tracing::debug_span!(
        "rpc.call",
        method = ctx.method(),
        call_id = ctx.call_id(),
        attempt = ctx.attempt(),
        peer = %peer,
    )
}
