//! Typed events for every change of an endpoint's state in a channel over several servers, for
//! metrics and alerts. Each is also a `tracing` event; an observer set with
//! [`ChannelBuilder::on_event`](crate::ChannelBuilder::on_event) gets them as values.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// A change in a channel's endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClusterEvent {
    /// An endpoint joined the channel (from discovery).
    EndpointAdded {
        /// Its address.
        addr: SocketAddr,
    },
    /// An endpoint left the channel (from discovery).
    EndpointRemoved {
        /// Its address.
        addr: SocketAddr,
    },
    /// The server went silent while calls waited on it: no new calls go there, and its waiting
    /// idempotent calls are retried elsewhere.
    Suspected {
        /// Its address.
        addr: SocketAddr,
        /// How long it had been silent.
        silent_for: Duration,
    },
    /// A suspected server sent again.
    Unsuspected {
        /// Its address.
        addr: SocketAddr,
    },
    /// Outlier ejection took the endpoint out of rotation.
    Ejected {
        /// Its address.
        addr: SocketAddr,
        /// How many times it has been ejected, this one included.
        times: u32,
        /// For how long.
        for_how_long: Duration,
    },
    /// An ejected endpoint's time was up and its readmission probe passed (a new connection,
    /// its handshake, a PING answered): it is picked again, on probation.
    Probed {
        /// Its address.
        addr: SocketAddr,
    },
    /// An ejected endpoint's attempt succeeded: it is back in rotation.
    Readmitted {
        /// Its address.
        addr: SocketAddr,
    },
    /// The endpoint's circuit breaker opened.
    BreakerOpened {
        /// Its address.
        addr: SocketAddr,
    },
    /// The open breaker let one trial attempt through.
    BreakerHalfOpen {
        /// Its address.
        addr: SocketAddr,
    },
    /// The trial succeeded: the breaker closed.
    BreakerClosed {
        /// Its address.
        addr: SocketAddr,
    },
    /// Calls moved to another priority tier (primary/backup).
    TierSwitched {
        /// The tier calls went to.
        from: u8,
        /// The tier they go to now.
        to: u8,
    },
}

/// An observer's callback.
type Callback = dyn Fn(&ClusterEvent) + Send + Sync;

/// The channel's observer, if one was set.
#[derive(Clone, Default)]
pub(crate) struct Observer(Option<Arc<Callback>>);

impl Observer {
    pub(crate) fn new(observer: impl Fn(&ClusterEvent) + Send + Sync + 'static) -> Self {
        Self(Some(Arc::new(observer)))
    }

    /// Hands `event` to the observer.
    pub(crate) fn emit(&self, event: ClusterEvent) {
        if let Some(observer) = &self.0 {
            observer(&event);
        }
    }
}

impl fmt::Debug for Observer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Observer"
        } else {
            "NoObserver"
        })
    }
}
