//! The channel: calls to one address or several, through the retry, hedging and balancing
//! layers, over each endpoint's pool of lazily connected, shared connections.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use rand::RngCore;
use rpc_codec::MethodName;
use rpc_core::current::{self, InheritedDeadline};
use rpc_core::{Error, ErrorKind, Idempotency, Outcome, StatusCode, StopReason};
use tower::retry::budget::{Budget as _, TpsBudget};

use crate::Reply;
use crate::balance::{Balance, Balancer, Change, Failover, Target};
use crate::call::CallOptions;
use crate::config::{ChannelBuilder, ClientConfig};
use crate::hedge::Hedge;
use crate::latency::LatencyTracker;
use crate::retry::Retry;
use crate::stack::{Attempt, CallService, CallState, RetryChoice};

/// Calls to one server address, or to several ([`Channel::cluster`]).
///
/// Cheap to clone and share across tasks: clones share one connection per endpoint, which carries
/// many calls at once, and one retry budget. The channel connects on its first call; when its connection dies or
/// receives GOAWAY, it reconnects in the background with backoff while calls wait (see
/// [`ChannelBuilder::wait_for_ready`]).
///
/// Failed attempts are retried by the rules of [`RetryPolicy`](crate::RetryPolicy), within the
/// call's one deadline and the channel's [`RetryBudget`](crate::RetryBudget); idempotent calls
/// can be hedged ([`HedgePolicy`](crate::HedgePolicy)).
///
/// ```no_run
/// use keel::Bytes;
/// use keel::client::{CallOptions, Channel};
///
/// # async fn run() -> Result<(), keel::core::Error> {
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
    config: Arc<ClientConfig>,
    budget: Option<Arc<TpsBudget>>,
    stack: Retry<Hedge<Balance>>,
}

impl Channel {
    /// A builder for a channel to `addr`.
    pub fn builder(addr: SocketAddr) -> ChannelBuilder {
        ChannelBuilder::new(vec![Target::addr(addr)])
    }

    /// A builder for a channel over several servers: addresses, `host:port` names (resolved when
    /// the channel is built) or [`Target`]s with weights. Each call goes to one of them, picked by
    /// the [`Balancer`] (default: power of two choices over peak-EWMA latency); a retry or a
    /// hedge goes to another while there is one, and an endpoint that cannot be connected to is
    /// skipped at no cost to the call.
    ///
    /// ```no_run
    /// use keel::client::{Channel, Target};
    ///
    /// let channel = Channel::cluster([
    ///     Target::from("127.0.0.1:7001"),
    ///     Target::from("127.0.0.1:7002"),
    ///     Target::name("127.0.0.1:7003").weight(2),
    /// ])
    /// .build();
    /// # drop(channel);
    /// ```
    pub fn cluster<T: Into<Target>>(targets: impl IntoIterator<Item = T>) -> ChannelBuilder {
        ChannelBuilder::new(targets.into_iter().map(Into::into).collect())
    }

    pub(crate) fn from_parts(
        addrs: &[(SocketAddr, u32, u8)],
        balancer: Balancer,
        discovery: Option<futures::stream::BoxStream<'static, Change>>,
        config: ClientConfig,
    ) -> Self {
        let mut config = config;
        config.cluster = addrs.len() > 1 || discovery.is_some();
        let config = Arc::new(config);
        let budget = config.budget.map(|b| Arc::new(b.build()));
        let latency = Arc::new(LatencyTracker::default());
        let balance = Balance::new(
            addrs,
            balancer,
            discovery,
            Arc::clone(&config),
            Arc::clone(&latency),
        );
        let hedge = Hedge {
            inner: balance,
            budget: budget.clone(),
            latency: Arc::clone(&latency),
        };
        let stack = Retry {
            inner: hedge,
            default: config.retry.clone(),
            budget: budget.clone(),
            latency,
            reconnect: config.reconnect_backoff,
        };
        Self {
            inner: Arc::new(Inner {
                config,
                budget,
                stack,
            }),
        }
    }

    /// The server address: the first endpoint's, for a channel over several (see
    /// [`addrs`](Self::addrs)). `0.0.0.0:0` when the channel has no endpoint.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addrs()
            .first()
            .copied()
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The addresses of the channel's endpoints now.
    #[must_use]
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.inner.stack.inner.inner.addrs()
    }

    /// The server's concurrency slots the current connections hold, summed over the endpoints
    /// (diagnostics): calls waiting
    /// for their response, and withdrawn calls (cancelled, or past their deadline) until the
    /// server is known to have freed them: by their RESPONSE, or by the PONG of a PING sent
    /// after their CANCEL.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.inner.stack.inner.inner.in_flight()
    }

    /// How much memory decoding a reply's payload may claim, in bytes:
    /// [`Bincode::for_frame_limit`](rpc_core::Bincode::for_frame_limit) of this channel's
    /// [`max_frame_size`](crate::ChannelBuilder::max_frame_size) (16 MiB with the default 4 MiB).
    /// `#[service]` clients decode their results under it.
    #[must_use]
    pub fn decode_limit(&self) -> usize {
        rpc_core::Bincode::for_frame_limit(self.inner.config.max_frame_size).limit()
    }

    /// Calls `method` with `payload`.
    ///
    /// # Errors
    /// [`Error`] with the status and the retry-safety outcome of the last attempt: NOT_SENT when
    /// the request never left (no connection within the deadline, oversize, expired),
    /// NOT_EXECUTED when the server guarantees it did not run it, EXECUTED with the server's
    /// status, MAYBE_EXECUTED when nobody can tell (connection lost, deadline passed after
    /// sending). When retrying stopped early, a [`RetryStopped`](crate::RetryStopped) cause says
    /// why. A call made inside a handler finishes by the handler's deadline if that comes first
    /// (unless [`CallOptions::detached`]); failing by it, it is DEADLINE_EXCEEDED with an
    /// [`InheritedDeadline`] cause ([`Error::deadline_inherited`]), as is a failure not retried
    /// for lack of time before it.
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
            .with_kind(ErrorKind::Local)
        })?;
        let config = &self.inner.config;
        if let Err(no_runtime) = crate::config::runtime() {
            // Polled by another executor: keel's connections are tokio tasks.
            return Err(Error::from_code(
                StatusCode::FAILED_PRECONDITION,
                no_runtime.to_string(),
                Outcome::NotSent,
            )
            .with_kind(ErrorKind::Local));
        }
        options.check().map_err(|message| {
            Error::from_code(StatusCode::INVALID_ARGUMENT, message, Outcome::NotSent)
                .with_kind(ErrorKind::Local)
        })?;
        let request_id = match options.idempotency_key.clone() {
            Some(key) => Some(key),
            None => options.dedupe.then(|| {
                let mut id = [0u8; 16];
                rand::rng().fill_bytes(&mut id);
                Bytes::copy_from_slice(&id)
            }),
        };
        let own = options.resolve_deadline(config.default_deadline);
        // Inside a handler, the caller upstream's deadline bounds this call too (issue 15).
        let inherited = if options.detached {
            None
        } else {
            current::inherited_deadline().filter(|inherited| inherited.deadline() <= own)
        };
        let deadline = inherited.as_ref().map_or(own, InheritedDeadline::deadline);
        let idempotent = options.idempotency == Some(Idempotency::Idempotent);
        let failover = options.failover.unwrap_or(config.failover);
        let (retry, hedge, fork) = match failover {
            Failover::FailFast => (Some(None), None, 1),
            Failover::Forking { n } if idempotent => (options.retry, None, n.max(2)),
            Failover::Failover | Failover::Forking { .. } => {
                (options.retry, options.hedge.or(config.hedge), 1)
            }
        };
        let attempt = Attempt {
            method,
            payload,
            deadline,
            idempotent,
            wait_for_ready: options.wait_for_ready.unwrap_or(config.wait_for_ready),
            avoid: None,
            retry: match retry {
                None => RetryChoice::ChannelDefault,
                Some(None) => RetryChoice::Off,
                Some(Some(policy)) => RetryChoice::Policy(policy),
            },
            hedge,
            hash_key: options.hash_key,
            fork,
            metadata: options.metadata,
            call: Arc::new(CallState::new(request_id).with_schema(options.schema)),
        };
        if let Some(budget) = &self.inner.budget {
            budget.deposit();
        }
        let result = self.inner.stack.call(attempt).await;
        match (result, inherited) {
            (Err(err), Some(inherited)) if failed_by_deadline(&err) => Err(inherited.explain(err)),
            (result, _) => result,
        }
    }
}

/// Whether the call failed because its deadline came: it passed, or it left no time for a retry.
fn failed_by_deadline(err: &Error) -> bool {
    err.is_deadline_exceeded() || matches!(err.retry_stopped(), Some(StopReason::NoTimeLeft { .. }))
}
