//! The context a call carries: its id, method, deadline, metadata and peer.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::{Deadline, Idempotency, Metadata};

/// What a handler knows about the call it is serving, and what a caller attaches to a call.
///
/// The server fills one in for every dispatched REQUEST; the deadline is the request's budget
/// added to the server's clock on arrival.
///
/// ```
/// use std::time::Duration;
/// use keel::core::{CallContext, Deadline, Idempotency};
/// let ctx = CallContext::new("Echo.echo")
///     .with_call_id(7)
///     .with_deadline(Some(Deadline::from_now(Duration::from_secs(1))))
///     .with_idempotency(Idempotency::Idempotent);
/// assert_eq!(ctx.method(), "Echo.echo");
/// assert_eq!(ctx.call_id(), 7);
/// assert!(ctx.deadline().is_some());
/// assert!(ctx.peer_addr().is_none());
/// ```
#[derive(Clone, Debug)]
pub struct CallContext {
    call_id: u64,
    method: Arc<str>,
    deadline: Option<Deadline>,
    metadata: Metadata,
    peer_addr: Option<SocketAddr>,
    idempotency: Idempotency,
    decode_limit: usize,
    schema_fingerprint: Option<bytes::Bytes>,
}

impl CallContext {
    /// A context for a call of `method`: call id 0, no deadline, no metadata, no peer address,
    /// not idempotent, the default decode limit.
    pub fn new(method: impl Into<Arc<str>>) -> Self {
        Self {
            call_id: 0,
            method: method.into(),
            deadline: None,
            metadata: Metadata::new(),
            peer_addr: None,
            idempotency: Idempotency::NonIdempotent,
            decode_limit: crate::DEFAULT_DECODE_LIMIT,
            schema_fingerprint: None,
        }
    }

    /// This context with `call_id`.
    #[must_use]
    pub fn with_call_id(mut self, call_id: u64) -> Self {
        self.call_id = call_id;
        self
    }

    /// This context with `deadline` (`None`: no deadline).
    #[must_use]
    pub fn with_deadline(mut self, deadline: Option<Deadline>) -> Self {
        self.deadline = deadline;
        self
    }

    /// This context with `metadata`.
    #[must_use]
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// This context with the peer's address.
    #[must_use]
    pub fn with_peer_addr(mut self, peer_addr: SocketAddr) -> Self {
        self.peer_addr = Some(peer_addr);
        self
    }

    /// This context marked idempotent or not.
    #[must_use]
    pub fn with_idempotency(mut self, idempotency: Idempotency) -> Self {
        self.idempotency = idempotency;
        self
    }

    /// This context with the schema fingerprint the client sent (the server sets it).
    #[must_use]
    pub fn with_schema_fingerprint(mut self, fingerprint: Option<bytes::Bytes>) -> Self {
        self.schema_fingerprint = fingerprint;
        self
    }

    /// The schema fingerprint the client sent for the method's types (`rpc-schema`,
    /// docs/PROTOCOL.md §5.8), kept out of [`metadata`](Self::metadata); `None` if it sent none.
    /// The handlers `#[service]` generates refuse a call whose fingerprint differs from theirs.
    #[must_use]
    pub fn schema_fingerprint(&self) -> Option<&bytes::Bytes> {
        self.schema_fingerprint.as_ref()
    }

    /// This context with a decode limit of `limit` bytes.
    #[must_use]
    pub fn with_decode_limit(mut self, limit: usize) -> Self {
        self.decode_limit = limit;
        self
    }

    /// The call id on its connection (0 before one is assigned).
    #[must_use]
    pub fn call_id(&self) -> u64 {
        self.call_id
    }

    /// The method name as sent on the wire.
    #[must_use]
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The method name, shared: a copy costs a reference count, not an allocation.
    #[must_use]
    pub fn method_name(&self) -> &Arc<str> {
        &self.method
    }

    /// The deadline, if the call has one.
    #[must_use]
    pub fn deadline(&self) -> Option<Deadline> {
        self.deadline
    }

    /// The call's metadata.
    #[must_use]
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The call's metadata, mutably.
    pub fn metadata_mut(&mut self) -> &mut Metadata {
        &mut self.metadata
    }

    /// The address of the peer on the other end, when known.
    #[must_use]
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer_addr
    }

    /// Whether the call was marked idempotent.
    #[must_use]
    pub fn idempotency(&self) -> Idempotency {
        self.idempotency
    }

    /// How much memory decoding this call's payload may claim, in bytes: keel's server sets
    /// [`Bincode::for_frame_limit`](crate::Bincode::for_frame_limit) of its max frame size (16 MiB
    /// with the default 4 MiB frames). `#[service]` handlers decode their arguments under it; a
    /// handler registered directly should too: `Bincode::with_limit(ctx.decode_limit())`.
    #[must_use]
    pub fn decode_limit(&self) -> usize {
        self.decode_limit
    }

    /// Which attempt of the client's call this is: 1 for the first, more for a retry or a hedge
    /// (the `rpc-attempt` metadata; 1 when absent or unreadable).
    #[must_use]
    pub fn attempt(&self) -> u32 {
        self.metadata
            .get_str(crate::metadata::ATTEMPT_KEY)
            .and_then(|value| value.parse().ok())
            .filter(|&n| n >= 1)
            .unwrap_or(1)
    }
}
