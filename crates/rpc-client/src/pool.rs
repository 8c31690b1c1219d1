//! A channel's connections to its address: picks one for each attempt, and reconnects in the
//! background with backoff.
//!
//! One connector task per pool runs while connections are wanted and missing. Calls that find no
//! usable connection wait for it within their deadline (wait-for-ready), or fail at once with
//! UNAVAILABLE, NOT_SENT while connecting fails (fail-fast). When the address answers but is not a
//! keel v1 server (bad preface, no common version) on two attempts in a row, every call fails at
//! once, whatever its wait-for-ready setting: that is a configuration error, not a passing
//! failure. (Once is not enough: a preface byte corrupted on the way looks the same.)
//!
//! The connector paces its attempts by the reconnect backoff, so a server that is down sees one
//! connection attempt per backoff step from a channel however many calls wait: no tight loop, no
//! storm. The backoff starts again after a successful handshake.
//!
//! Usually one connection carries every call. An attempt that must go elsewhere (a hedge, or the
//! one free retry of a NOT_EXECUTED call) asks for a connection other than the one it avoids; the
//! pool opens one more, up to `max_connections`.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use rpc_core::{Deadline, Error, ErrorKind, Outcome, StatusCode};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::config::ClientConfig;
use crate::connection::{Command, ConnectionError, ConnectionHandle, Usable, connect};
use crate::latency::LatencyTracker;
use crate::stack::ConnectionId;

/// No connection could be had for a call: the cause of a NOT_SENT failure that waited for a
/// connection until its deadline, or failed fast while connecting failed.
#[derive(Clone, Debug)]
pub struct NoConnection {
    addr: SocketAddr,
    last_failure: Option<ConnectionError>,
    gave_up: GaveUp,
}

/// Why the wait for a connection ended.
#[derive(Clone, Copy, Debug)]
enum GaveUp {
    /// The call's deadline passed.
    Deadline,
    /// Connecting failed and the call fails fast (wait-for-ready off).
    FailFast,
    /// The peer answered, but not as a keel server.
    NotKeel,
}

impl NoConnection {
    /// The address the channel connects to.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Why the latest connection attempt failed, if one did.
    #[must_use]
    pub fn last_failure(&self) -> Option<&ConnectionError> {
        self.last_failure.as_ref()
    }
}

impl fmt::Display for NoConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The latest failure is the cause beneath (its root is what keel's `Error` shows).
        let addr = self.addr;
        match self.gave_up {
            GaveUp::Deadline => {
                write!(f, "no server answered at {addr} within the call's deadline")
            }
            GaveUp::FailFast => write!(
                f,
                "no connection to {addr} (the call fails fast: wait_for_ready is off)"
            ),
            GaveUp::NotKeel => write!(f, "the peer at {addr} is not a keel server"),
        }
    }
}

impl std::error::Error for NoConnection {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.last_failure
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Connection attempts in a row that must find a peer not speaking keel v1 before calls fail at
/// once instead of waiting for the next attempt.
const INCOMPATIBLE_ATTEMPTS: u32 = 2;

/// Connection ids, unique in the process (so unique across a channel's endpoints too).
static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

/// A channel's connections to one address.
#[derive(Debug)]
pub(crate) struct Pool {
    inner: Arc<PoolInner>,
}

#[derive(Debug)]
struct PoolInner {
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    /// The channel's method latencies, for its connections' queues of held calls.
    latency: Arc<LatencyTracker>,
    state: Mutex<PoolState>,
    /// The connection plain calls use, published after each change of `state.connections`, so
    /// a call finds it without the lock.
    current: ArcSwapOption<ConnectionHandle>,
    /// The latest connection attempt failed (published `state.last_failure.is_some()`).
    failing: AtomicBool,
    /// Keep connecting after a failure even when no call waits: set for the endpoints of a
    /// channel with several, which a balancer avoids while they fail, so no call would ever
    /// start their connector again.
    persistent: AtomicBool,
    /// Woken whenever a connection attempt ends.
    changed: Notify,
}

#[derive(Debug)]
struct PoolState {
    connections: Vec<Arc<ConnectionHandle>>,
    /// How many usable connections the connector works towards (at least 1).
    wanted: usize,
    connector_running: bool,
    /// Connection attempts failed in a row.
    failures: u32,
    /// No connection attempt before this instant (the backoff).
    next_attempt: Option<Instant>,
    /// Why the latest attempt failed; cleared by a success.
    last_failure: Option<ConnectionError>,
    /// Attempts in a row that found a peer not speaking keel v1.
    incompatible_in_a_row: u32,
    /// Calls waiting for a connection.
    waiting: usize,
    /// When a failed attempt was last logged at WARN, during this run of failures.
    warned_at: Option<Instant>,
}

/// While connecting keeps failing, one WARN per this long (the others are DEBUG): a server that
/// is down says so at once and then every half minute, not on every backoff step.
const WARN_EVERY: Duration = Duration::from_secs(30);

impl PoolState {
    /// The connector stops; the next call that finds no connection starts it again.
    fn stop_connector(&mut self) {
        self.wanted = 1;
        self.connector_running = false;
    }

    fn prune(&mut self) {
        self.connections.retain(|c| c.is_usable());
    }

    /// A usable connection other than `avoid`; or `avoid` itself when no other can be opened.
    /// Raises `wanted` when another connection should be opened.
    fn pick(&mut self, avoid: Option<ConnectionId>, max: usize) -> Option<Arc<ConnectionHandle>> {
        self.prune();
        if let Some(conn) = self.connections.iter().find(|c| Some(c.id) != avoid) {
            return Some(Arc::clone(conn));
        }
        let avoided = self.connections.first()?;
        if self.connections.len() >= max || self.last_failure.is_some() {
            // No other connection can be had (at the limit, or connecting fails): the avoided
            // one is better than waiting.
            return Some(Arc::clone(avoided));
        }
        self.wanted = self.wanted.max(self.connections.len() + 1);
        None
    }
}

impl Pool {
    pub(crate) fn new(
        addr: SocketAddr,
        config: Arc<ClientConfig>,
        latency: Arc<LatencyTracker>,
    ) -> Self {
        Self {
            inner: Arc::new(PoolInner {
                addr,
                config,
                latency,
                state: Mutex::new(PoolState {
                    connections: Vec::new(),
                    wanted: 1,
                    connector_running: false,
                    failures: 0,
                    next_attempt: None,
                    last_failure: None,
                    incompatible_in_a_row: 0,
                    waiting: 0,
                    warned_at: None,
                }),
                current: ArcSwapOption::empty(),
                failing: AtomicBool::new(false),
                persistent: AtomicBool::new(false),
                changed: Notify::new(),
            }),
        }
    }

    /// The address this pool connects to.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// Whether a usable connection is there now. No lock.
    pub(crate) fn is_ready(&self) -> bool {
        self.inner
            .current
            .load()
            .as_ref()
            .is_some_and(|conn| conn.is_usable())
    }

    /// A usable connection is there and its server is not suspected (see
    /// [`crate::suspicion`]). No lock.
    pub(crate) fn is_available(&self) -> bool {
        self.inner.current.load().as_ref().is_some_and(|conn| {
            conn.is_usable() && !conn.suspected.as_ref().is_some_and(|s| s.get())
        })
    }

    /// Whether the latest connection attempt failed and no usable connection is there. No lock.
    pub(crate) fn is_failing(&self) -> bool {
        self.inner.failing.load(Ordering::Relaxed) && !self.is_ready()
    }

    /// Connects now and keeps connecting, with backoff, whenever no usable connection is there:
    /// see [`PoolInner::persistent`]. Needs a tokio runtime.
    pub(crate) fn keep_connected(&self) {
        self.inner.persistent.store(true, Ordering::Relaxed);
        self.kick();
    }

    /// Starts the connector if it is not running and a connection is missing. Needs a tokio
    /// runtime.
    pub(crate) fn kick(&self) {
        let mut state = self.inner.lock();
        state.prune();
        self.inner.publish(&state);
        let wanted =
            state.connections.len() < state.wanted || self.inner.persistent.load(Ordering::Relaxed);
        if !state.connector_running && wanted {
            state.connector_running = true;
            tokio::spawn(run_connector(Arc::downgrade(&self.inner)));
        }
    }

    /// A readmission probe: a new connection (TCP connect and full handshake) and a PING
    /// answered on it, within `timeout`. A TCP connect alone proves nothing: the kernel accepts
    /// connections for a stopped process. The probe's connection is closed afterwards.
    pub(crate) async fn probe(&self, timeout: Duration) -> bool {
        let inner = &self.inner;
        let id = NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let probe = async {
            let conn = connect(
                inner.addr,
                &inner.config,
                timeout,
                id,
                Arc::clone(&inner.latency),
            )
            .await
            .ok()?;
            let (answered, pong) = tokio::sync::oneshot::channel();
            conn.commands.send(Command::Probe(answered)).ok()?;
            pong.await.ok()
        };
        matches!(
            tokio::time::timeout_at(started + timeout, probe).await,
            Ok(Some(()))
        )
    }

    /// The connection plain calls use now, if there is one.
    pub(crate) fn current(&self) -> Option<Arc<ConnectionHandle>> {
        let mut state = self.inner.lock();
        state.prune();
        self.inner.publish(&state);
        state.connections.first().cloned()
    }

    /// A usable connection, not `avoid` if another can be had, within `deadline`.
    pub(crate) async fn get(
        &self,
        avoid: Option<ConnectionId>,
        deadline: Deadline,
        wait_for_ready: bool,
    ) -> Result<Arc<ConnectionHandle>, Error> {
        if avoid.is_none() {
            // The common case, without the lock: the first connection, usable.
            if let Some(conn) = self.inner.current.load_full().filter(|c| c.is_usable()) {
                return Ok(conn);
            }
        }
        let max = self.inner.config.max_connections;
        {
            let mut state = self.inner.lock();
            let picked = state.pick(avoid, max);
            self.inner.publish(&state);
            if let Some(conn) = picked {
                return Ok(conn);
            }
        }
        let _waiting = WaitingGuard::new(&self.inner);
        loop {
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut state = self.inner.lock();
                let picked = state.pick(avoid, max);
                self.inner.publish(&state);
                if let Some(conn) = picked {
                    return Ok(conn);
                }
                // Before a fail-fast return too: the connector stops when nobody waits after a
                // failed attempt, and only a call starts it again (its next attempt still waits
                // for the backoff).
                if !state.connector_running {
                    state.connector_running = true;
                    tokio::spawn(run_connector(Arc::downgrade(&self.inner)));
                }
                // A peer that is not a keel server is a configuration error: waiting for a
                // reconnect would only spend the deadline. Twice in a row, so that one preface
                // byte corrupted on the way costs one backoff step, not a burst of failures.
                let incompatible = state.incompatible_in_a_row >= INCOMPATIBLE_ATTEMPTS;
                if incompatible {
                    return Err(self.no_connection(
                        &state,
                        StatusCode::UNAVAILABLE,
                        GaveUp::NotKeel,
                    ));
                }
                if !wait_for_ready && state.last_failure.is_some() {
                    return Err(self.no_connection(
                        &state,
                        StatusCode::UNAVAILABLE,
                        GaveUp::FailFast,
                    ));
                }
            }
            let at = deadline.instant();
            if tokio::time::timeout_at(at, changed).await.is_err() {
                let state = self.inner.lock();
                // A known connection failure is the more useful status: the server is down.
                let code = if state.last_failure.is_some() {
                    StatusCode::UNAVAILABLE
                } else {
                    StatusCode::DEADLINE_EXCEEDED
                };
                return Err(self.no_connection(&state, code, GaveUp::Deadline));
            }
        }
    }

    fn no_connection(&self, state: &PoolState, code: StatusCode, gave_up: GaveUp) -> Error {
        let cause = NoConnection {
            addr: self.inner.addr,
            last_failure: state.last_failure.clone(),
            gave_up,
        };
        Error::from_code(code, cause.to_string(), Outcome::NotSent)
            .with_kind(ErrorKind::Connect)
            .with_source(cause)
    }
}

impl PoolInner {
    fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes what calls read without the lock: the first connection and whether connecting
    /// fails. Called under the lock after every change of either.
    fn publish(&self, state: &PoolState) {
        let first = state.connections.first();
        let current = self.current.load();
        if current.as_ref().map(Arc::as_ptr) != first.map(Arc::as_ptr) {
            self.current.store(first.cloned());
        }
        self.failing
            .store(state.last_failure.is_some(), Ordering::Relaxed);
    }
}

/// Counts a call waiting for a connection while it waits.
struct WaitingGuard<'a>(&'a PoolInner);

impl<'a> WaitingGuard<'a> {
    fn new(inner: &'a PoolInner) -> Self {
        inner.lock().waiting += 1;
        Self(inner)
    }
}

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.waiting = state.waiting.saturating_sub(1);
    }
}

/// What the connector does next.
enum Next {
    Stop,
    /// Wait until this connection is lost (persistent pools).
    Watch(Arc<Usable>),
    Connect(
        (
            SocketAddr,
            Arc<ClientConfig>,
            Arc<LatencyTracker>,
            Option<Instant>,
            u64,
        ),
    ),
}

/// Connects until the pool has the connections it wants. Stops when it has them, when a
/// connection attempt failed and nobody waits for a connection (the next call starts it again:
/// a fail-fast call that fails at once still does, so its channel reconnects, one attempt per
/// backoff step while calls come), or when the channel is gone. Each attempt waits for the
/// backoff first. A persistent pool's connector stops only with the channel: once it has its
/// connection it waits for it to be lost, then connects again.
async fn run_connector(pool: Weak<PoolInner>) {
    loop {
        let next = {
            let Some(inner) = pool.upgrade() else { return };
            let mut state = inner.lock();
            state.prune();
            inner.publish(&state);
            if state.connections.len() >= state.wanted {
                match state.connections.first() {
                    // Stay on watch: connect again as soon as this connection is lost, whether
                    // or not a call comes (a balancer sends none to an endpoint without one).
                    Some(first) if inner.persistent.load(Ordering::Relaxed) => {
                        Next::Watch(Arc::clone(&first.usable))
                    }
                    _ => {
                        state.stop_connector();
                        Next::Stop
                    }
                }
            } else {
                let id = NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed);
                Next::Connect((
                    inner.addr,
                    Arc::clone(&inner.config),
                    Arc::clone(&inner.latency),
                    state.next_attempt,
                    id,
                ))
            }
        };
        let (addr, config, latency, not_before, id) = match next {
            Next::Stop => return,
            Next::Watch(usable) => {
                usable.lost().await;
                continue;
            }
            Next::Connect(attempt) => attempt,
        };
        if let Some(at) = not_before {
            tokio::time::sleep_until(at).await;
        }
        let result = connect(addr, &config, config.connect_timeout, id, latency).await;
        let Some(inner) = pool.upgrade() else { return };
        {
            let mut state = inner.lock();
            match result {
                Ok(conn) => {
                    if state.failures > 0 {
                        info!(%addr, failed_attempts = state.failures, "reconnected");
                    }
                    state.connections.push(Arc::new(conn));
                    state.failures = 0;
                    state.next_attempt = None;
                    state.last_failure = None;
                    state.incompatible_in_a_row = 0;
                    state.warned_at = None;
                    inner.publish(&state);
                }
                Err(err) => {
                    let delay = config.reconnect_backoff.delay(state.failures);
                    state.failures += 1;
                    state.next_attempt = Some(Instant::now() + delay);
                    let now = Instant::now();
                    let error = with_causes(&err);
                    if state
                        .warned_at
                        .is_none_or(|at| now.duration_since(at) >= WARN_EVERY)
                    {
                        state.warned_at = Some(now);
                        warn!(
                            %addr,
                            attempt = state.failures,
                            retry_in = ?delay,
                            error,
                            "connect failed"
                        );
                    } else {
                        debug!(
                            %addr,
                            attempt = state.failures,
                            retry_in = ?delay,
                            error,
                            "connect failed"
                        );
                    }
                    if err.is_incompatible_peer() {
                        state.incompatible_in_a_row += 1;
                    } else {
                        state.incompatible_in_a_row = 0;
                    }
                    state.last_failure = Some(err);
                    inner.publish(&state);
                    if state.waiting == 0 && !inner.persistent.load(Ordering::Relaxed) {
                        state.stop_connector();
                        drop(state);
                        inner.changed.notify_waiters();
                        return;
                    }
                }
            }
        }
        inner.changed.notify_waiters();
    }
}

/// `err` and every cause beneath it, as one line: "could not connect to ADDR: Connection refused
/// (os error 111)".
fn with_causes(err: &dyn std::error::Error) -> String {
    let mut line = err.to_string();
    let mut next = err.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        next = cause.source();
    }
    line
}
