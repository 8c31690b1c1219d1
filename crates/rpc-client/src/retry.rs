//! The retry layer: decides, from each failed attempt's outcome, whether the call is tried again,
//! and keeps every attempt inside the call's one deadline and the channel's retry budget.

use std::sync::Arc;
use std::time::Duration;

use rpc_core::{Error, ErrorKind, Idempotency, Outcome, RetryStopped, StatusCode, StopReason};
use tower::retry::budget::{Budget as _, TpsBudget};
use tracing::{debug, warn};

use crate::Reply;
use crate::latency::LatencyTracker;
use crate::policy::{Backoff, RetryPolicy};
use crate::stack::{Attempt, CallService, RetryChoice};

/// What to do after a failed attempt. The decision is made here and nowhere else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// Return the failure.
    Stop,
    /// Nothing reached a server: try again, uncounted and free, once a connection is ready.
    NotSent,
    /// The server did no work: try again once, uncounted and free, on another connection.
    NotExecutedOnce,
    /// An ordinary retry: counted, charged to the budget, after the backoff.
    Counted,
}

/// The retry-safety rule applied to one failure. Safety comes from
/// [`Outcome::permits_retry`] alone. The first NOT_EXECUTED failure is retried by that rule
/// whatever its status (the server did no work: a corrupt request, a full server, a drain are all
/// worth one more try elsewhere); every other step also needs a status the policy names.
/// DEADLINE_EXCEEDED is never retried: it reports the call's one deadline, which the server's
/// copy never precedes.
fn classify(
    policy: &RetryPolicy,
    err: &Error,
    idempotency: Idempotency,
    not_executed_retried: bool,
) -> Step {
    let outcome = err.outcome();
    if !outcome.permits_retry(idempotency) || err.code() == StatusCode::DEADLINE_EXCEEDED {
        return Step::Stop;
    }
    if matches!(
        err.kind(),
        ErrorKind::Connect | ErrorKind::NoDedupeWindow | ErrorKind::BreakerOpen
    ) {
        // The connection wait already ran to its end (deadline or fail-fast), or every
        // endpoint's breaker is open: trying again at once would find the same.
        return Step::Stop;
    }
    match outcome {
        Outcome::NotExecuted if !not_executed_retried => Step::NotExecutedOnce,
        _ if !policy.retries(err.code()) => Step::Stop,
        Outcome::NotSent => Step::NotSent,
        _ => Step::Counted,
    }
}

/// The retry layer over `S`.
#[derive(Debug)]
pub(crate) struct Retry<S> {
    pub(crate) inner: S,
    /// The channel's policy; `None` when it disabled retries.
    pub(crate) default: Option<RetryPolicy>,
    pub(crate) budget: Option<Arc<TpsBudget>>,
    pub(crate) latency: Arc<LatencyTracker>,
    /// Paces repeated NOT_SENT attempts: the reconnect backoff.
    pub(crate) reconnect: Backoff,
}

impl<S: CallService> CallService for Retry<S> {
    async fn call(&self, mut attempt: Attempt) -> Result<Reply, Error> {
        let choice = std::mem::replace(&mut attempt.retry, RetryChoice::ChannelDefault);
        let policy = match (&choice, &self.default) {
            (RetryChoice::Policy(policy), _) => &**policy,
            (RetryChoice::ChannelDefault, Some(policy)) => policy,
            (RetryChoice::Off | RetryChoice::ChannelDefault, _) => {
                return self.inner.call(attempt).await;
            }
        };
        // The call's outcome is the least safe of its attempts'.
        let mut outcome = Outcome::NotSent;
        self.attempts(attempt, policy, &mut outcome)
            .await
            .map_err(|err| err.after_attempts(outcome))
    }
}

impl<S: CallService> Retry<S> {
    /// Makes attempts until one succeeds or the rules say stop; `outcome` collects the outcomes
    /// of the failed ones.
    async fn attempts(
        &self,
        mut attempt: Attempt,
        policy: &RetryPolicy,
        outcome: &mut Outcome,
    ) -> Result<Reply, Error> {
        let mut counted: u32 = 1;
        let mut not_sent: u32 = 0;
        let mut not_executed_retried = false;
        let mut previous: Option<Error> = None;
        loop {
            let err = match self.inner.call(attempt.clone()).await {
                Ok(reply) => return Ok(reply),
                Err(err) => err,
            };
            *outcome = outcome.combine(err.outcome());
            if let Some(previous) = previous.take() {
                if err.kind() == ErrorKind::NoDedupeWindow {
                    return Err(stopped(&attempt, previous, StopReason::NoDedupeWindow));
                }
                if err.is_deadline_exceeded() && err.outcome() == Outcome::NotSent {
                    // The retry never left: the earlier failure says more about the call.
                    let remaining = Duration::ZERO;
                    let needed = self.latency.average(attempt.method.as_str());
                    return Err(stopped(
                        &attempt,
                        previous,
                        StopReason::NoTimeLeft { remaining, needed },
                    ));
                }
            }
            let idempotency = attempt.idempotency(err.outcome());
            let step = classify(policy, &err, idempotency, not_executed_retried);
            let delay = match step {
                Step::Stop => {
                    debug!(
                        method = attempt.method.as_str(),
                        attempts = attempt.call.attempts(),
                        outcome = %err.outcome(),
                        code = %err.code(),
                        "not retried: this outcome and status do not allow another attempt"
                    );
                    return Err(err);
                }
                Step::NotSent => {
                    not_sent += 1;
                    match not_sent {
                        1 => Duration::ZERO,
                        n => self.reconnect.delay(n - 2),
                    }
                }
                Step::NotExecutedOnce => {
                    not_executed_retried = true;
                    Duration::ZERO
                }
                Step::Counted => {
                    if counted >= policy.attempts() {
                        return Err(stopped(
                            &attempt,
                            err,
                            StopReason::AttemptsExhausted { attempts: counted },
                        ));
                    }
                    policy.backoff_policy().delay(counted - 1)
                }
            };
            // Only the free NOT_EXECUTED retry must go elsewhere.
            attempt.avoid = if step == Step::NotExecutedOnce {
                attempt.call.last_connection()
            } else {
                None
            };
            let remaining = attempt.deadline.remaining(tokio::time::Instant::now());
            if step != Step::NotSent {
                let needed = delay + self.latency.average(attempt.method.as_str());
                if needed >= remaining {
                    return Err(stopped(
                        &attempt,
                        err,
                        StopReason::NoTimeLeft { remaining, needed },
                    ));
                }
            }
            if step == Step::Counted {
                if let Some(budget) = &self.budget {
                    if !budget.withdraw() {
                        warn!(
                            method = attempt.method.as_str(),
                            attempt = attempt.call.attempts(),
                            outcome = %err.outcome(),
                            code = %err.code(),
                            "retry budget exhausted"
                        );
                        return Err(stopped(&attempt, err, StopReason::BudgetExhausted));
                    }
                }
                counted += 1;
            }
            debug!(
                method = attempt.method.as_str(),
                attempt = attempt.call.attempts() + 1,
                outcome = %err.outcome(),
                code = %err.code(),
                ?delay,
                why = match step {
                    Step::NotSent => "nothing was sent",
                    Step::NotExecutedOnce => "the server did not run it; on another connection",
                    _ => "the policy retries this status",
                },
                "retrying"
            );
            if !delay.is_zero() {
                tokio::time::sleep(delay.min(remaining)).await;
            }
            previous = Some(err);
        }
    }
}

/// The call fails with `err` because retrying stopped for `reason`: said in an event, and in the
/// error's cause chain.
fn stopped(attempt: &Attempt, err: Error, reason: StopReason) -> Error {
    let err = err.map_source(|source| Box::new(RetryStopped::new(reason, source)));
    debug!(
        method = attempt.method.as_str(),
        attempts = attempt.call.attempts(),
        outcome = %err.outcome(),
        code = %err.code(),
        ?reason,
        "{}",
        RetryStopped::new(reason, None)
    );
    err
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    use bytes::Bytes;
    use rpc_codec::MethodName;
    use rpc_core::{Deadline, Metadata, StatusCode};

    use super::*;
    use crate::stack::CallState;

    /// Answers attempts from a script and counts them.
    #[derive(Debug, Default)]
    struct Scripted {
        results: Mutex<VecDeque<Result<Reply, Error>>>,
        calls: AtomicU32,
        avoided: Mutex<Vec<Option<u64>>>,
        latency: Duration,
    }

    impl CallService for Scripted {
        async fn call(&self, attempt: Attempt) -> Result<Reply, Error> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            attempt.call.placed(u64::from(n) + 1);
            self.avoided.lock().unwrap().push(attempt.avoid);
            tokio::time::sleep(self.latency).await;
            self.results
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or_else(|| Ok(Reply::default()))
        }
    }

    fn failure(code: StatusCode, outcome: Outcome) -> Result<Reply, Error> {
        Err(Error::from_code(code, "scripted", outcome))
    }

    fn layer(script: Vec<Result<Reply, Error>>, budget: Option<TpsBudget>) -> Retry<Scripted> {
        Retry {
            inner: Scripted {
                results: Mutex::new(script.into()),
                ..Scripted::default()
            },
            default: None,
            budget: budget.map(Arc::new),
            latency: Arc::default(),
            reconnect: Backoff::reconnect_default(),
        }
    }

    fn attempt(idempotent: bool, timeout: Duration) -> Attempt {
        Attempt {
            method: MethodName::try_from("S.m").unwrap(),
            payload: Bytes::new(),
            metadata: Metadata::new(),
            idempotent,
            deadline: Deadline::from_now(timeout),
            wait_for_ready: true,
            avoid: None,
            retry: RetryChoice::Policy(Arc::new(RetryPolicy::new())),
            hedge: None,
            hash_key: None,
            fork: 1,
            call: Arc::new(CallState::new(None)),
        }
    }

    const UNAVAILABLE: StatusCode = StatusCode::UNAVAILABLE;

    #[tokio::test(start_paused = true)]
    async fn maybe_executed_is_retried_only_when_idempotent() {
        let script = || vec![failure(UNAVAILABLE, Outcome::MaybeExecuted)];
        let retry = layer(script(), None);
        let err = retry
            .call(attempt(false, Duration::from_secs(5)))
            .await
            .unwrap_err();
        assert_eq!(err.outcome(), Outcome::MaybeExecuted);
        assert_eq!(retry.inner.calls.load(Ordering::SeqCst), 1);

        let retry = layer(script(), None);
        retry
            .call(attempt(true, Duration::from_secs(5)))
            .await
            .unwrap();
        assert_eq!(retry.inner.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dedupe_protected_call_is_retried_like_an_idempotent_one() {
        let retry = layer(vec![failure(UNAVAILABLE, Outcome::MaybeExecuted)], None);
        let mut a = attempt(false, Duration::from_secs(5));
        a.call = Arc::new(CallState::new(Some(Bytes::from_static(b"id"))));
        retry.call(a).await.unwrap();
        assert_eq!(retry.inner.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dedupe_protected_call_is_not_retried_after_executed() {
        // The server's window recorded that error: a repeat would replay it.
        let retry = layer(vec![failure(UNAVAILABLE, Outcome::Executed)], None);
        let mut a = attempt(false, Duration::from_secs(5));
        a.call = Arc::new(CallState::new(Some(Bytes::from_static(b"id"))));
        let err = retry.call(a).await.unwrap_err();
        assert_eq!(err.outcome(), Outcome::Executed);
        assert_eq!(retry.inner.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_that_never_left_before_the_deadline_returns_the_earlier_failure() {
        let script = vec![
            failure(UNAVAILABLE, Outcome::Executed),
            failure(StatusCode::DEADLINE_EXCEEDED, Outcome::NotSent),
        ];
        let retry = layer(script, None);
        let err = retry
            .call(attempt(true, Duration::from_secs(5)))
            .await
            .unwrap_err();
        assert_eq!(
            (err.code(), err.outcome()),
            (UNAVAILABLE, Outcome::Executed)
        );
        let cause = std::error::Error::source(&err)
            .and_then(|c| c.downcast_ref::<RetryStopped>())
            .unwrap();
        assert!(matches!(cause.reason(), StopReason::NoTimeLeft { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_may_have_run_never_ends_looking_unsent() {
        // A maybe-run attempt, then retries that never leave.
        let script = vec![
            failure(UNAVAILABLE, Outcome::MaybeExecuted),
            failure(UNAVAILABLE, Outcome::NotSent),
            failure(StatusCode::INVALID_ARGUMENT, Outcome::NotSent),
        ];
        let retry = layer(script, None);
        let err = retry
            .call(attempt(true, Duration::from_secs(60)))
            .await
            .unwrap_err();
        assert_eq!(err.code(), StatusCode::INVALID_ARGUMENT);
        assert_eq!(err.outcome(), Outcome::MaybeExecuted);
        assert_eq!(retry.inner.calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn executed_failures_stop_after_max_attempts() {
        let script = (0..10)
            .map(|_| failure(UNAVAILABLE, Outcome::Executed))
            .collect();
        let retry = layer(script, None);
        let err = retry
            .call(attempt(true, Duration::from_secs(60)))
            .await
            .unwrap_err();
        assert_eq!(retry.inner.calls.load(Ordering::SeqCst), 3);
        assert!(err.has_cause::<RetryStopped>());
        assert_eq!(err.outcome(), Outcome::Executed);
    }

    #[tokio::test(start_paused = true)]
    async fn statuses_outside_the_policy_are_not_retried() {
        let retry = layer(vec![failure(StatusCode::INTERNAL, Outcome::Executed)], None);
        let err = retry
            .call(attempt(true, Duration::from_secs(5)))
            .await
            .unwrap_err();
        assert_eq!(err.code(), StatusCode::INTERNAL);
        assert!(!err.has_cause::<RetryStopped>());
        assert_eq!(retry.inner.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn not_executed_is_retried_once_free_on_another_connection() {
        let script = vec![
            failure(UNAVAILABLE, Outcome::NotExecuted),
            failure(UNAVAILABLE, Outcome::NotExecuted),
            failure(UNAVAILABLE, Outcome::NotExecuted),
            failure(UNAVAILABLE, Outcome::NotExecuted),
        ];
        let retry = layer(script, None);
        let err = retry
            .call(attempt(false, Duration::from_secs(60)))
            .await
            .unwrap_err();
        // One free retry plus the policy's 3 counted attempts.
        assert_eq!(retry.inner.calls.load(Ordering::SeqCst), 4);
        assert_eq!(err.outcome(), Outcome::NotExecuted);
        let avoided = retry.inner.avoided.lock().unwrap().clone();
        assert_eq!(avoided.first(), Some(&None));
        assert_eq!(
            avoided.get(1),
            Some(&Some(1)),
            "the free retry avoids connection 1"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn not_executed_is_retried_once_whatever_its_status() {
        // A corrupt request the server refused before dispatch: safe for any method.
        for code in [
            StatusCode::DATA_LOSS,
            StatusCode::RESOURCE_EXHAUSTED,
            StatusCode::INTERNAL,
        ] {
            let retry = layer(
                vec![
                    failure(code, Outcome::NotExecuted),
                    failure(code, Outcome::NotExecuted),
                ],
                None,
            );
            let mut a = attempt(false, Duration::from_secs(60));
            a.retry = RetryChoice::Policy(Arc::new(
                RetryPolicy::new().retryable_statuses([StatusCode::UNAVAILABLE]),
            ));
            let err = retry.call(a).await.unwrap_err();
            // The free retry, then the second NOT_EXECUTED is an ordinary one: not this status.
            assert_eq!(retry.inner.calls.load(Ordering::SeqCst), 2, "{code}");
            assert_eq!((err.code(), err.outcome()), (code, Outcome::NotExecuted));
        }
        // A server-side expiry is the call's own deadline: never retried.
        let retry = layer(
            vec![failure(StatusCode::DEADLINE_EXCEEDED, Outcome::NotExecuted)],
            None,
        );
        retry
            .call(attempt(false, Duration::from_secs(60)))
            .await
            .unwrap_err();
        assert_eq!(retry.inner.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn data_loss_is_retried_by_default_for_idempotent_calls_only() {
        // A corrupted response: the call ran, maybe; an idempotent one is simply asked again.
        let corrupt = || vec![failure(StatusCode::DATA_LOSS, Outcome::MaybeExecuted)];
        let retry = layer(corrupt(), None);
        retry
            .call(attempt(true, Duration::from_secs(5)))
            .await
            .unwrap();
        assert_eq!(retry.inner.calls.load(Ordering::SeqCst), 2);
        let retry = layer(corrupt(), None);
        let err = retry
            .call(attempt(false, Duration::from_secs(5)))
            .await
            .unwrap_err();
        assert_eq!(
            (err.code(), err.outcome()),
            (StatusCode::DATA_LOSS, Outcome::MaybeExecuted)
        );
        assert_eq!(retry.inner.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn not_sent_is_retried_uncounted_until_success() {
        let script = (0..8)
            .map(|_| failure(UNAVAILABLE, Outcome::NotSent))
            .collect();
        let retry = layer(
            script,
            Some(TpsBudget::new(Duration::from_secs(10), 0, 0.0)),
        );
        retry
            .call(attempt(false, Duration::from_secs(60)))
            .await
            .unwrap();
        assert_eq!(retry.inner.calls.load(Ordering::SeqCst), 9);
    }

    #[tokio::test(start_paused = true)]
    async fn the_failure_kind_alone_decides_which_not_sent_failures_end_the_call() {
        // Same status and outcome each time: only the kind differs. A finished connection wait,
        // open breakers and a lost dedupe window end the call; an empty endpoint set (discovery
        // may fill it) and a connection going away are tried again.
        for (kind, calls) in [
            (ErrorKind::Connect, 1),
            (ErrorKind::BreakerOpen, 1),
            (ErrorKind::NoDedupeWindow, 1),
            (ErrorKind::NoEndpoint, 2),
            (ErrorKind::ConnectionLost, 2),
        ] {
            let script = vec![Err(
                Error::from_code(UNAVAILABLE, "x", Outcome::NotSent).with_kind(kind)
            )];
            let retry = layer(script, None);
            let result = retry.call(attempt(true, Duration::from_secs(5))).await;
            assert_eq!(
                retry.inner.calls.load(Ordering::SeqCst),
                calls,
                "{kind:?}: attempts"
            );
            match result {
                Ok(_) => assert_eq!(calls, 2, "{kind:?}"),
                Err(err) => assert_eq!((err.kind(), calls), (kind, 1)),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_spent_budget_returns_the_original_error_with_that_cause() {
        let retry = layer(
            vec![failure(UNAVAILABLE, Outcome::Executed)],
            Some(TpsBudget::new(Duration::from_secs(10), 0, 0.0)),
        );
        let err = retry
            .call(attempt(true, Duration::from_secs(5)))
            .await
            .unwrap_err();
        assert_eq!(
            (err.code(), err.outcome()),
            (UNAVAILABLE, Outcome::Executed)
        );
        let cause = std::error::Error::source(&err)
            .and_then(|c| c.downcast_ref::<RetryStopped>())
            .unwrap();
        assert_eq!(cause.reason(), StopReason::BudgetExhausted);
        assert_eq!(retry.inner.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn no_attempt_starts_that_cannot_finish_before_the_deadline() {
        let script = (0..5)
            .map(|_| failure(UNAVAILABLE, Outcome::Executed))
            .collect();
        let mut retry = layer(script, None);
        retry.inner.latency = Duration::from_millis(120);
        retry
            .latency
            .record("S.m", Duration::from_millis(120), true);
        let started = tokio::time::Instant::now();
        let err = retry
            .call(attempt(true, Duration::from_millis(300)))
            .await
            .unwrap_err();
        // Paused time: exact. Two 120 ms attempts and the backoff between them fit in 300 ms; a
        // third would not, so it never starts.
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(240) && took <= Duration::from_millis(300),
            "{took:?}"
        );
        let cause = std::error::Error::source(&err)
            .and_then(|c| c.downcast_ref::<RetryStopped>())
            .unwrap();
        assert!(matches!(cause.reason(), StopReason::NoTimeLeft { .. }));
        assert_eq!(retry.inner.calls.load(Ordering::SeqCst), 2);
    }
}
