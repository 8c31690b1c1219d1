//! One dispatched call: the handler's future under its deadline, cancellable, panic-contained;
//! and, for the dedupe window, a detached execution and the calls that wait for its result.

use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use futures::FutureExt;
use futures::future::{AbortHandle, Abortable};
use rpc_core::{CallContext, Deadline, Reply, Status, StatusCode};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument as _, Span};

use crate::dedupe::{Runner, Shared, Waiter};
use crate::handler::{Handler, HandlerFuture};
use crate::limit::CallPermit;

/// A call's result as it is answered: the payload with the response metadata the handler set, or
/// the status (that metadata merged into it).
pub(crate) type Answer = Result<Reply, Status>;

/// How a call ended, ready to become its RESPONSE.
#[derive(Debug)]
pub(crate) struct CallDone {
    pub(crate) call_id: u64,
    pub(crate) result: Answer,
    /// True only when the handler never started: the server's NOT_EXECUTED guarantee.
    pub(crate) not_executed: bool,
    /// True when the result is another request's execution (the dedupe window): the RESPONSE
    /// carries `rpc-replayed: 1`.
    pub(crate) replayed: bool,
}

/// The future of one call, as the connection polls it.
pub(crate) type CallFuture = Pin<Box<dyn Future<Output = CallDone> + Send>>;

/// A running call as the connection tracks it, to cancel it.
#[derive(Debug)]
pub(crate) struct RunningCall {
    pub(crate) abort: AbortHandle,
    pub(crate) started: Arc<AtomicBool>,
    /// Its places under the server's concurrency limits, given back when the call ends.
    pub(crate) permit: Option<CallPermit>,
}

impl RunningCall {
    pub(crate) fn has_started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }
}

/// Wraps a started handler's future for one call: it counts as started from its first poll
/// (so a CANCEL before then means nothing of it ran), it is stopped at the deadline, dropped on
/// abort, and a panic fails only this call with INTERNAL.
pub(crate) fn dispatch(ctx: CallContext, work: HandlerFuture) -> (CallFuture, RunningCall) {
    let (call_id, deadline) = (ctx.call_id(), ctx.deadline());
    let started = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&started);
    let run = async move {
        flag.store(true, Ordering::Release);
        contain(call_id, served(ctx, work)).await
    };
    let run = async move { Ending::ran(until(deadline, run, || Err(deadline_exceeded())).await) };
    supervise(call_id, run, started)
}

/// Starts the detached execution of a deduplicated call (tracked by `tracker`, so a graceful
/// shutdown waits for it within the drain grace): it runs to completion or to `deadline` (the
/// first request's), whatever happens to the connection that started it, and its result
/// (INTERNAL for a panic, DEADLINE_EXCEEDED at the deadline) goes to `runner`'s entry and
/// waiters. `stop` (the server's hard stop) drops it; the entry is then removed.
pub(crate) fn detach(
    ctx: CallContext,
    work: HandlerFuture,
    runner: Runner,
    stop: CancellationToken,
    tracker: &TaskTracker,
) {
    let (call_id, deadline) = (ctx.call_id(), ctx.deadline());
    let execution = until(deadline, contain(call_id, served(ctx, work)), || {
        Err(deadline_exceeded())
    });
    tracker.spawn(async move {
        tokio::select! {
            biased;
            () = stop.cancelled() => drop(runner),
            result = execution => match result {
                // The handler refused before doing anything: no entry, a later attempt may run.
                Err(status) if status.is_not_executed() => runner.refuse(status),
                result => runner.finish(result),
            },
        }
    });
}

/// A call that waits for a deduplicated execution's result instead of running a handler: under
/// its own deadline, cancellable, and counted as started from the beginning (the execution was
/// started, so neither a CANCEL nor the deadline makes it NOT_EXECUTED). `replayed` marks the
/// result as another request's, for every waiter but the request that started the execution.
pub(crate) fn wait(
    call_id: u64,
    deadline: Option<Deadline>,
    waiter: Waiter,
    replayed: bool,
) -> (CallFuture, RunningCall) {
    let run = async move {
        let shared = async move {
            match waiter.wait().await {
                Shared::Done(result) => Ending {
                    result,
                    not_executed: false,
                    replayed,
                },
                Shared::Refused(status) => Ending {
                    result: Err(status),
                    not_executed: true,
                    replayed,
                },
                Shared::Stopped => Ending::ran(Err(Status::new(
                    StatusCode::UNAVAILABLE,
                    "the execution was stopped: the server is shutting down",
                ))),
            }
        };
        until(deadline, shared, || Ending::ran(Err(deadline_exceeded()))).await
    };
    supervise(call_id, run, Arc::new(AtomicBool::new(true)))
}

/// How a call's work ended, before it becomes a [`CallDone`].
struct Ending {
    result: Answer,
    not_executed: bool,
    replayed: bool,
}

impl Ending {
    /// The call's own result: the handler ran (or was started), nothing replayed. It is
    /// NOT_EXECUTED only if the handler said so ([`Status::not_executed`]).
    fn ran(result: Answer) -> Self {
        Self {
            not_executed: matches!(&result, Err(status) if status.is_not_executed()),
            result,
            replayed: false,
        }
    }
}

/// Makes `run` abortable by a CANCEL: aborted, the call is CANCELLED, NOT_EXECUTED unless
/// `started` is set.
fn supervise(
    call_id: u64,
    run: impl Future<Output = Ending> + Send + 'static,
    started: Arc<AtomicBool>,
) -> (CallFuture, RunningCall) {
    let (abort, registration) = AbortHandle::new_pair();
    let flag = Arc::clone(&started);
    let fut = async move {
        match Abortable::new(run, registration).await {
            Ok(ending) => CallDone {
                call_id,
                result: ending.result,
                not_executed: ending.not_executed,
                replayed: ending.replayed,
            },
            Err(_aborted) => CallDone {
                call_id,
                result: Err(Status::new(
                    StatusCode::CANCELLED,
                    "cancelled by the client",
                )),
                not_executed: !flag.load(Ordering::Acquire),
                replayed: false,
            },
        }
    };
    (
        Box::pin(fut),
        RunningCall {
            abort,
            started,
            permit: None,
        },
    )
}

/// A handler's `work` inside `span`. Only when the span is on (a subscriber wants DEBUG): then
/// it costs a box of its own; off, the call's future is not one byte larger.
pub(crate) fn in_span(work: HandlerFuture, span: Span) -> HandlerFuture {
    if span.is_disabled() {
        work
    } else {
        Box::pin(work.instrument(span))
    }
}

/// A handler's future run as the call `ctx` describes (see [`crate::context`]: the calls it makes
/// inherit its deadline), with the response metadata it set added to its answer.
async fn served(ctx: CallContext, work: HandlerFuture) -> Answer {
    let (answer, set) = rpc_core::current::scope_with_response(ctx, work).await;
    if set.is_empty() {
        return answer;
    }
    match answer {
        Ok(mut reply) => {
            reply.metadata.extend(set);
            Ok(reply)
        }
        Err(mut status) => {
            status.metadata_mut().extend(set);
            Err(status)
        }
    }
}

/// A handler's future with a panic contained: it fails only this call, with INTERNAL.
async fn contain(call_id: u64, work: impl Future<Output = Answer>) -> Answer {
    match AssertUnwindSafe(work).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => Err(panicked(call_id, &*panic)),
    }
}

/// `run`, stopped at `deadline` with what `expired` makes.
async fn until<T>(
    deadline: Option<Deadline>,
    run: impl Future<Output = T>,
    expired: impl FnOnce() -> T,
) -> T {
    match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline.instant(), run)
            .await
            .unwrap_or_else(|_| expired()),
        None => run.await,
    }
}

fn deadline_exceeded() -> Status {
    Status::new(StatusCode::DEADLINE_EXCEEDED, "deadline exceeded")
}

/// Starts `handler` for one call, containing a panic in its synchronous part. `Err((status,
/// not_executed))` when the call ends here.
pub(crate) fn start(
    handler: Arc<dyn Handler>,
    ctx: &CallContext,
    payload: Bytes,
) -> Result<HandlerFuture, (Status, bool)> {
    let call_id = ctx.call_id();
    match std::panic::catch_unwind(AssertUnwindSafe(|| handler.start(ctx, payload))) {
        Ok(Ok(work)) => Ok(work),
        Ok(Err(refused)) => Err((refused, true)),
        // Application code (a Deserialize impl, say) may have run: not NOT_EXECUTED.
        Err(panic) => Err((panicked(call_id, &*panic), false)),
    }
}

fn panicked(call_id: u64, panic: &(dyn std::any::Any + Send)) -> Status {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::error!(call_id, panic = %what, "handler panicked");
    Status::new(StatusCode::INTERNAL, "handler panicked")
}
