//! A successful call's result as bytes: what a server answers and a client receives.

use bytes::Bytes;

use crate::Metadata;

/// A successful call's result: the serialized payload and the response metadata.
///
/// ```
/// use keel::Bytes;
/// use keel::core::Reply;
/// let reply = Reply::from(Bytes::from_static(b"ok"));
/// assert_eq!(&reply.payload[..], b"ok");
/// assert!(reply.metadata.is_empty());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reply {
    /// The serialized result.
    pub payload: Bytes,
    /// Metadata the server attached.
    pub metadata: Metadata,
}

impl From<Bytes> for Reply {
    fn from(payload: Bytes) -> Self {
        Self {
            payload,
            metadata: Metadata::new(),
        }
    }
}
