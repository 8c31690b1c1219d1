//! The shape of the client's layers: each is a [`CallService`] wrapping another, like tower's
//! `Service`, but called through `&self` with no `poll_ready` (a channel is shared by many
//! callers at once, and the server's concurrency limit is enforced inside the connection), and
//! returning an unboxed future. The stack of a channel is `Retry<Hedge<Pool>>`.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use bytes::Bytes;
use rpc_codec::MethodName;
use rpc_core::{Deadline, Error, Idempotency, Metadata, Outcome};

use crate::Reply;
use crate::policy::{HedgePolicy, RetryPolicy};

/// Identifies one connection of a channel.
pub(crate) type ConnectionId = u64;

/// One call as it goes down the stack, and each attempt of it.
#[derive(Clone, Debug)]
pub(crate) struct Attempt {
    pub(crate) method: MethodName,
    pub(crate) payload: Bytes,
    pub(crate) metadata: Metadata,
    pub(crate) idempotent: bool,
    /// The call's one deadline, shared by all its attempts.
    pub(crate) deadline: Deadline,
    /// Wait for a connection until the deadline (true), or fail at once while connecting fails.
    pub(crate) wait_for_ready: bool,
    /// Place this attempt on a connection other than this one, if the pool can.
    pub(crate) avoid: Option<ConnectionId>,
    pub(crate) retry: RetryChoice,
    pub(crate) hedge: Option<HedgePolicy>,
    /// The consistent-hashing key's hash, if the caller gave one.
    pub(crate) hash_key: Option<u64>,
    /// Endpoints to send to at once ([`Failover::Forking`](crate::Failover::Forking)); 1 for one.
    pub(crate) fork: usize,
    /// State shared by all attempts of the call.
    pub(crate) call: Arc<CallState>,
}

impl Attempt {
    /// How the retry-safety rule sees this call after a failure with `outcome`. A call protected
    /// by the server's dedupe window is treated as idempotent after MAYBE_EXECUTED, because the
    /// server answers a repeat with the first execution's result. After EXECUTED it is not: the
    /// server recorded that error, and a repeat would only replay it.
    pub(crate) fn idempotency(&self, outcome: Outcome) -> Idempotency {
        let deduped = self.call.request_id.is_some() && outcome == Outcome::MaybeExecuted;
        Idempotency::from_flag(self.idempotent || deduped)
    }
}

/// Which retry policy a call follows. The channel's default lives in the retry layer, so the
/// common case clones no shared pointer per call.
#[derive(Clone, Debug)]
pub(crate) enum RetryChoice {
    /// The channel's policy (or none, if the channel disabled retries).
    ChannelDefault,
    /// No retries for this call.
    Off,
    /// This call's own policy.
    Policy(Arc<RetryPolicy>),
}

/// What the attempts of one call share.
#[derive(Debug, Default)]
pub(crate) struct CallState {
    /// Attempts placed on a connection so far.
    attempts: AtomicU32,
    /// The connection of the latest attempt (0: none yet).
    last_connection: AtomicU64,
    /// The id the server's dedupe window knows the call by.
    pub(crate) request_id: Option<Bytes>,
    /// The method's schema fingerprint, sent as `rpc-schema` with every attempt.
    pub(crate) schema: Option<Bytes>,
    /// The DEDUPE_INSTANCE of the server an attempt may have run on ([`NOT_RUN`] if none may
    /// have): a retry is deduplicated only by that same instance.
    may_have_run_on: AtomicU64,
    /// The endpoint of that instance (0: none).
    may_have_run_at: AtomicU64,
    /// Endpoints attempts went to, one bit per endpoint id modulo 64.
    tried: AtomicU64,
}

/// [`CallState::may_have_run_on`] before any attempt may have run.
const NOT_RUN: u64 = u64::MAX;

impl CallState {
    pub(crate) fn new(request_id: Option<Bytes>) -> Self {
        Self {
            request_id,
            may_have_run_on: AtomicU64::new(NOT_RUN),
            ..Self::default()
        }
    }

    /// This state with the method's schema fingerprint.
    pub(crate) fn with_schema(mut self, schema: Option<Bytes>) -> Self {
        self.schema = schema;
        self
    }

    /// Records that an attempt may have run on the server announcing `dedupe_instance`, reached
    /// through endpoint `endpoint`.
    pub(crate) fn may_have_run(&self, dedupe_instance: u32, endpoint: u64) {
        self.may_have_run_on
            .store(u64::from(dedupe_instance), Ordering::Relaxed);
        self.may_have_run_at.store(endpoint, Ordering::Relaxed);
    }

    /// The endpoint an attempt may have run on, for a call that relies on a dedupe window: its
    /// retries may go nowhere else.
    pub(crate) fn pinned_endpoint(&self) -> Option<u64> {
        self.request_id.as_ref()?;
        Some(self.may_have_run_at.load(Ordering::Relaxed)).filter(|&id| id != 0)
    }

    /// Records an attempt sent to endpoint `endpoint`.
    pub(crate) fn tried(&self, endpoint: u64) {
        self.tried.fetch_or(1 << (endpoint % 64), Ordering::Relaxed);
    }

    /// Whether an attempt went to endpoint `endpoint` (or to another whose id is equal modulo
    /// 64: with more than 64 endpoints, some untried ones look tried).
    pub(crate) fn has_tried(&self, endpoint: u64) -> bool {
        self.tried.load(Ordering::Relaxed) & (1 << (endpoint % 64)) != 0
    }

    /// Whether an attempt on a server announcing `dedupe_instance` is safe for a call that may
    /// already have run: only the instance that recorded it (with a window: non-zero) will answer
    /// with the recorded result.
    pub(crate) fn dedupe_safe_on(&self, dedupe_instance: u32) -> bool {
        match self.may_have_run_on.load(Ordering::Relaxed) {
            NOT_RUN => true,
            earlier => earlier != 0 && earlier == u64::from(dedupe_instance),
        }
    }

    /// Records an attempt placed on `connection`; returns its number, from 1.
    pub(crate) fn placed(&self, connection: ConnectionId) -> u32 {
        self.last_connection.store(connection, Ordering::Relaxed);
        self.attempts.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The connection of the latest attempt, if any was placed.
    pub(crate) fn last_connection(&self) -> Option<ConnectionId> {
        Some(self.last_connection.load(Ordering::Relaxed)).filter(|&id| id != 0)
    }

    /// Attempts placed so far.
    pub(crate) fn attempts(&self) -> u32 {
        self.attempts.load(Ordering::Relaxed)
    }
}

/// One layer of the client stack.
pub(crate) trait CallService: Send + Sync {
    /// Runs `attempt` (and, for an outer layer, whatever further attempts it decides on).
    fn call(&self, attempt: Attempt) -> impl Future<Output = Result<Reply, Error>> + Send;
}
