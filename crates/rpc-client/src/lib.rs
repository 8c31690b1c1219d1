//! The keel client runtime: connections, multiplexed calls, deadlines, retries decided from each
//! failure's retry-safety outcome, reconnects and heartbeats.
//!
//! Not built yet: this crate holds the place in the workspace so the dependency graph is fixed
//! from the start. It builds on [`rpc_codec`] for frames and [`rpc_core`] for statuses, outcomes and
//! deadlines.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub use rpc_codec;
pub use rpc_core;
