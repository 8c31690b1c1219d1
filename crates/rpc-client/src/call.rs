//! What a call takes and gives: options, the reply, and the state a caller shares with its
//! connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use rpc_core::{Deadline, Idempotency, Metadata};

use crate::policy::{HedgePolicy, RetryPolicy};

/// Per-call options: deadline, metadata, idempotency.
///
/// ```
/// use std::time::Duration;
/// use keel::client::CallOptions;
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
    /// `Some(None)`: no retries for this call.
    pub(crate) retry: Option<Option<Arc<RetryPolicy>>>,
    pub(crate) hedge: Option<HedgePolicy>,
    pub(crate) wait_for_ready: Option<bool>,
    pub(crate) dedupe: bool,
    /// The caller's own request id for the dedupe window, instead of a random one.
    pub(crate) idempotency_key: Option<Bytes>,
    pub(crate) hash_key: Option<u64>,
    pub(crate) failover: Option<crate::Failover>,
    pub(crate) schema: Option<Bytes>,
    pub(crate) detached: bool,
}

impl CallOptions {
    /// Defaults: the channel's default deadline (cut to the deadline of the call being served
    /// when made inside a handler), no metadata, not idempotent.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the call stands apart from the call being served (true) or inherits its deadline
    /// (false). Default false: a call made while a handler runs finishes by the earlier of its
    /// own deadline and the handler's, so a chain A → B → C stops working for an A that gave up,
    /// and a failure at the inherited deadline says so
    /// ([`Error::deadline_inherited`](rpc_core::Error::deadline_inherited)). Detach work that
    /// must outlive the caller: an audit record, a cache fill, a background job. It then has its
    /// own deadline alone, though it is still cancelled if its future is dropped with the
    /// handler's: spawn it (`tokio::spawn`) to let it run on. A task the handler spawns is
    /// outside the call anyway, unless wrapped in
    /// [`in_current_call`](rpc_core::current::in_current_call).
    pub fn detached(mut self, detached: bool) -> Self {
        self.detached = detached;
        self
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

    /// The key a [`Balancer::ConsistentHash`](crate::Balancer::ConsistentHash) channel places
    /// the call by: calls with the same key go to the same endpoint while it is available. The
    /// key is hashed with a hash fixed across keel versions, so every client places it alike.
    /// Other balancers ignore it.
    pub fn hash_key(mut self, key: impl AsRef<[u8]>) -> Self {
        self.hash_key = Some(crate::balance::stable_hash(key.as_ref()));
        self
    }

    /// This call's [`Failover`](crate::Failover) instead of the channel's.
    pub fn failover(mut self, failover: crate::Failover) -> Self {
        self.failover = Some(failover);
        self
    }

    /// Metadata sent with the request. Keys starting `rpc-` are keel's own (attempt numbers,
    /// request ids, schema fingerprints): a call whose metadata holds one fails before it is
    /// sent, with INVALID_ARGUMENT and NOT_SENT. For a request id of your own, use
    /// [`idempotency_key`](Self::idempotency_key).
    pub fn metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// Marks the method idempotent (the wire's IDEMPOTENT flag).
    pub fn idempotent(mut self, idempotent: bool) -> Self {
        self.idempotency = Some(Idempotency::from_flag(idempotent));
        self
    }

    /// This call's retry policy instead of the channel's.
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(Some(Arc::new(policy)));
        self
    }

    /// No retries for this call: one attempt, whatever its outcome.
    pub fn no_retry(mut self) -> Self {
        self.retry = Some(None);
        self
    }

    /// Hedge this call (it must also be idempotent) instead of following the channel's hedge
    /// policy.
    pub fn hedge(mut self, policy: HedgePolicy) -> Self {
        self.hedge = Some(policy);
        self
    }

    /// Wait for a connection within the deadline (true) or fail fast while connecting fails
    /// (false), instead of the channel's setting.
    pub fn wait_for_ready(mut self, wait: bool) -> Self {
        self.wait_for_ready = Some(wait);
        self
    }

    /// Sends a request id (`rpc-request-id`, 16 random bytes, the same on every attempt) so that
    /// a server with a dedupe window answers a retry with the first execution's result instead of
    /// running the handler again. The call is then retried after a MAYBE_EXECUTED failure like an
    /// idempotent one, but only towards the server instance that may have run it, and only if
    /// that server announced a window (`ServerBuilder::dedupe`); otherwise it stops with a
    /// [`StopReason::NoDedupeWindow`](crate::StopReason::NoDedupeWindow) cause. (After EXECUTED
    /// it is not retried: the window recorded that result.)
    pub fn dedupe(mut self, dedupe: bool) -> Self {
        self.dedupe = dedupe;
        self
    }

    /// Dedupes the call (as [`dedupe`](Self::dedupe)) under `key` instead of a random request
    /// id: calls made with the same key, from this process or another, run at most once on a
    /// server with a dedupe window while it remembers the key (its `DedupeConfig::ttl`). Use an
    /// id your application already has for the operation (an order number, a client-generated
    /// UUID) so that a caller retrying after its own crash is deduplicated too.
    ///
    /// The key is sent as `rpc-request-id` and must be 1 to
    /// [`MAX_REQUEST_ID_LEN`](rpc_core::metadata::MAX_REQUEST_ID_LEN) (64) bytes; otherwise the
    /// call fails before it is sent, with INVALID_ARGUMENT and NOT_SENT.
    pub fn idempotency_key(mut self, key: impl Into<Bytes>) -> Self {
        self.dedupe = true;
        self.idempotency_key = Some(key.into());
        self
    }

    /// The method's schema fingerprint, sent as `rpc-schema` (docs/PROTOCOL.md §8): set by the
    /// code `#[keel::service]` generates, which computes it from the method's types. Not for
    /// hand-written calls.
    #[doc(hidden)]
    pub fn schema_fingerprint(mut self, fingerprint: Bytes) -> Self {
        self.schema = Some(fingerprint);
        self
    }

    /// These options, with every option they leave unset taken from `defaults` (a method's
    /// declared settings, say): deadline and timeout together, idempotency, retry policy, hedge
    /// policy and wait-for-ready. Dedupe and detached are on if either asks; metadata is this
    /// one's.
    pub fn or_defaults(mut self, defaults: Self) -> Self {
        if !self.has_deadline() {
            self.deadline = defaults.deadline;
            self.timeout = defaults.timeout;
        }
        self.idempotency = self.idempotency.or(defaults.idempotency);
        self.retry = self.retry.or(defaults.retry);
        self.hedge = self.hedge.or(defaults.hedge);
        self.failover = self.failover.or(defaults.failover);
        self.wait_for_ready = self.wait_for_ready.or(defaults.wait_for_ready);
        self.dedupe |= defaults.dedupe;
        self.detached |= defaults.detached;
        self.idempotency_key = self.idempotency_key.or(defaults.idempotency_key);
        self
    }

    /// Whether a deadline or timeout is set.
    #[must_use]
    pub fn has_deadline(&self) -> bool {
        self.deadline.is_some() || self.timeout.is_some()
    }

    /// Refuses what the caller may not send: keel's reserved metadata keys, and a request id of
    /// the wrong length.
    pub(crate) fn check(&self) -> Result<(), String> {
        if let Some((key, _)) = self.metadata.iter().find(|(key, _)| key.is_reserved()) {
            return Err(format!(
                "metadata key {:?} is reserved for keel (every key starting {:?}); name it \
                 otherwise{}",
                key.as_str(),
                rpc_core::metadata::RESERVED_PREFIX,
                if key.as_str() == rpc_core::metadata::REQUEST_ID_KEY {
                    ", or pass the id with CallOptions::idempotency_key"
                } else {
                    ""
                }
            ));
        }
        if let Some(key) = &self.idempotency_key {
            let max = rpc_core::metadata::MAX_REQUEST_ID_LEN;
            if key.is_empty() || key.len() > max {
                return Err(format!(
                    "the idempotency key must be 1 to {max} bytes, got {}",
                    key.len()
                ));
            }
        }
        Ok(())
    }

    /// The call's own deadline, before any inherited one.
    pub(crate) fn resolve_deadline(&self, default: Duration) -> Deadline {
        let from_timeout = Deadline::from_now(self.timeout.unwrap_or(default));
        match (self.deadline, self.timeout) {
            (Some(deadline), Some(_)) => deadline.min(from_timeout),
            (Some(deadline), None) => deadline,
            (None, _) => from_timeout,
        }
    }
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
    /// How long the call waited in the connection before the writer took it, in microseconds:
    /// taken out of the latency the channel records, so a queue under overload does not make the
    /// server look slow.
    waited_micros: AtomicU64,
}

impl CallSlot {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The writer takes the request after it waited `waited` in the connection; false if the
    /// caller already gave up.
    pub(crate) fn hand_over(&self, call_id: u64, waited: Duration) -> bool {
        self.call_id.store(call_id, Ordering::Relaxed);
        let micros = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
        self.waited_micros.store(micros, Ordering::Relaxed);
        self.state
            .compare_exchange(QUEUED, HANDED_OVER, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// The caller gives up, or the connection refuses the call before writing it; true if the
    /// request will never be sent (it was not handed to the writer, whoever gave up first).
    pub(crate) fn abandon(&self) -> bool {
        match self
            .state
            .compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) | Err(ABANDONED) => true,
            Err(_) => false,
        }
    }

    /// Whether the caller gave up before the writer took the request.
    pub(crate) fn is_abandoned(&self) -> bool {
        self.state.load(Ordering::Acquire) == ABANDONED
    }

    /// How long the call waited before the writer took it (valid once handed over).
    pub(crate) fn waited(&self) -> Duration {
        Duration::from_micros(self.waited_micros.load(Ordering::Relaxed))
    }

    /// The call id the writer gave the request (valid once handed over).
    pub(crate) fn call_id(&self) -> u64 {
        self.call_id.load(Ordering::Relaxed)
    }
}
