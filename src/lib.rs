//! keel: a binary RPC framework with fault tolerance built in.
//!
//! Define a trait, serve it, call it:
//!
//! ```
//! use keel::{Channel, Server};
//!
//! #[keel::service]
//! pub trait Greeter {
//!     /// Says hello.
//!     async fn greet(&self, name: String) -> String;
//! }
//!
//! struct Polite;
//!
//! impl Greeter for Polite {
//!     async fn greet(&self, name: String) -> String {
//!         format!("hello, {name}")
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let server = Server::builder()
//!     .add_service(GreeterServer::new(Polite))
//!     .build()
//!     .bind("127.0.0.1:0")
//!     .await?;
//! let client = GreeterClient::new(Channel::builder(server.local_addr()).build());
//! assert_eq!(client.greet("world".into()).await?, "hello, world");
//! server.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! Every frame on the wire carries a CRC-32 of its header and of its body, so corrupted bytes are
//! detected and never decoded as something else. Every failed call carries a retry-safety
//! [`Outcome`] (not sent, not executed, executed, maybe executed), so a retry never runs a call
//! twice where that could do harm. Deadlines travel as relative budgets, so clocks need not agree.
//!
//! Depend on this crate alone; it re-exports the parts:
//! - [`service`]: the `#[service]` attribute: every attribute it takes, and what it generates;
//! - [`client`]: the client runtime ([`Channel`], [`ChannelBuilder`], [`CallOptions`]);
//! - [`server`]: the server runtime ([`Server`], [`ServerBuilder`], [`server::context`]);
//! - [`core`]: statuses, errors, outcomes, deadlines, metadata, call context, payload codecs.
//!
//! # Cancel safety
//! Dropping a call's future withdraws the call: a request not yet written is never sent (NOT_SENT);
//! one already written is followed by a CANCEL, and the server drops its handler. A call fails at its
//! deadline with DEADLINE_EXCEEDED and is cancelled the same way.
//!
//! # Deadlines through nested calls
//! A call made while a handler runs finishes by the earlier of its own deadline and the deadline
//! of the call being served, so when A calls B and B's handler calls C, C stops working when A's
//! budget runs out; failing by it, the call is DEADLINE_EXCEEDED with an
//! [`InheritedDeadline`](client::InheritedDeadline) cause. When A's call is cancelled or expires,
//! B's handler is dropped and its calls to C are cancelled with it. Work that must outlive the
//! caller opts out with [`CallOptions::detached`], or runs in a task of its own (`tokio::spawn`),
//! which is outside the call; see [`core::current`].

#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;
mod response;
mod schema;

pub mod client {
    //! The client runtime: [`Channel`] and its builder, call options, retry, hedge, balancing,
    //! health and failover policies, and the causes a failed call can carry
    //! ([`NoConnection`], [`RetryStopped`], [`InheritedDeadline`]). The most used are also at
    //! the crate root.
    #[doc(inline)]
    pub use rpc_client::*;
}

pub mod server {
    //! The server runtime: [`Server`], its builder and limits, the dedupe window
    //! ([`DedupeConfig`]), raw handlers, and [`context`]: the call being served, and the
    //! metadata a handler attaches to its response.
    #[doc(inline)]
    pub use rpc_server::*;
}

pub mod core {
    //! The shared vocabulary: statuses, errors and their outcomes, deadlines, metadata, the call
    //! context, the payload codec. The most used are also at the crate root.
    #[doc(inline)]
    pub use rpc_core::*;
}

/// The wire protocol v1 as a sans-IO codec (docs/PROTOCOL.md). Not needed to use keel: it is here
/// for keel's own tests and tools; a peer implementation should depend on `rpc-codec` itself.
#[doc(hidden)]
pub use rpc_codec as codec;

pub use bytes::Bytes;
pub use response::Response;
pub use rpc_client::{
    CallOptions, Channel, ChannelBuilder, HedgePolicy, Reply, RetryBudget, RetryPolicy,
};
pub use rpc_core::{
    Bincode, CallContext, Deadline, Error, ErrorKind, Idempotency, Metadata, MetadataKey, Outcome,
    PayloadCodec, PayloadError, Status, StatusCode,
};
#[doc = include_str!("service.md")]
pub use rpc_macros::service;
pub use rpc_server::{Server, ServerBuilder, ServerHandle};

/// The README's examples, compiled and run as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
