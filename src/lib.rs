//! keel: a binary RPC framework with fault tolerance built in.
//!
//! Every frame on the wire carries a CRC-32 of its header and of its body, so corrupted bytes are
//! detected and never decoded as something else. Every failed call carries a retry-safety
//! [`Outcome`] (not sent, not executed, executed, maybe executed), so a retry never runs a call
//! twice where that could do harm. Deadlines travel as relative budgets, so clocks need not agree.
//!
//! Depend on this crate alone; it re-exports the parts:
//! - [`core`]: statuses, errors, outcomes, deadlines, metadata, call context, payload codecs;
//! - [`codec`]: the wire protocol v1 (docs/PROTOCOL.md) as a sans-IO codec;
//! - [`server`]: the server runtime ([`Server`]);
//! - [`client`]: the client runtime ([`Channel`]).
//!
//! The `#[service]` macro, which generates typed clients and servers from a trait, arrives next.
//!
//! ```
//! use keel::{Bincode, Error, Idempotency, Outcome, PayloadCodec, StatusCode};
//!
//! // Payloads are serde values encoded with bincode 2, decoded under a memory limit.
//! let codec = Bincode::<{ 1 << 20 }>;
//! let bytes = codec.encode(&("ping", 1u32))?;
//! let (word, n): (String, u32) = codec.decode(&bytes)?;
//! assert_eq!((word.as_str(), n), ("ping", 1));
//!
//! // A call lost with its connection may have run: only an idempotent method may be retried.
//! let err = Error::from_code(StatusCode::UNAVAILABLE, "connection reset", Outcome::MaybeExecuted);
//! assert!(!err.outcome().permits_retry(Idempotency::NonIdempotent));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use rpc_client as client;
pub use rpc_codec as codec;
pub use rpc_core as core;
pub use rpc_server as server;

pub use bytes::Bytes;
pub use rpc_client::{CallOptions, Channel, Reply};
pub use rpc_core::{
    Bincode, CallContext, Deadline, Error, Idempotency, Metadata, MetadataKey, Outcome,
    PayloadCodec, PayloadError, Status, StatusCode,
};
pub use rpc_macros::service;
pub use rpc_server::{Server, ServerHandle};
