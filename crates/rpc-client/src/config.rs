//! Client configuration, with every default in one place.

use std::fmt;
use std::time::Duration;

use futures::stream::{BoxStream, Stream, StreamExt};
use rpc_codec::Settings;
use tracing::warn;

use crate::Channel;
use crate::balance::{
    Balancer, Change, CircuitBreaker, Failover, OutlierDetection, ResolveError, Target,
};
use crate::connector::{Connector, SharedConnector};
use crate::events::{ClusterEvent, Observer};
use crate::policy::{Backoff, HedgePolicy, RetryBudget, RetryPolicy};

#[derive(Clone, Debug)]
pub(crate) struct ClientConfig {
    pub(crate) connect_timeout: Duration,
    pub(crate) default_deadline: Duration,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) dead_after_intervals: u32,
    pub(crate) max_frame_size: u32,
    pub(crate) max_metadata_size: u32,
    pub(crate) reconnect_backoff: Backoff,
    pub(crate) max_connections: usize,
    pub(crate) max_unsent_bytes: usize,
    pub(crate) max_queued_calls: usize,
    pub(crate) wait_for_ready: bool,
    pub(crate) retry: Option<RetryPolicy>,
    pub(crate) hedge: Option<HedgePolicy>,
    pub(crate) budget: Option<RetryBudget>,
    /// φ at which a connection's server is suspected.
    pub(crate) suspicion_threshold: f64,
    pub(crate) suspicion_min_deviation: Duration,
    /// The channel has several endpoints (or discovery): connections watch for suspicion and
    /// hand their idempotent calls back to be tried elsewhere.
    pub(crate) cluster: bool,
    pub(crate) outlier: Option<OutlierDetection>,
    pub(crate) breaker: Option<CircuitBreaker>,
    pub(crate) failover: Failover,
    pub(crate) failback_after: Duration,
    pub(crate) connector: SharedConnector,
    pub(crate) observer: Observer,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(3),
            default_deadline: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(10),
            dead_after_intervals: 2,
            max_frame_size: rpc_codec::DEFAULT_MAX_FRAME_SIZE,
            max_metadata_size: rpc_core::metadata::DEFAULT_MAX_METADATA_SIZE,
            reconnect_backoff: Backoff::reconnect_default(),
            max_connections: 2,
            max_unsent_bytes: 1024 * 1024,
            max_queued_calls: 1024,
            wait_for_ready: true,
            retry: Some(RetryPolicy::default()),
            hedge: None,
            budget: Some(RetryBudget::default()),
            suspicion_threshold: 8.0,
            suspicion_min_deviation: Duration::from_millis(20),
            cluster: false,
            outlier: Some(OutlierDetection::new()),
            breaker: Some(CircuitBreaker::new()),
            failover: Failover::Failover,
            failback_after: Duration::from_secs(10),
            connector: SharedConnector::default(),
            observer: Observer::default(),
        }
    }
}

impl ClientConfig {
    /// The settings the client announces in HELLO. It serves no calls, so it announces 0
    /// concurrent calls.
    pub(crate) fn settings(&self) -> Settings {
        Settings {
            max_frame_size: self.max_frame_size,
            max_concurrent_calls: 0,
            heartbeat_interval_ms: u32::try_from(self.heartbeat_interval.as_millis())
                .unwrap_or(u32::MAX),
            max_metadata_size: self.max_metadata_size,
            dedupe_instance: 0,
        }
    }
}

/// Configures a [`Channel`]; every setter states its default.
///
/// ```
/// use std::time::Duration;
/// use keel::client::Channel;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let channel = Channel::builder("127.0.0.1:7000".parse().unwrap())
///     .connect_timeout(Duration::from_secs(1))
///     .default_deadline(Duration::from_secs(2))
///     .heartbeat_interval(Duration::from_millis(500))
///     .build();
/// # drop(channel);
/// # }
/// ```
#[must_use]
pub struct ChannelBuilder {
    targets: Vec<Target>,
    balancer: Balancer,
    discovery: Option<BoxStream<'static, Change>>,
    config: ClientConfig,
}

impl fmt::Debug for ChannelBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelBuilder")
            .field("targets", &self.targets)
            .field("balancer", &self.balancer)
            .field("discovery", &self.discovery.is_some())
            .field("config", &self.config)
            .finish()
    }
}

impl ChannelBuilder {
    pub(crate) fn new(targets: Vec<Target>) -> Self {
        Self {
            targets,
            balancer: Balancer::default(),
            discovery: None,
            config: ClientConfig::default(),
        }
    }

    /// How calls are spread over several endpoints. Default [`Balancer::PeakEwma`]: power of two
    /// choices over latency × outstanding calls. A channel of one address does not balance.
    pub fn balancer(mut self, balancer: Balancer) -> Self {
        self.balancer = balancer;
        self
    }

    /// A source of endpoint changes (a discovery client, or a channel the application feeds),
    /// applied as they come once the channel makes its first call. The targets given to the
    /// builder are the starting set; with a source, the set may also start empty. Default: no
    /// source, the targets alone.
    pub fn discover(mut self, changes: impl Stream<Item = Change> + Send + 'static) -> Self {
        self.discovery = Some(changes.boxed());
        self
    }

    /// How each connection's byte stream is made. Default [`TcpConnector`](crate::TcpConnector):
    /// TCP with `TCP_NODELAY`. Another [`Connector`] runs the same protocol over TLS, a Unix
    /// socket or an in-memory pipe.
    pub fn connector(mut self, connector: impl Connector) -> Self {
        self.config.connector = SharedConnector(std::sync::Arc::new(connector));
        self
    }

    /// How long a TCP connect plus handshake may take. Default 3 s. A call's own deadline cuts it
    /// shorter.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// The deadline of a call that sets none. Default 10 s. A call made inside a handler
    /// finishes by the handler's own deadline if that comes first (see
    /// [`CallOptions::detached`](crate::CallOptions::detached)).
    pub fn default_deadline(mut self, deadline: Duration) -> Self {
        self.config.default_deadline = deadline;
        self
    }

    /// The heartbeat interval announced to servers; the connection uses the smaller of ours and
    /// the server's, at least 100 ms (`rpc_codec::MIN_HEARTBEAT_INTERVAL_MS`). A PING goes out
    /// after this long without a frame from the server. Default 10 s.
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.config.heartbeat_interval = interval;
        self
    }

    /// After how many intervals of silence the connection is declared dead and its calls fail
    /// with UNAVAILABLE. Default 2 (the minimum).
    pub fn dead_after_intervals(mut self, intervals: u32) -> Self {
        self.config.dead_after_intervals = intervals.max(2);
        self
    }

    /// The largest response body accepted, in bytes. Default 4 MiB; at least 4096.
    pub fn max_frame_size(mut self, bytes: u32) -> Self {
        self.config.max_frame_size = bytes.max(rpc_codec::MIN_MAX_FRAME_SIZE);
        self
    }

    /// The largest response metadata block accepted, in bytes. Default 16 KiB.
    pub fn max_metadata_size(mut self, bytes: u32) -> Self {
        self.config.max_metadata_size = bytes;
        self
    }

    /// The wait between connection attempts after a failed one. Default
    /// [`Backoff::reconnect_default`]: 100 ms, ×1.6, at most 500 ms, jitter ±20 %. The backoff
    /// starts again after a successful handshake. Each attempt (TCP connect and handshake) is
    /// bounded by [`connect_timeout`](Self::connect_timeout).
    pub fn reconnect_backoff(mut self, backoff: Backoff) -> Self {
        self.config.reconnect_backoff = backoff;
        self
    }

    /// Connections the channel may hold to its address, at least 1. Default 2: plain calls share
    /// the first; a hedge, or the free retry of a NOT_EXECUTED call, goes to another, opened when
    /// first needed.
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.config.max_connections = connections.max(1);
        self
    }

    /// Bytes of requests a connection may have queued and not yet written before it holds new
    /// calls back (in the queue of [`max_queued_calls`](Self::max_queued_calls)) until the server
    /// reads. Default 1 MiB, at least 64 KiB: with a server that stops reading, a connection's
    /// memory stays within this plus one frame plus the held calls.
    pub fn max_unsent_bytes(mut self, bytes: usize) -> Self {
        self.config.max_unsent_bytes = bytes.max(64 * 1024);
        self
    }

    /// Calls a connection holds back, unsent, while the server's MAX_CONCURRENT_CALLS are all in
    /// use (or its unsent bytes are at their bound). Default 1024. Held calls are admitted in
    /// order as slots free, and none is sent to fail:
    /// - a call that would join a full queue fails at once with RESOURCE_EXHAUSTED, NOT_SENT;
    /// - a call whose deadline leaves less than the predicted wait (the calls ahead of it, at
    ///   the server's concurrency per observed service time) plus its method's observed latency
    ///   and a tenth (headroom: the latency is an average) fails at once with DEADLINE_EXCEEDED,
    ///   NOT_SENT;
    /// - a held call whose deadline comes nearer than that latency and a tenth fails then with
    ///   DEADLINE_EXCEEDED, NOT_SENT.
    ///
    /// Under overload the server then only gets calls that can finish, so goodput stays at its
    /// capacity instead of decaying as calls time out in its handlers.
    pub fn max_queued_calls(mut self, calls: usize) -> Self {
        self.config.max_queued_calls = calls;
        self
    }

    /// Whether calls made while there is no connection wait for one within their deadline
    /// (true, the default) or fail at once with UNAVAILABLE, NOT_SENT while connecting fails
    /// (false: fail-fast). Calls can override it with
    /// [`CallOptions::wait_for_ready`](crate::CallOptions::wait_for_ready).
    pub fn wait_for_ready(mut self, wait: bool) -> Self {
        self.config.wait_for_ready = wait;
        self
    }

    /// The retry policy of calls that set none. Default [`RetryPolicy::default`]: 3 attempts,
    /// UNAVAILABLE and DATA_LOSS, 50 ms ×2 up to 2 s with full jitter.
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.config.retry = Some(policy);
        self
    }

    /// No retry layer at all: each call is exactly one attempt, whatever its outcome.
    pub fn disable_retries(mut self) -> Self {
        self.config.retry = None;
        self
    }

    /// Hedge idempotent calls that set no policy of their own. Default: no hedging.
    pub fn hedge_policy(mut self, policy: HedgePolicy) -> Self {
        self.config.hedge = Some(policy);
        self
    }

    /// The retry budget shared by all calls of this channel and its clones. Default
    /// [`RetryBudget::default`]: 20 % of calls plus 10 per second over 10 s.
    pub fn retry_budget(mut self, budget: RetryBudget) -> Self {
        self.config.budget = Some(budget);
        self
    }

    /// In a channel over several endpoints: the suspicion level φ at which an endpoint gets no
    /// new calls and its connection hands its waiting idempotent calls back to be tried
    /// elsewhere. Default 8, as Akka and Cassandra: with the default minimum deviation, a server
    /// that sent nothing for about 115 ms past its usual gap while calls wait. φ counts the
    /// silence in the standard deviations of the recent gaps between arrivals, so a server whose
    /// answers take longer raises its own bound; suspicion never closes a connection, and ends at
    /// the next byte from the server. See [`Balancer`].
    pub fn suspicion_threshold(mut self, phi: f64) -> Self {
        self.config.suspicion_threshold = if phi.is_finite() {
            phi.clamp(0.5, 30.0)
        } else {
            8.0
        };
        self
    }

    /// The least standard deviation the suspicion detector assumes for the gaps between
    /// arrivals. Default 20 ms: gaps on a busy connection are far shorter, and without a floor a
    /// scheduling pause of a few milliseconds would look like a hung server. Akka uses 100 ms for
    /// its 1 s heartbeats; calls here are answered in microseconds to milliseconds.
    pub fn suspicion_min_deviation(mut self, deviation: Duration) -> Self {
        self.config.suspicion_min_deviation = deviation.max(Duration::from_millis(1));
        self
    }

    /// In a channel over several endpoints: eject an endpoint whose attempts keep failing.
    /// Default [`OutlierDetection::new`]: 5 failures in a row eject it for 30 s × the times it
    /// has been ejected (at most 300 s), then one more failure ejects it again and a success
    /// readmits it; at most half of the endpoints are out at once, and below half healthy,
    /// ejection is ignored (panic mode).
    pub fn outlier_detection(mut self, detection: OutlierDetection) -> Self {
        self.config.outlier = Some(detection);
        self
    }

    /// In a channel over several endpoints: a circuit breaker per endpoint. Default
    /// [`CircuitBreaker::new`], Hystrix's rules: at least 20 attempts in 10 s with at least half
    /// failed (as for outlier ejection, plus deadlines passed on the endpoint) open it; open, the
    /// endpoint gets no calls for 5 s; then one trial attempt closes it or opens it again. With
    /// every endpoint's breaker open, calls fail at once with UNAVAILABLE, NOT_SENT, kind
    /// [`ErrorKind::BreakerOpen`](rpc_core::ErrorKind::BreakerOpen) and a
    /// [`BreakerOpen`](crate::BreakerOpen) cause, and are not retried.
    pub fn circuit_breaker(mut self, breaker: CircuitBreaker) -> Self {
        self.config.breaker = Some(breaker);
        self
    }

    /// What calls that set none do across endpoints. Default [`Failover::Failover`]: retries
    /// (by the retry policy) and hedges go to endpoints not yet tried.
    pub fn failover(mut self, failover: Failover) -> Self {
        self.config.failover = failover;
        self
    }

    /// With primary/backup tiers ([`Target::tier`]): how long an endpoint of a lower tier must
    /// have been up before calls go back to it. Default 10 s: long enough that a server
    /// restarting in a loop is not given the traffic between two crashes, short enough that a
    /// repaired primary takes over within a quarter of a minute. Failing over to a backup is
    /// immediate.
    pub fn failback_after(mut self, time: Duration) -> Self {
        self.config.failback_after = time;
        self
    }

    /// Calls `observer` with every [`ClusterEvent`] of a channel over several endpoints: an
    /// endpoint suspected or no longer, ejected or readmitted, its breaker opened, half-open or
    /// closed, a tier switch, an endpoint added or removed. It runs on the task where the change
    /// happened (a caller's, or a connection's), so it should be quick: count, or send on a
    /// channel. Each event is also a `tracing` event. Default: none.
    pub fn on_event(mut self, observer: impl Fn(&ClusterEvent) + Send + Sync + 'static) -> Self {
        self.config.observer = Observer::new(observer);
        self
    }

    /// No circuit breakers.
    pub fn disable_circuit_breaker(mut self) -> Self {
        self.config.breaker = None;
        self
    }

    /// No outlier ejection: failing endpoints stay in rotation.
    pub fn disable_outlier_detection(mut self) -> Self {
        self.config.outlier = None;
        self
    }

    /// No retry budget: retries are bounded only by attempts and deadlines.
    pub fn unlimited_retry_budget(mut self) -> Self {
        self.config.budget = None;
        self
    }

    /// The channel. It connects on its first call.
    ///
    /// Names among the targets are resolved now, with the system resolver (this blocks while it
    /// runs). A name that does not resolve is left out with a warning; if nothing is left, calls
    /// fail with UNAVAILABLE, NOT_SENT. [`try_build`](Self::try_build) fails instead.
    ///
    /// # Panics
    /// Outside a tokio runtime, with a message saying so ([`BuildError::NoRuntime`]): keel's
    /// connections are tokio tasks. [`try_build`](Self::try_build) returns the error instead.
    pub fn build(self) -> Channel {
        if let Err(err) = runtime() {
            panic!("{err}");
        }
        let mut addrs = Vec::new();
        for target in &self.targets {
            match target.resolve() {
                Ok(resolved) => addrs.extend(
                    resolved
                        .into_iter()
                        .map(|a| (a, target.weight, target.tier)),
                ),
                Err(err) => warn!(error = %err, "target left out"),
            }
        }
        Channel::from_parts(&addrs, self.balancer, self.discovery, self.config)
    }

    /// The channel, or why it cannot be built: no tokio runtime, or a target name that does not
    /// resolve.
    ///
    /// # Errors
    /// [`BuildError`].
    pub fn try_build(self) -> Result<Channel, BuildError> {
        runtime()?;
        let mut addrs = Vec::new();
        for target in &self.targets {
            addrs.extend(
                target
                    .resolve()?
                    .into_iter()
                    .map(|a| (a, target.weight, target.tier)),
            );
        }
        Ok(Channel::from_parts(
            &addrs,
            self.balancer,
            self.discovery,
            self.config,
        ))
    }
}

/// Why [`ChannelBuilder::try_build`] failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum BuildError {
    /// Not called inside a tokio runtime. Build the channel in one (under `#[tokio::main]`, say);
    /// keel needs tokio's `rt` (or `rt-multi-thread`) feature, and `macros` for `#[tokio::main]`.
    NoRuntime,
    /// A target name did not resolve.
    Resolve(ResolveError),
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoRuntime => f.write_str(
                "keel needs a tokio runtime: build the channel and make its calls inside one \
                 (under #[tokio::main], say, with tokio's \"rt-multi-thread\" and \"macros\" \
                 features)",
            ),
            Self::Resolve(err) => err.fmt(f),
        }
    }
}

impl std::error::Error for BuildError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::NoRuntime => None,
            Self::Resolve(err) => Some(err),
        }
    }
}

impl From<ResolveError> for BuildError {
    fn from(err: ResolveError) -> Self {
        Self::Resolve(err)
    }
}

/// `Ok` inside a tokio runtime.
pub(crate) fn runtime() -> Result<(), BuildError> {
    tokio::runtime::Handle::try_current()
        .map(drop)
        .map_err(|_| BuildError::NoRuntime)
}
