//! The channel: calls to one address, through the retry and hedging layers, over a pool of
//! lazily connected, shared connections.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use rand::RngCore;
use rpc_codec::MethodName;
use rpc_core::{Error, Idempotency, Outcome, StatusCode};
use tower::retry::budget::{Budget as _, TpsBudget};

use crate::call::{CallOptions, Reply};
use crate::config::{ChannelBuilder, ClientConfig};
use crate::hedge::Hedge;
use crate::latency::LatencyTracker;
use crate::pool::Pool;
use crate::retry::Retry;
use crate::send::Dispatch;
use crate::stack::{Attempt, CallService, CallState, RetryChoice};

/// Calls to one server address.
///
/// Cheap to clone and share across tasks: clones share one connection, which carries many calls at
/// once, and one retry budget. The channel connects on its first call; when its connection dies or
/// receives GOAWAY, it reconnects in the background with backoff while calls wait (see
/// [`ChannelBuilder::wait_for_ready`]).
///
/// Failed attempts are retried by the rules of [`RetryPolicy`](crate::RetryPolicy), within the
/// call's one deadline and the channel's [`RetryBudget`](crate::RetryBudget); idempotent calls
/// can be hedged ([`HedgePolicy`](crate::HedgePolicy)).
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
    config: Arc<ClientConfig>,
    budget: Option<Arc<TpsBudget>>,
    stack: Retry<Hedge<Dispatch>>,
}

impl Channel {
    /// A builder for a channel to `addr`.
    pub fn builder(addr: SocketAddr) -> ChannelBuilder {
        ChannelBuilder::new(addr)
    }

    pub(crate) fn from_parts(addr: SocketAddr, config: ClientConfig) -> Self {
        let config = Arc::new(config);
        let budget = config.budget.map(|b| Arc::new(b.build()));
        let latency = Arc::new(LatencyTracker::default());
        let dispatch = Dispatch {
            pool: Pool::new(addr, Arc::clone(&config), Arc::clone(&latency)),
            latency: Arc::clone(&latency),
        };
        let hedge = Hedge {
            inner: dispatch,
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
                addr,
                config,
                budget,
                stack,
            }),
        }
    }

    /// The server address.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The server's concurrency slots the current connection holds (diagnostics): calls waiting
    /// for their response, and withdrawn calls (cancelled, or past their deadline) until the
    /// server is known to have freed them: by their RESPONSE, or by the PONG of a PING sent
    /// after their CANCEL.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.inner.stack.inner.inner.pool.current().map_or(0, |c| {
            c.in_flight.load(std::sync::atomic::Ordering::Acquire)
        })
    }

    /// Calls `method` with `payload`.
    ///
    /// # Errors
    /// [`Error`] with the status and the retry-safety outcome of the last attempt: NOT_SENT when
    /// the request never left (no connection within the deadline, oversize, expired),
    /// NOT_EXECUTED when the server guarantees it did not run it, EXECUTED with the server's
    /// status, MAYBE_EXECUTED when nobody can tell (connection lost, deadline passed after
    /// sending). When retrying stopped early, a [`RetryStopped`](crate::RetryStopped) cause says
    /// why.
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
        let config = &self.inner.config;
        let request_id = options.dedupe.then(|| {
            let mut id = [0u8; 16];
            rand::rng().fill_bytes(&mut id);
            Bytes::copy_from_slice(&id)
        });
        let attempt = Attempt {
            method,
            payload,
            deadline: options.resolve_deadline(config.default_deadline),
            idempotent: options.idempotency == Some(Idempotency::Idempotent),
            wait_for_ready: options.wait_for_ready.unwrap_or(config.wait_for_ready),
            avoid: None,
            retry: match options.retry {
                None => RetryChoice::ChannelDefault,
                Some(None) => RetryChoice::Off,
                Some(Some(policy)) => RetryChoice::Policy(policy),
            },
            hedge: options.hedge.or(config.hedge),
            metadata: options.metadata,
            call: Arc::new(CallState::new(request_id)),
        };
        if let Some(budget) = &self.inner.budget {
            budget.deposit();
        }
        self.inner.stack.call(attempt).await
    }
}
