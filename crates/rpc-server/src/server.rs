//! The server: builder, accept loop, connection limit, graceful shutdown.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rpc_codec::{FrameEncoder, GoAway, GoAwayCode};
use rpc_transport::handshake;
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::config::ServerConfig;
use crate::connection::{Shared, serve_connection};
use crate::dedupe::{DedupeConfig, DedupeTable};
use crate::handler::{Handler, Router};

/// Configures a [`Server`]: limits, timeouts and the handlers of its methods.
///
/// ```
/// use std::time::Duration;
/// use bytes::Bytes;
/// use rpc_core::CallContext;
/// use rpc_server::Server;
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
    /// How long a new connection has to deliver its preface and HELLO. Default 10 s.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.config.handshake_timeout = timeout;
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

    /// Connections served at once; a connection beyond it gets GOAWAY `OVERLOADED` and is closed.
    /// Default 1024.
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.config.max_connections = connections;
        self
    }

    /// How long a graceful shutdown lets running calls finish before dropping them. Default 30 s.
    pub fn drain_grace(mut self, grace: Duration) -> Self {
        self.config.drain_grace = grace;
        self
    }

    /// How many CANCELs of calls that never started a connection may send per window before it is
    /// closed with GOAWAY `TOO_MANY_CANCELS` (the HTTP/2 rapid-reset defence). Default 200 per
    /// 10 s.
    pub fn max_unstarted_cancels(mut self, cancels: u32, window: Duration) -> Self {
        self.config.max_unstarted_cancels = cancels;
        self.config.unstarted_cancel_window = window;
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

    /// The server.
    pub fn build(mut self) -> Server {
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
    let slots = Arc::new(Semaphore::new(shared.config.max_connections));
    loop {
        let accepted = tokio::select! {
            () = drain.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((io, peer)) => match Arc::clone(&slots).try_acquire_owned() {
                Ok(slot) => {
                    let (shared, drain, stop) = (Arc::clone(&shared), drain.clone(), stop.clone());
                    let detached = tracker.clone();
                    tracker.spawn(async move {
                        serve_connection(io, peer, shared, drain, stop, detached).await;
                        drop(slot);
                    });
                }
                Err(_) => {
                    warn!(%peer, "connection limit reached; refusing");
                    tracker.spawn(refuse_overloaded(io));
                }
            },
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

async fn refuse_overloaded(mut io: TcpStream) {
    let goaway = GoAway::new(0, GoAwayCode::OVERLOADED, "connection limit reached");
    let mut encoder = FrameEncoder::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        handshake::send_goaway(&mut io, &mut encoder, goaway),
    )
    .await;
}
