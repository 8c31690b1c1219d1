//! The hedging layer: for idempotent calls with a hedge policy, a backup attempt on another
//! connection when the first is slow; the first success wins and the other is cancelled.

use std::sync::Arc;
use std::time::Duration;

use rpc_core::Error;
use tower::retry::budget::{Budget as _, TpsBudget};
use tracing::debug;

use crate::call::Reply;
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
        if hedge_at.into_std() >= attempt.deadline.instant() {
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
        tokio::select! {
            result = &mut first => match result {
                Ok(reply) => Ok(reply),
                Err(_) => second.await,
            },
            result = &mut second => match result {
                Ok(reply) => Ok(reply),
                Err(_) => first.await,
            },
        }
    }
}
