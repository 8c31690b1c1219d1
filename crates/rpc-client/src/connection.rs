//! One client connection: connect and handshake, then a single task that writes requests, reads
//! responses, keeps the heartbeat, and fails every waiting call with its true outcome when the
//! connection ends.
//!
//! Driving contract: [`Connection`] is a future polled by its own task. Each poll, in order:
//! 1. commands from callers: new calls (assigned the next call id, queued for writing) and cancels;
//! 2. reading: responses to their callers, PINGs answered ahead of queued frames, PONGs (which
//!    free the slots of withdrawn calls, see `withdrawn.rs`), GOAWAY;
//! 3. timers: PING after an interval of silence, dead after the bound; PING behind CANCELs and
//!    while withdrawn calls wait; replaced when one is held past its bound;
//! 4. writing: one vectored write per batch of queued frames.

use std::collections::VecDeque;

use foldhash::HashMap as FastMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use rpc_codec::{
    DecodeError, Decoded, Frame, FrameDecoder, FrameEncoder, GoAway, GoAwayCode, Ping, Request,
    Response, Role, Settings,
};
use rpc_core::{Deadline, Error, ErrorKind, Outcome, Status, StatusCode};
use rpc_transport::{
    Beat, HandshakeError, Heartbeat, IDLE_READ_ROOM, WriteQueue, handshake, poll_fill, poll_timer,
};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::{Instant, Sleep};
use tracing::{debug, info, warn};

use crate::Reply;
use crate::call::CallSlot;
use crate::config::ClientConfig;
use crate::connector::BoxIo;
use crate::events::{ClusterEvent, Observer};
use crate::latency::LatencyTracker;
use crate::stack::ConnectionId;
use crate::suspicion::{Detector, PeerSuspected, Suspected, SuspicionConfig, Verdict};
use crate::withdrawn::Withdrawals;

/// How long a withdrawn call may hold its slot past its deadline when the connection has no
/// heartbeat (with one, its dead bound): twice the default heartbeat interval.
const NO_HEARTBEAT_GRACE: Duration = Duration::from_secs(20);

/// Why a connection ended: the cause in the error chain of every call it was carrying.
///
/// Cheap to clone (inner errors are shared), so each failed call carries it as its own cause and
/// [`Error::has_cause`] finds it, and the I/O or protocol error beneath it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum ConnectionError {
    /// TCP connect failed or timed out.
    Connect {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: Arc<std::io::Error>,
    },
    /// The peer is not a keel v1 server: its first bytes are not the keel preface, or it speaks
    /// no protocol version this client speaks. A configuration error, not a passing failure:
    /// after two such attempts in a row, calls fail at once instead of waiting for a reconnect
    /// (the channel still reconnects with backoff, in case the address starts serving keel).
    IncompatiblePeer {
        /// The address.
        addr: SocketAddr,
        /// What the handshake saw.
        source: Arc<HandshakeError>,
    },
    /// The server refused the connection because it is overloaded: its connection limit is
    /// reached (GOAWAY `OVERLOADED` in the handshake). The channel tries again after its backoff.
    Overloaded {
        /// The address.
        addr: SocketAddr,
        /// The server's message.
        message: String,
        /// The handshake's error.
        source: Arc<HandshakeError>,
    },
    /// The handshake failed.
    Handshake {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: Arc<HandshakeError>,
    },
    /// The server closed the connection.
    Closed,
    /// Reading or writing failed.
    Io(Arc<std::io::Error>),
    /// Nothing arrived from the server within the dead bound.
    HeartbeatTimeout {
        /// How long the server was silent.
        silent_for: Duration,
    },
    /// The server sent GOAWAY.
    GoAway {
        /// The GOAWAY code.
        code: GoAwayCode,
        /// Its message.
        message: String,
    },
    /// The server broke the protocol.
    Protocol(Arc<DecodeError>),
    /// The server answered a call id the client never sent.
    UnknownCallId {
        /// The call id in the RESPONSE.
        call_id: u64,
        /// The highest call id the client sent.
        last_sent: u64,
    },
}

impl std::fmt::Display for ConnectionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect { addr, .. } => write!(f, "could not connect to {addr}"),
            Self::IncompatiblePeer { addr, .. } => {
                write!(f, "the peer at {addr} does not speak keel protocol v1")
            }
            Self::Overloaded { addr, message, .. } => write!(
                f,
                "the server at {addr} is overloaded and refused the connection (OVERLOADED: \
                 {message})"
            ),
            Self::Handshake { addr, .. } => write!(f, "handshake with {addr} failed"),
            Self::Closed => f.write_str("the server closed the connection"),
            Self::Io(_) => f.write_str("the connection failed"),
            Self::HeartbeatTimeout { silent_for } => {
                write!(
                    f,
                    "no frame from the server for {silent_for:?} (heartbeat bound)"
                )
            }
            Self::GoAway { code, message } => {
                write!(f, "the server is going away ({code}: {message})")
            }
            Self::Protocol(_) => f.write_str("the server broke the protocol"),
            Self::UnknownCallId { call_id, last_sent } => write!(
                f,
                "the server answered call {call_id}, above the highest call id sent ({last_sent})"
            ),
        }
    }
}

impl ConnectionError {
    /// Whether the failure says the address is misconfigured (not a keel v1 server) rather than
    /// briefly unavailable.
    #[must_use]
    pub fn is_incompatible_peer(&self) -> bool {
        matches!(self, Self::IncompatiblePeer { .. })
    }
}

impl std::error::Error for ConnectionError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Connect { source, .. } | Self::Io(source) => Some(&**source),
            Self::Handshake { source, .. }
            | Self::IncompatiblePeer { source, .. }
            | Self::Overloaded { source, .. } => Some(&**source),
            Self::Protocol(source) => Some(&**source),
            Self::Closed
            | Self::HeartbeatTimeout { .. }
            | Self::GoAway { .. }
            | Self::UnknownCallId { .. } => None,
        }
    }
}

/// A request for a connection task, from a caller.
#[derive(Debug)]
pub(crate) enum Command {
    Call(CallCommand),
    Cancel {
        call_id: u64,
    },
    /// Send a PING and report when its PONG comes (a readmission probe).
    Probe(oneshot::Sender<()>),
}

#[derive(Debug)]
pub(crate) struct CallCommand {
    pub(crate) request: Request,
    /// The attempt's deadline: a withdrawn call holding its slot long past it makes the
    /// connection stale.
    pub(crate) deadline: Deadline,
    /// The method's observed latency, looked up when the call is held back (zero until then, or
    /// when unknown): a held call fails, NOT_SENT, once its deadline is nearer than this.
    pub(crate) expected: Duration,
    /// When the connection held it back, to measure its wait (none for a call sent at once).
    pub(crate) held_since: Option<Instant>,
    pub(crate) slot: Arc<CallSlot>,
    pub(crate) reply: oneshot::Sender<Result<Reply, Error>>,
}

/// The time a held call must have left to be sent: its expected latency and a tenth more. The
/// expectation is an average: a call sent with exactly that much left fails at its deadline as
/// often as not, after it was sent (MAYBE_EXECUTED) instead of before (NOT_SENT). Seen in
/// `overload::a_saturated_server...` under a loaded machine: 50 calls admitted together with
/// about 200 ms left for a 200 ms handler all missed.
fn with_headroom(expected: Duration) -> Duration {
    expected + expected / 10
}

impl CallCommand {
    /// The latency to expect: the method's, or else `fallback` (the connection's service time).
    fn expected_or(&self, fallback: Option<Duration>) -> Duration {
        if self.expected.is_zero() {
            fallback.unwrap_or_default()
        } else {
            self.expected
        }
    }

    /// When waiting longer leaves less than the latency to expect, with its headroom.
    fn give_up_at(&self, fallback: Option<Duration>) -> Instant {
        let deadline = self.deadline.instant();
        deadline
            .checked_sub(with_headroom(self.expected_or(fallback)))
            .unwrap_or(deadline)
    }

    /// How long it has waited in the connection.
    fn waited(&self, now: Instant) -> Duration {
        self.held_since
            .map_or(Duration::ZERO, |since| now.saturating_duration_since(since))
    }

    /// Fails the call, never sent. (If its caller gave up at the same moment, the caller reports
    /// NOT_SENT itself.)
    fn refuse(self, err: Error) {
        if self.slot.abandon() {
            let _ = self.reply.send(Err(err));
        }
    }
}

/// What a channel knows about one of its connections.
#[derive(Debug)]
pub(crate) struct ConnectionHandle {
    /// Unique within the channel, never 0.
    pub(crate) id: ConnectionId,
    pub(crate) commands: mpsc::UnboundedSender<Command>,
    /// False once the connection stops taking calls (closed, or GOAWAY received).
    pub(crate) usable: Arc<Usable>,
    /// Calls waiting for a response.
    pub(crate) in_flight: Arc<AtomicUsize>,
    /// Whether the server is suspected now (connections of a cluster's endpoints only).
    pub(crate) suspected: Option<Arc<Suspected>>,
    /// The server's announced limits.
    pub(crate) peer: Settings,
}

impl ConnectionHandle {
    pub(crate) fn is_usable(&self) -> bool {
        self.usable.get() && !self.commands.is_closed()
    }
}

/// Whether a connection takes new calls, and a way to wait until it stops.
#[derive(Debug)]
pub(crate) struct Usable {
    flag: AtomicBool,
    lost: Notify,
}

impl Usable {
    fn new() -> Self {
        Self {
            flag: AtomicBool::new(true),
            lost: Notify::new(),
        }
    }

    pub(crate) fn get(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// The connection takes no new calls from now on.
    fn lose(&self) {
        self.flag.store(false, Ordering::Release);
        self.lost.notify_waiters();
    }

    /// Returns once the connection takes no new calls.
    pub(crate) async fn lost(&self) {
        loop {
            let lost = self.lost.notified();
            tokio::pin!(lost);
            lost.as_mut().enable();
            if !self.get() {
                return;
            }
            lost.await;
        }
    }
}

/// Connects to `addr`, performs the handshake and starts the connection's task.
pub(crate) async fn connect(
    addr: SocketAddr,
    config: &ClientConfig,
    timeout: Duration,
    id: ConnectionId,
    latency: Arc<LatencyTracker>,
) -> Result<ConnectionHandle, ConnectionError> {
    let started = Instant::now();
    let mut io = tokio::time::timeout(timeout, config.connector.0.connect(addr))
        .await
        .map_err(|_| ConnectionError::Connect {
            addr,
            source: Arc::new(std::io::ErrorKind::TimedOut.into()),
        })?
        .map_err(|source| ConnectionError::Connect {
            addr,
            source: Arc::new(source),
        })?;
    let local = config.settings();
    let mut read_buf = BytesMut::with_capacity(8 * 1024);
    let mut decoder = FrameDecoder::builder(Role::Client).settings(&local).build();
    let mut encoder = FrameEncoder::new();
    let left = timeout.saturating_sub(started.elapsed());
    let ack = handshake::connect(
        &mut io,
        &mut read_buf,
        &mut decoder,
        &mut encoder,
        local,
        left,
    )
    .await
    .map_err(|source| {
        let incompatible = matches!(
            source,
            HandshakeError::Protocol(
                DecodeError::BadMagic { .. } | DecodeError::UnsupportedVersion { .. }
            )
        );
        let overloaded = match &source {
            HandshakeError::Refused { code, message } if *code == GoAwayCode::OVERLOADED => {
                Some(message.clone())
            }
            _ => None,
        };
        let source = Arc::new(source);
        if incompatible {
            ConnectionError::IncompatiblePeer { addr, source }
        } else if let Some(message) = overloaded {
            ConnectionError::Overloaded {
                addr,
                message,
                source,
            }
        } else {
            ConnectionError::Handshake { addr, source }
        }
    })?;
    let heartbeat = local
        .negotiated_heartbeat(&ack.settings)
        .map(|interval| Heartbeat::new(interval, config.dead_after_intervals, Instant::now()));
    let (commands, receiver) = mpsc::unbounded_channel();
    let usable = Arc::new(Usable::new());
    let detector = config.cluster.then(|| {
        let suspicion =
            SuspicionConfig::new(config.suspicion_threshold, config.suspicion_min_deviation);
        Detector::new(suspicion, Instant::now())
    });
    let suspected = detector.as_ref().map(Detector::flag);
    let in_flight = Arc::new(AtomicUsize::new(0));
    let connection = Connection {
        io,
        read_buf,
        decoder,
        queue: WriteQueue::new(encoder),
        commands: receiver,
        callers_gone: false,
        pending: FastMap::default(),
        waiting: VecDeque::new(),
        next_give_up: None,
        service_time: None,
        max_queued: config.max_queued_calls,
        max_unsent: config.max_unsent_bytes,
        shrink_when_idle: false,
        latency,
        now: Instant::now(),
        max_concurrent: usize::try_from(ack.settings.max_concurrent_calls).unwrap_or(usize::MAX),
        last_call_id: 0,
        usable: Arc::clone(&usable),
        in_flight: Arc::clone(&in_flight),
        heartbeat,
        detector,
        observer: config.observer.clone(),
        pings_sent: 0,
        probes: Vec::new(),
        pongs_seen: 0,
        withdrawn: Withdrawals::default(),
        retiring: false,
        goaway_sent: false,
        timer: Box::pin(tokio::time::sleep(Duration::from_secs(3600))),
        goaway_last: None,
        deferred: false,
        end: None,
        addr,
    };
    let lost = Arc::clone(&usable);
    tokio::spawn(async move {
        connection.await;
        lost.lose();
    });
    Ok(ConnectionHandle {
        id,
        commands,
        usable,
        in_flight,
        suspected,
        peer: ack.settings,
    })
}

/// A call written (or queued to be written) whose caller waits for its response. Once the caller
/// withdraws it moves to the connection's [`Withdrawals`].
#[derive(Debug)]
struct Pending {
    reply: oneshot::Sender<Result<Reply, Error>>,
    /// Safe to run again: handed back to be tried elsewhere when the server is suspected.
    idempotent: bool,
    /// The write batch its REQUEST went into.
    batch: u64,
    deadline: Deadline,
    /// When its REQUEST was queued for writing.
    sent_at: Instant,
}

struct Connection {
    io: BoxIo,
    read_buf: BytesMut,
    decoder: FrameDecoder,
    queue: WriteQueue,
    commands: mpsc::UnboundedReceiver<Command>,
    /// Every sender is gone: the channel was dropped.
    callers_gone: bool,
    /// Keyed by call id with foldhash: sip hashing was about 3 % of a call's instructions.
    pending: FastMap<u64, Pending>,
    /// Calls whose callers gave up, until the server is known to have freed their slots.
    withdrawn: Withdrawals,
    /// Calls held back, not yet sent: the server's MAX_CONCURRENT_CALLS are all in use, or the
    /// unsent bytes are at their bound. At most `max_queued`.
    waiting: VecDeque<CallCommand>,
    /// The earliest [`CallCommand::give_up_at`] among `waiting`, when one is due.
    next_give_up: Option<Instant>,
    /// Moving average of how long a call holds a server slot (REQUEST queued to RESPONSE): the
    /// rate at which held-back calls get one.
    service_time: Option<Duration>,
    max_queued: usize,
    max_unsent: usize,
    /// A heartbeat frame arrived: the buffers shrink once the connection is idle.
    shrink_when_idle: bool,
    /// The channel's method latencies, looked up for calls held back.
    latency: Arc<LatencyTracker>,
    /// The clock, read once per round of the poll loop: per-call timestamps cost no clock read.
    now: Instant,
    max_concurrent: usize,
    last_call_id: u64,
    usable: Arc<Usable>,
    in_flight: Arc<AtomicUsize>,
    heartbeat: Option<Heartbeat>,
    /// Failure prediction, in a cluster's endpoints: see [`crate::suspicion`].
    detector: Option<Detector>,
    observer: Observer,
    /// PINGs sent so far: each PING's opaque bytes are its number.
    pings_sent: u64,
    /// Probes waiting for the PONG of their PING (by its number).
    probes: Vec<(u64, oneshot::Sender<()>)>,
    /// The highest PING number a PONG answered.
    pongs_seen: u64,
    /// A withdrawn call was held past its bound: this connection takes no new calls and closes
    /// once the calls on it are done; the channel opens another.
    retiring: bool,
    /// Our GOAWAY is queued.
    goaway_sent: bool,
    timer: Pin<Box<Sleep>>,
    /// The lowest last call id of the GOAWAYs received.
    goaway_last: Option<u64>,
    /// Whether the last poll put off writing to gather more calls into the batch.
    deferred: bool,
    /// Why the connection ended, once it has.
    end: Option<ConnectionError>,
    addr: SocketAddr,
}

impl Connection {
    fn on_command(&mut self, command: Command) {
        match command {
            Command::Call(call) => self.on_call(call),
            Command::Probe(answered) => {
                self.send_ping();
                self.probes.push((self.pings_sent, answered));
            }
            Command::Cancel { call_id } => {
                if let Some(pending) = self.pending.remove(&call_id) {
                    self.withdraw(call_id, &pending);
                }
            }
        }
    }

    /// A sent call nobody waits for any more: CANCEL on the wire, and its slot counted as held
    /// until the server is known to have freed it.
    fn withdraw(&mut self, call_id: u64, pending: &Pending) {
        let _ = self
            .queue
            .push(&Frame::Cancel(rpc_codec::Cancel { call_id }));
        let now = Instant::now();
        let grace = self
            .heartbeat
            .as_ref()
            .map_or(NO_HEARTBEAT_GRACE, Heartbeat::dead_after);
        let stale_at = pending.deadline.instant().max(now) + grace;
        self.withdrawn
            .withdraw(call_id, self.pings_sent + 1, now, stale_at);
    }

    /// The server is suspected: every waiting idempotent call goes back to its caller, failed
    /// UNAVAILABLE, MAYBE_EXECUTED, so the retry layer tries it on another endpoint at once; here
    /// it is withdrawn with a CANCEL. Other calls keep waiting: they may have run.
    fn hand_back_idempotent(&mut self, silent_for: Duration) {
        let ids: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.idempotent)
            .map(|(&id, _)| id)
            .collect();
        for call_id in ids {
            if let Some(pending) = self.pending.remove(&call_id) {
                self.withdraw(call_id, &pending);
                let cause = PeerSuspected { silent_for };
                let err = Error::from_code(
                    StatusCode::UNAVAILABLE,
                    cause.to_string(),
                    Outcome::MaybeExecuted,
                )
                .with_kind(ErrorKind::ConnectionLost)
                .with_source(cause);
                let _ = pending.reply.send(Err(err));
            }
        }
    }

    /// The server's concurrency slots this connection holds: calls waiting for a response, and
    /// withdrawn calls not yet known to be freed.
    fn slots_held(&self) -> usize {
        self.pending.len() + self.withdrawn.len()
    }

    /// A RESPONSE (or a rejected one) for `call_id` arrived: frees its slot, and returns the
    /// caller's reply channel if the caller still waits.
    fn complete(&mut self, call_id: u64) -> Option<oneshot::Sender<Result<Reply, Error>>> {
        let reply = match self.pending.remove(&call_id) {
            Some(pending) => {
                let held_for = self.now.saturating_duration_since(pending.sent_at);
                self.record_service_time(held_for);
                Some(pending.reply)
            }
            None if self.withdrawn.answered(call_id) => None,
            None => return None,
        };
        self.admit_waiting();
        reply
    }

    /// Whether a new call must be held back: no free server slot, or the unsent bytes at their
    /// bound (the server is not reading).
    fn must_hold(&self) -> bool {
        self.slots_held() >= self.max_concurrent || self.queue.unsent_bytes() >= self.max_unsent
    }

    fn record_service_time(&mut self, sample: Duration) {
        self.service_time = Some(match self.service_time {
            None => {
                // Held calls' give-up times were reckoned without it: look again.
                if !self.waiting.is_empty() {
                    self.next_give_up = Some(self.now);
                }
                sample
            }
            // Weight 1/8: steady under jitter, follows a change within a few dozen calls.
            Some(average) => (average * 7 + sample) / 8,
        });
    }

    /// Sends held-back calls while the server has free slots and the unsent bytes are under
    /// their bound; a call whose deadline is now nearer than its method's latency fails instead.
    fn admit_waiting(&mut self) {
        if self.waiting.is_empty() {
            return;
        }
        let now = self.now;
        while !self.must_hold() {
            let Some(call) = self.waiting.pop_front() else {
                return;
            };
            let expected = call.expected_or(self.service_time);
            if now >= call.give_up_at(self.service_time) && !expected.is_zero() {
                let err = too_late(&call, expected, now);
                call.refuse(err);
                continue;
            }
            self.send_call(call);
        }
    }

    /// How long the call at `position` of the queue can expect to wait for a server slot: slots
    /// free at `max_concurrent` per service time. `None` until a call has been answered.
    fn predicted_wait(&self, position: usize) -> Option<Duration> {
        let service = self.service_time?;
        let ahead = u32::try_from(position + 1).unwrap_or(u32::MAX);
        let slots = u32::try_from(self.max_concurrent.max(1)).unwrap_or(u32::MAX);
        Some(service.saturating_mul(ahead) / slots)
    }

    fn on_call(&mut self, call: CallCommand) {
        if !self.must_hold() || self.goaway_last.is_some() || self.retiring {
            return self.send_call(call);
        }
        // Respect the server's announced limit: hold the call, unsent, until a slot frees, if it
        // can still finish in its deadline.
        if self.waiting.len() >= self.max_queued {
            // Calls whose callers gave up keep no place.
            self.waiting.retain(|held| !held.slot.is_abandoned());
        }
        if self.waiting.len() >= self.max_queued {
            let message = format!(
                "{} calls already wait for one of the server's {} concurrent calls on this \
                 connection",
                self.waiting.len(),
                self.max_concurrent
            );
            return call.refuse(
                Error::from_code(StatusCode::RESOURCE_EXHAUSTED, message, Outcome::NotSent)
                    .with_kind(ErrorKind::Local),
            );
        }
        let now = self.now;
        let mut call = call;
        call.held_since = Some(now);
        call.expected = self.latency.average(call.request.method.as_str());
        let left = call.deadline.remaining(now);
        let expected = call.expected_or(self.service_time);
        if let Some(wait) = self.predicted_wait(self.waiting.len()) {
            if left < wait + with_headroom(expected) {
                let message = format!(
                    "not sent: {left:?} left, and a call waits about {wait:?} for a server slot \
                     here, then takes about {expected:?}"
                );
                return call.refuse(
                    Error::from_code(StatusCode::DEADLINE_EXCEEDED, message, Outcome::NotSent)
                        .with_kind(ErrorKind::Deadline),
                );
            }
        }
        let give_up = call.give_up_at(self.service_time);
        self.next_give_up = Some(self.next_give_up.map_or(give_up, |at| at.min(give_up)));
        self.waiting.push_back(call);
    }

    /// Fails every held-back call whose deadline is now nearer than its method's latency.
    fn expire_waiting(&mut self, now: Instant) {
        if self.next_give_up.is_none_or(|at| now < at) {
            return;
        }
        let mut next: Option<Instant> = None;
        for call in std::mem::take(&mut self.waiting) {
            let give_up = call.give_up_at(self.service_time);
            if now >= give_up {
                let err = too_late(&call, call.expected_or(self.service_time), now);
                call.refuse(err);
            } else {
                next = Some(next.map_or(give_up, |at| at.min(give_up)));
                self.waiting.push_back(call);
            }
        }
        self.next_give_up = next;
    }

    fn send_call(&mut self, mut call: CallCommand) {
        if self.goaway_last.is_some() || self.end.is_some() || self.retiring {
            // Never written: safe anywhere. The channel will pick another connection.
            let err = Error::from_code(
                StatusCode::UNAVAILABLE,
                "the connection is going away",
                Outcome::NotSent,
            )
            .with_kind(ErrorKind::ConnectionLost);
            let _ = call.reply.send(Err(err));
            return;
        }
        let call_id = self.last_call_id + 1;
        if !call.slot.hand_over(call_id, call.waited(self.now)) {
            return; // the caller gave up first: never sent
        }
        call.request.call_id = call_id;
        let idempotent = call.request.idempotent;
        match self.queue.push(&Frame::Request(call.request)) {
            Ok(batch) => {
                self.last_call_id = call_id;
                self.pending.insert(
                    call_id,
                    Pending {
                        idempotent,
                        reply: call.reply,
                        batch,
                        deadline: call.deadline,
                        sent_at: self.now,
                    },
                );
            }
            Err(err) => {
                let status = Status::new(StatusCode::RESOURCE_EXHAUSTED, err.to_string());
                let _ = call.reply.send(Err(Error::new(status, Outcome::NotSent)
                    .with_kind(ErrorKind::Local)
                    .with_source(err)));
            }
        }
    }

    fn on_item(&mut self, item: Decoded) {
        match item {
            Ok(Frame::Response(response)) => self.on_response(response),
            Ok(Frame::Ping(ping)) => {
                // A newer PING's PONG replaces one not yet written: a flood queues one.
                let _ = self.queue.replace_pong(&Frame::Pong(ping.pong()));
                self.shrink_when_idle = true;
            }
            Ok(Frame::GoAway(goaway)) => self.on_goaway(goaway),
            Ok(Frame::Pong(pong)) => {
                self.shrink_when_idle = true;
                self.on_pong(u64::from_be_bytes(pong.opaque));
            }
            // Extensions are skipped.
            Ok(_) => {}
            Err(rejected) => {
                if let Some(reply) = self.complete(rejected.call_id) {
                    let status = Status::new(rejected.status_code(), rejected.to_string());
                    let outcome = rejected.outcome();
                    let err = Error::new(status, outcome)
                        .with_kind(ErrorKind::Protocol)
                        .with_source(rejected);
                    let _ = reply.send(Err(err));
                }
            }
        }
    }

    fn on_response(&mut self, mut response: Response) {
        let id = response.call_id;
        if id > self.last_call_id {
            let cause = ConnectionError::UnknownCallId {
                call_id: id,
                last_sent: self.last_call_id,
            };
            self.fail(cause, GoAwayCode::PROTOCOL_ERROR);
            return;
        }
        // A response for a call no longer waited for (cancelled, expired) is discarded.
        let Some(reply) = self.complete(id) else {
            return;
        };
        let result = if response.status.is_ok() {
            Ok(Reply {
                payload: response.payload,
                metadata: std::mem::take(response.status.metadata_mut()),
            })
        } else if response.not_executed {
            Err(Error::new(
                response.status.not_executed(),
                Outcome::NotExecuted,
            ))
        } else if response.status.code() == StatusCode::DEADLINE_EXCEEDED {
            // The server stopped the handler at the deadline, midway: some of its work may have
            // happened. The same outcome as when the client's own timer fires first, so that
            // which one wins the race does not change what the caller is told.
            Err(Error::new(response.status, Outcome::MaybeExecuted).with_kind(ErrorKind::Deadline))
        } else {
            Err(Error::new(response.status, Outcome::Executed))
        };
        let _ = reply.send(result);
    }

    /// The PONG of PING number `number` (liveness is already recorded): the server has read
    /// every CANCEL written before that PING, and freed those calls' slots.
    fn on_pong(&mut self, number: u64) {
        // A PONG that matches no PING of ours is ignored (§5.6).
        if number <= self.pongs_seen || number > self.pings_sent {
            return;
        }
        self.pongs_seen = number;
        if !self.probes.is_empty() {
            // A PONG answers every PING before it.
            let (answered, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.probes)
                .into_iter()
                .partition(|(ping, _)| *ping <= number);
            self.probes = waiting;
            for (_, answered) in answered {
                let _ = answered.send(());
            }
        }
        if self.withdrawn.ponged(number) > 0 {
            self.admit_waiting();
        }
    }

    fn on_goaway(&mut self, goaway: GoAway) {
        debug!(addr = %self.addr, code = %goaway.code, last = goaway.last_call_id, "GOAWAY");
        let last = self
            .goaway_last
            .map_or(goaway.last_call_id, |l| l.min(goaway.last_call_id));
        self.goaway_last = Some(last);
        self.usable.lose();
        let cause = ConnectionError::GoAway {
            code: goaway.code,
            message: goaway.message,
        };
        // Calls above the last call id never ran.
        let never_ran: Vec<u64> = self
            .pending
            .keys()
            .copied()
            .filter(|&id| id > last)
            .collect();
        self.withdrawn.forget_above(last);
        for id in never_ran {
            if let Some(reply) = self.pending.remove(&id).map(|p| p.reply) {
                let err = Error::from_code(
                    StatusCode::UNAVAILABLE,
                    "the server is going away and did not run this call",
                    Outcome::NotExecuted,
                )
                .with_kind(ErrorKind::ConnectionLost)
                .with_source(cause.clone());
                let _ = reply.send(Err(err));
            }
        }
        // Calls held back were never sent: the channel sends them on another connection.
        self.refuse_unsent("the connection is going away");
    }

    /// Fails every call not yet handed to the writer as NOT_SENT: those held back for a slot,
    /// and, once the connection has ended, those still in the command queue.
    fn refuse_unsent(&mut self, why: &str) {
        let mut calls: Vec<CallCommand> = std::mem::take(&mut self.waiting).into();
        if self.end.is_some() {
            while let Ok(command) = self.commands.try_recv() {
                if let Command::Call(call) = command {
                    calls.push(call);
                }
            }
        }
        self.next_give_up = None;
        for call in calls {
            call.refuse(
                Error::from_code(StatusCode::UNAVAILABLE, why, Outcome::NotSent)
                    .with_kind(ErrorKind::ConnectionLost),
            );
        }
    }

    /// The outcome of a call still waiting when the connection ends (docs/PROTOCOL.md §14).
    fn outcome_of(&self, call_id: u64, batch: u64) -> Outcome {
        if self.goaway_last.is_some_and(|last| call_id > last) {
            Outcome::NotExecuted
        } else if batch > self.queue.started_through() {
            // Not one byte of its batch reached the socket.
            Outcome::NotSent
        } else {
            Outcome::MaybeExecuted
        }
    }

    /// Ends the connection: every waiting call fails with UNAVAILABLE and its outcome.
    fn fail(&mut self, cause: ConnectionError, goaway: GoAwayCode) {
        if self.end.is_some() {
            return;
        }
        debug!(addr = %self.addr, cause = %cause, "connection lost");
        self.usable.lose();
        // Requests in batches not yet started are reported NOT_SENT below and may be retried
        // elsewhere: none of them may be written now, even if the socket still works (a heartbeat
        // timeout leaves it open).
        self.queue.discard_unstarted();
        if goaway != GoAwayCode::NO_ERROR {
            self.send_goaway(goaway, &cause.to_string());
        }
        self.withdrawn.clear();
        let pending = std::mem::take(&mut self.pending);
        for (id, call) in pending {
            let outcome = self.outcome_of(id, call.batch);
            let err = Error::from_code(StatusCode::UNAVAILABLE, cause.to_string(), outcome)
                .with_kind(ErrorKind::ConnectionLost)
                .with_source(cause.clone());
            let _ = call.reply.send(Err(err));
        }
        self.end = Some(cause);
        // Calls held back or still in the command queue were never written.
        self.commands.close();
        self.refuse_unsent("the connection was lost before this call was sent");
    }

    fn poll_commands(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        while !self.callers_gone && self.end.is_none() {
            match self.commands.poll_recv(cx) {
                Poll::Ready(Some(command)) => {
                    self.on_command(command);
                    progress = true;
                }
                Poll::Ready(None) => self.callers_gone = true,
                Poll::Pending => break,
            }
        }
        progress
    }

    fn poll_read(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        while self.end.is_none() {
            match tokio_util::codec::Decoder::decode(&mut self.decoder, &mut self.read_buf) {
                Ok(Some(item)) => {
                    self.on_item(item);
                    progress = true;
                    continue;
                }
                Ok(None) => {}
                Err(err) => {
                    let code = err.go_away_code();
                    self.fail(ConnectionError::Protocol(Arc::new(err)), code);
                    return true;
                }
            }
            match poll_fill(&mut self.io, &mut self.read_buf, cx) {
                Poll::Pending => break,
                Poll::Ready(Ok(0)) => {
                    self.fail(ConnectionError::Closed, GoAwayCode::NO_ERROR);
                    return true;
                }
                Poll::Ready(Ok(_)) => {
                    if let Some(heartbeat) = &mut self.heartbeat {
                        heartbeat.received(Instant::now());
                    }
                    if let Some(detector) = &mut self.detector {
                        if detector.arrived(self.now) {
                            info!(addr = %self.addr, "server no longer suspected: it sent again");
                            self.observer
                                .emit(ClusterEvent::Unsuspected { addr: self.addr });
                        }
                    }
                    progress = true;
                }
                Poll::Ready(Err(err)) => {
                    self.fail(ConnectionError::Io(Arc::new(err)), GoAwayCode::NO_ERROR);
                    return true;
                }
            }
        }
        progress
    }

    /// The heartbeat (PING after an interval of silence, dead after the bound) and the withdrawn
    /// calls (PING behind their CANCELs and while they wait; replaced when one is held past its
    /// bound). Returns when to look again.
    fn check_timers(&mut self, now: Instant) -> Option<Instant> {
        if self.end.is_some() {
            return None;
        }
        if let Some(detector) = self.detector.as_mut() {
            match detector.check(now) {
                Verdict::Probe if self.pongs_seen == self.pings_sent => self.send_ping(),
                Verdict::Suspect => {
                    let silent_for = detector.silent_for(now);
                    warn!(addr = %self.addr, ?silent_for, "server suspected: no new calls here");
                    self.observer.emit(ClusterEvent::Suspected {
                        addr: self.addr,
                        silent_for,
                    });
                    self.hand_back_idempotent(silent_for);
                }
                Verdict::Probe | Verdict::Nothing => {}
            }
        }
        if let Some(heartbeat) = self.heartbeat.as_mut() {
            match heartbeat.poll(now) {
                Beat::Dead { silent_for } => {
                    self.fail(
                        ConnectionError::HeartbeatTimeout { silent_for },
                        GoAwayCode::HEARTBEAT_TIMEOUT,
                    );
                    return None;
                }
                Beat::Ping => self.send_ping(),
                Beat::Idle => {}
            }
        }
        let probe_due = self.withdrawn.next_probe().is_some_and(|at| now >= at);
        if probe_due && self.withdrawn.any_stale(now) {
            self.retire();
        }
        if self
            .withdrawn
            .ping_due(now, self.pongs_seen < self.pings_sent)
        {
            self.send_ping();
            self.withdrawn.pinged(now);
        }
        self.expire_waiting(now);
        [
            self.detector.as_mut().and_then(|d| d.next_due(now)),
            self.heartbeat.as_ref().map(Heartbeat::next_due),
            self.withdrawn.next_probe(),
            self.next_give_up,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// A withdrawn call held its slot past its deadline plus the dead bound: the server is not
    /// answering as the protocol says (or a middlebox loses its frames). Take no new calls here
    /// (held-back calls go NOT_SENT to another connection), tell the server with GOAWAY, let the
    /// calls on it run to their answers or deadlines, and close; the channel opens another.
    fn retire(&mut self) {
        debug!(
            addr = %self.addr,
            held = self.withdrawn.len(),
            "withdrawn calls held past their bound; replacing the connection"
        );
        self.retiring = true;
        self.usable.lose();
        self.withdrawn.clear();
        self.send_goaway(GoAwayCode::NO_ERROR, "calls unanswered past their deadline");
        self.refuse_unsent("the connection is being replaced");
    }

    /// Queues our GOAWAY (last call id 0: a client runs no calls), once.
    fn send_goaway(&mut self, code: GoAwayCode, message: &str) {
        if !self.goaway_sent {
            self.goaway_sent = true;
            let _ = self
                .queue
                .push(&Frame::GoAway(GoAway::new(0, code, message)));
        }
    }

    /// Frees the read buffer's and write queue's spare capacity once a heartbeat shows the
    /// connection idle: no call waiting or held, nothing buffered either way.
    fn shrink_if_idle(&mut self) {
        if self.shrink_when_idle
            && self.slots_held() == 0
            && self.waiting.is_empty()
            && self.read_buf.is_empty()
            && self.queue.is_empty()
        {
            self.shrink_when_idle = false;
            self.read_buf = BytesMut::with_capacity(IDLE_READ_ROOM);
            self.queue.shrink_when_empty();
        }
    }

    /// Queues a PING behind every frame queued so far, numbered by the count of PINGs sent.
    fn send_ping(&mut self) {
        self.pings_sent += 1;
        let opaque = self.pings_sent.to_be_bytes();
        let _ = self.queue.push(&Frame::Ping(Ping { opaque }));
    }
}

impl Future for Connection {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        for _ in 0..32 {
            this.now = Instant::now();
            let new_calls = this.poll_commands(cx);
            let mut progress = new_calls | this.poll_read(cx);
            if new_calls && !this.deferred && this.pending.len() > 1 && this.end.is_none() {
                // Calls are arriving while others are in flight: yield once, so callers woken
                // alongside this task queue theirs into the same batch (one syscall for many
                // frames). A lone call is written at once, so latency at 1 in flight is unchanged.
                this.deferred = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            this.deferred = false;
            let next = this.check_timers(this.now);
            let unsent = this.queue.unsent_bytes();
            let write = this.queue.poll_write(&mut this.io, cx);
            if this.queue.take_peer_read() {
                // The server is reading our backlog of requests; its PONG may be behind it.
                if let Some(heartbeat) = &mut this.heartbeat {
                    heartbeat.received(Instant::now());
                }
            }
            if this.queue.unsent_bytes() < unsent.min(this.max_unsent) && !this.waiting.is_empty() {
                // The server read what held calls back.
                this.admit_waiting();
                progress = true;
            }
            match write {
                Poll::Ready(Err(err)) => {
                    this.fail(ConnectionError::Io(Arc::new(err)), GoAwayCode::NO_ERROR);
                    this.in_flight.store(0, Ordering::Release);
                    return Poll::Ready(());
                }
                Poll::Ready(Ok(())) if this.end.is_some() => {
                    this.in_flight.store(0, Ordering::Release);
                    return Poll::Ready(());
                }
                _ => {}
            }
            this.in_flight.store(this.slots_held(), Ordering::Release);
            let expecting = this.slots_held() > 0;
            if let Some(detector) = &mut this.detector {
                detector.expect(expecting, this.now);
            }
            let idle = this.pending.is_empty() && this.queue.is_empty() && this.waiting.is_empty();
            if idle && (this.callers_gone || this.goaway_last.is_some() || this.retiring) {
                // Nobody will send another call here: close politely. (Withdrawn calls have no
                // caller left to tell.)
                this.usable.lose();
                if this.end.is_none() {
                    this.end = Some(ConnectionError::Closed);
                    this.send_goaway(GoAwayCode::NO_ERROR, "");
                    continue;
                }
            }
            if this.end.is_some() && !this.queue.is_empty() {
                // Best effort to flush a last GOAWAY; give up when the socket is full.
                return Poll::Ready(());
            }
            progress |= poll_timer(&mut this.timer, next, cx);
            if !progress {
                this.shrink_if_idle();
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// A held-back call whose deadline is nearer than its method's latency: failed, NOT_SENT, rather
/// than sent to fail.
fn too_late(call: &CallCommand, expected: Duration, now: Instant) -> Error {
    let message = format!(
        "not sent: {:?} left after waiting {:?} for a server slot, less than the {expected:?} a \
         call takes",
        call.deadline.remaining(now),
        call.waited(now),
    );
    Error::from_code(StatusCode::DEADLINE_EXCEEDED, message, Outcome::NotSent)
        .with_kind(ErrorKind::Deadline)
}

/// Checks a request against the server's limits before it is queued, so an oversize call fails
/// locally with both sizes named instead of closing the connection.
pub(crate) fn check_limits(peer: &Settings, request: &Request) -> Result<(), Error> {
    if !request.metadata_fits(peer.max_metadata_size) {
        let metadata_len = request.metadata_len();
        return Err(Error::from_code(
            StatusCode::RESOURCE_EXHAUSTED,
            format!(
                "request metadata of {metadata_len} bytes exceeds the server's limit of {} bytes",
                peer.max_metadata_size
            ),
            Outcome::NotSent,
        )
        .with_kind(ErrorKind::Local));
    }
    let body = request.body_len();
    if u32::try_from(body).map_or(true, |body| body > peer.max_frame_size) {
        return Err(Error::from_code(
            StatusCode::RESOURCE_EXHAUSTED,
            format!(
                "{}: the request body of {body} bytes ({} of them the arguments) exceeds the \
                 server's max frame size of {} bytes; raise max_frame_size on the server and on \
                 the client (the README's \"How large a value can be\")",
                request.method,
                request.payload.len(),
                peer.max_frame_size
            ),
            Outcome::NotSent,
        )
        .with_kind(ErrorKind::Local));
    }
    Ok(())
}
