//! The channel: calls to one address over a lazily connected, shared connection.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use rpc_codec::{Budget, MethodName, Request};
use rpc_core::{Deadline, Error, Idempotency, Outcome, StatusCode};
use tokio::sync::oneshot;

use crate::call::{CallOptions, CallSlot, Reply};
use crate::config::{ChannelBuilder, ClientConfig};
use crate::connection::{CallCommand, Command, ConnectionHandle, check_limits, connect};

/// Calls to one server address.
///
/// Cheap to clone and share across tasks: clones share one connection, which carries many calls at
/// once. The channel connects on its first call and replaces a connection that died or received
/// GOAWAY on the next call.
///
/// ```no_run
/// use bytes::Bytes;
/// use rpc_client::{CallOptions, Channel};
///
/// # async fn run() -> Result<(), rpc_core::Error> {
/// let channel = Channel::builder("127.0.0.1:7000".parse().unwrap()).build();
/// let reply = channel.call("Echo.echo", Bytes::from_static(b"hi"), CallOptions::new()).await?;
/// assert_eq!(reply.payload, "hi");
/// # Ok(())
/// # }
/// ```
///
/// # Cancellation
/// Dropping a call's future withdraws the call: a request not yet handed to the connection is never
/// sent; one already sent is followed by a CANCEL, and the server drops its handler. A call that
/// reaches its deadline fails with DEADLINE_EXCEEDED at the deadline and is cancelled the same way.
#[derive(Clone, Debug)]
pub struct Channel {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    addr: SocketAddr,
    config: ClientConfig,
    connection: Mutex<Option<Arc<ConnectionHandle>>>,
    /// Serializes connecting, so concurrent first calls share one connection.
    connecting: tokio::sync::Mutex<()>,
}

impl Channel {
    /// A builder for a channel to `addr`.
    pub fn builder(addr: SocketAddr) -> ChannelBuilder {
        ChannelBuilder::new(addr)
    }

    pub(crate) fn from_parts(addr: SocketAddr, config: ClientConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                addr,
                config,
                connection: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The server address.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// Calls waiting for a response on the current connection (diagnostics).
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.current().map_or(0, |c| {
            c.in_flight.load(std::sync::atomic::Ordering::Acquire)
        })
    }

    fn current(&self) -> Option<Arc<ConnectionHandle>> {
        self.inner
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A usable connection, connecting if there is none, within `deadline`.
    async fn connection(&self, deadline: Deadline) -> Result<Arc<ConnectionHandle>, Error> {
        if let Some(conn) = self.current().filter(|c| c.is_usable()) {
            return Ok(conn);
        }
        let left = deadline.remaining(std::time::Instant::now());
        let guard = tokio::time::timeout(left, self.inner.connecting.lock())
            .await
            .map_err(|_| deadline_exceeded(Outcome::NotSent))?;
        if let Some(conn) = self.current().filter(|c| c.is_usable()) {
            return Ok(conn);
        }
        let left = deadline.remaining(std::time::Instant::now());
        if left.is_zero() {
            return Err(deadline_exceeded(Outcome::NotSent));
        }
        let timeout = left.min(self.inner.config.connect_timeout);
        let conn = connect(self.inner.addr, &self.inner.config, timeout)
            .await
            .map_err(|err| {
                let code = if timeout < self.inner.config.connect_timeout && err_is_timeout(&err) {
                    StatusCode::DEADLINE_EXCEEDED
                } else {
                    StatusCode::UNAVAILABLE
                };
                Error::from_code(code, err.to_string(), Outcome::NotSent).with_source(err)
            })?;
        let conn = Arc::new(conn);
        *self
            .inner
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&conn));
        drop(guard);
        Ok(conn)
    }

    /// Calls `method` with `payload`.
    ///
    /// # Errors
    /// [`Error`] with the status and the retry-safety outcome: NOT_SENT when the request never
    /// left (no connection, oversize, expired), NOT_EXECUTED when the server guarantees it did not
    /// run it, EXECUTED with the server's status, MAYBE_EXECUTED when nobody can tell (connection
    /// lost, deadline passed after sending).
    pub async fn call(
        &self,
        method: &str,
        payload: Bytes,
        options: CallOptions,
    ) -> Result<Reply, Error> {
        let method = MethodName::try_from(method).map_err(|e| {
            Error::from_code(
                StatusCode::INVALID_ARGUMENT,
                e.to_string(),
                Outcome::NotSent,
            )
        })?;
        let deadline = options.resolve_deadline(self.inner.config.default_deadline);
        let idempotent = options.idempotency == Some(Idempotency::Idempotent);
        // A call refused by a connection that was going away was never sent: one transparent
        // retry on a fresh connection.
        let mut retried = false;
        loop {
            let conn = self.connection(deadline).await?;
            let now = std::time::Instant::now();
            if deadline.is_expired(now) {
                return Err(deadline_exceeded(Outcome::NotSent));
            }
            let mut request = Request::new(0, method.clone(), payload.clone());
            request.idempotent = idempotent;
            request.budget = Budget::until(Some(deadline), now);
            request.metadata = options.metadata.clone();
            check_limits(&conn.peer, &request)?;
            match send_and_wait(&conn, request, deadline).await {
                Err(err) if !retried && is_connection_refusal(&err) => {
                    retried = true;
                }
                result => return result,
            }
        }
    }
}

fn err_is_timeout(err: &crate::connection::ConnectionError) -> bool {
    use crate::connection::ConnectionError;
    match err {
        ConnectionError::Connect { source, .. } => source.kind() == std::io::ErrorKind::TimedOut,
        ConnectionError::Handshake { source, .. } => {
            matches!(**source, rpc_transport::HandshakeError::Timeout(_))
        }
        _ => false,
    }
}

fn deadline_exceeded(outcome: Outcome) -> Error {
    Error::from_code(StatusCode::DEADLINE_EXCEEDED, "deadline exceeded", outcome)
}

/// A NOT_SENT UNAVAILABLE from a connection that stopped taking calls.
fn is_connection_refusal(err: &Error) -> bool {
    err.outcome() == Outcome::NotSent && err.code() == StatusCode::UNAVAILABLE
}

/// Hands `request` to the connection and waits for its result until `deadline`. Dropping the
/// returned future withdraws the call.
async fn send_and_wait(
    conn: &ConnectionHandle,
    request: Request,
    deadline: Deadline,
) -> Result<Reply, Error> {
    let slot = CallSlot::new();
    let (reply, response) = oneshot::channel();
    let command = Command::Call(CallCommand {
        request,
        slot: Arc::clone(&slot),
        reply,
    });
    if conn.commands.send(command).is_err() {
        return Err(Error::from_code(
            StatusCode::UNAVAILABLE,
            "the connection closed before the call was sent",
            Outcome::NotSent,
        ));
    }
    let mut guard = WithdrawOnDrop {
        slot: &slot,
        commands: &conn.commands,
        armed: true,
    };
    let at = tokio::time::Instant::from_std(deadline.instant());
    let result = match tokio::time::timeout_at(at, response).await {
        Ok(Ok(result)) => result,
        Ok(Err(_closed)) => Err(Error::from_code(
            StatusCode::UNAVAILABLE,
            "the connection ended without answering",
            if slot.abandon() {
                Outcome::NotSent
            } else {
                Outcome::MaybeExecuted
            },
        )),
        Err(_elapsed) => {
            guard.armed = false;
            return Err(deadline_exceeded(guard.withdraw()));
        }
    };
    guard.armed = false;
    result
}

/// Withdraws a call whose caller stopped waiting: never sent if it was still queued, otherwise
/// CANCEL on the wire.
struct WithdrawOnDrop<'a> {
    slot: &'a CallSlot,
    commands: &'a tokio::sync::mpsc::UnboundedSender<Command>,
    armed: bool,
}

impl WithdrawOnDrop<'_> {
    /// The outcome of the withdrawn call.
    fn withdraw(&self) -> Outcome {
        if self.slot.abandon() {
            Outcome::NotSent
        } else {
            let _ = self.commands.send(Command::Cancel {
                call_id: self.slot.call_id(),
            });
            Outcome::MaybeExecuted
        }
    }
}

impl Drop for WithdrawOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.withdraw();
        }
    }
}
