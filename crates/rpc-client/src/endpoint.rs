//! One endpoint of a channel: an address, its weight, its pool of connections (with their
//! connector and backoff), and the load a balancer reads.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::time::Instant;

use crate::balance::load::EndpointLoad;
use crate::balance::pick::Candidate;
use crate::balance::{BreakerState, OutlierState};
use crate::config::ClientConfig;
use crate::latency::LatencyTracker;
use crate::pool::Pool;
use crate::send::Dispatch;

/// One server address of a channel.
#[derive(Debug)]
pub(crate) struct Endpoint {
    /// Unique within the channel, never 0.
    pub(crate) id: u64,
    pub(crate) weight: u32,
    /// Priority tier (0: primary).
    pub(crate) tier: u8,
    /// Since when (nanoseconds after the channel's epoch, plus 1) the endpoint has been up
    /// without a break, as the balancer last saw it; 0 while it is down.
    pub(crate) up_since: std::sync::atomic::AtomicU64,
    /// The address as text: the endpoint's identity on a consistent-hashing ring.
    pub(crate) identity: String,
    pub(crate) dispatch: Dispatch,
    pub(crate) load: EndpointLoad,
    /// Outlier ejection's state.
    pub(crate) outlier: OutlierState,
    /// The circuit breaker.
    pub(crate) breaker: BreakerState,
}

impl Endpoint {
    pub(crate) fn new(
        id: u64,
        addr: SocketAddr,
        weight: u32,
        tier: u8,
        config: Arc<ClientConfig>,
        latency: Arc<LatencyTracker>,
        epoch: Instant,
    ) -> Self {
        Self {
            id,
            weight: weight.max(1),
            tier,
            up_since: std::sync::atomic::AtomicU64::new(0),
            identity: addr.to_string(),
            dispatch: Dispatch {
                pool: Pool::new(addr, config, Arc::clone(&latency)),
                latency,
                endpoint: id,
            },
            load: EndpointLoad::new(epoch),
            outlier: OutlierState::default(),
            breaker: BreakerState::default(),
        }
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.dispatch.pool.addr()
    }

    /// A usable connection is there: a call placed now goes out at once.
    pub(crate) fn is_ready(&self) -> bool {
        self.dispatch.pool.is_ready()
    }

    /// Ready and not suspected: a call placed now goes out at once to a server that answers.
    pub(crate) fn is_available(&self) -> bool {
        self.dispatch.pool.is_available()
    }

    /// Connecting failed last time and no connection is there.
    pub(crate) fn is_failing(&self) -> bool {
        self.dispatch.pool.is_failing()
    }
}

impl Candidate for Arc<Endpoint> {
    fn weight(&self) -> u32 {
        self.weight
    }

    fn load(&self) -> &EndpointLoad {
        &self.load
    }
}
