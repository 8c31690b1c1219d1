//! Handlers and the table that routes method names to them.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use rpc_core::{CallContext, Reply, Status};

/// What a closure handler returns: the serialized result, or the status the call fails with.
pub type HandlerResult = Result<Bytes, Status>;

/// The boxed future a [`Handler`] returns: the serialized result with the response's metadata
/// ([`Reply`]; `Reply::from(bytes)` for none), or the status the call fails with.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<Reply, Status>> + Send + 'static>>;

/// Serves calls of one method: bytes in, a result of bytes out, with the call's context.
///
/// [`Handler::start`] runs when the call is dispatched and may refuse it before any application
/// code runs (the arguments do not decode, say): the call is then answered with NOT_EXECUTED. The
/// future it returns is the application's work; it is polled on the connection's task, and until
/// its first poll the call counts as not started (a CANCEL then makes it NOT_EXECUTED too).
///
/// Implemented for every `Fn(CallContext, Bytes) -> impl Future<Output = HandlerResult>`, so a
/// closure is a handler; the closure itself runs on the future's first poll. The `#[service]`
/// macro generates handlers that decode the arguments in `start`, call the typed method and encode
/// its result.
///
/// The server polls the future inside the call's scope ([`context`](crate::context)): there,
/// [`context::current`](crate::context::current) returns the call's context, response metadata
/// can be set, and the calls the handler makes inherit its deadline.
///
/// Handlers run on their connection's task: a handler that blocks the thread stalls its
/// connection (heartbeats included). Use `tokio::task::spawn_blocking` for blocking work. (A call
/// deduplicated by the dedupe window, [`ServerBuilder::dedupe`](crate::ServerBuilder::dedupe),
/// runs on a task of its own instead, detached from its connection.)
pub trait Handler: Send + Sync + 'static {
    /// Starts serving one call, or refuses it with a status before anything of the application
    /// runs.
    ///
    /// # Errors
    /// The status the call is refused with; it is sent with the NOT_EXECUTED flag, so it must only
    /// be returned when no application code ran.
    fn start(self: Arc<Self>, ctx: &CallContext, payload: Bytes) -> Result<HandlerFuture, Status>;
}

impl<F, Fut> Handler for F
where
    F: Fn(CallContext, Bytes) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    fn start(self: Arc<Self>, ctx: &CallContext, payload: Bytes) -> Result<HandlerFuture, Status> {
        let ctx = ctx.clone();
        Ok(Box::pin(async move {
            (*self)(ctx, payload).await.map(Reply::from)
        }))
    }
}

/// Method name → handler.
#[derive(Clone, Default)]
pub(crate) struct Router {
    /// Names are shared (`Arc<str>`) so the dedupe window can key its entries by method without
    /// copying the name.
    handlers: foldhash::HashMap<Arc<str>, Arc<dyn Handler>>,
}

impl Router {
    pub(crate) fn insert(&mut self, method: &str, handler: Arc<dyn Handler>) {
        self.handlers.insert(method.into(), handler);
    }

    /// The handler of `method` with the router's shared copy of its name.
    pub(crate) fn get_named(&self, method: &str) -> Option<(&Arc<str>, &Arc<dyn Handler>)> {
        self.handlers.get_key_value(method)
    }

    pub(crate) fn methods(&self) -> impl Iterator<Item = &str> {
        self.handlers.keys().map(|k| &**k)
    }
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.methods()).finish()
    }
}
