//! The context of the call being served, for handlers whose signature has no room for it (the
//! methods of a `#[service]` trait), and the metadata a handler attaches to its response.
//!
//! The server runs every handler under [`scope_with_response`], so [`current`] works in any of
//! them; the calls a handler makes inherit its deadline. These are re-exports of
//! [`keel::core::current`](rpc_core::current), shared with the client, which says how.

pub use rpc_core::current::{
    InheritedDeadline, ResponseMetadataError, append_response_metadata, current, in_current_call,
    inherited_deadline, insert_response_metadata, scope, scope_with_response, with_current,
};
