//! The call being served, as code running inside its handler sees it: its context, the metadata
//! the handler attaches to its response, and the deadline the calls it makes inherit.
//!
//! keel's server runs every handler under [`scope_with_response`], so while a handler's future is
//! polled, [`current`] returns its call's [`CallContext`]. keel's client reads the same place: a
//! call made while a handler is polled finishes by the earlier of its own deadline and the
//! deadline of the call being served, so a chain A → B → C never keeps C working for an A that
//! already gave up. A failure that this inherited deadline caused carries an
//! [`InheritedDeadline`] cause.
//!
//! The context belongs to the handler's task. A task the handler spawns starts outside the call:
//! its calls inherit nothing, which is how work that must outlive the caller (fire-and-forget,
//! background jobs) opts out. Wrap a spawned future in [`in_current_call`] to carry the call into
//! it instead; to opt a single call out, keel's client has `CallOptions::detached`.
//!
//! ```
//! use std::time::Duration;
//! use keel::core::{CallContext, Deadline};
//! use keel::core::current;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let ctx = CallContext::new("Orders.place")
//!     .with_deadline(Some(Deadline::from_now(Duration::from_millis(300))));
//! current::scope(ctx, async {
//!     // What a call made here inherits: the 300 ms deadline of Orders.place.
//!     let inherited = current::inherited_deadline().unwrap();
//!     assert_eq!(inherited.method(), "Orders.place");
//!     // A spawned task is outside the call, unless the call is carried into it.
//!     let alone = tokio::spawn(async { current::inherited_deadline().is_some() });
//!     let carried = tokio::spawn(current::in_current_call(async {
//!         current::inherited_deadline().is_some()
//!     }));
//!     assert_eq!((alone.await.unwrap(), carried.await.unwrap()), (false, true));
//! })
//! .await;
//! assert!(current::current().is_none());
//! # }
//! ```

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::error::BoxError;
use crate::metadata::RESERVED_PREFIX;
use crate::{CallContext, Deadline, Error, Instant, Metadata, MetadataKey};

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

/// Runs `work` with `ctx` as the current call: [`current`], [`with_current`] and
/// [`inherited_deadline`] called while `work` is polled see it. Each call's future carries its
/// own, so calls multiplexed on one task never see each other's. Response metadata set inside is
/// dropped: a handler that sends it runs under [`scope_with_response`].
pub fn scope<F: Future>(ctx: CallContext, work: F) -> impl Future<Output = F::Output> {
    CURRENT.scope(Current::new(ctx), work)
}

/// [`scope`], and the metadata [`insert_response_metadata`] and [`append_response_metadata`]
/// set while `work` ran, for the response (keel's server runs every handler this way).
///
/// ```
/// use keel::Bytes;
/// use keel::core::{CallContext, MetadataKey};
/// use keel::core::current::{insert_response_metadata, scope_with_response};
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

/// `work` carried into the current call: polled anywhere (a task of its own, say), it runs as if
/// inside the handler that made it, so the calls it makes inherit the handler's deadline. Outside
/// a call it is `work` unchanged. Response metadata set inside is not sent: the handler's
/// response may be gone by then.
///
/// ```
/// # async fn audit() {}
/// # async fn handler() {
/// // Inside a handler: the audit call still ends when the caller's deadline does.
/// tokio::spawn(keel::core::current::in_current_call(audit()));
/// # }
/// ```
pub fn in_current_call<F: Future>(work: F) -> impl Future<Output = F::Output> {
    let ctx = current();
    async move {
        match ctx {
            Some(ctx) => scope(ctx, work).await,
            None => work.await,
        }
    }
}

/// A copy of the context of the call being served, or `None` outside a handler.
///
/// ```
/// use keel::core::CallContext;
/// use keel::core::current;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let seen = current::scope(CallContext::new("Echo.echo"), async {
///     current::current().map(|ctx| ctx.method().to_owned())
/// })
/// .await;
/// assert_eq!(seen.as_deref(), Some("Echo.echo"));
/// assert!(current::current().is_none());
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

/// The deadline a call made now would inherit: that of the call being served, or `None` outside
/// a handler or when the call being served has no deadline. keel's client takes the earlier of
/// it and the call's own deadline.
#[must_use]
pub fn inherited_deadline() -> Option<InheritedDeadline> {
    with_current(|ctx| {
        ctx.deadline().map(|deadline| InheritedDeadline {
            method: Arc::clone(ctx.method_name()),
            call_id: ctx.call_id(),
            deadline,
            left: deadline.remaining(Instant::now()),
            source: None,
        })
    })
    .flatten()
}

/// The cause of a failure past a deadline that the call inherited from the call being served
/// (see the [module](self)): the caller upstream had no more time, which is not the same as a
/// slow server downstream. Find it with [`Error::deadline_inherited`]; keel's client puts it on
/// top of the cause chain of every DEADLINE_EXCEEDED failure of a call whose deadline was the
/// inherited one.
///
/// ```
/// use std::time::Duration;
/// use keel::core::{CallContext, Deadline};
/// use keel::core::current;
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let ctx = CallContext::new("Shop.checkout")
///     .with_call_id(3)
///     .with_deadline(Some(Deadline::from_now(Duration::from_millis(250))));
/// let inherited = current::scope(ctx, async { current::inherited_deadline() }).await.unwrap();
/// assert_eq!(
///     inherited.to_string(),
///     "the deadline was inherited from the call being served (Shop.checkout, call 3), \
///      which had 250ms left when this call started"
/// );
/// # }
/// ```
#[derive(Debug)]
pub struct InheritedDeadline {
    method: Arc<str>,
    call_id: u64,
    deadline: Deadline,
    left: Duration,
    /// The failure's cause beneath this one, once [`explain`](Self::explain) put it on an error.
    source: Option<BoxError>,
}

impl InheritedDeadline {
    /// The method of the call being served whose deadline was inherited.
    #[must_use]
    pub fn method(&self) -> &str {
        &self.method
    }

    /// That call's id on its connection.
    #[must_use]
    pub fn call_id(&self) -> u64 {
        self.call_id
    }

    /// The deadline inherited.
    #[must_use]
    pub fn deadline(&self) -> Deadline {
        self.deadline
    }

    /// How much of it was left when the call that inherited it started.
    #[must_use]
    pub fn left_at_start(&self) -> Duration {
        self.left
    }

    /// `err` with this inherited deadline on top of its cause chain (what was beneath stays
    /// beneath): how keel's client says that a DEADLINE_EXCEEDED came from the caller upstream.
    #[must_use]
    pub fn explain(self, err: Error) -> Error {
        err.map_source(|source| Box::new(Self { source, ..self }))
    }
}

impl fmt::Display for InheritedDeadline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the deadline was inherited from the call being served ({}, call {}), which had {:?} \
             left when this call started",
            self.method,
            self.call_id,
            // Whole milliseconds: the microseconds are noise to a reader.
            Duration::from_millis(u64::try_from(self.left.as_millis()).unwrap_or(u64::MAX)),
        )
    }
}

impl std::error::Error for InheritedDeadline {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|source| source as &(dyn std::error::Error + 'static))
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
    /// Not called while a handler was being polled (a task the handler spawned, say): there is
    /// no response to attach it to.
    #[error(
        "response metadata can only be set by a handler while it runs, on its own task (not in a \
         task it spawned)"
    )]
    OutsideHandler,
}

/// Sets `key` to `value` in the metadata of the response of the call being served, replacing
/// any value set before; sent with the result, or with the status if the call fails.
///
/// Works in every handler keel's server runs (`#[service]` methods and closures alike) while its
/// future is polled, not in a task it spawns.
///
/// ```
/// use keel::Bytes;
/// use keel::core::MetadataKey;
/// use keel::core::current::{ResponseMetadataError, insert_response_metadata};
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_call_without_a_deadline_passes_none_on() {
        let inherited = scope(CallContext::new("A.b"), async { inherited_deadline() }).await;
        assert!(inherited.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn metadata_set_in_a_carried_task_is_not_the_handlers() {
        let ((), metadata) = scope_with_response(CallContext::new("A.b"), async {
            let key = MetadataKey::from_static("x-late");
            tokio::spawn(in_current_call(async move {
                insert_response_metadata(key, Bytes::from_static(b"1")).unwrap();
            }))
            .await
            .unwrap();
        })
        .await;
        assert!(metadata.is_empty());
    }
}
