//! Failure prediction for one connection: a φ-accrual detector (Hayashibara et al., 2004) over
//! the gaps between arrivals from the server while calls wait for it.
//!
//! While the connection expects something (a call or a withdrawn call awaits its answer), every
//! read that brings bytes ends a gap. The detector keeps the last [`WINDOW`] gaps and, from their
//! mean μ and standard deviation σ (at least the configured minimum), the suspicion level of the
//! current silence t: φ(t) = −log10(1 − F(t)), F the normal distribution's CDF. φ grows smoothly
//! with t, so "suspect" comes long before "dead". Instead of computing φ over and over, the
//! detector turns the threshold into the silence that reaches it, μ + z·σ, once per change.
//!
//! Silence is broken on purpose: once the current silence passes μ + 2σ, the connection sends a
//! PING (if none is outstanding). A live server answers PINGs ahead of its queued responses, even
//! when its handlers are slow, so a slow handler is not a hung server; a stopped server sends
//! nothing and φ climbs past the threshold. A server that becomes slow (more latency on the
//! path) is suspected for a moment, then its longer gaps join the window and the bound grows
//! with them: suspicion moves calls away, it never closes the connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Gaps kept.
const WINDOW: usize = 64;

/// The settings of the detector.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SuspicionConfig {
    /// The silence, in standard deviations above the mean, at which φ reaches the threshold.
    pub(crate) z: f64,
    pub(crate) min_deviation: Duration,
}

impl SuspicionConfig {
    /// A detector suspecting at φ = `phi` with σ at least `min_deviation`.
    pub(crate) fn new(phi: f64, min_deviation: Duration) -> Self {
        Self {
            z: z_for_phi(phi),
            min_deviation,
        }
    }
}

/// The z at which the normal distribution's upper tail is 10^−φ, by bisection over the tail.
fn z_for_phi(phi: f64) -> f64 {
    let target = 10f64.powf(-phi.clamp(0.5, 30.0));
    let (mut low, mut high) = (0.0f64, 40.0f64);
    for _ in 0..100 {
        let mid = f64::midpoint(low, high);
        if upper_tail(mid) > target {
            low = mid;
        } else {
            high = mid;
        }
    }
    high
}

/// 1 − Φ(z) for z ≥ 0: the complementary error function's continued-fraction-free bound
/// (Abramowitz and Stegun 7.1.26 for small z, the asymptotic series for large z).
fn upper_tail(z: f64) -> f64 {
    let x = z / std::f64::consts::SQRT_2;
    if x < 3.0 {
        let t = 1.0 / (1.0 + 0.327_591_1 * x);
        let poly = t
            * (0.254_829_592
                + t * (-0.284_496_736
                    + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
        0.5 * poly * (-x * x).exp()
    } else {
        // erfc(x) ≈ e^(−x²) / (x √π) · (1 − 1/(2x²) + 3/(4x⁴))
        let x2 = x * x;
        0.5 * (-x2).exp() / (x * std::f64::consts::PI.sqrt())
            * (1.0 - 1.0 / (2.0 * x2) + 3.0 / (4.0 * x2 * x2))
    }
}

/// Why an idempotent call was handed back without its answer: its server went silent past the
/// suspicion threshold ([`ChannelBuilder::suspicion_threshold`](crate::ChannelBuilder::suspicion_threshold))
/// while calls waited, so the call is tried on another endpoint. The call may have run there.
#[derive(Clone, Copy, Debug)]
pub struct PeerSuspected {
    pub(crate) silent_for: Duration,
}

impl PeerSuspected {
    /// How long the server had been silent.
    #[must_use]
    pub fn silent_for(&self) -> Duration {
        self.silent_for
    }
}

impl std::fmt::Display for PeerSuspected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "server suspected after {:?} of silence while calls waited: handed back to be tried elsewhere",
            self.silent_for
        )
    }
}

impl std::error::Error for PeerSuspected {}

/// What the balancer reads: whether the connection's server is suspected now.
#[derive(Debug, Default)]
pub(crate) struct Suspected(AtomicBool);

impl Suspected {
    pub(crate) fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn set(&self, suspected: bool) {
        self.0.store(suspected, Ordering::Relaxed);
    }
}

/// The detector, owned by the connection task.
#[derive(Debug)]
pub(crate) struct Detector {
    config: SuspicionConfig,
    gaps: [f64; WINDOW],
    count: usize,
    /// Running sums of the gaps in the window and of their squares.
    sum: f64,
    sum_of_squares: f64,
    /// The instant the connection's timer is set for. It is left alone while arrivals push the
    /// real due time later (a timer that fires early only makes `check` look again), so a busy
    /// connection does not re-arm its timer on every read.
    alarm: Option<Instant>,
    /// When the current silence began: the last arrival, or when the connection began to expect
    /// one.
    since: Instant,
    expecting: bool,
    suspected: Arc<Suspected>,
}

/// What the connection should do now.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Nothing,
    /// The silence passed μ + 2σ: ask with a PING.
    Probe,
    /// φ just crossed the threshold.
    Suspect,
}

impl Detector {
    pub(crate) fn new(config: SuspicionConfig, now: Instant) -> Self {
        Self {
            config,
            gaps: [0.0; WINDOW],
            count: 0,
            sum: 0.0,
            sum_of_squares: 0.0,
            alarm: None,
            since: now,
            expecting: false,
            suspected: Arc::default(),
        }
    }

    /// The flag the balancer reads.
    pub(crate) fn flag(&self) -> Arc<Suspected> {
        Arc::clone(&self.suspected)
    }

    /// Bytes arrived at `now`. Returns true if this ended a suspicion.
    pub(crate) fn arrived(&mut self, now: Instant) -> bool {
        if self.expecting {
            // A gap past the suspicion bound (a hang, a partition) is recorded as the bound:
            // taken whole, one 3 s hang would raise σ so far that the next hang on this
            // connection went unsuspected for seconds. Clipped, a server that really became
            // slower still raises the bound, a window at a time.
            let (mean, deviation) = self.mean_and_deviation();
            let bound = mean + self.config.z * deviation;
            let gap = now
                .saturating_duration_since(self.since)
                .as_secs_f64()
                .min(bound);
            if let Some(slot) = self.gaps.get_mut(self.count % WINDOW) {
                if self.count >= WINDOW {
                    self.sum -= *slot;
                    self.sum_of_squares -= *slot * *slot;
                }
                *slot = gap;
            }
            self.sum += gap;
            self.sum_of_squares += gap * gap;
            self.count += 1;
            if self.count % WINDOW == 0 {
                // Start the sums afresh once per window, so rounding errors cannot pile up.
                self.sum = self.gaps.iter().sum();
                self.sum_of_squares = self.gaps.iter().map(|g| g * g).sum();
            }
        }
        self.since = now;
        let was = self.suspected.get();
        self.suspected.set(false);
        was
    }

    /// Whether the connection expects an arrival (calls or withdrawn calls outstanding).
    pub(crate) fn expect(&mut self, expecting: bool, now: Instant) {
        if expecting && !self.expecting {
            self.since = now;
        }
        if !expecting {
            self.suspected.set(false);
            self.alarm = None;
        }
        self.expecting = expecting;
    }

    fn mean_and_deviation(&self) -> (f64, f64) {
        let known = self.count.min(WINDOW);
        let floor = self.config.min_deviation.as_secs_f64();
        if known == 0 {
            return (0.0, floor);
        }
        #[expect(clippy::cast_precision_loss, reason = "at most WINDOW samples")]
        let n = known as f64;
        let mean = self.sum / n;
        let variance = (self.sum_of_squares / n - mean * mean).max(0.0);
        (mean, variance.sqrt().max(floor))
    }

    /// When to probe and when to suspect, for the current silence; `None` while nothing is
    /// expected.
    pub(crate) fn due(&self) -> Option<(Instant, Instant)> {
        if !self.expecting {
            return None;
        }
        let (mean, deviation) = self.mean_and_deviation();
        let probe = self.since + Duration::from_secs_f64(mean + 2.0 * deviation);
        let suspect = self.since + Duration::from_secs_f64(mean + self.config.z * deviation);
        Some((probe, suspect))
    }

    /// What to do at `now`.
    pub(crate) fn check(&mut self, now: Instant) -> Verdict {
        let Some((probe, suspect)) = self.due() else {
            return Verdict::Nothing;
        };
        if now >= suspect {
            if self.suspected.get() {
                return Verdict::Nothing;
            }
            self.suspected.set(true);
            return Verdict::Suspect;
        }
        if now >= probe {
            return Verdict::Probe;
        }
        Verdict::Nothing
    }

    /// How long the current silence has lasted.
    pub(crate) fn silent_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.since)
    }

    /// The next instant `check` has something new to say: when to set the timer. Possibly
    /// earlier than needed (see [`Detector::alarm`]).
    pub(crate) fn next_due(&mut self, now: Instant) -> Option<Instant> {
        if self.alarm.is_some_and(|at| at > now) {
            return self.alarm;
        }
        let (probe, suspect) = self.due().filter(|_| !self.suspected.get())?;
        self.alarm = Some(if now < probe { probe } else { suspect });
        self.alarm
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SuspicionConfig {
        SuspicionConfig::new(8.0, Duration::from_millis(20))
    }

    #[test]
    fn phi_8_is_about_5_6_standard_deviations() {
        let z = z_for_phi(8.0);
        assert!((z - 5.612).abs() < 0.01, "{z}");
        assert!((z_for_phi(1.0) - 1.2816).abs() < 0.01);
        assert!((z_for_phi(3.0) - 3.0902).abs() < 0.01);
    }

    #[test]
    fn steady_arrivals_then_silence_probe_then_suspect_and_an_arrival_clears_it() {
        let start = Instant::now();
        let mut detector = Detector::new(config(), start);
        let flag = detector.flag();
        detector.expect(true, start);
        let mut now = start;
        for _ in 0..50 {
            now += Duration::from_millis(1);
            detector.arrived(now);
        }
        // μ = 1 ms, σ at its 20 ms floor: probe at 41 ms of silence, suspect at about 113 ms.
        assert_eq!(
            detector.check(now + Duration::from_millis(30)),
            Verdict::Nothing
        );
        assert_eq!(
            detector.check(now + Duration::from_millis(45)),
            Verdict::Probe
        );
        assert_eq!(
            detector
                .next_due(now + Duration::from_millis(45))
                .map(|t| t - now > Duration::from_millis(110)),
            Some(true)
        );
        assert_eq!(
            detector.check(now + Duration::from_millis(110)),
            Verdict::Probe
        );
        assert_eq!(
            detector.check(now + Duration::from_millis(115)),
            Verdict::Suspect
        );
        assert!(flag.get());
        assert_eq!(
            detector.check(now + Duration::from_millis(200)),
            Verdict::Nothing
        );
        assert!(
            detector.arrived(now + Duration::from_millis(300)),
            "ended a suspicion"
        );
        assert!(!flag.get());
    }

    #[test]
    fn a_hang_does_not_blunt_the_detector_for_the_next_one() {
        let start = Instant::now();
        let mut detector = Detector::new(config(), start);
        detector.expect(true, start);
        let mut now = start;
        for _ in 0..63 {
            now += Duration::from_millis(1);
            detector.arrived(now);
        }
        // A 3 s hang, then steady arrivals again.
        now += Duration::from_secs(3);
        detector.arrived(now);
        let (probe, suspect) = detector.due().unwrap();
        assert!(probe - now < Duration::from_millis(60), "{:?}", probe - now);
        assert!(
            suspect - now < Duration::from_millis(200),
            "{:?}",
            suspect - now
        );
    }

    #[test]
    fn longer_gaps_raise_the_bound_and_idle_silence_is_no_suspicion() {
        let start = Instant::now();
        let mut detector = Detector::new(config(), start);
        detector.expect(true, start);
        let mut now = start;
        for _ in 0..128 {
            now += Duration::from_millis(400);
            detector.arrived(now);
        }
        // The first gaps were clipped to the bound as it grew; after a window of 400 ms gaps, σ
        // is at its floor and the suspect bound near 400 + 112 ms.
        assert_eq!(
            detector.check(now + Duration::from_millis(450)),
            Verdict::Probe
        );
        assert_eq!(
            detector.check(now + Duration::from_millis(530)),
            Verdict::Suspect
        );
        detector.expect(false, now);
        assert_eq!(
            detector.check(now + Duration::from_secs(60)),
            Verdict::Nothing
        );
        assert_eq!(detector.next_due(now), None);
        assert!(!detector.flag().get());
        // Expecting again: the silence counts from then, not from the last arrival.
        let later = now + Duration::from_secs(60);
        detector.expect(true, later);
        assert_eq!(
            detector.check(later + Duration::from_millis(100)),
            Verdict::Nothing
        );
    }
}
