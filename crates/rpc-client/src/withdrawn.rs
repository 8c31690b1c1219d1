//! Calls the caller gave up on (dropped, or past their deadline) after their REQUEST was written:
//! they still hold one of the server's concurrency slots until the connection learns the server
//! freed it. Sans-IO: the connection tells it what happened and asks it what to do.
//!
//! A withdrawn call's slot is free at whichever comes first (docs/PROTOCOL.md §9.2):
//! - its RESPONSE (the CANCELLED one, or the answer that crossed the CANCEL);
//! - the PONG of a PING sent after its CANCEL. The server reads frames in order and frees a
//!   cancelled call's slot before it answers a later PING, so that PONG proves the slot free even
//!   when the RESPONSE will never come: it was lost (a middlebox dropped it), or the server had
//!   answered before the CANCEL arrived and that answer was lost.
//!
//! A PING goes out behind the CANCELs at once, unless one is already unanswered (then when its
//! PONG comes, so at most one per round trip), and again every [`PROBE_INTERVAL`] while withdrawn
//! calls wait, in case a PING or PONG was lost. A withdrawn call still held at its deadline plus
//! the connection's dead bound is *stale*: the connection is not answering as the protocol
//! says, and is replaced.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

/// How often a PING is sent while withdrawn calls wait for their slots to be freed.
pub(crate) const PROBE_INTERVAL: Duration = Duration::from_millis(200);

#[derive(Debug)]
struct Withdrawn {
    /// The number of the first PING sent after its CANCEL: a PONG numbered at least this frees it.
    barrier: u64,
    /// Held past this, the connection is stale.
    stale_at: Instant,
}

/// The withdrawn calls of one connection.
#[derive(Debug, Default)]
pub(crate) struct Withdrawals {
    calls: HashMap<u64, Withdrawn>,
    /// CANCELs were queued since the last PING: one must follow them.
    ping_wanted: bool,
    /// When the last PING on their behalf went out.
    last_probe: Option<Instant>,
}

impl Withdrawals {
    /// Slots held by withdrawn calls.
    pub(crate) fn len(&self) -> usize {
        self.calls.len()
    }

    /// `call_id`'s CANCEL was queued at `now`; the next PING to go out is number `next_ping`.
    pub(crate) fn withdraw(
        &mut self,
        call_id: u64,
        next_ping: u64,
        now: Instant,
        stale_at: Instant,
    ) {
        // Probed at the latest one interval from now, even if the PING it wants is held back
        // behind an unanswered one whose PONG never comes.
        self.last_probe.get_or_insert(now);
        self.calls.insert(
            call_id,
            Withdrawn {
                barrier: next_ping,
                stale_at,
            },
        );
        self.ping_wanted = true;
    }

    /// A RESPONSE for `call_id` arrived; true if it was a withdrawn call (its slot is free now).
    pub(crate) fn answered(&mut self, call_id: u64) -> bool {
        self.calls.remove(&call_id).is_some()
    }

    /// The PONG of PING number `pong` arrived: frees every call withdrawn before that PING went
    /// out. Returns how many.
    pub(crate) fn ponged(&mut self, pong: u64) -> usize {
        let before = self.calls.len();
        self.calls.retain(|_, call| call.barrier > pong);
        before - self.calls.len()
    }

    /// The server's GOAWAY says it never ran calls above `last`: their slots were never taken.
    pub(crate) fn forget_above(&mut self, last: u64) {
        self.calls.retain(|&id, _| id <= last);
    }

    /// Whether a PING should go out now; `unanswered` is whether an earlier PING still waits for
    /// its PONG.
    pub(crate) fn ping_due(&self, now: Instant, unanswered: bool) -> bool {
        if self.calls.is_empty() {
            return false;
        }
        (self.ping_wanted && !unanswered) || self.next_probe().is_some_and(|at| now >= at)
    }

    /// A PING went out at `now`.
    pub(crate) fn pinged(&mut self, now: Instant) {
        self.ping_wanted = false;
        self.last_probe = Some(now);
    }

    /// When the next probe is due, if calls wait.
    pub(crate) fn next_probe(&self) -> Option<Instant> {
        if self.calls.is_empty() {
            return None;
        }
        self.last_probe.map(|at| at + PROBE_INTERVAL)
    }

    /// Whether a call has been held past its bound.
    pub(crate) fn any_stale(&self, now: Instant) -> bool {
        self.calls.values().any(|call| now >= call.stale_at)
    }

    /// Forgets every withdrawn call (the connection ended, or is being replaced).
    pub(crate) fn clear(&mut self) {
        self.calls.clear();
        self.ping_wanted = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_withdrawn_call_is_freed_by_its_response_or_by_a_later_pong_whichever_comes_first() {
        let t0 = Instant::now();
        let mut w = Withdrawals::default();
        w.withdraw(1, 1, t0, t0 + ms(10_000));
        assert!(w.ping_due(t0, false), "a PING follows the CANCEL at once");
        w.pinged(t0);
        w.withdraw(2, 2, t0, t0 + ms(10_000));
        assert!(
            !w.ping_due(t0, true),
            "not while PING 1 is unanswered: one per round trip"
        );
        // PING 1's PONG frees call 1 only: call 2 was withdrawn after PING 1 went out.
        assert_eq!(w.ponged(1), 1);
        assert_eq!(w.len(), 1);
        assert!(w.ping_due(t0, false), "call 2 still wants its PING");
        w.pinged(t0);
        assert!(w.answered(2), "its RESPONSE came first");
        assert_eq!(w.ponged(2), 0);
        assert_eq!(w.len(), 0);
        assert!(!w.answered(2));
        assert!(!w.ping_due(t0 + ms(1_000), false), "nothing waits");
    }

    #[test]
    fn probes_repeat_while_calls_wait_and_a_call_held_past_its_bound_is_stale() {
        let t0 = Instant::now();
        let mut w = Withdrawals::default();
        w.withdraw(7, 1, t0, t0 + ms(500));
        w.pinged(t0);
        // The PONG was lost: probe again after the interval.
        assert!(!w.ping_due(t0 + PROBE_INTERVAL - ms(1), true));
        assert_eq!(w.next_probe(), Some(t0 + PROBE_INTERVAL));
        assert!(w.ping_due(t0 + PROBE_INTERVAL, true));
        assert!(!w.any_stale(t0 + ms(499)));
        assert!(w.any_stale(t0 + ms(500)));
    }

    #[test]
    fn a_call_waiting_behind_an_unanswered_ping_is_probed_within_the_interval() {
        let t0 = Instant::now();
        let mut w = Withdrawals::default();
        // A heartbeat PING is out and its PONG is lost.
        w.withdraw(1, 2, t0, t0 + ms(10_000));
        assert!(!w.ping_due(t0, true));
        assert!(w.ping_due(t0 + PROBE_INTERVAL, true));
    }

    #[test]
    fn a_goaway_frees_the_calls_above_its_last_call_id() {
        let t0 = Instant::now();
        let mut w = Withdrawals::default();
        for id in 1..=5 {
            w.withdraw(id, 1, t0, t0);
        }
        w.forget_above(3);
        assert_eq!(w.len(), 3);
        assert!(w.answered(3));
        assert!(!w.answered(4));
    }
}
