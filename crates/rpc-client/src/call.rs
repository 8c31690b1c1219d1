//! What a call takes and gives: options, the reply, and the state a caller shares with its
//! connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use rpc_core::{Deadline, Idempotency, Metadata};

/// Per-call options: deadline, metadata, idempotency.
///
/// ```
/// use std::time::Duration;
/// use rpc_client::CallOptions;
/// let opts = CallOptions::new().timeout(Duration::from_millis(250)).idempotent(true);
/// # drop(opts);
/// ```
#[derive(Clone, Debug, Default)]
#[must_use]
pub struct CallOptions {
    pub(crate) deadline: Option<Deadline>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) metadata: Metadata,
    pub(crate) idempotency: Option<Idempotency>,
}

impl CallOptions {
    /// Defaults: the channel's default deadline, no metadata, not idempotent.
    pub fn new() -> Self {
        Self::default()
    }

    /// The call must finish by `deadline`.
    pub fn deadline(mut self, deadline: Deadline) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// The call must finish within `timeout` from when it starts.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Metadata sent with the request.
    pub fn metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// Marks the method idempotent (the wire's IDEMPOTENT flag).
    pub fn idempotent(mut self, idempotent: bool) -> Self {
        self.idempotency = Some(Idempotency::from_flag(idempotent));
        self
    }

    /// Whether a deadline or timeout is set.
    #[must_use]
    pub fn has_deadline(&self) -> bool {
        self.deadline.is_some() || self.timeout.is_some()
    }

    pub(crate) fn resolve_deadline(&self, default: Duration) -> Deadline {
        let from_timeout = Deadline::from_now(self.timeout.unwrap_or(default));
        match (self.deadline, self.timeout) {
            (Some(deadline), Some(_)) => deadline.min(from_timeout),
            (Some(deadline), None) => deadline,
            (None, _) => from_timeout,
        }
    }
}

/// A successful call's result: the payload and the response metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reply {
    /// The serialized result.
    pub payload: Bytes,
    /// Metadata the server attached.
    pub metadata: Metadata,
}

/// The request is waiting for its connection's writer.
const QUEUED: u8 = 0;
/// The writer took the request: it may be on the wire.
const HANDED_OVER: u8 = 1;
/// The caller gave up before the writer took it: it will never be sent.
const ABANDONED: u8 = 2;

/// The state a caller and its connection share for one call. Exactly one of them wins the race
/// between "the writer takes the request" and "the caller gives up", so a caller that reports
/// NOT_SENT is never wrong.
#[derive(Debug, Default)]
pub(crate) struct CallSlot {
    state: AtomicU8,
    call_id: AtomicU64,
}

impl CallSlot {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The writer takes the request; false if the caller already gave up.
    pub(crate) fn hand_over(&self, call_id: u64) -> bool {
        self.call_id.store(call_id, Ordering::Relaxed);
        self.state
            .compare_exchange(QUEUED, HANDED_OVER, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// The caller gives up; true if the request will never be sent.
    pub(crate) fn abandon(&self) -> bool {
        self.state
            .compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// The call id the writer gave the request (valid once handed over).
    pub(crate) fn call_id(&self) -> u64 {
        self.call_id.load(Ordering::Relaxed)
    }
}
