//! The context of the call being served, for handlers whose signature has no room for it (the
//! methods of a `#[service]` trait), and the metadata a handler attaches to its response.

use std::cell::RefCell;
use std::future::Future;

use bytes::Bytes;
use rpc_core::metadata::RESERVED_PREFIX;
use rpc_core::{CallContext, Metadata, MetadataKey};

tokio::task_local! {
    static CURRENT: Current;
}

/// What a call's task holds while its handler runs: the context, and the metadata the handler
/// attaches to its response.
struct Current {
    ctx: CallContext,
    response: RefCell<Metadata>,
}

impl Current {
    fn new(ctx: CallContext) -> Self {
        Self {
            ctx,
            response: RefCell::new(Metadata::new()),
        }
    }
}

/// Why response metadata was not set.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResponseMetadataError {
    /// The key starts with `rpc-`, which is keel's own (`rpc-replayed`, say).
    #[error(
        "response metadata key {key:?} is reserved for keel (every key starting {RESERVED_PREFIX:?}); name it otherwise"
    )]
    Reserved {
        /// The key refused.
        key: String,
    },
    /// Not called while a `#[service]` method (or a handler run under [`scope_with_response`])
    /// was being polled: a closure handler, a task the handler spawned. There is no response to
    /// attach it to.
    #[error(
        "response metadata can only be set by a #[service] method (or a handler run under \
         scope_with_response), on its own task"
    )]
    OutsideHandler,
}

/// Sets `key` to `value` in the metadata of the response of the call being served, replacing
/// any value set before; sent with the result, or with the status if the call fails.
///
/// Works in the methods of a `#[service]` trait, and in any handler run under
/// [`scope_with_response`], while its future is polled (not in a task it spawns). (A closure
/// registered with `ServerBuilder::register` returns bytes alone: implement
/// [`Handler`](crate::Handler) to answer with a [`Reply`](rpc_core::Reply) and its metadata.)
///
/// ```
/// use keel::Bytes;
/// use keel::core::MetadataKey;
/// use keel::server::context::{ResponseMetadataError, insert_response_metadata};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// // Outside a handler there is no response to set it on:
/// let key = MetadataKey::from_static("x-cache");
/// assert_eq!(
///     insert_response_metadata(key, Bytes::from_static(b"hit")),
///     Err(ResponseMetadataError::OutsideHandler)
/// );
/// # }
/// ```
///
/// # Errors
/// [`ResponseMetadataError::Reserved`] for a key starting `rpc-`;
/// [`ResponseMetadataError::OutsideHandler`] outside a handler.
pub fn insert_response_metadata(
    key: MetadataKey,
    value: impl Into<Bytes>,
) -> Result<(), ResponseMetadataError> {
    edit_response(key, value.into(), Metadata::insert)
}

/// Adds `value` under `key` to the metadata of the response of the call being served, after
/// any values it has; as [`insert_response_metadata`] otherwise.
///
/// # Errors
/// As [`insert_response_metadata`].
pub fn append_response_metadata(
    key: MetadataKey,
    value: impl Into<Bytes>,
) -> Result<(), ResponseMetadataError> {
    edit_response(key, value.into(), Metadata::append)
}

fn edit_response(
    key: MetadataKey,
    value: Bytes,
    edit: fn(&mut Metadata, MetadataKey, Bytes),
) -> Result<(), ResponseMetadataError> {
    if key.is_reserved() {
        return Err(ResponseMetadataError::Reserved {
            key: key.as_str().to_owned(),
        });
    }
    CURRENT
        .try_with(|current| edit(&mut current.response.borrow_mut(), key, value))
        .map_err(|_| ResponseMetadataError::OutsideHandler)
}

/// Runs `work` with `ctx` as the current call context: [`current`] and [`with_current`] called
/// while `work` is polled see it. Each call's future carries its own, so calls multiplexed on one
/// connection task never see each other's. Response metadata set inside is dropped: a handler
/// that sends it uses [`scope_with_response`].
pub fn scope<F: Future>(ctx: CallContext, work: F) -> impl Future<Output = F::Output> {
    CURRENT.scope(Current::new(ctx), work)
}

/// [`scope`], and the metadata [`insert_response_metadata`] and [`append_response_metadata`]
/// set while `work` ran, for the handler to put in its [`Reply`](rpc_core::Reply) (the
/// handlers `#[service]` generates run their methods this way).
///
/// ```
/// use keel::Bytes;
/// use keel::core::{CallContext, MetadataKey};
/// use keel::server::context::{insert_response_metadata, scope_with_response};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let (value, metadata) = scope_with_response(CallContext::new("Kv.get"), async {
///     insert_response_metadata(MetadataKey::from_static("x-cache"), Bytes::from_static(b"hit"))
///         .unwrap();
///     7
/// })
/// .await;
/// assert_eq!((value, metadata.get_str("x-cache")), (7, Some("hit")));
/// # }
/// ```
pub fn scope_with_response<F: Future>(
    ctx: CallContext,
    work: F,
) -> impl Future<Output = (F::Output, Metadata)> {
    // Not an `async fn`: `work` is moved into the scope's future once, not kept beside it too.
    CURRENT.scope(Current::new(ctx), async move {
        let output = work.await;
        let metadata = CURRENT.with(|current| current.response.take());
        (output, metadata)
    })
}

/// A copy of the context of the call being served, or `None` outside a handler.
///
/// ```
/// use keel::core::CallContext;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let seen = keel::server::context::scope(CallContext::new("Echo.echo"), async {
///     keel::server::context::current().map(|ctx| ctx.method().to_owned())
/// })
/// .await;
/// assert_eq!(seen.as_deref(), Some("Echo.echo"));
/// assert!(keel::server::context::current().is_none());
/// # }
/// ```
#[must_use]
pub fn current() -> Option<CallContext> {
    CURRENT.try_with(|current| current.ctx.clone()).ok()
}

/// Calls `f` with the context of the call being served, without copying it; `None` outside a
/// handler.
pub fn with_current<R>(f: impl FnOnce(&CallContext) -> R) -> Option<R> {
    CURRENT.try_with(|current| f(&current.ctx)).ok()
}
