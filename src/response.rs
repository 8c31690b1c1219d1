//! A typed call's value with the metadata of its reply.

use rpc_core::Metadata;
use rpc_core::metadata::REPLAYED_KEY;

/// What a typed client's `<method>_with_metadata` returns: the method's value and the metadata
/// the server attached to the reply (set by the handler with
/// [`server::context::insert_response_metadata`](crate::server::context::insert_response_metadata),
/// or by keel: `rpc-replayed`).
///
/// ```
/// use keel::{Metadata, Response};
/// let response = Response { value: 7u64, metadata: Metadata::new() };
/// assert!(!response.replayed());
/// assert_eq!(response.into_value(), 7);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response<T> {
    /// The method's value.
    pub value: T,
    /// The reply's metadata.
    pub metadata: Metadata,
}

impl<T> Response<T> {
    /// The value, without the metadata.
    pub fn into_value(self) -> T {
        self.value
    }

    /// Whether the server's dedupe window answered with the recorded result of an earlier
    /// attempt instead of running the handler again (`rpc-replayed: 1`): the handler ran once,
    /// for an earlier attempt of this call (or another call with the same idempotency key).
    #[must_use]
    pub fn replayed(&self) -> bool {
        self.metadata
            .get(REPLAYED_KEY)
            .is_some_and(|v| &v[..] == b"1")
    }
}
