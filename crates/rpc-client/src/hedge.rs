//! The hedging layer: for idempotent calls with a hedge policy, a backup attempt on another
//! connection when the first is slow; the first success wins and the other is cancelled.

use std::sync::Arc;
use std::time::Duration;

use rpc_core::Error;
use tower::retry::budget::{Budget as _, TpsBudget};
use tracing::debug;

use crate::Reply;
use crate::latency::LatencyTracker;
use crate::policy::{HedgeDelay, HedgePolicy};
use crate::stack::{Attempt, CallService};

/// The hedging layer over `S`.
#[derive(Debug)]
pub(crate) struct Hedge<S> {
    pub(crate) inner: S,
    pub(crate) budget: Option<Arc<TpsBudget>>,
    pub(crate) latency: Arc<LatencyTracker>,
}

impl<S> Hedge<S> {
    fn delay(&self, policy: &HedgePolicy, method: &str) -> Option<Duration> {
        match policy.delay {
            HedgeDelay::Fixed(delay) => Some(delay),
            HedgeDelay::Percentile(p) => self.latency.percentile(method, p, policy.min_samples),
        }
    }
}

impl<S: CallService> CallService for Hedge<S> {
    async fn call(&self, attempt: Attempt) -> Result<Reply, Error> {
        let delay = match &attempt.hedge {
            Some(policy) if attempt.idempotent => self.delay(policy, attempt.method.as_str()),
            _ => None,
        };
        let Some(delay) = delay else {
            return self.inner.call(attempt).await;
        };
        let hedge_at = tokio::time::Instant::now() + delay;
        if hedge_at >= attempt.deadline.instant() {
            return self.inner.call(attempt).await;
        }
        let first = self.inner.call(attempt.clone());
        tokio::pin!(first);
        tokio::select! {
            result = &mut first => return result,
            () = tokio::time::sleep_until(hedge_at) => {}
        }
        if let Some(budget) = &self.budget {
            if !budget.withdraw() {
                debug!(
                    method = attempt.method.as_str(),
                    "hedge skipped: the retry budget is spent"
                );
                return first.await;
            }
        }
        let mut backup = attempt;
        backup.avoid = backup.call.last_connection();
        debug!(
            method = backup.method.as_str(),
            attempt = backup.call.attempts() + 1,
            after = ?delay,
            "hedging"
        );
        let second = self.inner.call(backup);
        tokio::pin!(second);
        // The first success wins; dropping the other attempt withdraws it (CANCEL on the wire).
        // When both fail, the call's outcome is the less safe of the two.
        tokio::select! {
            result = &mut first => match result {
                Ok(reply) => Ok(reply),
                Err(err) => second.await.map_err(|e| e.after_attempts(err.outcome())),
            },
            result = &mut second => match result {
                Ok(reply) => Ok(reply),
                Err(err) => first.await.map_err(|e| e.after_attempts(err.outcome())),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::time::Duration;

    use bytes::Bytes;
    use rpc_codec::MethodName;
    use rpc_core::{Deadline, Metadata};
    use tokio::time::Instant;

    use super::*;
    use crate::stack::CallState;

    /// Each attempt takes the next scripted time and answers with its attempt number.
    #[derive(Debug, Default)]
    struct Timed {
        delays: Mutex<VecDeque<Duration>>,
        avoided: Mutex<Vec<Option<u64>>>,
    }

    impl CallService for Timed {
        async fn call(&self, attempt: Attempt) -> Result<Reply, Error> {
            let delay = self.delays.lock().unwrap().pop_front().unwrap_or_default();
            self.avoided.lock().unwrap().push(attempt.avoid);
            let number = attempt.call.placed(u64::from(attempt.call.attempts()) + 1);
            tokio::time::sleep(delay).await;
            Ok(Reply {
                payload: Bytes::from(number.to_string()),
                metadata: Metadata::new(),
            })
        }
    }

    fn layer(delays: &[u64], budget: Option<TpsBudget>) -> Hedge<Timed> {
        Hedge {
            inner: Timed {
                delays: Mutex::new(delays.iter().map(|&ms| Duration::from_millis(ms)).collect()),
                ..Timed::default()
            },
            budget: budget.map(Arc::new),
            latency: Arc::default(),
        }
    }

    fn attempt(idempotent: bool, policy: HedgePolicy) -> Attempt {
        Attempt {
            method: MethodName::try_from("S.m").unwrap(),
            payload: Bytes::new(),
            metadata: Metadata::new(),
            idempotent,
            deadline: Deadline::from_now(Duration::from_secs(60)),
            wait_for_ready: true,
            avoid: None,
            retry: crate::stack::RetryChoice::Off,
            hedge: Some(policy),
            hash_key: None,
            fork: 1,
            call: Arc::new(CallState::new(None)),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_first_attempt_is_hedged_on_another_connection_and_the_hedge_wins() {
        let hedge = layer(&[1000, 10], None);
        let started = Instant::now();
        let policy = HedgePolicy::after(Duration::from_millis(50));
        let reply = hedge.call(attempt(true, policy)).await.unwrap();
        assert_eq!(reply.payload, "2");
        assert_eq!(started.elapsed(), Duration::from_millis(60));
        let avoided = hedge.inner.avoided.lock().unwrap().clone();
        assert_eq!(avoided, [None, Some(1)]);
    }

    #[tokio::test(start_paused = true)]
    async fn fast_calls_and_non_idempotent_calls_are_not_hedged() {
        let policy = HedgePolicy::after(Duration::from_millis(50));
        let hedge = layer(&[10], None);
        assert_eq!(
            hedge.call(attempt(true, policy)).await.unwrap().payload,
            "1"
        );
        let hedge = layer(&[1000, 10], None);
        assert_eq!(
            hedge.call(attempt(false, policy)).await.unwrap().payload,
            "1"
        );
        assert_eq!(hedge.inner.avoided.lock().unwrap().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_spent_budget_means_no_hedge() {
        let policy = HedgePolicy::after(Duration::from_millis(50));
        let hedge = layer(
            &[1000, 10],
            Some(TpsBudget::new(Duration::from_secs(10), 0, 0.0)),
        );
        let started = Instant::now();
        assert_eq!(
            hedge.call(attempt(true, policy)).await.unwrap().payload,
            "1"
        );
        assert_eq!(started.elapsed(), Duration::from_millis(1000));
    }

    #[tokio::test(start_paused = true)]
    async fn a_percentile_delay_waits_for_samples_then_follows_them() {
        let policy = HedgePolicy::at_percentile(95.0).min_samples(20);
        let hedge = layer(&[1000, 1000, 10], None);
        for _ in 0..19 {
            hedge.latency.record("S.m", Duration::from_millis(30), true);
        }
        // 19 samples: no hedge yet.
        let started = Instant::now();
        assert_eq!(
            hedge.call(attempt(true, policy)).await.unwrap().payload,
            "1"
        );
        assert_eq!(started.elapsed(), Duration::from_millis(1000));
        hedge.latency.record("S.m", Duration::from_millis(30), true);
        // 20 samples, p95 = 30 ms: hedged after 30 ms, answered 10 ms later.
        let started = Instant::now();
        assert_eq!(
            hedge.call(attempt(true, policy)).await.unwrap().payload,
            "2"
        );
        assert_eq!(started.elapsed(), Duration::from_millis(40));
    }
}
