//! keel's server runtime: accept connections, multiplex calls over each, dispatch them to handlers
//! under their deadlines, and keep every fault mechanism of the protocol live: cancellation,
//! heartbeats, limits and graceful drain.
//!
//! Handlers are registered by method name and take bytes in, give a result of bytes out, with the
//! call's [`CallContext`](rpc_core::CallContext) (deadline, metadata, peer address). The
//! `#[service]` macro generates them from a trait; here is one by hand:
//!
//! ```
//! use keel::Bytes;
//! use keel::core::{CallContext, Status, StatusCode};
//! use keel::server::Server;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let server = Server::builder()
//!     .register("Echo.echo", |_ctx: CallContext, payload: Bytes| async move { Ok(payload) })
//!     .register("Echo.fail", |ctx: CallContext, _payload: Bytes| async move {
//!         Err(Status::new(StatusCode::NOT_FOUND, format!("nothing for call {}", ctx.call_id())))
//!     })
//!     .build()
//!     .bind("127.0.0.1:0")
//!     .await?;
//! println!("listening on {}", server.local_addr());
//! server.shutdown().await; // GOAWAY to every connection, running calls finish
//! # Ok(())
//! # }
//! ```
//!
//! What the server guarantees, as docs/PROTOCOL.md specifies:
//! - a call refused before its handler starts (unknown method, over the concurrency limit,
//!   draining, expired, malformed, corrupt) is answered with NOT_EXECUTED; a call whose handler
//!   started never is;
//! - a handler runs under its deadline and is dropped when it passes (DEADLINE_EXCEEDED) or when
//!   the client cancels (CANCELLED);
//! - a handler that panics fails only its own call (INTERNAL);
//! - with the dedupe window on ([`ServerBuilder::dedupe`]), a non-idempotent call carrying a
//!   request id ([`REQUEST_ID_KEY`]) runs at most once per (method, id) while the window keeps it:
//!   a retry waits for the first execution or gets its recorded result, marked [`REPLAYED_KEY`];
//! - PINGs are answered ahead of queued responses; a silent client is dropped after the dead bound;
//! - bad input closes only the connection it came on, after a GOAWAY naming the rule broken;
//! - memory stays bounded whatever a peer does: a connection stops reading at
//!   [`ServerBuilder::max_unsent_bytes`], a PING flood queues one PONG, handshakes have a pool of
//!   their own ([`ServerBuilder::max_handshaking`]) where the oldest is evicted, and calls are
//!   bounded per connection, per method and across the server
//!   ([`ServerBuilder::server_concurrency_limit`]), refused NOT_EXECUTED over a limit.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod call;
mod config;
mod connection;
pub mod context;
mod dedupe;
mod handler;
mod handshake_pool;
mod limit;
mod server;

pub use dedupe::{DedupeConfig, MAX_REQUEST_ID_LEN, REPLAYED_KEY, REQUEST_ID_KEY};
pub use handler::{Handler, HandlerFuture, HandlerResult};
pub use server::{Server, ServerBuilder, ServerHandle, Service};
