//! The server: builder, accept loop, connection limit, graceful shutdown.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::config::ServerConfig;
use crate::connection::{Shared, serve_connection};
use crate::dedupe::{DedupeConfig, DedupeTable};
use crate::handler::{Handler, Router};
use crate::handshake_pool::HandshakePool;

/// Configures a [`Server`]: limits, timeouts and the handlers of its methods.
///
/// ```
/// use std::time::Duration;
/// use keel::Bytes;
/// use keel::core::CallContext;
/// use keel::server::Server;
///
/// let server = Server::builder()
///     .heartbeat_interval(Duration::from_secs(5))
///     .max_concurrent_calls(256)
///     .register("Echo.echo", |_ctx: CallContext, payload: Bytes| async move { Ok(payload) })
///     .build();
/// # drop(server);
/// ```
#[derive(Debug, Default)]
#[must_use]
pub struct ServerBuilder {
    config: ServerConfig,
    router: Router,
}

impl ServerBuilder {
    /// How long a new connection has to deliver its preface and HELLO. Default 5 s: a client
    /// sends both at once after connecting, so an honest one needs a round trip at most; a socket
    /// that sends nothing (or a few bytes) gives its place back soon.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.config.handshake_timeout = timeout;
        self
    }

    /// Connections still in their handshake at once, a pool separate from
    /// [`max_connections`](Self::max_connections). Default 256. When it is full, a new connection
    /// closes the *oldest* handshaking one (with GOAWAY `HANDSHAKE_TIMEOUT`), so sockets that
    /// never finish their handshake cannot keep honest clients out: a client's handshake takes a
    /// round trip, an attacker's ones are evicted by the next 256 connections. Connections that
    /// finished their handshake are never affected.
    pub fn max_handshaking(mut self, connections: usize) -> Self {
        self.config.max_handshaking = connections.max(1);
        self
    }

    /// Bytes a connection may have queued and not yet written (responses, PONGs, GOAWAY) before
    /// it stops reading from the client and stops polling its calls' handlers, until the client
    /// reads. Default 1 MiB, at least 64 KiB. TCP then pushes back on a client that sends without
    /// reading, so whatever the client does a connection holds at most: this bound plus one
    /// response of unsent output, one request frame of read buffer, and the requests of the calls
    /// already dispatched (at most [`max_concurrent_calls`](Self::max_concurrent_calls), each at
    /// most [`max_frame_size`](Self::max_frame_size)). A write the socket takes after it had
    /// refused bytes shows the client reading, and counts as a sign of life for the heartbeat
    /// (its PONG may be behind the backlog); a client that reads nothing for the dead bound is
    /// closed.
    pub fn max_unsent_bytes(mut self, bytes: usize) -> Self {
        self.config.max_unsent_bytes = bytes.max(64 * 1024);
        self
    }

    /// Calls running at once on the whole server, across all its connections. A call over it is
    /// refused at once with RESOURCE_EXHAUSTED and NOT_EXECUTED, before any application code
    /// runs. Default 10,000: handlers are async and mostly wait, so this is far above what a
    /// 2–16 core machine runs well, while the per-connection default (100 calls × 1024
    /// connections) would allow 102,400.
    pub fn server_concurrency_limit(mut self, calls: usize) -> Self {
        self.config.server_concurrency_limit = calls;
        self
    }

    /// Calls of `method` running at once on the whole server; over it, refused like
    /// [`server_concurrency_limit`](Self::server_concurrency_limit). Default: no limit per
    /// method. For a method that is expensive or uses a scarce resource (a database pool).
    pub fn method_concurrency_limit(mut self, method: &str, calls: usize) -> Self {
        self.config
            .method_concurrency_limits
            .insert(method.into(), calls);
        self
    }

    /// The heartbeat interval announced to clients; the connection uses the smaller of ours and
    /// the client's, at least 100 ms (`rpc_codec::MIN_HEARTBEAT_INTERVAL_MS`: a client announcing
    /// less gets 100 ms). A PING goes out after this long without a frame. Default 10 s. Zero asks
    /// for no heartbeat.
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.config.heartbeat_interval = interval;
        self
    }

    /// After how many heartbeat intervals of silence a connection is closed and its running calls
    /// dropped. Default 3 (at least 2), one more than the client's default, so that a client
    /// notices a dead server before the server gives up on a live client.
    pub fn dead_after_intervals(mut self, intervals: u32) -> Self {
        self.config.dead_after_intervals = intervals.max(2);
        self
    }

    /// The largest request body accepted, in bytes. Default 4 MiB; at least 4096.
    pub fn max_frame_size(mut self, bytes: u32) -> Self {
        self.config.max_frame_size = bytes.max(rpc_codec::MIN_MAX_FRAME_SIZE);
        self
    }

    /// Calls run at once per connection; more are refused with RESOURCE_EXHAUSTED and
    /// NOT_EXECUTED. Default 100.
    pub fn max_concurrent_calls(mut self, calls: u32) -> Self {
        self.config.max_concurrent_calls = calls;
        self
    }

    /// The largest metadata block accepted per request, in bytes. Default 16 KiB.
    pub fn max_metadata_size(mut self, bytes: u32) -> Self {
        self.config.max_metadata_size = bytes;
        self
    }

    /// Connections served at once (after their handshake; see
    /// [`max_handshaking`](Self::max_handshaking) for those before). A connection beyond it has
    /// its HELLO read, gets GOAWAY `OVERLOADED` instead of HELLO_ACK and is closed, so its client
    /// reads why (its error says the server is overloaded) instead of seeing a reset. Default
    /// 1024, lowered at start, with a warning, when the process's open-file limit
    /// (`RLIMIT_NOFILE`, `ulimit -n`) cannot hold it plus the handshake pool plus 64 files for
    /// everything else.
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.config.max_connections = connections;
        self
    }

    /// How long a graceful shutdown lets running calls finish before dropping them. Default 30 s.
    pub fn drain_grace(mut self, grace: Duration) -> Self {
        self.config.drain_grace = grace;
        self
    }

    /// The rapid-reset defence (HTTP/2's CVE-2023-44487): a connection is closed with GOAWAY
    /// `TOO_MANY_CANCELS` when more than `min_cancels` of its recent calls, and more than
    /// `max_share_percent` % of them, were cancelled before their handler started. (Calls
    /// counts the REQUESTs dispatched; one refused at once costs nothing and is not counted.) Default 100
    /// and 90 %. The attack sends REQUEST and CANCEL together for every call (100 %); an honest
    /// client that drops half its calls' futures stays near 50 % or below, since a call starts
    /// as soon as it is read. Recent means the counts are halved every 2048 calls.
    ///
    /// When it fires, the GOAWAY's last call id covers every call received, nothing more is read
    /// from the connection, and the calls already running finish and get their RESPONSE (within
    /// the drain grace) before it closes.
    pub fn cancel_flood_limit(mut self, min_cancels: u32, max_share_percent: u32) -> Self {
        self.config.cancel_flood = crate::config::CancelFloodLimit {
            min_cancels,
            max_share_percent: max_share_percent.min(100),
        };
        self
    }

    /// Turns on the server-side dedupe window with `config` (off by default): a REQUEST without
    /// the IDEMPOTENT flag, for a registered method, whose metadata carries
    /// [`REQUEST_ID_KEY`](crate::REQUEST_ID_KEY) runs its handler at most once per (method,
    /// request id) while the window keeps the entry, and every request with that key gets the one
    /// execution's result. See [`DedupeConfig`] for the bounds and defaults.
    ///
    /// - The execution is detached from the connection: it runs to completion or to the first
    ///   request's deadline, whatever happens to the connection; a CANCEL, a deadline or a lost
    ///   connection only stops a request's *waiting* (CANCELLED or DEADLINE_EXCEEDED, without
    ///   NOT_EXECUTED). A panic is recorded as INTERNAL.
    /// - A later request with the same key waits for the running execution, or gets the recorded
    ///   result at once; its RESPONSE carries [`REPLAYED_KEY`](crate::REPLAYED_KEY) `1`.
    /// - A request id that is empty or over 64 bytes is refused with INVALID_ARGUMENT and
    ///   NOT_EXECUTED; so is, with RESOURCE_EXHAUSTED, a new id when the table is full of running
    ///   executions. A refusal by [`Handler::start`] is answered as always and keeps no entry.
    /// - A graceful shutdown waits for detached executions within the drain grace; a hard stop
    ///   drops them.
    pub fn dedupe(mut self, config: DedupeConfig) -> Self {
        self.config.dedupe = Some(config);
        self
    }

    /// Serves `method` with `handler`. Method names are `Service.method` (docs/PROTOCOL.md §5.3);
    /// registering a name again replaces its handler.
    pub fn register(mut self, method: &str, handler: impl Handler) -> Self {
        self.router.insert(method, Arc::new(handler));
        self
    }

    /// Registers every method of `service` (what `#[service]` generates as `{Trait}Server`).
    pub fn add_service(self, service: impl Service) -> Self {
        service.register(self)
    }

    /// The server. When the process's open-file limit (`RLIMIT_NOFILE`) cannot hold
    /// [`max_connections`](Self::max_connections) plus [`max_handshaking`](Self::max_handshaking)
    /// plus 64, both are lowered to fit and a warning says so.
    pub fn build(mut self) -> Server {
        if let Some(files) = crate::config::open_file_limit() {
            let config = &mut self.config;
            if let Some((connections, handshaking)) = config.fit_file_limit(files) {
                warn!(
                    files,
                    connections,
                    handshaking,
                    "the open-file limit (RLIMIT_NOFILE) cannot hold max_connections {} plus \
                     max_handshaking {}: lowered (raise it with `ulimit -n`)",
                    config.max_connections,
                    config.max_handshaking,
                );
                config.max_connections = connections;
                config.max_handshaking = handshaking;
            }
        }
        self.config.dedupe_instance = if self.config.dedupe.is_some() {
            crate::config::new_dedupe_instance()
        } else {
            0
        };
        Server {
            shared: Arc::new(Shared {
                dedupe: self
                    .config
                    .dedupe
                    .clone()
                    .map(|config| Arc::new(DedupeTable::new(config))),
                slots: Arc::new(Semaphore::new(self.config.max_connections)),
                handshaking: HandshakePool::new(self.config.max_handshaking),
                limits: crate::limit::Limits::new(
                    self.config.server_concurrency_limit,
                    &self.config.method_concurrency_limits,
                ),
                config: self.config,
                router: self.router,
            }),
        }
    }
}

/// A set of methods that registers itself on a server: what `#[service]` generates as
/// `{Trait}Server` for an implementation of the trait.
pub trait Service {
    /// Registers every method on `builder`.
    fn register(self, builder: ServerBuilder) -> ServerBuilder;
}

/// A keel server: its configuration and handlers, ready to serve a listener.
#[derive(Debug, Clone)]
pub struct Server {
    shared: Arc<Shared>,
}

impl Server {
    /// A builder with every default.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// Serves one connection over any byte stream (an in-memory pipe, a TLS stream, a Unix
    /// socket), as if accepted by a listener: the handshake under its timeout and in the
    /// handshake pool, a serving slot, and every limit of this server, shared with its listeners.
    /// Resolves when the connection ends; dropping the future closes it. A [`ServerHandle`]'s
    /// shutdown does not reach it. `peer` is what handlers see as the peer address.
    pub async fn serve_io<S>(&self, io: S, peer: SocketAddr)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let ticket = self.shared.handshaking.enter();
        let tracker = TaskTracker::new();
        serve_connection(
            io,
            peer,
            Arc::clone(&self.shared),
            ticket,
            CancellationToken::new(),
            CancellationToken::new(),
            tracker,
        )
        .await;
    }

    /// Binds `addr` and serves it in the background.
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn bind(self, addr: impl ToSocketAddrs) -> io::Result<ServerHandle> {
        let listener = TcpListener::bind(addr).await?;
        self.serve(listener)
    }

    /// Serves `listener` in the background (a tokio task); the handle stops it.
    ///
    /// # Errors
    /// When the listener has no local address.
    pub fn serve(self, listener: TcpListener) -> io::Result<ServerHandle> {
        let local_addr = listener.local_addr()?;
        let drain = CancellationToken::new();
        let stop = CancellationToken::new();
        let task = tokio::spawn(accept_loop(
            listener,
            self.shared,
            drain.clone(),
            stop.clone(),
        ));
        Ok(ServerHandle {
            local_addr,
            drain,
            stop,
            task,
        })
    }
}

/// A running server. Dropping the handle leaves the server running; [`ServerHandle::shutdown`]
/// drains it.
#[derive(Debug)]
pub struct ServerHandle {
    local_addr: SocketAddr,
    drain: CancellationToken,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl ServerHandle {
    /// The address the server listens on.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A token that starts a graceful shutdown when cancelled (for a Ctrl-C handler, say).
    #[must_use]
    pub fn shutdown_token(&self) -> CancellationToken {
        self.drain.clone()
    }

    /// Graceful shutdown: stop accepting, send GOAWAY with the last call dispatched on every
    /// connection, let running calls (and the dedupe window's detached executions) finish within
    /// the drain grace period, drop the rest. Resolves when every connection is closed and every
    /// detached execution has ended.
    pub async fn shutdown(self) {
        self.drain.cancel();
        let _ = self.task.await;
    }

    /// Resolves when the server has stopped (after a shutdown started through
    /// [`ServerHandle::shutdown_token`]).
    pub async fn stopped(self) {
        let _ = self.task.await;
    }

    /// Stops at once: closes every connection and drops every running call, the dedupe window's
    /// detached executions included.
    pub async fn abort(self) {
        self.drain.cancel();
        self.stop.cancel();
        let _ = self.task.await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    drain: CancellationToken,
    stop: CancellationToken,
) {
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = drain.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((io, peer)) => {
                let _ = io.set_nodelay(true);
                let ticket = shared.handshaking.enter();
                let (shared, drain, stop) = (Arc::clone(&shared), drain.clone(), stop.clone());
                let detached = tracker.clone();
                tracker.spawn(serve_connection(
                    io, peer, shared, ticket, drain, stop, detached,
                ));
            }
            Err(err) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    drop(listener);
    tracker.close();
    let grace = shared.config.drain_grace + Duration::from_secs(1);
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        debug!("drain grace period over; dropping the remaining connections");
        stop.cancel();
        tracker.wait().await;
    }
}
