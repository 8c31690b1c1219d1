//! The context of the call being served, for handlers whose signature has no room for it (the
//! methods of a `#[service]` trait).

use std::future::Future;

use rpc_core::CallContext;

tokio::task_local! {
    static CURRENT: CallContext;
}

/// Runs `work` with `ctx` as the current call context: [`current`] and [`with_current`] called
/// while `work` is polled see it. Each call's future carries its own, so calls multiplexed on one
/// connection task never see each other's.
pub fn scope<F: Future>(ctx: CallContext, work: F) -> impl Future<Output = F::Output> {
    CURRENT.scope(ctx, work)
}

/// A copy of the context of the call being served, or `None` outside a handler.
///
/// ```
/// use rpc_core::CallContext;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let seen = rpc_server::context::scope(CallContext::new("Echo.echo"), async {
///     rpc_server::context::current().map(|ctx| ctx.method().to_owned())
/// })
/// .await;
/// assert_eq!(seen.as_deref(), Some("Echo.echo"));
/// assert!(rpc_server::context::current().is_none());
/// # }
/// ```
#[must_use]
pub fn current() -> Option<CallContext> {
    CURRENT.try_with(CallContext::clone).ok()
}

/// Calls `f` with the context of the call being served, without copying it; `None` outside a
/// handler.
pub fn with_current<R>(f: impl FnOnce(&CallContext) -> R) -> Option<R> {
    CURRENT.try_with(f).ok()
}
