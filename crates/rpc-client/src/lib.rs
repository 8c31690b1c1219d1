//! keel's client runtime: a [`Channel`] to one server address carries many calls at once over one
//! connection, with deadlines, cancellation, heartbeats and exact retry-safety outcomes; a
//! channel over several ([`Channel::cluster`]) balances them ([`Balancer`]), takes hung servers
//! out of rotation and retries elsewhere.
//!
//! ```
//! use keel::Bytes;
//! use keel::client::{CallOptions, Channel};
//! use keel::core::{CallContext, Outcome, StatusCode};
//! use keel::server::Server;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let server = Server::builder()
//!     .register("Echo.echo", |_ctx: CallContext, payload: Bytes| async move { Ok(payload) })
//!     .build()
//!     .bind("127.0.0.1:0")
//!     .await?;
//!
//! let channel = Channel::builder(server.local_addr()).build();
//! let reply = channel.call("Echo.echo", Bytes::from_static(b"hi"), CallOptions::new()).await?;
//! assert_eq!(reply.payload, "hi");
//!
//! // An unknown method is refused before anything runs: safe to retry anywhere.
//! let err = channel.call("Echo.nope", Bytes::new(), CallOptions::new()).await.unwrap_err();
//! assert_eq!((err.code(), err.outcome()), (StatusCode::UNIMPLEMENTED, Outcome::NotExecuted));
//! server.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! Every failed call carries its [`Outcome`](rpc_core::Outcome):
//! - NOT_SENT: no connection, handshake failed, request over the server's limits (checked before
//!   sending, naming both sizes), deadline passed before the request left, connection lost before
//!   the request was written;
//! - NOT_EXECUTED: the server said so (NOT_EXECUTED flag), or the call is above a GOAWAY's last
//!   call id;
//! - EXECUTED: the server ran the call and answered with an error status;
//! - MAYBE_EXECUTED: connection lost or heartbeat timed out after the request was written, deadline
//!   passed after it was written, or the response was corrupt.
//!
//! A call made while a handler runs inherits the deadline of the call being served when that is
//! the earlier; [`CallOptions::detached`] opts a call out, and a failure at the inherited
//! deadline carries an [`InheritedDeadline`] cause.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod balance;
mod call;
mod channel;
mod config;
mod connection;
mod connector;
mod endpoint;
mod events;
mod hedge;
mod latency;
mod policy;
mod pool;
mod retry;
mod send;
mod stack;
mod suspicion;
mod withdrawn;

pub use balance::{
    Balancer, BreakerOpen, Change, CircuitBreaker, ConsistentHash, Failover, OutlierDetection,
    PeakEwma, ResolveError, SuccessRate, Target,
};
pub use call::CallOptions;
pub use channel::Channel;
pub use config::{BuildError, ChannelBuilder};
pub use connection::ConnectionError;
pub use connector::{BoxIo, ConnectFuture, Connector, Io, TcpConnector};
pub use events::ClusterEvent;
pub use policy::{
    Backoff, HedgeDelay, HedgePolicy, Jitter, MAX_ATTEMPTS_CAP, RetryBudget, RetryPolicy,
};
pub use pool::NoConnection;
pub use rpc_core::Reply;
pub use rpc_core::current::InheritedDeadline;
pub use rpc_core::{RetryStopped, StopReason};
pub use suspicion::PeerSuspected;
