//! One dispatched call: the handler's future under its deadline, cancellable, panic-contained.

use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use futures::FutureExt;
use futures::future::{AbortHandle, Abortable};
use rpc_core::{CallContext, Deadline, Status, StatusCode};

use crate::handler::{Handler, HandlerFuture, HandlerResult};

/// How a call ended, ready to become its RESPONSE.
#[derive(Debug)]
pub(crate) struct CallDone {
    pub(crate) call_id: u64,
    pub(crate) result: HandlerResult,
    /// True only when the handler never started: the server's NOT_EXECUTED guarantee.
    pub(crate) not_executed: bool,
}

/// The future of one call, as the connection polls it.
pub(crate) type CallFuture = Pin<Box<dyn Future<Output = CallDone> + Send>>;

/// A running call as the connection tracks it, to cancel it.
#[derive(Debug)]
pub(crate) struct RunningCall {
    pub(crate) abort: AbortHandle,
    pub(crate) started: Arc<AtomicBool>,
}

impl RunningCall {
    pub(crate) fn has_started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }
}

/// Wraps a started handler's future for one call: it counts as started from its first poll
/// (so a CANCEL before then means nothing of it ran), it is stopped at the deadline, dropped on
/// abort, and a panic fails only this call with INTERNAL.
pub(crate) fn dispatch(
    call_id: u64,
    deadline: Option<Deadline>,
    work: HandlerFuture,
) -> (CallFuture, RunningCall) {
    let started = Arc::new(AtomicBool::new(false));
    let (abort, registration) = AbortHandle::new_pair();
    let flag = Arc::clone(&started);
    let run = async move {
        flag.store(true, Ordering::Release);
        match AssertUnwindSafe(work).catch_unwind().await {
            Ok(result) => result,
            Err(panic) => Err(panicked(call_id, &*panic)),
        }
    };
    let flag = Arc::clone(&started);
    let fut = async move {
        let timed = async {
            match deadline {
                Some(deadline) => tokio::time::timeout_at(to_tokio(deadline), run)
                    .await
                    .unwrap_or_else(|_| {
                        Err(Status::new(
                            StatusCode::DEADLINE_EXCEEDED,
                            "deadline exceeded",
                        ))
                    }),
                None => run.await,
            }
        };
        match Abortable::new(timed, registration).await {
            Ok(result) => CallDone {
                call_id,
                result,
                not_executed: false,
            },
            Err(_aborted) => CallDone {
                call_id,
                result: Err(Status::new(
                    StatusCode::CANCELLED,
                    "cancelled by the client",
                )),
                not_executed: !flag.load(Ordering::Acquire),
            },
        }
    };
    (Box::pin(fut), RunningCall { abort, started })
}

/// Starts `handler` for one call, containing a panic in its synchronous part. `Err((status,
/// not_executed))` when the call ends here.
pub(crate) fn start(
    handler: Arc<dyn Handler>,
    ctx: CallContext,
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

fn to_tokio(deadline: Deadline) -> tokio::time::Instant {
    tokio::time::Instant::from_std(deadline.instant())
}
