//! A default channel under a steady stream of calls recovers from a fault on its server's path:
//! a partition or a blackhole (both directions, or one), a stopped server process, a latency
//! spike. Calls succeed again within 1 s of the fault's end and the channel's in-flight count
//! returns to 0: no slot of the server's concurrency limit stays held by a call that nobody
//! will answer. Handler runs are counted: no call runs twice.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel::{Bytes, CallContext, CallOptions, Channel, Error, PayloadCodec, Reply, Server};
use rpc_chaos::{Direction, Faults, Proxy, ServerProcess};
use tokio::time::Instant;

/// How often the load sends a call, and each call's deadline.
const EVERY: Duration = Duration::from_millis(4);
const DEADLINE: Duration = Duration::from_secs(1);

/// One call of the load: when it started, when it ended, and how.
struct Sent {
    started: Instant,
    ended: Instant,
    result: Result<Reply, Error>,
}

/// Calls `method` every [`EVERY`] on `channel` from now until `until`, each with its own
/// payload from `payload(i)`; returns every call once all have ended.
async fn steady_load(
    channel: &Channel,
    method: &'static str,
    payload: impl Fn(u32) -> Bytes,
    until: Instant,
) -> Vec<Sent> {
    let mut calls = Vec::new();
    let mut ticker = tokio::time::interval(EVERY);
    let mut i = 0;
    while Instant::now() < until {
        ticker.tick().await;
        let channel = channel.clone();
        let payload = payload(i);
        i += 1;
        calls.push(tokio::spawn(async move {
            let started = Instant::now();
            let options = CallOptions::new().timeout(DEADLINE);
            let result = channel.call(method, payload.clone(), options).await;
            if let Ok(reply) = &result {
                assert_eq!(
                    reply.payload, payload,
                    "a call returned another call's value"
                );
            }
            Sent {
                started,
                ended: Instant::now(),
                result,
            }
        }));
    }
    let mut sent = Vec::new();
    for call in calls {
        sent.push(call.await.unwrap());
    }
    sent
}

/// The load's verdict after a fault that ended at `healed`: every call started from 1 s after it
/// succeeded, and the channel holds no call any more.
async fn assert_recovered(what: &str, channel: &Channel, sent: &[Sent], healed: Instant) {
    let recovered_by = healed + Duration::from_secs(1);
    let late: Vec<&Sent> = sent.iter().filter(|s| s.started >= recovered_by).collect();
    assert!(
        late.len() > 100,
        "{what}: only {} calls after recovery",
        late.len()
    );
    let failed: Vec<String> = late
        .iter()
        .filter_map(|s| s.result.as_ref().err())
        .map(|e| format!("{} {}: {e}", e.code(), e.outcome()))
        .collect();
    let during = sent
        .iter()
        .filter(|s| s.started < recovered_by && s.result.is_err())
        .count();
    let last_failure = sent
        .iter()
        .filter(|s| s.result.is_err())
        .map(|s| s.ended)
        .max();
    println!(
        "{what}: {} calls, {during} failed before the 1 s mark, {} after; last failure {:?} after the heal",
        sent.len(),
        failed.len(),
        last_failure.map(|at| at.saturating_duration_since(healed)),
    );
    assert!(
        failed.is_empty(),
        "{what}: {} of {} calls made from 1 s after the fault failed, e.g. {:?}",
        failed.len(),
        late.len(),
        failed.first()
    );
    assert!(
        support::eventually(Duration::from_secs(2), || channel.in_flight() == 0).await,
        "{what}: {} calls still held after the load ended",
        channel.in_flight()
    );
}

/// Handler runs per payload.
#[derive(Clone, Default)]
struct Runs(Arc<Mutex<HashMap<Bytes, usize>>>);

impl Runs {
    fn assert_none_twice(&self, what: &str) {
        let runs = self.0.lock().unwrap();
        assert!(
            runs.values().all(|&n| n == 1),
            "{what}: a handler ran twice"
        );
    }
}

/// An in-process echo server whose handler counts its runs, behind a proxy.
async fn proxied_server(seed: &str) -> (keel::ServerHandle, Proxy, Runs) {
    let runs = Runs::default();
    let record = runs.clone();
    let server = Server::builder()
        .register("Echo.echo", move |_ctx: CallContext, payload: Bytes| {
            *record.0.lock().unwrap().entry(payload.clone()).or_default() += 1;
            async move { Ok(payload) }
        })
        .build()
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let proxy = Proxy::start(server.local_addr(), support::chaos_seed(seed))
        .await
        .unwrap();
    (server, proxy, runs)
}

fn payload(i: u32) -> Bytes {
    Bytes::from(format!("call {i}"))
}

/// A fault through the proxy, `faults` on `directions` for `lasting`, under a steady load on a
/// default channel.
async fn through_the_proxy(
    what: &str,
    directions: &[Direction],
    faults: Faults,
    lasting: Duration,
) {
    let (server, proxy, runs) = proxied_server(what).await;
    let channel = Channel::builder(proxy.local_addr()).build();
    let start = Instant::now();
    let fault_at = start + Duration::from_millis(500);
    let healed = fault_at + lasting;
    let end = healed + Duration::from_millis(2_500);
    let chaos = async {
        tokio::time::sleep_until(fault_at).await;
        for &direction in directions {
            proxy.set_faults(direction, faults.clone());
        }
        tokio::time::sleep_until(healed).await;
        proxy.clear_faults();
    };
    let (sent, ()) = tokio::join!(steady_load(&channel, "Echo.echo", payload, end), chaos);
    assert_recovered(what, &channel, &sent, healed).await;
    runs.assert_none_twice(what);
    server.shutdown().await;
}

const BOTH: &[Direction] = &[Direction::ClientToServer, Direction::ServerToClient];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_3_s_partition_both_ways_is_recovered_from_within_1_s() {
    through_the_proxy(
        "partition",
        BOTH,
        Faults::none().partition(),
        Duration::from_secs(3),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_3_s_blackhole_both_ways_is_recovered_from_within_1_s() {
    through_the_proxy(
        "blackhole",
        BOTH,
        Faults::none().blackhole(),
        Duration::from_secs(3),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_3_s_one_way_blackhole_losing_every_response_is_recovered_from_within_1_s() {
    through_the_proxy(
        "responses dropped",
        &[Direction::ServerToClient],
        Faults::none().blackhole(),
        Duration::from_secs(3),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_seconds_of_200_ms_more_latency_are_recovered_from_within_1_s() {
    through_the_proxy(
        "latency",
        BOTH,
        Faults::none().latency(Duration::from_millis(200), Duration::ZERO),
        Duration::from_secs(5),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_process_stopped_for_3_s_is_recovered_from_within_1_s() {
    let server = ServerProcess::start(support::echo_example(), Vec::<String>::new())
        .await
        .unwrap();
    let proxy = Proxy::start(server.addr(), support::chaos_seed("stopped"))
        .await
        .unwrap();
    let channel = Channel::builder(proxy.local_addr()).build();
    let codec = keel::Bincode::new();
    let args = move |i: u32| codec.encode(&(format!("call {i}"),)).unwrap();
    let start = Instant::now();
    let stop_at = start + Duration::from_millis(500);
    let healed = stop_at + Duration::from_secs(3);
    let end = healed + Duration::from_millis(2_500);
    let chaos = async {
        tokio::time::sleep_until(stop_at).await;
        server.stop().unwrap();
        tokio::time::sleep_until(healed).await;
        server.resume().unwrap();
    };
    let (sent, ()) = tokio::join!(steady_load(&channel, "Echo.echo", args, end), chaos);
    assert_recovered("stopped", &channel, &sent, healed).await;
}
