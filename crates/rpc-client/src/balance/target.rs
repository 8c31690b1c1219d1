//! What a channel is given to connect to: addresses or `host:port` names, each with a weight, and
//! the changes a discovery source sends later.

use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};

/// One server a channel sends to: an address, or a `host:port` name resolved when the channel is
/// built, with a weight for the weighted balancers (default 1).
///
/// ```
/// use keel::client::Target;
/// let a: Target = "127.0.0.1:7000".parse::<std::net::SocketAddr>().unwrap().into();
/// let b = Target::name("127.0.0.1:7001").weight(3);
/// # let _ = (a, b);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub(crate) kind: TargetKind,
    pub(crate) weight: u32,
    pub(crate) tier: u8,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TargetKind {
    Addr(SocketAddr),
    Name(String),
}

impl Target {
    /// A server at `addr`.
    #[must_use]
    pub fn addr(addr: SocketAddr) -> Self {
        Self {
            kind: TargetKind::Addr(addr),
            weight: 1,
            tier: 0,
        }
    }

    /// A server named `host:port`, resolved once with the system resolver when the channel is
    /// built; every address it resolves to becomes an endpoint with this target's weight.
    #[must_use]
    pub fn name(name: impl Into<String>) -> Self {
        Self {
            kind: TargetKind::Name(name.into()),
            weight: 1,
            tier: 0,
        }
    }

    /// The weight for [`Balancer::WeightedRoundRobin`](crate::Balancer::WeightedRoundRobin) and
    /// [`Balancer::ConsistentHash`](crate::Balancer::ConsistentHash) (its share of the ring).
    /// Default 1; 0 counts as 1.
    #[must_use]
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight.max(1);
        self
    }

    /// The target's priority tier, for primary/backup failover: 0 (the default) is the primary
    /// tier, 1 the first backup, and so on. Calls go to the lowest tier that has an endpoint up;
    /// when every endpoint of it is down (connecting fails, suspected, ejected or its breaker
    /// open) they go to the next at once, and they come back only once an endpoint of the lower
    /// tier has been up for [`ChannelBuilder::failback_after`](crate::ChannelBuilder::failback_after).
    #[must_use]
    pub fn tier(mut self, tier: u8) -> Self {
        self.tier = tier;
        self
    }

    /// The addresses of this target: itself, or what its name resolves to.
    pub(crate) fn resolve(&self) -> Result<Vec<SocketAddr>, ResolveError> {
        match &self.kind {
            TargetKind::Addr(addr) => Ok(vec![*addr]),
            TargetKind::Name(name) => match name.to_socket_addrs() {
                Ok(addrs) => {
                    let addrs: Vec<SocketAddr> = addrs.collect();
                    if addrs.is_empty() {
                        Err(ResolveError {
                            name: name.clone(),
                            source: io::Error::new(io::ErrorKind::NotFound, "no addresses"),
                        })
                    } else {
                        Ok(addrs)
                    }
                }
                Err(source) => Err(ResolveError {
                    name: name.clone(),
                    source,
                }),
            },
        }
    }
}

impl From<SocketAddr> for Target {
    fn from(addr: SocketAddr) -> Self {
        Self::addr(addr)
    }
}

impl From<&str> for Target {
    /// An address if `s` parses as one, otherwise a `host:port` name.
    fn from(s: &str) -> Self {
        s.parse::<SocketAddr>()
            .map_or_else(|_| Self::name(s), Self::addr)
    }
}

impl From<String> for Target {
    /// An address if `s` parses as one, otherwise a `host:port` name.
    fn from(s: String) -> Self {
        Self::from(s.as_str())
    }
}

/// A `host:port` name given to a channel did not resolve.
#[derive(Debug)]
pub struct ResolveError {
    name: String,
    source: io::Error,
}

impl ResolveError {
    /// The name that did not resolve.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for ResolveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot resolve {:?}: {}", self.name, self.source)
    }
}

impl std::error::Error for ResolveError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// A change to a channel's endpoints, from a discovery source
/// ([`ChannelBuilder::discover`](crate::ChannelBuilder::discover)). Endpoints are keyed by
/// address: inserting an address already there changes only its weight.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// Send to `addr` too, with `weight` (0 counts as 1) in priority tier `tier` (0: primary).
    Insert {
        /// The server's address.
        addr: SocketAddr,
        /// Its weight, as [`Target::weight`].
        weight: u32,
        /// Its tier, as [`Target::tier`].
        tier: u8,
    },
    /// Stop sending new calls to `addr`; calls already there finish.
    Remove(SocketAddr),
}
