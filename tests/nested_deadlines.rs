//! Deadlines through nested calls, over real TCP on 127.0.0.1: a call made inside a handler
//! finishes by the handler's deadline, its failure says so, retries and hedges keep to it,
//! cancelling the top call cancels every hop, and the opt-outs let background work run on.
//!
//! Each hop is a server of its own; [`FrameTap`]s between them log the REQUESTs (with their
//! budgets) and CANCELs each hop sent.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use keel::client::{Backoff, Jitter};
use keel::core::{CallContext, current};
use keel::server::ServerBuilder;
use keel::{
    CallOptions, Channel, Error, HedgePolicy, Outcome, Reply, RetryPolicy, Server, ServerHandle,
    Status, StatusCode,
};
use support::{Counter, FrameTap, eventually, start};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The budget at the top of every chain.
const BUDGET: Duration = Duration::from_millis(300);
/// How far from the budget a hop may be cut: the bound.
const SLACK: Duration = Duration::from_millis(50);

/// What one hop's handlers did, as its server saw them.
#[derive(Debug, Default)]
struct Hop {
    started: Counter,
    /// When each handler started, and the time its call context had left then.
    starts: Mutex<Vec<(Instant, Option<Duration>)>>,
    /// When each handler's future was dropped before it finished.
    cut: Mutex<Vec<Instant>>,
    /// When each handler finished.
    finished: Mutex<Vec<Instant>>,
}

impl Hop {
    fn enter(self: &Arc<Self>, ctx: &CallContext) -> Running {
        let now = Instant::now();
        self.started.bump();
        let left = ctx.deadline().map(|deadline| deadline.remaining(now));
        self.starts.lock().unwrap().push((now, left));
        Running {
            hop: Arc::clone(self),
            finished: false,
        }
    }

    fn cut(&self) -> Vec<Instant> {
        self.cut.lock().unwrap().clone()
    }

    fn finished(&self) -> usize {
        self.finished.lock().unwrap().len()
    }

    fn starts(&self) -> Vec<(Instant, Option<Duration>)> {
        self.starts.lock().unwrap().clone()
    }
}

/// Held by a running handler: records its end, cut or finished.
struct Running {
    hop: Arc<Hop>,
    finished: bool,
}

impl Running {
    fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let ends = if self.finished {
            &self.hop.finished
        } else {
            &self.hop.cut
        };
        ends.lock().unwrap().push(Instant::now());
    }
}

/// The last hop: `C.slow` sleeps the milliseconds its payload names, then echoes it;
/// `C.flaky` fails after 50 ms with a retryable UNAVAILABLE (so that 5 attempts, with 20 ms
/// between them, take longer than the top budget).
fn last_hop(hop: &Arc<Hop>) -> ServerBuilder {
    let slow = Arc::clone(hop);
    let flaky = Arc::clone(hop);
    Server::builder()
        .register("C.slow", move |ctx: CallContext, payload: Bytes| {
            let running = slow.enter(&ctx);
            async move {
                let ms: u64 = std::str::from_utf8(&payload).unwrap().parse().unwrap();
                tokio::time::sleep(Duration::from_millis(ms)).await;
                running.finish();
                Ok(payload)
            }
        })
        .register("C.flaky", move |ctx: CallContext, _payload: Bytes| {
            let running = flaky.enter(&ctx);
            async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                running.finish();
                Err(Status::new(StatusCode::UNAVAILABLE, "busy, try again").not_executed())
            }
        })
}

/// A middle hop: `method` calls `next_method` on `next` with the same payload and default
/// options, and answers with its result.
fn relay(method: &str, hop: &Arc<Hop>, next: Channel, next_method: &'static str) -> ServerBuilder {
    let hop = Arc::clone(hop);
    Server::builder().register(method, move |ctx: CallContext, payload: Bytes| {
        let running = hop.enter(&ctx);
        let next = next.clone();
        async move {
            let reply = next.call(next_method, payload, CallOptions::new()).await?;
            running.finish();
            Ok(reply.payload)
        }
    })
}

/// A → B → C, each hop behind a tap, and a client to A's tap.
struct Chain {
    hops: [Arc<Hop>; 3],
    /// Client → A, A → B, B → C.
    taps: [FrameTap; 3],
    client: Channel,
    _servers: [ServerHandle; 3],
}

impl Chain {
    async fn start() -> Self {
        let hops: [Arc<Hop>; 3] = Default::default();
        let c = start(last_hop(&hops[2])).await;
        let to_c = FrameTap::start(c.local_addr()).await;
        let b = start(relay(
            "B.relay",
            &hops[1],
            Channel::builder(to_c.addr).build(),
            "C.slow",
        ))
        .await;
        let to_b = FrameTap::start(b.local_addr()).await;
        let a = start(relay(
            "A.relay",
            &hops[0],
            Channel::builder(to_b.addr).build(),
            "B.relay",
        ))
        .await;
        let to_a = FrameTap::start(a.local_addr()).await;
        Self {
            hops,
            client: Channel::builder(to_a.addr).build(),
            taps: [to_a, to_b, to_c],
            _servers: [a, b, c],
        }
    }

    async fn wait_until_every_hop_is_cut(&self) {
        let cut = eventually(Duration::from_secs(2), || {
            self.hops.iter().all(|hop| !hop.cut().is_empty())
        })
        .await;
        assert!(cut, "every hop's handler is dropped: {:?}", self.hops);
    }
}

fn within(what: &str, at: Duration, expected: Duration) {
    assert!(
        at.abs_diff(expected) <= SLACK,
        "{what} at {at:?}, expected {expected:?} ± {SLACK:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_of_three_hops_is_cut_at_the_top_budget_not_at_its_own_default() {
    let chain = Chain::start().await;
    let top = Instant::now();
    let err = chain
        .client
        .call(
            "A.relay",
            Bytes::from_static(b"5000"),
            CallOptions::new().timeout(BUDGET),
        )
        .await
        .unwrap_err();
    let failed_at = top.elapsed();
    assert_eq!(
        (err.code(), err.outcome()),
        (StatusCode::DEADLINE_EXCEEDED, Outcome::MaybeExecuted),
        "{err}"
    );
    within("the top call failed", failed_at, BUDGET);
    chain.wait_until_every_hop_is_cut().await;

    let c = &chain.hops[2];
    within("C's handler was dropped", c.cut()[0] - top, BUDGET);
    for (name, hop) in ["A", "B", "C"].into_iter().zip(&chain.hops) {
        assert_eq!(
            (hop.started.get(), hop.finished()),
            (1, 0),
            "{name} ran once, cut"
        );
        // Each hop's context carries the top budget, not a default of 10 s: a chain that only
        // relied on cancellation would show 10 s here for B and C.
        let (_, left) = hop.starts()[0];
        assert!(
            left.is_some_and(|left| left <= BUDGET),
            "{name} started with {left:?} left"
        );
    }
    for (name, tap) in ["client → A", "A → B", "B → C"]
        .into_iter()
        .zip(&chain.taps)
    {
        let budgets = tap.request_budgets();
        assert_eq!(budgets.len(), 1, "{name}: one REQUEST");
        assert!(
            budgets[0].is_some_and(|budget| budget <= BUDGET),
            "{name}: the REQUEST's budget {budgets:?} is at most the top budget"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_top_call_cancels_every_hop() {
    let chain = Chain::start().await;
    let call = chain.client.call(
        "A.relay",
        Bytes::from_static(b"5000"),
        CallOptions::new().timeout(Duration::from_secs(5)),
    );
    let c = Arc::clone(&chain.hops[2]);
    tokio::select! {
        result = call => panic!("the call ended before it was dropped: {result:?}"),
        reached = eventually(Duration::from_secs(2), || c.started.get() == 1) => {
            assert!(reached, "the call reached C");
        }
    }
    // The top call's future is dropped here.
    let dropped = Instant::now();
    chain.wait_until_every_hop_is_cut().await;
    assert!(
        c.cut()[0] - dropped < Duration::from_millis(250),
        "C's handler dropped {:?} after the top call",
        c.cut()[0] - dropped
    );
    for (name, hop) in ["A", "B", "C"].into_iter().zip(&chain.hops) {
        assert_eq!(
            (hop.started.get(), hop.finished()),
            (1, 0),
            "{name} ran once, cut"
        );
    }
    let cancelled = eventually(Duration::from_secs(1), || {
        chain.taps.iter().all(|tap| tap.cancels() == 1)
    })
    .await;
    let cancels: Vec<_> = chain.taps.iter().map(FrameTap::cancels).collect();
    assert!(cancelled, "one CANCEL on each hop, got {cancels:?}");
}

/// What a call made by `B.spawn`'s handler in a task of its own ended with, and when.
type Observed = (Result<Reply, Error>, Instant);

/// B's `B.spawn`: starts the call its payload names towards C in a task of its own, reports
/// how it ended on `observed`, and sleeps until its own call is cut. The task is carried into
/// the call ([`current::in_current_call`]) unless the payload is `plain`.
fn spawner(
    hop: &Arc<Hop>,
    to_c: Channel,
    observed: mpsc::UnboundedSender<Observed>,
) -> ServerBuilder {
    let hop = Arc::clone(hop);
    Server::builder().register("B.spawn", move |ctx: CallContext, payload: Bytes| {
        let running = hop.enter(&ctx);
        let (to_c, observed) = (to_c.clone(), observed.clone());
        let idempotent = CallOptions::new().idempotent(true);
        let (method, body, options) = match &payload[..] {
            b"inherit" => ("C.slow", "2000", CallOptions::new()),
            b"plain" => ("C.slow", "600", CallOptions::new()),
            b"own shorter" => ("C.slow", "2000", CallOptions::new().timeout(SLACK)),
            b"detached" => ("C.slow", "600", CallOptions::new().detached(true)),
            b"retry" => (
                "C.flaky",
                "",
                idempotent.retry_policy(RetryPolicy::new().max_attempts(5).backoff(Backoff::new(
                    Duration::from_millis(20),
                    1.0,
                    Duration::from_millis(20),
                    Jitter::None,
                ))),
            ),
            b"hedge" => (
                "C.slow",
                "2000",
                idempotent.hedge(HedgePolicy::after(Duration::from_millis(50))),
            ),
            other => panic!("unknown kind {other:?}"),
        };
        let work = async move {
            let result = to_c.call(method, Bytes::from(body), options).await;
            let _ = observed.send((result, Instant::now()));
        };
        if &payload[..] == b"plain" {
            tokio::spawn(work);
        } else {
            tokio::spawn(current::in_current_call(work));
        }
        async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            running.finish();
            Ok(Bytes::new())
        }
    })
}

/// Test → B → C: the test's call to `B.spawn` (with the top budget) makes B start `kind`.
struct Spawned {
    top: Instant,
    observed: Observed,
    b: Arc<Hop>,
    c: Arc<Hop>,
    _servers: [ServerHandle; 2],
}

impl Spawned {
    async fn run(kind: &'static str) -> Self {
        let (b, c) = (Arc::new(Hop::default()), Arc::new(Hop::default()));
        let c_server = start(last_hop(&c)).await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let b_server = start(spawner(
            &b,
            Channel::builder(c_server.local_addr()).build(),
            tx,
        ))
        .await;
        let client = Channel::builder(b_server.local_addr()).build();
        let top = Instant::now();
        let err = client
            .call(
                "B.spawn",
                Bytes::from(kind),
                CallOptions::new().timeout(BUDGET),
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), StatusCode::DEADLINE_EXCEEDED, "{err}");
        within("the top call failed", top.elapsed(), BUDGET);
        let observed = tokio::time::timeout(Duration::from_secs(3), rx.recv())
            .await
            .expect("the spawned call ends within 3 s")
            .unwrap();
        Self {
            top,
            observed,
            b,
            c,
            _servers: [b_server, c_server],
        }
    }

    fn ended_at(&self) -> Duration {
        self.observed.1 - self.top
    }

    fn error(&self) -> &Error {
        self.observed
            .0
            .as_ref()
            .expect_err("the spawned call failed")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_failing_by_the_inherited_deadline_says_it_was_inherited() {
    let run = Spawned::run("inherit").await;
    let err = run.error();
    assert_eq!(
        (err.code(), err.outcome()),
        (StatusCode::DEADLINE_EXCEEDED, Outcome::MaybeExecuted),
        "{err}"
    );
    within("the spawned call failed", run.ended_at(), BUDGET);
    let inherited = err
        .deadline_inherited()
        .expect("an InheritedDeadline cause");
    assert_eq!(inherited.method(), "B.spawn");
    assert!(
        inherited.left_at_start() <= BUDGET && inherited.left_at_start() > BUDGET - SLACK,
        "{inherited}"
    );
    assert_eq!(
        err.to_string(),
        format!("DEADLINE_EXCEEDED (MAYBE_EXECUTED): deadline exceeded ({inherited})"),
    );
    assert!(
        err.to_string().contains(&format!(
            "(the deadline was inherited from the call being served (B.spawn, call {}), which \
             had ",
            inherited.call_id()
        )),
        "{err}"
    );
    // C was cut by the deadline alone: nothing cancelled the spawned task.
    assert!(eventually(Duration::from_secs(1), || run.c.cut().len() == 1).await);
    assert_eq!((run.c.started.get(), run.c.finished()), (1, 0));
    within("C's handler was dropped", run.c.cut()[0] - run.top, BUDGET);
    let (_, left) = run.c.starts()[0];
    assert!(
        left.is_some_and(|left| left <= BUDGET),
        "C started with {left:?} left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_own_deadline_is_shorter_fails_by_it_without_the_cause() {
    let run = Spawned::run("own shorter").await;
    let err = run.error();
    assert_eq!(err.code(), StatusCode::DEADLINE_EXCEEDED, "{err}");
    assert!(err.deadline_inherited().is_none(), "{err:#}");
    assert_eq!(
        err.to_string(),
        "DEADLINE_EXCEEDED (MAYBE_EXECUTED): deadline exceeded"
    );
    within("the spawned call failed", run.ended_at(), SLACK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_calls_that_opt_out_keep_running_after_the_caller_gave_up() {
    for kind in ["detached", "plain"] {
        let run = Spawned::run(kind).await;
        let reply = run
            .observed
            .0
            .as_ref()
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(reply.payload, "600", "{kind}");
        assert!(
            run.ended_at() >= Duration::from_millis(600),
            "{kind}: {:?}",
            run.ended_at()
        );
        assert_eq!((run.c.started.get(), run.c.finished()), (1, 1), "{kind}");
        assert!(run.c.cut().is_empty(), "{kind}: C was not cut");
        // B's own handler was cut at the top budget, long before C finished.
        assert_eq!(run.b.cut().len(), 1, "{kind}");
        let (_, left) = run.c.starts()[0];
        assert!(
            left.is_some_and(|left| left > Duration::from_secs(5)),
            "{kind}: C's call had the channel's default deadline, not the caller's: {left:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_of_a_nested_call_stop_by_the_inherited_deadline() {
    let run = Spawned::run("retry").await;
    let err = run.error();
    assert!(err.deadline_inherited().is_some(), "{err:#}");
    let starts = run.c.starts();
    assert!(starts.len() >= 3, "retried: {} attempts", starts.len());
    for (at, left) in &starts {
        assert!(
            *at - run.top < BUDGET,
            "an attempt started after the deadline"
        );
        assert!(left.is_some_and(|left| left <= BUDGET), "{left:?}");
    }
    assert!(
        run.ended_at() <= BUDGET + SLACK,
        "ended at {:?}",
        run.ended_at()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedges_of_a_nested_call_end_at_the_inherited_deadline() {
    let run = Spawned::run("hedge").await;
    let err = run.error();
    assert_eq!(err.code(), StatusCode::DEADLINE_EXCEEDED, "{err}");
    assert!(err.deadline_inherited().is_some(), "{err:#}");
    within("the hedged call failed", run.ended_at(), BUDGET);
    assert!(
        eventually(Duration::from_secs(1), || run.c.cut().len() == 2).await,
        "both attempts cut: {:?}",
        run.c
    );
    assert_eq!((run.c.started.get(), run.c.finished()), (2, 0));
    for cut in run.c.cut() {
        within("an attempt was cut", cut - run.top, BUDGET);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_made_after_the_inherited_deadline_passed_is_not_sent() {
    // A handler that calls out once its caller's time is gone: refused locally, never sent.
    let ran = Counter::default();
    let counted = ran.clone();
    let server = start(Server::builder().register(
        "C.count",
        move |_ctx: CallContext, payload: Bytes| {
            counted.bump();
            async move { Ok(payload) }
        },
    ))
    .await;
    let channel = Channel::builder(server.local_addr()).build();
    let served = CallContext::new("B.late")
        .with_deadline(Some(keel::Deadline::from_now(Duration::from_millis(20))));
    let err = current::scope(served, async {
        tokio::time::sleep(Duration::from_millis(40)).await;
        channel
            .call("C.count", Bytes::new(), CallOptions::new())
            .await
    })
    .await
    .unwrap_err();
    assert_eq!(
        (err.code(), err.outcome()),
        (StatusCode::DEADLINE_EXCEEDED, Outcome::NotSent),
        "{err}"
    );
    let inherited = err
        .deadline_inherited()
        .expect("an InheritedDeadline cause");
    assert_eq!(
        (inherited.method(), inherited.left_at_start()),
        ("B.late", Duration::ZERO)
    );
    assert_eq!(ran.get(), 0);
    // The same call detached has its own deadline and runs.
    let served =
        CallContext::new("B.late").with_deadline(Some(keel::Deadline::from_now(Duration::ZERO)));
    let options = CallOptions::new().detached(true);
    current::scope(served, channel.call("C.count", Bytes::new(), options))
        .await
        .unwrap();
    assert_eq!(ran.get(), 1);
}
