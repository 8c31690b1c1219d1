//! How a channel over several endpoints picks one for each attempt: the balancers a user can
//! choose, with their settings and defaults.

use std::time::Duration;

/// How a channel over several endpoints picks the endpoint of each attempt.
///
/// Every balancer skips endpoints that cannot take a call now (connecting fails) while another
/// can, and sends a retry or a hedge to an endpoint the call has not tried yet while there is one.
/// A channel of one endpoint does not balance at all.
///
/// ```
/// use std::time::Duration;
/// use keel::client::{Balancer, ConsistentHash, PeakEwma};
///
/// let default = Balancer::default(); // power of two choices over peak-EWMA latency
/// let tuned = Balancer::PeakEwma(PeakEwma::new().decay(Duration::from_secs(5)).seed(7));
/// let sticky = Balancer::ConsistentHash(ConsistentHash::new().bounded_load(1.25));
/// # let _ = (default, tuned, sticky);
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Balancer {
    /// Each endpoint in turn, in the order given.
    RoundRobin,
    /// nginx's smooth weighted round robin: each pick adds every endpoint's weight to its running
    /// score, takes the highest, and takes the total off the winner. Weights 5, 1, 1 give
    /// `a a b a c a a`: in proportion, and spread out rather than in runs.
    WeightedRoundRobin,
    /// Uniformly at random.
    Random {
        /// A seed makes the picks replay; `None` seeds from the system's randomness.
        seed: Option<u64>,
    },
    /// The endpoint with the fewest calls outstanding (sent or queued inside the endpoint), as
    /// Envoy's LEAST_REQUEST and brpc's "la" do; ties go round robin.
    LeastOutstanding,
    /// Power of two choices over peak-EWMA load (tower's `p2c` with `PeakEwma`, Finagle's
    /// default): two endpoints drawn at random, the one with the lower latency estimate ×
    /// (outstanding + 1) wins. The default.
    PeakEwma(PeakEwma),
    /// A ring of virtual nodes hashed from each endpoint (ketama's scheme): a call with a
    /// [`CallOptions::hash_key`](crate::CallOptions::hash_key) goes to the first endpoint
    /// clockwise from its key, so a key keeps its endpoint while the set changes elsewhere.
    /// Calls without a key go round robin.
    ConsistentHash(ConsistentHash),
}

impl Default for Balancer {
    /// [`Balancer::PeakEwma`] with [`PeakEwma::new`]'s defaults: it moves traffic away from a
    /// slow or overloaded endpoint within a few calls, with no setting to tune.
    fn default() -> Self {
        Self::PeakEwma(PeakEwma::new())
    }
}

impl Balancer {
    /// Whether picks read each endpoint's outstanding calls and latency, which the channel then
    /// has to count per call.
    pub(crate) fn reads_load(&self) -> bool {
        match self {
            Self::LeastOutstanding | Self::PeakEwma(_) => true,
            Self::ConsistentHash(hash) => hash.load_bound.is_some(),
            Self::RoundRobin | Self::WeightedRoundRobin | Self::Random { .. } => false,
        }
    }
}

/// Settings of the peak-EWMA balancer.
///
/// The estimate of an endpoint is its latency, weighted to the recent: a sample above the estimate
/// replaces it at once (the "peak"), one below pulls it down at the rate of `decay`, and with no
/// samples it decays towards zero at that rate, so an endpoint avoided for being slow is tried
/// again after a while. Only answered attempts are samples; a server that stops answering is
/// taken out of rotation by the suspicion detector
/// ([`ChannelBuilder::suspicion_threshold`](crate::ChannelBuilder::suspicion_threshold)).
#[derive(Clone, Debug)]
pub struct PeakEwma {
    pub(crate) decay: Duration,
    pub(crate) default_rtt: Duration,
    pub(crate) seed: Option<u64>,
}

impl PeakEwma {
    /// The defaults: decay 10 s, default latency 1 ms, seeded from the system's randomness.
    #[must_use]
    pub fn new() -> Self {
        Self {
            decay: Duration::from_secs(10),
            default_rtt: Duration::from_millis(1),
            seed: None,
        }
    }

    /// The time constant of the moving average. Default 10 s, Finagle's and Envoy's: long enough
    /// to remember a slow endpoint across a burst, short enough to retry it within a minute.
    #[must_use]
    pub fn decay(mut self, decay: Duration) -> Self {
        self.decay = decay.max(Duration::from_millis(1));
        self
    }

    /// The estimate of an endpoint with no sample yet when no other endpoint has one either.
    /// Default 1 ms. An endpoint added to a channel whose endpoints have estimates starts from
    /// the lowest of them instead, so that a new or restarted endpoint competes at once on its
    /// outstanding calls rather than waiting for a guessed latency to decay.
    #[must_use]
    pub fn default_rtt(mut self, rtt: Duration) -> Self {
        self.default_rtt = rtt;
        self
    }

    /// Seeds the random draws, so that a test replays the same picks. Default: seeded from the
    /// system's randomness.
    #[must_use]
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }
}

impl Default for PeakEwma {
    fn default() -> Self {
        Self::new()
    }
}

/// Settings of the consistent-hashing balancer.
#[derive(Clone, Debug)]
pub struct ConsistentHash {
    pub(crate) virtual_nodes: u32,
    pub(crate) load_bound: Option<f64>,
}

impl ConsistentHash {
    /// The defaults: 160 virtual nodes per unit of weight, no load bound.
    #[must_use]
    pub fn new() -> Self {
        Self {
            virtual_nodes: 160,
            load_bound: None,
        }
    }

    /// Points on the ring per unit of an endpoint's weight. Default 160 (ketama uses 100–200):
    /// with 10 endpoints, each gets within about ±10 % of its share of keys.
    #[must_use]
    pub fn virtual_nodes(mut self, nodes: u32) -> Self {
        self.virtual_nodes = nodes.max(1);
        self
    }

    /// Bounded loads (Mirrokni, Thorup and Zadimoghaddam, 2016): an endpoint with more than
    /// `factor` × the average outstanding calls is passed over for the next one clockwise, so a
    /// hot key cannot sink one endpoint. `factor` is at least 1; 1.25 is the paper's usual
    /// choice. Default: no bound, every key stays on its endpoint.
    #[must_use]
    pub fn bounded_load(mut self, factor: f64) -> Self {
        self.load_bound = Some(if factor.is_finite() {
            factor.max(1.0)
        } else {
            1.0
        });
        self
    }
}

impl Default for ConsistentHash {
    fn default() -> Self {
        Self::new()
    }
}

/// What a call does when an attempt fails or is slow, across endpoints (Dubbo's names; Finagle
/// and brpc have the same ideas). Per channel with
/// [`ChannelBuilder::failover`](crate::ChannelBuilder::failover), per call with
/// [`CallOptions::failover`](crate::CallOptions::failover).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failover {
    /// Retry by the retry policy, each attempt on an endpoint the call has not tried while there
    /// is one. The default.
    #[default]
    Failover,
    /// One attempt: no retry and no hedge, on any endpoint. (Moving past an endpoint that could
    /// not be connected to is still done: nothing was sent.)
    FailFast,
    /// Send to `n` endpoints at once; the first success wins and the other attempts are
    /// cancelled (CANCEL on the wire). For idempotent calls only: a call that is not idempotent
    /// goes to one endpoint. When all fail, the call fails with the least safe outcome of them.
    Forking {
        /// Endpoints to send to at once, at least 2 (fewer if the channel has fewer available).
        n: usize,
    },
}
