//! The bottom of the stack: one attempt on one connection of an endpoint's pool.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rpc_codec::{Budget, Request};
use rpc_core::metadata::{ATTEMPT_KEY, MetadataKey, REQUEST_ID_KEY};
use rpc_core::{Deadline, Error, ErrorKind, Outcome, StatusCode};
use tokio::sync::oneshot;
use tracing::Instrument as _;

use crate::Reply;
use crate::call::CallSlot;
use crate::connection::{CallCommand, Command, ConnectionHandle, check_limits};
use crate::latency::LatencyTracker;
use crate::pool::Pool;
use crate::stack::{Attempt, CallService};

/// Sends each attempt on a connection of the pool and records the latency of each answered one.
#[derive(Debug)]
pub(crate) struct Dispatch {
    pub(crate) pool: Pool,
    pub(crate) latency: Arc<LatencyTracker>,
    /// The id of the endpoint this dispatch sends to, unique in the channel.
    pub(crate) endpoint: u64,
}

impl CallService for Dispatch {
    async fn call(&self, attempt: Attempt) -> Result<Reply, Error> {
        let conn = self.connection(&attempt, attempt.wait_for_ready).await?;
        self.send_on(&conn, attempt).await
    }
}

impl Dispatch {
    /// A connection for `attempt`, waiting for one until its deadline if `wait_for_ready`.
    /// A failure is NOT_SENT, of kind [`ErrorKind::Connect`], with a
    /// [`NoConnection`](crate::NoConnection) cause.
    pub(crate) async fn connection(
        &self,
        attempt: &Attempt,
        wait_for_ready: bool,
    ) -> Result<Arc<ConnectionHandle>, Error> {
        self.pool
            .get(attempt.avoid, attempt.deadline, wait_for_ready)
            .await
    }

    /// Sends `attempt` on `conn` and waits for its result.
    pub(crate) async fn send_on(
        &self,
        conn: &ConnectionHandle,
        attempt: Attempt,
    ) -> Result<Reply, Error> {
        self.send_sampled(conn, attempt).await.0
    }

    /// [`send_on`](Self::send_on), with the time from sending to the answer (queueing in the
    /// connection included) when the server answered: a balancer's latency sample, at no
    /// extra clock read.
    pub(crate) async fn send_sampled(
        &self,
        conn: &ConnectionHandle,
        attempt: Attempt,
    ) -> (Result<Reply, Error>, Option<Duration>) {
        let mut sample = None;
        let result = self.send_inner(conn, attempt, &mut sample).await;
        (result, sample)
    }

    async fn send_inner(
        &self,
        conn: &ConnectionHandle,
        attempt: Attempt,
        sample: &mut Option<Duration>,
    ) -> Result<Reply, Error> {
        if attempt.call.request_id.is_some()
            && !attempt.call.dedupe_safe_on(conn.peer.dedupe_instance)
        {
            // An earlier attempt may have run, and this server cannot answer with its result.
            return Err(Error::from_code(
                StatusCode::UNAVAILABLE,
                NoDedupeWindow.to_string(),
                Outcome::MaybeExecuted,
            )
            .with_kind(ErrorKind::NoDedupeWindow)
            .with_source(NoDedupeWindow));
        }
        let now = tokio::time::Instant::now();
        if attempt.deadline.is_expired(now) {
            return Err(deadline_exceeded(Outcome::NotSent));
        }
        let number = attempt.call.placed(conn.id);
        let mut request = Request::new(0, attempt.method, attempt.payload);
        request.idempotent = attempt.idempotent;
        request.budget = Budget::until(Some(attempt.deadline), now);
        request.metadata = attempt.metadata;
        if number > 1 {
            request.metadata.insert(
                MetadataKey::from_static(ATTEMPT_KEY),
                Bytes::from(number.to_string()),
            );
        }
        if let Some(id) = &attempt.call.request_id {
            request
                .metadata
                .insert(MetadataKey::from_static(REQUEST_ID_KEY), id.clone());
        }
        // In its own slot: the request needs no metadata list for it.
        request.schema.clone_from(&attempt.call.schema);
        check_limits(&conn.peer, &request)?;
        let method = request.method.clone();
        let slot = CallSlot::new();
        // One span per attempt (off unless a subscriber wants DEBUG): the server's span of the
        // same call has the same method, attempt and call id.
        let span = tracing::debug_span!(
            "rpc.attempt",
            method = method.as_str(),
            attempt = number,
            peer = %self.pool.addr(),
            call_id = tracing::field::Empty,
        );
        let sending = send_and_wait(conn, request, attempt.deadline, &slot);
        let result = if span.is_disabled() {
            // Off (nobody wants DEBUG): the span is not kept, so the attempt's future is no larger.
            drop(span);
            sending.await
        } else {
            // On: the span goes in a box of its own, entered on every poll of the attempt.
            let mut sending = Box::pin(sending.instrument(span));
            let result = (&mut sending).await;
            let span = sending.span();
            span.record("call_id", slot.call_id());
            span.in_scope(|| match &result {
                Ok(_) => tracing::trace!("answered: OK"),
                Err(err) => tracing::trace!(code = %err.code(), outcome = %err.outcome(), "failed"),
            });
            result
        };
        // The method's observed latency: the average counts every attempt the server answered
        // (to judge whether another fits in a deadline), the hedging percentiles only successes.
        // Time spent waiting in the connection for a server slot is not the server's latency.
        let answered = match &result {
            Ok(_) => true,
            Err(err) => matches!(err.outcome(), Outcome::Executed | Outcome::NotExecuted),
        };
        if answered {
            let elapsed = now.elapsed();
            *sample = Some(elapsed);
            let latency = elapsed.saturating_sub(slot.waited());
            self.latency
                .record(method.as_str(), latency, result.is_ok());
        }
        if let (Err(err), Some(_)) = (&result, &attempt.call.request_id) {
            if matches!(err.outcome(), Outcome::Executed | Outcome::MaybeExecuted) {
                attempt
                    .call
                    .may_have_run(conn.peer.dedupe_instance, self.endpoint);
            }
        }
        result
    }
}

/// A dedupe-protected call that may have run was not retried: the server now reachable is not the
/// instance whose dedupe window recorded it (it restarted), or it has no window.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NoDedupeWindow;

impl std::fmt::Display for NoDedupeWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "not retried: no dedupe window of the server instance that may have run the call",
        )
    }
}

impl std::error::Error for NoDedupeWindow {}

pub(crate) fn deadline_exceeded(outcome: Outcome) -> Error {
    Error::from_code(StatusCode::DEADLINE_EXCEEDED, "deadline exceeded", outcome)
        .with_kind(ErrorKind::Deadline)
}

/// Hands `request` to the connection and waits for its result until `deadline`. Dropping the
/// returned future withdraws the call.
async fn send_and_wait(
    conn: &ConnectionHandle,
    request: Request,
    deadline: Deadline,
    slot: &Arc<CallSlot>,
) -> Result<Reply, Error> {
    let (reply, response) = oneshot::channel();
    let command = Command::Call(CallCommand {
        request,
        deadline,
        expected: Duration::ZERO,
        held_since: None,
        slot: Arc::clone(slot),
        reply,
    });
    if conn.commands.send(command).is_err() {
        return Err(Error::from_code(
            StatusCode::UNAVAILABLE,
            "the connection closed before the call was sent",
            Outcome::NotSent,
        )
        .with_kind(ErrorKind::ConnectionLost));
    }
    let mut guard = WithdrawOnDrop {
        slot,
        commands: &conn.commands,
        armed: true,
    };
    let result = match tokio::time::timeout_at(deadline.instant(), response).await {
        Ok(Ok(result)) => result,
        Ok(Err(_closed)) => Err(Error::from_code(
            StatusCode::UNAVAILABLE,
            "the connection ended without answering",
            if slot.abandon() {
                Outcome::NotSent
            } else {
                Outcome::MaybeExecuted
            },
        )
        .with_kind(ErrorKind::ConnectionLost)),
        Err(_elapsed) => {
            guard.armed = false;
            return Err(deadline_exceeded(guard.withdraw()));
        }
    };
    guard.armed = false;
    result
}

/// Withdraws a call whose caller stopped waiting: never sent if it was still queued, otherwise
/// CANCEL on the wire.
struct WithdrawOnDrop<'a> {
    slot: &'a CallSlot,
    commands: &'a tokio::sync::mpsc::UnboundedSender<Command>,
    armed: bool,
}

impl WithdrawOnDrop<'_> {
    /// The outcome of the withdrawn call.
    fn withdraw(&self) -> Outcome {
        if self.slot.abandon() {
            Outcome::NotSent
        } else {
            let _ = self.commands.send(Command::Cancel {
                call_id: self.slot.call_id(),
            });
            Outcome::MaybeExecuted
        }
    }
}

impl Drop for WithdrawOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.withdraw();
        }
    }
}
