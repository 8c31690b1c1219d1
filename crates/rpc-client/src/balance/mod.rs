//! The balancing layer: a channel's endpoints, and for each attempt the choice of one.
//!
//! The stack of a channel is `Retry<Hedge<Balance>>`; each endpoint below holds its own pool of
//! connections. For each attempt the layer picks, by the channel's [`Balancer`], among the
//! endpoints in the first non-empty tier of:
//! 1. ready (a usable connection is there) and not yet tried by this call;
//! 2. not failing (connecting, or never tried to connect) and not yet tried;
//! 3. ready;
//! 4. not failing;
//! 5. any.
//!
//! A call relying on a server's dedupe window that may already have run goes back to the
//! endpoint it may have run on and nowhere else. An endpoint that has no connection to give
//! (connecting fails) costs nothing: nothing was sent, so the layer moves on to the next endpoint
//! at once, and waits for a connection (if the call waits for ready) only when every endpoint has
//! failed it. A channel of one fixed address skips all of this.

mod breaker;
pub(crate) mod load;
mod outlier;
pub(crate) mod pick;
mod policy;
mod ring;
mod rng;
mod target;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::StreamExt;
use futures::stream::{BoxStream, FuturesUnordered};
use rpc_core::{Error, ErrorKind, Outcome, StatusCode};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::Reply;
use crate::config::ClientConfig;
use crate::endpoint::Endpoint;
use crate::events::ClusterEvent;
use crate::latency::LatencyTracker;
use crate::send::NoDedupeWindow;
use crate::stack::{Attempt, CallService};
use pick::{PickState, pick};
use ring::Ring;
use rng::PickRng;

pub(crate) use breaker::BreakerState;
pub use breaker::{BreakerOpen, CircuitBreaker};
pub(crate) use outlier::OutlierState;
pub use outlier::{OutlierDetection, SuccessRate};
pub use policy::{Balancer, ConsistentHash, Failover, PeakEwma};
pub(crate) use ring::stable_hash;
pub use target::{Change, ResolveError, Target};

/// The balancing layer.
#[derive(Debug)]
pub(crate) struct Balance {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// The only endpoint of a channel built with one address and no discovery: calls go
    /// straight to it, with no pick and no load counting.
    fixed: Option<Arc<Endpoint>>,
    set: ArcSwap<EndpointSet>,
    balancer: Balancer,
    /// Whether picks read loads, so calls must count them.
    reads_load: bool,
    rng: PickRng,
    epoch: Instant,
    config: Arc<ClientConfig>,
    latency: Arc<LatencyTracker>,
    next_id: AtomicU64,
    /// Set by the first call: endpoints connect from then on, and discovery runs.
    started: AtomicBool,
    discovery: Discovery,
    /// The priority tier calls go to (primary/backup).
    active_tier: AtomicU8,
    /// When the success-rate rule last compared the endpoints (nanoseconds since `epoch`).
    last_sweep: AtomicU64,
}

/// The discovery source, until the first call starts it.
struct Discovery(Mutex<Option<BoxStream<'static, Change>>>);

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Discovery")
    }
}

/// The endpoints at one moment, with the pick state that goes with them.
#[derive(Debug, Default)]
struct EndpointSet {
    endpoints: Vec<Arc<Endpoint>>,
    state: PickState,
    /// Some endpoint is in a backup tier: picks follow the active tier.
    tiered: bool,
}

impl EndpointSet {
    fn new(endpoints: Vec<Arc<Endpoint>>, balancer: &Balancer) -> Self {
        let ring = match balancer {
            Balancer::ConsistentHash(config) => Some(Ring::new(
                endpoints.iter().map(|e| (e.identity.as_str(), e.weight)),
                config.virtual_nodes,
            )),
            _ => None,
        };
        Self {
            tiered: endpoints.iter().any(|e| e.tier > 0),
            endpoints,
            state: PickState::new(ring),
        }
    }
}

impl Balance {
    /// A layer over `addrs` (address, weight), and over what `discovery` adds later.
    pub(crate) fn new(
        addrs: &[(SocketAddr, u32, u8)],
        balancer: Balancer,
        discovery: Option<BoxStream<'static, Change>>,
        config: Arc<ClientConfig>,
        latency: Arc<LatencyTracker>,
    ) -> Self {
        let epoch = Instant::now();
        let rng = match &balancer {
            Balancer::Random { seed: Some(seed) } => PickRng::seeded(*seed),
            Balancer::PeakEwma(PeakEwma {
                seed: Some(seed), ..
            }) => PickRng::seeded(*seed),
            _ => PickRng::from_entropy(),
        };
        let next_id = AtomicU64::new(1);
        let mut endpoints: Vec<Arc<Endpoint>> = Vec::new();
        for &(addr, weight, tier) in addrs {
            if let Some(existing) = endpoints.iter().position(|e| e.addr() == addr) {
                // The same address twice: one endpoint, with the weights added.
                let old = &endpoints[existing];
                let merged = old.weight.saturating_add(weight);
                let id = old.id;
                endpoints[existing] = Arc::new(Endpoint::new(
                    id,
                    addr,
                    merged,
                    old.tier.min(tier),
                    Arc::clone(&config),
                    Arc::clone(&latency),
                    epoch,
                ));
                continue;
            }
            let id = next_id.fetch_add(1, Ordering::Relaxed);
            endpoints.push(Arc::new(Endpoint::new(
                id,
                addr,
                weight,
                tier,
                Arc::clone(&config),
                Arc::clone(&latency),
                epoch,
            )));
        }
        let fixed =
            (endpoints.len() == 1 && discovery.is_none()).then(|| Arc::clone(&endpoints[0]));
        let set = EndpointSet::new(endpoints, &balancer);
        Self {
            shared: Arc::new(Shared {
                fixed,
                set: ArcSwap::from_pointee(set),
                reads_load: balancer.reads_load(),
                balancer,
                rng,
                epoch,
                config,
                latency,
                next_id,
                started: AtomicBool::new(false),
                discovery: Discovery(Mutex::new(discovery)),
                active_tier: AtomicU8::new(0),
                last_sweep: AtomicU64::new(0),
            }),
        }
    }

    /// The addresses of the endpoints now.
    pub(crate) fn addrs(&self) -> Vec<SocketAddr> {
        self.shared
            .set
            .load()
            .endpoints
            .iter()
            .map(|e| e.addr())
            .collect()
    }

    /// Server slots held by the endpoints' current connections (diagnostics).
    pub(crate) fn in_flight(&self) -> usize {
        self.shared
            .set
            .load()
            .endpoints
            .iter()
            .filter_map(|e| e.dispatch.pool.current())
            .map(|c| c.in_flight.load(Ordering::Acquire))
            .sum()
    }
}

impl Shared {
    /// On the first call: every endpoint connects and keeps connecting, and discovery starts.
    fn start(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        for endpoint in &self.set.load().endpoints {
            endpoint.dispatch.pool.keep_connected();
        }
        let discovery = self
            .discovery
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(stream) = discovery {
            tokio::spawn(run_discovery(Arc::downgrade(self), stream));
        }
    }

    fn apply(&self, change: Change) {
        let current = self.set.load_full();
        let mut endpoints = current.endpoints.clone();
        match change {
            Change::Insert { addr, weight, tier } => {
                let weight = weight.max(1);
                let position = endpoints.iter().position(|e| e.addr() == addr);
                if let Some(i) = position {
                    if endpoints[i].weight == weight && endpoints[i].tier == tier {
                        return;
                    }
                }
                let id = position.map_or_else(
                    || self.next_id.fetch_add(1, Ordering::Relaxed),
                    |i| endpoints[i].id,
                );
                let endpoint = Arc::new(Endpoint::new(
                    id,
                    addr,
                    weight,
                    tier,
                    Arc::clone(&self.config),
                    Arc::clone(&self.latency),
                    self.epoch,
                ));
                // A newcomer competes at once: it starts from the lowest estimate there is.
                if let Some(decay) = self.decay() {
                    let now = Instant::now();
                    let lowest = endpoints
                        .iter()
                        .filter_map(|e| e.load.estimate(now, decay))
                        .min_by(f64::total_cmp);
                    if let Some(lowest) = lowest {
                        endpoint.load.seed_estimate(lowest, now);
                    }
                }
                if self.started.load(Ordering::Acquire) {
                    endpoint.dispatch.pool.keep_connected();
                }
                info!(%addr, weight, "endpoint added");
                if position.is_none() {
                    self.config
                        .observer
                        .emit(ClusterEvent::EndpointAdded { addr });
                }
                match position {
                    Some(i) => endpoints[i] = endpoint,
                    None => endpoints.push(endpoint),
                }
            }
            Change::Remove(addr) => {
                let before = endpoints.len();
                endpoints.retain(|e| e.addr() != addr);
                if endpoints.len() == before {
                    return;
                }
                info!(%addr, "endpoint removed");
                self.config
                    .observer
                    .emit(ClusterEvent::EndpointRemoved { addr });
            }
        }
        self.set
            .store(Arc::new(EndpointSet::new(endpoints, &self.balancer)));
    }

    /// The decay of the latency estimate, when picks read it.
    fn decay(&self) -> Option<Duration> {
        match &self.balancer {
            Balancer::PeakEwma(config) => Some(config.decay),
            _ => None,
        }
    }

    /// The priority tier calls go to now, updating it: away from the active tier at once when
    /// every endpoint of it is down (connecting fails, suspected, ejected, breaker open), back
    /// to a lower tier once one of its endpoints has been up for `failback_after`.
    fn active_tier(
        &self,
        endpoints: &[Arc<Endpoint>],
        at: u64,
        out: &dyn Fn(&Endpoint) -> bool,
    ) -> u8 {
        let up = |e: &Endpoint| e.is_available() && !out(e);
        let down = |e: &Endpoint| e.is_failing() || (e.is_ready() && !e.is_available()) || out(e);
        for e in endpoints {
            let since = e.up_since.load(Ordering::Relaxed);
            match (up(e), since) {
                (true, 0) => e.up_since.store(at.saturating_add(1), Ordering::Relaxed),
                (false, s) if s != 0 => e.up_since.store(0, Ordering::Relaxed),
                _ => {}
            }
        }
        let failback = u64::try_from(self.config.failback_after.as_nanos()).unwrap_or(u64::MAX);
        let stable = |tier: u8| {
            endpoints.iter().any(|e| {
                let since = e.up_since.load(Ordering::Relaxed);
                e.tier == tier && since != 0 && at.saturating_add(1) - since >= failback
            })
        };
        let lowest = |pred: &dyn Fn(&Endpoint) -> bool| {
            endpoints.iter().filter(|e| pred(e)).map(|e| e.tier).min()
        };
        let current = self.active_tier.load(Ordering::Relaxed);
        let next = if let Some(tier) = (0..current).find(|&t| stable(t)) {
            tier
        } else if endpoints
            .iter()
            .filter(|e| e.tier == current)
            .all(|e| down(e))
        {
            lowest(&|e| up(e))
                .or_else(|| lowest(&|e| !down(e)))
                .unwrap_or(current)
        } else {
            current
        };
        if next != current
            && self
                .active_tier
                .compare_exchange(current, next, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            if next > current {
                warn!(from = current, to = next, "failing over to a backup tier");
            } else {
                info!(
                    from = current,
                    to = next,
                    "back to a lower tier: it has been up long enough"
                );
            }
            self.config.observer.emit(ClusterEvent::TierSwitched {
                from: current,
                to: next,
            });
        }
        next
    }

    /// The endpoint for `attempt`, by the tiers in the module's doc; `skip` holds endpoints that
    /// already had no connection to give this attempt.
    fn choose(
        &self,
        set: &EndpointSet,
        attempt: &Attempt,
        skip: u64,
        now: Instant,
    ) -> Option<Arc<Endpoint>> {
        let endpoints = &set.endpoints;
        if let Some(pinned) = attempt.call.pinned_endpoint() {
            return endpoints.iter().find(|e| e.id == pinned).cloned();
        }
        let at = outlier::since(self.epoch, now);
        if self.config.outlier.is_some() {
            for endpoint in endpoints {
                if endpoint.outlier.claim_probe(at) {
                    self.start_probe(endpoint);
                }
            }
        }
        let ejected = |e: &Endpoint| e.outlier.is_ejected(at);
        let out = match &self.config.outlier {
            Some(config) => {
                let count = endpoints.iter().filter(|e| ejected(e)).count();
                // Panic mode: too few healthy, so ejection is ignored.
                !outlier::in_panic(config, count, endpoints.len()) && count > 0
            }
            None => false,
        };
        let ejected = |e: &Endpoint| out && ejected(e);
        let blocked = |e: &Endpoint| self.config.breaker.is_some() && e.breaker.blocks(at);
        let skipped = |e: &Endpoint| skip & bit(e.id) != 0;
        let fresh = |e: &Endpoint| !attempt.call.has_tried(e.id) && !skipped(e);
        let out = |e: &Endpoint| ejected(e) || blocked(e);
        let active = set.tiered.then(|| self.active_tier(endpoints, at, &out));
        let out = |e: &Endpoint| out(e) || active.is_some_and(|tier| e.tier != tier);
        let tiers: [&dyn Fn(&Endpoint) -> bool; 5] = [
            &|e| e.is_available() && fresh(e) && !out(e),
            &|e| !e.is_failing() && !e.is_ready() && fresh(e) && !out(e),
            &|e| e.is_available() && !skipped(e) && !out(e),
            &|e| !e.is_failing() && !e.is_ready() && !skipped(e) && !out(e),
            // An open breaker refuses even here: that is what it is for.
            &|e| !skipped(e) && !blocked(e),
        ];
        for tier in tiers {
            // An empty tier is passed over before the rule sees it, so that round robin's
            // position moves only with real picks.
            if !endpoints.iter().any(|e| tier(e)) {
                continue;
            }
            let eligible = |i: usize| endpoints.get(i).is_some_and(|e| tier(e));
            let chosen = pick(
                &self.balancer,
                endpoints,
                &set.state,
                &self.rng,
                attempt.hash_key,
                now,
                eligible,
            );
            if let Some(i) = chosen {
                return endpoints.get(i).cloned();
            }
        }
        None
    }
}

impl Shared {
    /// An ejected endpoint's time is up: before it is picked again, a probe (a new connection,
    /// its handshake, a PING answered) must pass. Failed, the endpoint is ejected again.
    fn start_probe(&self, endpoint: &Arc<Endpoint>) {
        let endpoint = Arc::clone(endpoint);
        let (config, epoch) = (Arc::clone(&self.config), self.epoch);
        tokio::spawn(async move {
            let passed = endpoint.dispatch.pool.probe(config.connect_timeout).await;
            let Some(outliers) = &config.outlier else {
                return;
            };
            let at = outlier::since(epoch, Instant::now());
            let addr = endpoint.addr();
            match endpoint.outlier.probed(passed, outliers, at) {
                outlier::Transition::Ejected {
                    times,
                    for_how_long,
                } => {
                    warn!(%addr, times, ?for_how_long, "readmission probe failed: ejected again");
                    config.observer.emit(ClusterEvent::Ejected {
                        addr,
                        times,
                        for_how_long,
                    });
                }
                _ => {
                    info!(%addr, "readmission probe answered: on probation");
                    config.observer.emit(ClusterEvent::Probed { addr });
                }
            }
        });
    }

    /// Once per success-rate interval (whoever sees it due first): compares the endpoints'
    /// success rates over the interval and ejects the outliers.
    fn sweep_success_rates(&self, config: &OutlierDetection, rule: &SuccessRate, at: u64) {
        let last = self.last_sweep.load(Ordering::Relaxed);
        let interval = u64::try_from(rule.interval.as_nanos()).unwrap_or(u64::MAX);
        if at.saturating_sub(last) < interval
            || self
                .last_sweep
                .compare_exchange(last, at, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let set = self.set.load();
        let counts: Vec<(u32, u32)> = set
            .endpoints
            .iter()
            .map(|e| e.outlier.take_interval())
            .collect();
        for i in outlier::success_rate_outliers(rule, &counts) {
            let Some(endpoint) = set.endpoints.get(i) else {
                continue;
            };
            let ejected = set
                .endpoints
                .iter()
                .filter(|e| e.outlier.is_ejected(at))
                .count();
            if !outlier::may_eject_another(config, ejected, set.endpoints.len()) {
                break;
            }
            if let outlier::Transition::Ejected {
                times,
                for_how_long,
            } = endpoint.outlier.eject(config, at)
            {
                let (attempts, failures) = counts.get(i).copied().unwrap_or_default();
                warn!(
                    addr = %endpoint.addr(),
                    attempts,
                    failures,
                    times,
                    ?for_how_long,
                    "endpoint ejected: its success rate is an outlier"
                );
                self.config.observer.emit(ClusterEvent::Ejected {
                    addr: endpoint.addr(),
                    times,
                    for_how_long,
                });
            }
        }
    }

    /// Outlier ejection's bookkeeping for one attempt's result.
    fn judge(&self, endpoint: &Endpoint, result: &Result<Reply, Error>, ended: Instant) {
        let at = outlier::since(self.epoch, ended);
        if let Some(config) = &self.config.breaker {
            let failed = match result {
                Ok(_) => Some(false),
                Err(err) if err.outcome() == Outcome::NotSent => None,
                Err(err) => Some(breaker::counts_against(err)),
            };
            if let Some(failed) = failed {
                let addr = endpoint.addr();
                match endpoint.breaker.record(config, at, failed) {
                    breaker::Transition::Opened => {
                        warn!(%addr, open_for = ?config.open_for, "circuit breaker opened");
                        self.config
                            .observer
                            .emit(ClusterEvent::BreakerOpened { addr });
                    }
                    breaker::Transition::Closed => {
                        info!(%addr, "circuit breaker closed: the trial succeeded");
                        self.config
                            .observer
                            .emit(ClusterEvent::BreakerClosed { addr });
                    }
                    breaker::Transition::None => {}
                }
            }
        }
        let Some(config) = &self.config.outlier else {
            return;
        };
        if let Some(rule) = &config.success_rate {
            if let Err(err) = result {
                if err.outcome() != Outcome::NotSent {
                    endpoint.outlier.count(outlier::counts_against(err));
                }
            } else {
                endpoint.outlier.count(false);
            }
            self.sweep_success_rates(config, rule, at);
        }
        let transition = match result {
            Ok(_) => endpoint.outlier.succeeded(),
            Err(err) if outlier::counts_against(err) => endpoint.outlier.failed(config, at, || {
                let set = self.set.load();
                let ejected = set
                    .endpoints
                    .iter()
                    .filter(|e| e.outlier.is_ejected(at))
                    .count();
                outlier::may_eject_another(config, ejected, set.endpoints.len())
            }),
            // Not sent, or answered by the application: says nothing against the endpoint.
            Err(err) if err.outcome() == Outcome::NotSent => outlier::Transition::None,
            Err(_) => endpoint.outlier.succeeded(),
        };
        match transition {
            outlier::Transition::Ejected {
                times,
                for_how_long,
            } => {
                warn!(
                    addr = %endpoint.addr(),
                    times,
                    ?for_how_long,
                    "endpoint ejected: {} failures in a row",
                    config.consecutive_failures
                );
                self.config.observer.emit(ClusterEvent::Ejected {
                    addr: endpoint.addr(),
                    times,
                    for_how_long,
                });
            }
            outlier::Transition::Readmitted => {
                info!(addr = %endpoint.addr(), "endpoint readmitted: an attempt succeeded");
                self.config.observer.emit(ClusterEvent::Readmitted {
                    addr: endpoint.addr(),
                });
            }
            outlier::Transition::None => {}
        }
    }
}

impl CallService for Balance {
    async fn call(&self, attempt: Attempt) -> Result<Reply, Error> {
        if let Some(endpoint) = &self.shared.fixed {
            return endpoint.dispatch.call(attempt).await;
        }
        let shared = &self.shared;
        if !shared.started.load(Ordering::Relaxed) {
            shared.start();
        }
        if attempt.fork > 1 && attempt.idempotent {
            return self.fork(attempt).await;
        }
        // Endpoints that had no connection to give this attempt.
        let mut skip: u64 = 0;
        let mut attempt = attempt;
        loop {
            let Some((endpoint, others, picked_at)) = shared.pick_admitted(&attempt, &mut skip)
            else {
                return Err(shared.none_to_pick(&attempt));
            };
            // Wait for a connection only where no other endpoint is left to try.
            let wait = attempt.wait_for_ready && !others;
            match shared.place(&endpoint, attempt, wait, picked_at).await {
                Placed::Done(result) => return result,
                Placed::NoConnection(err, back) if others => {
                    debug!(addr = %endpoint.addr(), error = %err, "no connection: trying another endpoint");
                    endpoint.dispatch.pool.kick();
                    skip |= bit(endpoint.id);
                    attempt = back;
                }
                Placed::NoConnection(err, _) => return Err(err),
            }
        }
    }
}

/// How an attempt placed on one endpoint ended.
enum Placed {
    /// Sent, and this is its result (or it failed before sending for a reason of its own).
    Done(Result<Reply, Error>),
    /// The endpoint had no connection to give: nothing was sent, and here is the attempt back.
    NoConnection(Error, Attempt),
}

impl Balance {
    /// [`Failover::Forking`]: the attempt on up to `fork` endpoints at once; the first success
    /// wins, and dropping the others withdraws them (CANCEL on the wire).
    async fn fork(&self, attempt: Attempt) -> Result<Reply, Error> {
        let shared = &self.shared;
        let mut skip: u64 = 0;
        let mut chosen = Vec::new();
        while chosen.len() < attempt.fork {
            match shared.pick_admitted(&attempt, &mut skip) {
                Some((endpoint, _, picked_at)) if skip & bit(endpoint.id) == 0 => {
                    skip |= bit(endpoint.id);
                    chosen.push((endpoint, picked_at));
                }
                _ => break,
            }
        }
        if chosen.is_empty() {
            return Err(shared.none_to_pick(&attempt));
        }
        let mut branches: FuturesUnordered<_> = chosen
            .into_iter()
            .map(|(endpoint, picked_at)| {
                let attempt = attempt.clone();
                async move {
                    match shared.place(&endpoint, attempt, false, picked_at).await {
                        Placed::Done(result) => result,
                        Placed::NoConnection(err, _) => Err(err),
                    }
                }
            })
            .collect();
        let mut outcome = Outcome::NotSent;
        let mut last = None;
        while let Some(result) = branches.next().await {
            match result {
                Ok(reply) => return Ok(reply),
                Err(err) => {
                    outcome = outcome.combine(err.outcome());
                    last = Some(err);
                }
            }
        }
        Err(last.map_or_else(
            || shared.none_to_pick(&attempt),
            |err| err.after_attempts(outcome),
        ))
    }
}

impl Shared {
    /// An endpoint for `attempt` outside `skip`, its breaker admitting it: with whether another
    /// endpoint outside `skip` is left, and the pick's clock read.
    fn pick_admitted(
        &self,
        attempt: &Attempt,
        skip: &mut u64,
    ) -> Option<(Arc<Endpoint>, bool, Instant)> {
        let set = self.set.load();
        let now = Instant::now();
        loop {
            let endpoint = self.choose(&set, attempt, *skip, now)?;
            if self.config.breaker.is_some() {
                if !endpoint.breaker.admit(outlier::since(self.epoch, now)) {
                    // Its half-open trial went to another attempt a moment ago.
                    *skip |= bit(endpoint.id);
                    continue;
                }
                if endpoint.breaker.is_half_open() {
                    info!(addr = %endpoint.addr(), "circuit breaker half-open: one trial attempt");
                    self.config.observer.emit(ClusterEvent::BreakerHalfOpen {
                        addr: endpoint.addr(),
                    });
                }
            }
            let others = attempt.call.pinned_endpoint().is_none()
                && set
                    .endpoints
                    .iter()
                    .any(|e| e.id != endpoint.id && *skip & bit(e.id) == 0);
            return Some((endpoint, others, now));
        }
    }

    /// The error when no endpoint can be picked.
    fn none_to_pick(&self, attempt: &Attempt) -> Error {
        let any = !self.set.load().endpoints.is_empty();
        no_endpoint(attempt, self.config.breaker.is_some() && any)
    }

    /// Places `attempt` on `endpoint`: waits for its connection if `wait`, sends, and records
    /// the result for the endpoint's load, ejection and breaker.
    async fn place(
        &self,
        endpoint: &Endpoint,
        attempt: Attempt,
        wait: bool,
        picked_at: Instant,
    ) -> Placed {
        let outstanding = self.reads_load.then(|| endpoint.load.start());
        let conn = match endpoint.dispatch.connection(&attempt, wait).await {
            Ok(conn) => conn,
            Err(err) if err.kind() == ErrorKind::Connect => {
                return Placed::NoConnection(err, attempt);
            }
            Err(err) => return Placed::Done(Err(err)),
        };
        attempt.call.tried(endpoint.id);
        let (result, sample) = endpoint.dispatch.send_sampled(&conn, attempt).await;
        // When the attempt ended: the pick's clock read plus the answer's wait, or (a failure,
        // off the hot path) the clock.
        let ended = match sample {
            Some(latency) => picked_at + latency,
            None => Instant::now(),
        };
        self.judge(endpoint, &result, ended);
        // Answered attempts are the samples, as for the method latencies. An attempt that ended
        // unanswered (deadline, connection lost, handed back) says how long the caller waited,
        // not how fast the server is: a hung server is the suspicion detector's business, and a
        // 1 s deadline as a "sample" would keep a recovered server out of rotation for a minute.
        if let (Some(decay), Some(latency)) = (self.decay(), sample) {
            endpoint.load.observe(latency, ended, decay);
        }
        drop(outstanding);
        Placed::Done(result)
    }
}

fn bit(id: u64) -> u64 {
    1 << (id % 64)
}

fn no_endpoint(attempt: &Attempt, breakers: bool) -> Error {
    if attempt.call.pinned_endpoint().is_some() {
        // The endpoint the call may have run on was removed: no other can deduplicate it.
        return Error::from_code(
            StatusCode::UNAVAILABLE,
            NoDedupeWindow.to_string(),
            Outcome::MaybeExecuted,
        )
        .with_kind(ErrorKind::NoDedupeWindow)
        .with_source(NoDedupeWindow);
    }
    if breakers {
        // Endpoints there, none pickable: the breakers hold them all.
        return Error::from_code(
            StatusCode::UNAVAILABLE,
            BreakerOpen.to_string(),
            Outcome::NotSent,
        )
        .with_kind(ErrorKind::BreakerOpen)
        .with_source(BreakerOpen);
    }
    Error::from_code(
        StatusCode::UNAVAILABLE,
        "no endpoint to send to: the channel's endpoint set is empty",
        Outcome::NotSent,
    )
    .with_kind(ErrorKind::NoEndpoint)
}

/// Applies a discovery source's changes until it ends or the channel is gone.
async fn run_discovery(shared: Weak<Shared>, mut stream: BoxStream<'static, Change>) {
    while let Some(change) = stream.next().await {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        shared.apply(change);
    }
    debug!("discovery stream ended: the endpoint set stays as it is");
}
