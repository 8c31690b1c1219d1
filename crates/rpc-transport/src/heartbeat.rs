//! The heartbeat both sides keep (docs/PROTOCOL.md §10), sans-IO: it is told when bytes arrive
//! and asked, with the time, whether a PING is due or the peer is dead.

use std::time::Duration;

use tokio::time::Instant;

/// The smallest interval a heartbeat runs at: [`rpc_codec::MIN_HEARTBEAT_INTERVAL_MS`].
pub const MIN_HEARTBEAT_INTERVAL: Duration =
    Duration::from_millis(rpc_codec::MIN_HEARTBEAT_INTERVAL_MS as u64);

/// What the heartbeat asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Beat {
    /// Nothing to do now.
    Idle,
    /// Send a PING.
    Ping,
    /// The peer is dead: nothing arrived for the dead bound, and a PING sent during that
    /// silence went unanswered for at least the dead bound less one interval.
    Dead {
        /// How long the peer has been silent.
        silent_for: Duration,
    },
}

/// One connection's heartbeat: a PING after each interval of silence, the peer dead after the
/// dead bound.
///
/// A peer is never declared dead before a PING has had `dead_after - interval` (at least one
/// interval) to be answered, even when this side's own task was stalled and sent the PING late:
/// a peer that answers PINGs within that bound always stays alive.
///
/// ```
/// use std::time::Duration;
/// use rpc_transport::{Beat, Heartbeat};
/// use tokio::time::Instant;
///
/// let start = Instant::now();
/// let at = |ms| start + Duration::from_millis(ms);
/// let mut beat = Heartbeat::new(Duration::from_millis(100), 2, start);
/// assert_eq!(beat.poll(at(50)), Beat::Idle);
/// assert_eq!(beat.poll(at(100)), Beat::Ping);
/// beat.received(at(130)); // the PONG
/// assert_eq!(beat.poll(at(229)), Beat::Idle);
/// assert_eq!(beat.poll(at(230)), Beat::Ping);
/// assert_eq!(beat.poll(at(430)), Beat::Dead { silent_for: Duration::from_millis(300) });
/// ```
#[derive(Clone, Debug)]
pub struct Heartbeat {
    interval: Duration,
    dead_after: Duration,
    last_recv: Instant,
    last_ping: Instant,
    /// When the first PING of the current silence went out.
    first_unanswered: Option<Instant>,
}

impl Heartbeat {
    /// A heartbeat of `interval` (raised to [`MIN_HEARTBEAT_INTERVAL`]), dead after
    /// `dead_after_intervals` intervals of silence (at least 2), starting at `now`.
    #[must_use]
    pub fn new(interval: Duration, dead_after_intervals: u32, now: Instant) -> Self {
        let interval = interval.max(MIN_HEARTBEAT_INTERVAL);
        Self {
            interval,
            dead_after: interval * dead_after_intervals.max(2),
            last_recv: now,
            last_ping: now,
            first_unanswered: None,
        }
    }

    /// The interval in use.
    #[must_use]
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The dead bound in use.
    #[must_use]
    pub fn dead_after(&self) -> Duration {
        self.dead_after
    }

    /// Bytes arrived from the peer at `now`: it is alive.
    pub fn received(&mut self, now: Instant) {
        self.last_recv = now;
        self.first_unanswered = None;
    }

    /// How long the peer has been silent at `now`.
    #[must_use]
    pub fn silent_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_recv)
    }

    /// What is due at `now`. A [`Beat::Ping`] is counted as sent.
    pub fn poll(&mut self, now: Instant) -> Beat {
        let silent_for = self.silent_for(now);
        if let Some(pinged) = self.first_unanswered {
            let unanswered = now.saturating_duration_since(pinged);
            if silent_for >= self.dead_after && unanswered >= self.dead_after - self.interval {
                return Beat::Dead { silent_for };
            }
        }
        if now >= self.last_recv.max(self.last_ping) + self.interval {
            self.last_ping = now;
            self.first_unanswered.get_or_insert(now);
            return Beat::Ping;
        }
        Beat::Idle
    }

    /// When [`Heartbeat::poll`] next has something to do.
    #[must_use]
    pub fn next_due(&self) -> Instant {
        let ping = self.last_recv.max(self.last_ping) + self.interval;
        match self.first_unanswered {
            Some(pinged) => {
                let dead = (self.last_recv + self.dead_after)
                    .max(pinged + (self.dead_after - self.interval));
                ping.min(dead)
            }
            None => ping,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn pings_after_each_interval_of_silence_and_dies_after_the_bound() {
        let t0 = Instant::now();
        let mut beat = Heartbeat::new(ms(100), 3, t0);
        assert_eq!(beat.next_due(), t0 + ms(100));
        assert_eq!(beat.poll(t0 + ms(100)), Beat::Ping);
        assert_eq!(beat.poll(t0 + ms(150)), Beat::Idle);
        assert_eq!(beat.next_due(), t0 + ms(200));
        assert_eq!(beat.poll(t0 + ms(200)), Beat::Ping);
        assert_eq!(beat.next_due(), t0 + ms(300));
        assert_eq!(
            beat.poll(t0 + ms(300)),
            Beat::Dead {
                silent_for: ms(300)
            }
        );
    }

    #[test]
    fn an_interval_below_the_minimum_is_raised() {
        let beat = Heartbeat::new(ms(1), 2, Instant::now());
        assert_eq!(beat.interval(), MIN_HEARTBEAT_INTERVAL);
        assert_eq!(beat.dead_after(), 2 * MIN_HEARTBEAT_INTERVAL);
    }

    #[test]
    fn a_peer_that_answers_every_ping_in_time_is_never_dead() {
        let t0 = Instant::now();
        let mut beat = Heartbeat::new(ms(100), 2, t0);
        let mut now = t0;
        for _ in 0..1000 {
            now = beat.next_due();
            assert_eq!(beat.poll(now), Beat::Ping);
            // Answered just inside the bound: dead_after - interval after the PING.
            let answered = now + ms(99);
            assert_eq!(beat.poll(answered), Beat::Idle);
            beat.received(answered);
        }
        assert!(now > t0 + ms(100_000));
    }

    #[test]
    fn a_late_ping_from_a_stalled_side_still_gets_its_time_to_be_answered() {
        let t0 = Instant::now();
        let mut beat = Heartbeat::new(ms(100), 2, t0);
        // This side's task did not run for 500 ms: the bound has passed, but no PING went out.
        assert_eq!(beat.poll(t0 + ms(500)), Beat::Ping);
        assert_eq!(beat.next_due(), t0 + ms(600));
        assert_eq!(beat.poll(t0 + ms(599)), Beat::Idle);
        beat.received(t0 + ms(590));
        assert_eq!(beat.poll(t0 + ms(600)), Beat::Idle);
        // Unanswered, it is dead one interval after the late PING.
        let mut beat = Heartbeat::new(ms(100), 2, t0);
        assert_eq!(beat.poll(t0 + ms(500)), Beat::Ping);
        assert_eq!(
            beat.poll(t0 + ms(600)),
            Beat::Dead {
                silent_for: ms(600)
            }
        );
    }
}
