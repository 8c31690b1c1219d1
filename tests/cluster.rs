//! A channel over several servers: each balancer's picks, endpoints skipped when they cannot be
//! reached, failover when a server process is killed, endpoint changes from discovery, and names
//! resolved at build. Real TCP on 127.0.0.1; servers in this process, behind the fault proxy, or
//! in child processes that are killed.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use keel::client::{Balancer, Change, ClusterEvent, ConsistentHash, PeakEwma, Target};
use keel::core::CallContext;
use keel::{CallOptions, Channel, Error, Outcome, PayloadCodec, Server, ServerHandle, StatusCode};
use rpc_chaos::{Direction, Faults, Proxy, ServerProcess};

/// An observer that records every event, and the record.
fn recorder() -> (
    Arc<Mutex<Vec<ClusterEvent>>>,
    impl Fn(&ClusterEvent) + Send + Sync + 'static,
) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&events);
    (events, move |event: &ClusterEvent| {
        record.lock().unwrap().push(event.clone());
    })
}

/// A server whose `Who.name` answers with `name` and counts its calls.
async fn named(name: &'static str) -> (ServerHandle, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let server = support::start(Server::builder().register(
        "Who.name",
        move |_ctx: CallContext, _payload: Bytes| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move { Ok(Bytes::from_static(name.as_bytes())) }
        },
    ))
    .await;
    (server, calls)
}

async fn three() -> (Vec<ServerHandle>, Vec<Arc<AtomicUsize>>) {
    let mut servers = Vec::new();
    let mut counts = Vec::new();
    for name in ["a", "b", "c"] {
        let (server, calls) = named(name).await;
        servers.push(server);
        counts.push(calls);
    }
    (servers, counts)
}

fn options() -> CallOptions {
    CallOptions::new().timeout(Duration::from_secs(2))
}

async fn who(channel: &Channel, options: CallOptions) -> String {
    let reply = channel
        .call("Who.name", Bytes::new(), options)
        .await
        .unwrap();
    String::from_utf8(reply.payload.to_vec()).unwrap()
}

/// One call (which starts every endpoint connecting), then a pause for the connections.
async fn warm_up(channel: &Channel) -> String {
    let first = who(channel, options()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    first
}

#[tokio::test]
async fn round_robin_and_smooth_weighted_round_robin_give_their_exact_sequences() {
    let (servers, _) = three().await;
    let addrs: Vec<SocketAddr> = servers.iter().map(ServerHandle::local_addr).collect();

    let channel = Channel::cluster(addrs.clone())
        .balancer(Balancer::RoundRobin)
        .build();
    let mut seen = vec![warm_up(&channel).await];
    for _ in 0..11 {
        seen.push(who(&channel, options()).await);
    }
    assert_eq!(seen.concat(), "abcabcabcabc");

    let weighted = addrs
        .iter()
        .zip([5, 1, 1])
        .map(|(&addr, weight)| Target::addr(addr).weight(weight));
    let channel = Channel::cluster(weighted)
        .balancer(Balancer::WeightedRoundRobin)
        .build();
    let mut seen = vec![warm_up(&channel).await];
    for _ in 0..13 {
        seen.push(who(&channel, options()).await);
    }
    // nginx's sequence for weights 5, 1, 1, twice.
    assert_eq!(seen.concat(), "aabacaaaabacaa");
    for server in servers {
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peak_ewma_sends_under_a_tenth_to_a_slow_endpoint_and_returns_to_it_when_it_recovers() {
    let (servers, counts) = three().await;
    let proxy = Proxy::start(servers[2].local_addr(), support::chaos_seed("peak_ewma"))
        .await
        .unwrap();
    proxy.set_faults(
        Direction::ServerToClient,
        Faults::none().latency(Duration::from_millis(200), Duration::ZERO),
    );
    let addrs = [
        servers[0].local_addr(),
        servers[1].local_addr(),
        proxy.local_addr(),
    ];
    // The default balancer for the share; a 1 s decay so that the return is seen in seconds
    // (with the default 10 s, the slow endpoint's estimate takes about a minute to fade).
    let channel = Channel::cluster(addrs)
        .balancer(Balancer::PeakEwma(
            PeakEwma::new().decay(Duration::from_secs(1)).seed(11),
        ))
        .build();
    let default = Channel::cluster(addrs).build();
    let failures = Arc::new(AtomicUsize::new(0));
    let run = |channel: Channel, for_how_long: Duration| {
        let failures = Arc::clone(&failures);
        async move {
            let until = tokio::time::Instant::now() + for_how_long;
            let callers: Vec<_> = (0..8)
                .map(|_| {
                    let channel = channel.clone();
                    let failures = Arc::clone(&failures);
                    tokio::spawn(async move {
                        while tokio::time::Instant::now() < until {
                            if channel
                                .call("Who.name", Bytes::new(), options())
                                .await
                                .is_err()
                            {
                                failures.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                    })
                })
                .collect();
            for caller in callers {
                caller.await.unwrap();
            }
        }
    };
    let snapshot = || {
        counts
            .iter()
            .map(|c| c.load(Ordering::SeqCst))
            .collect::<Vec<_>>()
    };

    // The default balancer: within 2 s the slow endpoint gets under a tenth of the calls.
    run(default.clone(), Duration::from_secs(2)).await;
    let before = snapshot();
    run(default, Duration::from_secs(2)).await;
    let after = snapshot();
    let share: Vec<usize> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    let total: usize = share.iter().sum();
    assert!(total > 100, "{share:?}");
    assert!(share[2] * 10 < total, "slow endpoint got {share:?}");

    // Delay removed: within 8 s the endpoint is back in use.
    run(channel.clone(), Duration::from_secs(1)).await;
    proxy.clear_faults();
    let before = snapshot();
    let mut back = false;
    for _ in 0..8 {
        run(channel.clone(), Duration::from_secs(1)).await;
        if snapshot()[2] > before[2] + 20 {
            back = true;
            break;
        }
    }
    assert!(
        back,
        "the recovered endpoint got no traffic: {:?} -> {:?}",
        before,
        snapshot()
    );
    assert_eq!(failures.load(Ordering::SeqCst), 0, "latency is not failure");
    // One connection per channel through the proxy, never replaced: latency is not death (the
    // suspicion detector may have suspected it for a moment; that closes nothing).
    assert_eq!(
        proxy.accepted(),
        2,
        "a connection to the slow endpoint was replaced"
    );
    for server in servers {
        server.shutdown().await;
    }
}

#[tokio::test]
async fn an_endpoint_that_cannot_be_reached_is_skipped_at_no_cost_to_the_call() {
    let (server, calls) = named("live").await;
    // A port nothing listens on: connecting is refused at once.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    for balancer in [Balancer::RoundRobin, Balancer::default()] {
        let channel = Channel::cluster([closed, server.local_addr()])
            .balancer(balancer)
            .build();
        for _ in 0..20 {
            assert_eq!(who(&channel, options()).await, "live");
        }
    }
    assert_eq!(calls.load(Ordering::SeqCst), 40);

    // Every endpoint refusing: a fail-fast call fails at once with UNAVAILABLE, NOT_SENT.
    let closed_too = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let channel = Channel::cluster([closed, closed_too]).build();
    let started = tokio::time::Instant::now();
    let err = channel
        .call("Who.name", Bytes::new(), options().wait_for_ready(false))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.outcome()),
        (StatusCode::UNAVAILABLE, Outcome::NotSent)
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    server.shutdown().await;
}

#[tokio::test]
async fn consistent_hashing_keeps_each_key_on_one_server() {
    let (servers, counts) = three().await;
    let addrs: Vec<SocketAddr> = servers.iter().map(ServerHandle::local_addr).collect();
    let channel = Channel::cluster(addrs)
        .balancer(Balancer::ConsistentHash(ConsistentHash::new()))
        .build();
    warm_up(&channel).await;
    let mut home: HashMap<u32, String> = HashMap::new();
    for round in 0..3 {
        for key in 0..60u32 {
            let name = who(&channel, options().hash_key(format!("user-{key}"))).await;
            let first = home.entry(key).or_insert_with(|| name.clone());
            assert_eq!(*first, name, "key {key} moved in round {round}");
        }
    }
    let per_server = counts
        .iter()
        .map(|c| c.load(Ordering::SeqCst))
        .collect::<Vec<_>>();
    assert!(
        per_server.iter().all(|&n| n >= 20),
        "keys spread over all: {per_server:?}"
    );
    for server in servers {
        server.shutdown().await;
    }
}

#[tokio::test]
async fn discovery_adds_and_removes_endpoints_while_calls_run() {
    let (a, a_calls) = named("a").await;
    let (b, b_calls) = named("b").await;
    let (changes, stream) = futures::channel::mpsc::unbounded::<Change>();
    let channel = Channel::cluster([a.local_addr()])
        .balancer(Balancer::RoundRobin)
        .discover(stream)
        .build();
    for _ in 0..5 {
        assert_eq!(who(&channel, options()).await, "a");
    }
    changes
        .unbounded_send(Change::Insert {
            addr: b.local_addr(),
            weight: 1,
            tier: 0,
        })
        .unwrap();
    assert!(
        support::eventually(Duration::from_secs(2), || channel.addrs().len() == 2).await,
        "insert applied"
    );
    let mut seen = String::new();
    for _ in 0..10 {
        seen += &who(&channel, options()).await;
    }
    assert!(seen.contains('b') && seen.contains('a'), "{seen}");
    changes
        .unbounded_send(Change::Remove(a.local_addr()))
        .unwrap();
    assert!(
        support::eventually(Duration::from_secs(2), || channel.addrs()
            == [b.local_addr()])
        .await
    );
    let a_before = a_calls.load(Ordering::SeqCst);
    for _ in 0..10 {
        assert_eq!(who(&channel, options()).await, "b");
    }
    assert_eq!(
        a_calls.load(Ordering::SeqCst),
        a_before,
        "no call to a removed endpoint"
    );
    assert!(b_calls.load(Ordering::SeqCst) >= 10);

    // Everything removed: calls fail UNAVAILABLE, NOT_SENT.
    changes
        .unbounded_send(Change::Remove(b.local_addr()))
        .unwrap();
    assert!(support::eventually(Duration::from_secs(2), || channel.addrs().is_empty()).await);
    let err = channel
        .call("Who.name", Bytes::new(), options().no_retry())
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.outcome()),
        (StatusCode::UNAVAILABLE, Outcome::NotSent)
    );
    drop(changes);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn names_resolve_at_build_and_a_bad_one_is_a_typed_error() {
    // Names that need no DNS server: a numeric host is resolved locally.
    let channel = Channel::cluster([
        Target::name("127.0.0.1:7001"),
        Target::from("127.0.0.1:7002"),
    ])
    .try_build()
    .unwrap();
    let addrs: Vec<String> = channel.addrs().iter().map(ToString::to_string).collect();
    assert_eq!(addrs, ["127.0.0.1:7001", "127.0.0.1:7002"]);
    // No port: refused before any lookup is made.
    let err = Channel::cluster([Target::name("127.0.0.1")])
        .try_build()
        .unwrap_err();
    let keel::client::BuildError::Resolve(err) = err else {
        panic!("{err}")
    };
    assert_eq!(err.name(), "127.0.0.1");
    // build() leaves it out, and the channel has nothing to call.
    assert!(
        Channel::cluster(["no-port-here"])
            .build()
            .addrs()
            .is_empty()
    );
}

const CODEC: keel::Bincode = keel::Bincode::new();

fn args<T: serde::Serialize>(value: T) -> Bytes {
    CODEC.encode(&(value,)).unwrap()
}

/// Three echo server processes, each journaling the calls it runs to a file of its own.
struct Journaled {
    dir: std::path::PathBuf,
    servers: Vec<ServerProcess>,
    journals: Vec<std::path::PathBuf>,
}

impl Journaled {
    async fn start(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut servers = Vec::new();
        let mut journals = Vec::new();
        for i in 0..3 {
            let journal = dir.join(format!("server-{i}"));
            let _ = std::fs::remove_file(&journal);
            let server = ServerProcess::start(
                support::echo_example(),
                ["--journal".into(), journal.clone().into_os_string()],
            )
            .await
            .unwrap();
            servers.push(server);
            journals.push(journal);
        }
        Self {
            dir,
            servers,
            journals,
        }
    }
}

/// How many times each `echo` text ran, over the servers' journals.
fn echo_runs(journals: &[std::path::PathBuf]) -> HashMap<String, usize> {
    let mut runs: HashMap<String, usize> = HashMap::new();
    for journal in journals {
        for line in journal_lines(journal) {
            if let Some(text) = line.strip_prefix("echo ") {
                *runs.entry(text.to_owned()).or_default() += 1;
            }
        }
    }
    runs
}

/// A failed non-idempotent call is honest: one not reported as MAYBE_EXECUTED did not run.
fn assert_honest(runs: &HashMap<String, usize>, text: &str, err: &Error) {
    if err.outcome() != Outcome::MaybeExecuted {
        assert!(
            !runs.contains_key(text),
            "{text} failed {:?} but ran",
            err.outcome()
        );
    }
}

fn journal_lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_process_costs_no_idempotent_call_and_runs_no_call_twice() {
    let Journaled {
        dir,
        mut servers,
        journals,
    } = Journaled::start("keel-cluster").await;
    let channel =
        Channel::cluster(servers.iter().map(ServerProcess::addr).collect::<Vec<_>>()).build();
    let until = tokio::time::Instant::now() + Duration::from_secs(4);
    // 4 callers of the idempotent method, 2 of the non-idempotent one, each call with a 1 s
    // deadline and its own payload.
    let callers: Vec<_> = (0..6u32)
        .map(|caller| {
            let channel = channel.clone();
            tokio::spawn(async move {
                let mut results: Vec<(String, Result<(), Error>)> = Vec::new();
                let mut n = 0u32;
                while tokio::time::Instant::now() < until {
                    n += 1;
                    let text = format!("{caller}-{n}");
                    let options = CallOptions::new().timeout(Duration::from_secs(1));
                    let result = if caller < 4 {
                        channel
                            .call(
                                "Echo.echo_bytes",
                                args(Bytes::from(text.clone())),
                                options.idempotent(true),
                            )
                            .await
                    } else {
                        channel.call("Echo.echo", args(text.clone()), options).await
                    };
                    results.push((text, result.map(|_| ())));
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                results
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    servers[1].kill().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let before_restart = journal_lines(&journals[1]).len();
    servers[1].restart().await.unwrap();
    let restarted_at = tokio::time::Instant::now();
    let back = support::eventually(Duration::from_secs(1), || {
        journal_lines(&journals[1]).len() > before_restart
    })
    .await;
    let back_after = restarted_at.elapsed();

    let mut idempotent = (0, 0);
    let mut failed_plain = Vec::new();
    let mut succeeded_plain = Vec::new();
    for (caller, handle) in callers.into_iter().enumerate() {
        for (text, result) in handle.await.unwrap() {
            if caller < 4 {
                idempotent.0 += 1;
                if let Err(err) = result {
                    idempotent.1 += 1;
                    eprintln!("idempotent call {text} failed: {err:?}");
                }
            } else {
                match result {
                    Ok(()) => succeeded_plain.push(text),
                    Err(err) => failed_plain.push((text, err)),
                }
            }
        }
    }
    assert!(
        back,
        "the restarted server got no call within 1 s of its restart"
    );
    assert!(idempotent.0 > 200, "calls made: {}", idempotent.0);
    assert_eq!(idempotent.1, 0, "idempotent calls failed across the kill");

    // Non-idempotent calls: none ran twice, every success ran once, and a failure that says it
    // did not run did not.
    let runs = echo_runs(&journals);
    assert!(runs.values().all(|&n| n == 1), "a handler ran twice");
    for text in &succeeded_plain {
        assert_eq!(
            runs.get(text),
            Some(&1),
            "{text} succeeded but did not run once"
        );
    }
    for (text, err) in &failed_plain {
        assert!(
            matches!(err.outcome(), Outcome::MaybeExecuted) || !runs.contains_key(text),
            "{text} failed {:?} but ran",
            err.outcome()
        );
        // Only calls in flight on the killed server may fail, and only as MAYBE_EXECUTED.
        assert_eq!(err.outcome(), Outcome::MaybeExecuted, "{text}: {err:?}");
    }
    assert!(
        failed_plain.len() <= 2,
        "at most the 2 callers' calls in flight: {failed_plain:?}"
    );
    eprintln!(
        "idempotent calls: {}; non-idempotent: {} ok, {} failed (MAYBE_EXECUTED); back in \
         rotation {back_after:?} after the restart",
        idempotent.0,
        succeeded_plain.len(),
        failed_plain.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Calls from `callers` tasks until `until`: the first `idempotent` of them call the idempotent
/// method with `padding` bytes, the others the journaled non-idempotent one. Each result comes
/// with its text and when the call started.
type Timed = (String, tokio::time::Instant, Result<(), Error>);

fn spawn_callers(
    channel: &Channel,
    callers: u32,
    idempotent: u32,
    padding: usize,
    until: tokio::time::Instant,
) -> Vec<tokio::task::JoinHandle<Vec<Timed>>> {
    (0..callers)
        .map(|caller| {
            let channel = channel.clone();
            tokio::spawn(async move {
                let mut results = Vec::new();
                let mut n = 0u32;
                while tokio::time::Instant::now() < until {
                    n += 1;
                    let text = format!("{caller}-{n}");
                    let started = tokio::time::Instant::now();
                    let options = CallOptions::new().timeout(Duration::from_secs(1));
                    let result = if caller < idempotent {
                        let mut data = text.clone().into_bytes();
                        data.resize(padding, b'.');
                        channel
                            .call(
                                "Echo.echo_bytes",
                                args(Bytes::from(data)),
                                options.idempotent(true),
                            )
                            .await
                    } else {
                        channel.call("Echo.echo", args(text.clone()), options).await
                    };
                    results.push((text, started, result.map(|_| ())));
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                results
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_leaves_the_rotation_within_500_ms_and_returns_after_sigcont() {
    let Journaled {
        dir,
        servers,
        journals,
    } = Journaled::start("keel-cluster-stop").await;
    // Server 1 behind the proxy, which counts the bytes the client sends it.
    let proxy = Proxy::start(servers[1].addr(), support::chaos_seed("stopped endpoint"))
        .await
        .unwrap();
    let addrs = [servers[0].addr(), proxy.local_addr(), servers[2].addr()];
    let (events, observer) = recorder();
    let channel = Channel::cluster(addrs).on_event(observer).build();
    let sent_to_stopped = || proxy.connections().iter().map(|c| c.to_server).sum::<u64>();
    let padding = 1024;
    let until = tokio::time::Instant::now() + Duration::from_millis(5500);
    let callers = spawn_callers(&channel, 8, 6, padding, until);

    tokio::time::sleep(Duration::from_millis(1000)).await;
    servers[1].stop().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let bytes_at_500_ms = sent_to_stopped();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let bytes_at_resume = sent_to_stopped();
    servers[1].resume().unwrap();
    let resumed = tokio::time::Instant::now();

    let mut results: Vec<(u32, Timed)> = Vec::new();
    for (caller, handle) in callers.into_iter().enumerate() {
        for result in handle.await.unwrap() {
            results.push((u32::try_from(caller).unwrap(), result));
        }
    }
    let idempotent_failures: Vec<_> = results
        .iter()
        .filter(|(caller, (_, _, r))| *caller < 6 && r.is_err())
        .collect();
    assert!(results.len() > 500, "calls made: {}", results.len());
    assert!(idempotent_failures.is_empty(), "{idempotent_failures:?}");
    // Between 500 ms after SIGSTOP and SIGCONT: not one request (each is over 1 KiB), only the
    // odd PING.
    let grew = bytes_at_resume - bytes_at_500_ms;
    assert!(
        grew < padding as u64,
        "{grew} bytes sent to the stopped server"
    );
    // Non-idempotent calls: each failure may have run, none ran twice, and after SIGCONT the
    // server gets new calls within 1 s.
    let mut runs: HashMap<String, (usize, usize)> = HashMap::new();
    for (server, journal) in journals.iter().enumerate() {
        for line in journal_lines(journal) {
            if let Some(text) = line.strip_prefix("echo ") {
                let entry = runs.entry(text.to_owned()).or_insert((0, server));
                entry.0 += 1;
            }
        }
    }
    assert!(runs.values().all(|&(n, _)| n == 1), "a handler ran twice");
    let mut back_within = None;
    for (caller, (text, started, result)) in &results {
        if *caller < 6 {
            continue;
        }
        match result {
            Ok(()) => assert_eq!(runs.get(text).map(|r| r.0), Some(1), "{text}"),
            Err(err) => assert_eq!(err.outcome(), Outcome::MaybeExecuted, "{text}: {err:?}"),
        }
        if runs.get(text).is_some_and(|&(_, server)| server == 1) && *started > resumed {
            let after = *started - resumed;
            back_within = Some(back_within.map_or(after, |b: Duration| b.min(after)));
        }
    }
    let back_within = back_within.expect("the resumed server got no new call");
    // The typed events: suspected during the stop, and no longer after it.
    let stopped = proxy.local_addr();
    let about_it: Vec<ClusterEvent> = events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| match e {
            ClusterEvent::Suspected { addr, .. } | ClusterEvent::Unsuspected { addr } => {
                *addr == stopped
            }
            _ => false,
        })
        .cloned()
        .collect();
    assert!(
        matches!(about_it.first(), Some(ClusterEvent::Suspected { .. })),
        "{about_it:?}"
    );
    assert_eq!(
        about_it.last(),
        Some(&ClusterEvent::Unsuspected { addr: stopped }),
        "{about_it:?}"
    );
    assert!(
        back_within < Duration::from_secs(1),
        "back after {back_within:?}"
    );
    eprintln!(
        "{} calls; {grew} bytes to the stopped server after 500 ms; back in rotation {back_within:?} \
         after SIGCONT",
        results.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_cluster_example_kills_a_server_and_no_call_fails() {
    let example = support::echo_example().with_file_name("cluster");
    let output = std::process::Command::new(&example)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", example.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("SIGKILL sent to b"), "{stdout}");
    let after = stdout.lines().find(|l| l.starts_with("b killed:")).unwrap();
    assert!(
        !after.contains("\"b\""),
        "b answered after its kill: {after}"
    );
    assert!(stdout.contains("failed calls: 0"), "{stdout}");
}

/// A server whose `Who.name` fails with UNAVAILABLE after running (a broken backend behind it),
/// counting its calls.
async fn broken() -> (ServerHandle, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let server = support::start(Server::builder().register(
        "Who.name",
        move |_ctx: CallContext, _payload: Bytes| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move {
                Err::<Bytes, _>(keel::core::Status::new(
                    StatusCode::UNAVAILABLE,
                    "the database is down",
                ))
            }
        },
    ))
    .await;
    (server, calls)
}

#[tokio::test]
async fn an_endpoint_failing_5_times_in_a_row_is_ejected_then_probed_and_ejected_for_longer() {
    let (a, _) = named("a").await;
    let (b, b_calls) = broken().await;
    let (c, _) = named("c").await;
    let (events, observer) = recorder();
    let channel = Channel::cluster([a.local_addr(), b.local_addr(), c.local_addr()])
        .balancer(Balancer::RoundRobin)
        .outlier_detection(
            keel::client::OutlierDetection::new().base_ejection_time(Duration::from_secs(1)),
        )
        .on_event(observer)
        .build();
    let idempotent = || options().idempotent(true);
    warm_up(&channel).await;
    for _ in 0..40 {
        // Every call succeeds: a failure on b is retried on another endpoint.
        let name = who(&channel, idempotent()).await;
        assert!(name == "a" || name == "c", "{name}");
    }
    assert_eq!(
        b_calls.load(Ordering::SeqCst),
        5,
        "ejected after 5 failures in a row"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Time up: a probe (new connection, handshake, PING) passes within a few calls; then, on
    // probation, one more call, which fails and ejects it for 2 s.
    for _ in 0..200 {
        who(&channel, idempotent()).await;
        if b_calls.load(Ordering::SeqCst) > 5 {
            break;
        }
    }
    for _ in 0..20 {
        who(&channel, idempotent()).await;
    }
    assert_eq!(b_calls.load(Ordering::SeqCst), 6);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..20 {
        who(&channel, idempotent()).await;
    }
    assert_eq!(
        b_calls.load(Ordering::SeqCst),
        6,
        "still ejected: the second time is 2 s"
    );
    let addr = b.local_addr();
    assert_eq!(
        *events.lock().unwrap(),
        [
            ClusterEvent::Ejected {
                addr,
                times: 1,
                for_how_long: Duration::from_secs(1)
            },
            ClusterEvent::Probed { addr },
            ClusterEvent::Ejected {
                addr,
                times: 2,
                for_how_long: Duration::from_secs(2)
            },
        ]
    );
    for server in [a, b, c] {
        server.shutdown().await;
    }
}

#[tokio::test]
async fn below_half_healthy_the_panic_mode_ignores_ejection() {
    let (a, a_calls) = named("a").await;
    let (b, b_calls) = broken().await;
    let (c, c_calls) = broken().await;
    let addrs = [a.local_addr(), b.local_addr(), c.local_addr()];
    let broken_calls = || b_calls.load(Ordering::SeqCst) + c_calls.load(Ordering::SeqCst);
    for panic in [true, false] {
        let detection = keel::client::OutlierDetection::new()
            .max_ejected_percent(100)
            .panic_threshold_percent(if panic { 50 } else { 0 });
        let channel = Channel::cluster(addrs)
            .balancer(Balancer::RoundRobin)
            .outlier_detection(detection)
            .build();
        warm_up(&channel).await;
        // b and c fail 5 times each and are ejected: 1 of 3 healthy.
        while broken_calls() < 10 {
            let _ = channel
                .call("Who.name", Bytes::new(), options().no_retry())
                .await;
        }
        let (before, a_before) = (broken_calls(), a_calls.load(Ordering::SeqCst));
        for _ in 0..30 {
            let _ = channel
                .call("Who.name", Bytes::new(), options().no_retry())
                .await;
        }
        let (to_broken, to_a) = (
            broken_calls() - before,
            a_calls.load(Ordering::SeqCst) - a_before,
        );
        if panic {
            // Ejection ignored: round robin over all three again.
            assert_eq!((to_a, to_broken), (10, 20), "panic mode");
        } else {
            assert_eq!((to_a, to_broken), (30, 0), "no panic mode");
        }
        b_calls.store(0, Ordering::SeqCst);
        c_calls.store(0, Ordering::SeqCst);
    }
    for server in [a, b, c] {
        server.shutdown().await;
    }
}

/// A server whose `Who.name` fails with UNAVAILABLE (after running) while `failing` is set.
async fn switchable(
    name: &'static str,
) -> (
    ServerHandle,
    Arc<AtomicUsize>,
    Arc<std::sync::atomic::AtomicBool>,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (counter, switch) = (Arc::clone(&calls), Arc::clone(&failing));
    let server = support::start(Server::builder().register(
        "Who.name",
        move |_ctx: CallContext, _payload: Bytes| {
            counter.fetch_add(1, Ordering::SeqCst);
            let fail = switch.load(Ordering::SeqCst);
            async move {
                if fail {
                    Err(keel::core::Status::new(StatusCode::UNAVAILABLE, "broken"))
                } else {
                    Ok(Bytes::from_static(name.as_bytes()))
                }
            }
        },
    ))
    .await;
    (server, calls, failing)
}

#[tokio::test]
async fn a_circuit_breaker_opens_on_the_failure_rate_refuses_then_closes_after_a_good_trial() {
    let (a, a_calls) = named("a").await;
    let (f, f_calls, f_failing) = switchable("f").await;
    let breaker = keel::client::CircuitBreaker::new()
        .min_attempts(10)
        .open_for(Duration::from_millis(500));
    let (events, observer) = recorder();
    let channel = Channel::cluster([a.local_addr(), f.local_addr()])
        .balancer(Balancer::RoundRobin)
        .disable_outlier_detection()
        .circuit_breaker(breaker.clone())
        .on_event(observer)
        .build();
    warm_up(&channel).await;
    let call = || channel.call("Who.name", Bytes::new(), options().no_retry());
    f_calls.store(0, Ordering::SeqCst);
    // Round robin sends every other call to f, which fails them all: 10 attempts at 100 %.
    for _ in 0..40 {
        let _ = call().await;
    }
    assert_eq!(
        f_calls.load(Ordering::SeqCst),
        10,
        "open after 10 failed attempts"
    );
    // Open: f is skipped, not tried, for 500 ms.
    let a_before = a_calls.load(Ordering::SeqCst);
    for _ in 0..10 {
        assert_eq!(
            String::from_utf8(call().await.unwrap().payload.to_vec()).unwrap(),
            "a"
        );
    }
    assert_eq!(a_calls.load(Ordering::SeqCst) - a_before, 10);
    assert_eq!(f_calls.load(Ordering::SeqCst), 10);
    // Half-open after 500 ms: its one trial succeeds now, and f is back.
    f_failing.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(600)).await;
    for _ in 0..20 {
        call().await.unwrap();
    }
    assert!(
        f_calls.load(Ordering::SeqCst) >= 18,
        "closed: {}",
        f_calls.load(Ordering::SeqCst)
    );
    let addr = f.local_addr();
    assert_eq!(
        *events.lock().unwrap(),
        [
            ClusterEvent::BreakerOpened { addr },
            ClusterEvent::BreakerHalfOpen { addr },
            ClusterEvent::BreakerClosed { addr },
        ]
    );

    // Every endpoint's breaker open: refused at once, NOT_SENT, and not retried.
    let (g, g_calls, _) = switchable("g").await;
    let (h, h_calls, _) = switchable("h").await;
    let both = Channel::cluster([g.local_addr(), h.local_addr()])
        .disable_outlier_detection()
        .circuit_breaker(breaker)
        .build();
    for _ in 0..20 {
        let _ = both
            .call("Who.name", Bytes::new(), options().no_retry())
            .await;
    }
    let reached = g_calls.load(Ordering::SeqCst) + h_calls.load(Ordering::SeqCst);
    let err = both
        .call("Who.name", Bytes::new(), options().idempotent(true))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.outcome()),
        (StatusCode::UNAVAILABLE, Outcome::NotSent),
        "{err}"
    );
    assert_eq!(err.kind(), keel::ErrorKind::BreakerOpen, "{err:?}");
    assert!(err.has_cause::<keel::client::BreakerOpen>(), "{err:?}");
    assert_eq!(
        g_calls.load(Ordering::SeqCst) + h_calls.load(Ordering::SeqCst),
        reached,
        "not sent"
    );
    for server in [a, f, g, h] {
        server.shutdown().await;
    }
}

#[tokio::test]
async fn failfast_makes_one_attempt_and_forking_takes_the_first_success_and_cancels_the_rest() {
    use keel::client::Failover;
    let (a, a_calls, a_failing) = switchable("a").await;
    let (b, b_calls, b_failing) = switchable("b").await;
    b_failing.store(false, Ordering::SeqCst);
    a_failing.store(false, Ordering::SeqCst);
    let channel = Channel::cluster([a.local_addr(), b.local_addr()])
        .balancer(Balancer::RoundRobin)
        .disable_outlier_detection()
        .disable_circuit_breaker()
        .build();
    warm_up(&channel).await;
    a_failing.store(true, Ordering::SeqCst);
    a_calls.store(0, Ordering::SeqCst);
    b_calls.store(0, Ordering::SeqCst);
    // a fails every call. Failover (the default) retries on b; failfast does not.
    let mut failed = 0;
    for _ in 0..10 {
        let options = options().idempotent(true).failover(Failover::FailFast);
        if channel
            .call("Who.name", Bytes::new(), options)
            .await
            .is_err()
        {
            failed += 1;
        }
    }
    assert_eq!(failed, 5, "the 5 calls round robin sent to a");
    assert_eq!(
        a_calls.load(Ordering::SeqCst) + b_calls.load(Ordering::SeqCst),
        10,
        "one attempt each"
    );
    for _ in 0..10 {
        assert_eq!(who(&channel, options().idempotent(true)).await, "b");
    }
    a.shutdown().await;
    b.shutdown().await;

    // Forking: a slow and a fast server; each call goes to both, the fast one answers, and the
    // slow one's handler is cancelled.
    let cancelled = Arc::new(AtomicUsize::new(0));
    let slow = {
        let cancelled = Arc::clone(&cancelled);
        support::start(Server::builder().register(
            "Who.name",
            move |_ctx: CallContext, _payload: Bytes| {
                let guard = CountOnDrop(Arc::clone(&cancelled));
                async move {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    std::mem::forget(guard);
                    Ok(Bytes::from_static(b"slow"))
                }
            },
        ))
        .await
    };
    let (fast, fast_calls) = named("fast").await;
    let channel = Channel::cluster([slow.local_addr(), fast.local_addr()])
        .balancer(Balancer::RoundRobin)
        .failover(Failover::Forking { n: 2 })
        .build();
    who(&channel, options().idempotent(true)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    cancelled.store(0, Ordering::SeqCst);
    let before = fast_calls.load(Ordering::SeqCst);
    for _ in 0..5 {
        let started = tokio::time::Instant::now();
        assert_eq!(who(&channel, options().idempotent(true)).await, "fast");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }
    assert_eq!(
        fast_calls.load(Ordering::SeqCst) - before,
        5,
        "each call went to both"
    );
    assert!(
        support::eventually(Duration::from_secs(2), || cancelled.load(Ordering::SeqCst)
            >= 5)
        .await,
        "the slow server's handlers were cancelled: {}",
        cancelled.load(Ordering::SeqCst)
    );
    slow.shutdown().await;
    fast.shutdown().await;
}

/// Counts its drops: a handler's future dropped before it finished was cancelled.
struct CountOnDrop(Arc<AtomicUsize>);

impl Drop for CountOnDrop {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_backup_fails_over_at_once_and_fails_back_only_after_the_stability_time() {
    let example = support::echo_example().with_file_name("cluster");
    let mut primary = ServerProcess::start(&example, ["--name", "primary"])
        .await
        .unwrap();
    let (events, observer) = recorder();
    let mut backup = ServerProcess::start(&example, ["--name", "backup"])
        .await
        .unwrap();
    let channel = Channel::cluster([
        Target::addr(primary.addr()),
        Target::addr(backup.addr()).tier(1),
    ])
    .failback_after(Duration::from_secs(1))
    .on_event(observer)
    .build();
    let answer = || async {
        let reply = channel
            .call("Who.name", Bytes::new(), options().idempotent(true))
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&reply.payload).into_owned();
        if text.ends_with("primary") {
            "primary"
        } else {
            "backup"
        }
    };
    for _ in 0..20 {
        assert_eq!(answer().await, "primary");
    }
    primary.kill().await.unwrap();
    let killed = tokio::time::Instant::now();
    // Every call succeeds: the ones in flight are retried on the backup, and new ones go there.
    for _ in 0..20 {
        assert_eq!(answer().await, "backup");
    }
    assert!(
        killed.elapsed() < Duration::from_secs(1),
        "{:?}",
        killed.elapsed()
    );
    primary.restart().await.unwrap();
    let restarted = tokio::time::Instant::now();
    let mut first_primary = None;
    while restarted.elapsed() < Duration::from_secs(3) {
        if answer().await == "primary" && first_primary.is_none() {
            first_primary = Some(restarted.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let back = first_primary.expect("traffic never went back to the primary");
    // Not before it has been up for the stability time (1 s), and soon after.
    assert!(back >= Duration::from_secs(1), "back after {back:?}");
    assert!(back < Duration::from_millis(2000), "back after {back:?}");
    assert_eq!(answer().await, "primary");
    assert_eq!(
        *events.lock().unwrap(),
        [
            ClusterEvent::TierSwitched { from: 0, to: 1 },
            ClusterEvent::TierSwitched { from: 1, to: 0 },
        ]
    );
    backup.kill().await.unwrap();
}

/// Issue 13's run, scaled to this machine: three server processes under 8 callers with 1 s
/// deadlines and every default; one is SIGKILLed and restarted 2 s later, one SIGSTOPped for 3 s,
/// the third SIGKILLed for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_and_restart_hang_and_kill_for_good_with_defaults_lose_no_idempotent_call() {
    let Journaled {
        dir,
        mut servers,
        journals,
    } = Journaled::start("keel-cluster-run").await;
    // The one to be stopped sits behind the proxy, which counts the bytes sent to it.
    let proxy = Proxy::start(servers[1].addr(), support::chaos_seed("cluster run"))
        .await
        .unwrap();
    let sent_to_stopped = || proxy.connections().iter().map(|c| c.to_server).sum::<u64>();
    let channel =
        Channel::cluster([servers[0].addr(), proxy.local_addr(), servers[2].addr()]).build();
    let padding = 1024;
    let start = tokio::time::Instant::now();
    let callers = spawn_callers(&channel, 8, 6, padding, start + Duration::from_secs(10));
    let at = |secs: f64| tokio::time::sleep_until(start + Duration::from_secs_f64(secs));

    at(1.0).await;
    servers[0].kill().await.unwrap();
    at(3.0).await;
    let before_restart = journal_lines(&journals[0]).len();
    servers[0].restart().await.unwrap();
    let restarted = tokio::time::Instant::now();
    let back = support::eventually(Duration::from_secs(1), || {
        journal_lines(&journals[0]).len() > before_restart
    })
    .await;
    let back_after = restarted.elapsed();
    at(4.0).await;
    servers[1].stop().unwrap();
    at(4.5).await;
    let bytes_at_500_ms = sent_to_stopped();
    at(7.0).await;
    let stopped_bytes = sent_to_stopped() - bytes_at_500_ms;
    servers[1].resume().unwrap();
    at(8.0).await;
    servers[2].kill().await.unwrap();

    let mut results: Vec<(u32, Timed)> = Vec::new();
    for (caller, handle) in callers.into_iter().enumerate() {
        for result in handle.await.unwrap() {
            results.push((u32::try_from(caller).unwrap(), result));
        }
    }
    let (idempotent, plain): (Vec<_>, Vec<_>) = results.iter().partition(|(caller, _)| *caller < 6);
    let idempotent_failed: Vec<_> = idempotent
        .iter()
        .filter(|(_, (_, _, r))| r.is_err())
        .collect();
    assert!(
        idempotent.len() > 1000,
        "idempotent calls made: {}",
        idempotent.len()
    );
    assert!(idempotent_failed.is_empty(), "{idempotent_failed:?}");
    assert!(
        back,
        "the restarted server got no call within 1 s of its restart"
    );
    assert!(
        stopped_bytes < padding as u64,
        "{stopped_bytes} bytes sent to the stopped server"
    );

    let runs = echo_runs(&journals);
    assert!(
        runs.values().all(|&n| n == 1),
        "a non-idempotent handler ran twice"
    );
    let mut plain_failed = 0;
    for (_, (text, _, result)) in &plain {
        match result {
            Ok(()) => assert_eq!(
                runs.get(text),
                Some(&1),
                "{text} succeeded without running once"
            ),
            Err(err) => {
                plain_failed += 1;
                // Only a call that may have run is reported as such; one said not to have run
                // must not have.
                assert_honest(&runs, text, err);
            }
        }
    }
    eprintln!(
        "idempotent: {} calls, 0 failed; non-idempotent: {} calls, {plain_failed} failed with \
         their outcome, none ran twice; restarted server back after {back_after:?}; {stopped_bytes} \
         bytes to the stopped server from 500 ms after SIGSTOP to SIGCONT",
        idempotent.len(),
        plain.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Routes each address to an in-process server over an in-memory pipe.
struct InMemory(HashMap<SocketAddr, Server>);

impl keel::client::Connector for InMemory {
    fn connect(&self, addr: SocketAddr) -> keel::client::ConnectFuture {
        let server = self.0.get(&addr).cloned();
        Box::pin(async move {
            let server = server.ok_or(std::io::ErrorKind::ConnectionRefused)?;
            let (ours, theirs) = tokio::io::duplex(64 * 1024);
            tokio::spawn(async move { server.serve_io(theirs, addr).await });
            Ok(Box::new(ours) as keel::client::BoxIo)
        })
    }
}

#[tokio::test]
async fn a_connector_carries_the_protocol_over_any_byte_stream() {
    // Addresses that are never dialed: the connector maps them to in-memory servers.
    let addrs: Vec<SocketAddr> = (1..=3)
        .map(|port| SocketAddr::from(([127, 0, 0, 1], port)))
        .collect();
    let servers: HashMap<SocketAddr, Server> = addrs
        .iter()
        .zip(["a", "b", "c"])
        .map(|(&addr, name)| {
            let server = Server::builder()
                .register(
                    "Who.name",
                    move |_ctx: CallContext, _payload: Bytes| async move {
                        Ok(Bytes::from_static(name.as_bytes()))
                    },
                )
                .build();
            (addr, server)
        })
        .collect();
    let refused = SocketAddr::from(([127, 0, 0, 1], 4));
    let channel = Channel::cluster(addrs.iter().copied().chain([refused]))
        .balancer(Balancer::RoundRobin)
        .connector(InMemory(servers))
        .build();
    let mut seen = String::new();
    for _ in 0..9 {
        seen += &who(&channel, options()).await;
    }
    let mut letters: Vec<char> = seen.chars().collect();
    letters.sort_unstable();
    letters.dedup();
    assert_eq!(letters, ['a', 'b', 'c'], "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dedupe_call_that_may_have_run_is_retried_only_on_its_own_server() {
    use keel::server::DedupeConfig;
    let runs = Arc::new(Mutex::new(HashMap::<Bytes, usize>::new()));
    let mut servers = Vec::new();
    for _ in 0..3 {
        let runs = Arc::clone(&runs);
        servers.push(
            support::start(
                Server::builder()
                    .heartbeat_interval(Duration::from_millis(100))
                    .dedupe(DedupeConfig::new())
                    .register("Ledger.append", move |_ctx: CallContext, payload: Bytes| {
                        *runs.lock().unwrap().entry(payload.clone()).or_default() += 1;
                        async move { Ok(payload) }
                    }),
            )
            .await,
        );
    }
    let proxy = Proxy::start(
        servers[0].local_addr(),
        support::chaos_seed("dedupe cluster"),
    )
    .await
    .unwrap();
    let channel = Channel::cluster([
        proxy.local_addr(),
        servers[1].local_addr(),
        servers[2].local_addr(),
    ])
    .balancer(Balancer::RoundRobin)
    .heartbeat_interval(Duration::from_millis(100))
    .build();
    let append = |text: &'static str| {
        channel.call(
            "Ledger.append",
            Bytes::from_static(text.as_bytes()),
            CallOptions::new()
                .dedupe(true)
                .timeout(Duration::from_secs(5)),
        )
    };
    // One call to each endpoint (round robin), so the next goes to the one behind the proxy.
    for text in ["warm-0", "warm-1", "warm-2"] {
        append(text).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Its answer is lost: the call may have run there, and only that server's window can
    // answer a retry with the recorded result. Round robin would send the retry elsewhere.
    assert!(proxy.set_connection_faults(0, Direction::ServerToClient, Faults::none().blackhole()));
    let reply = append("entry").await.unwrap();
    assert_eq!(reply.payload, "entry");
    assert_eq!(
        reply.metadata.get("rpc-replayed").map(|v| &v[..]),
        Some(&b"1"[..]),
        "answered from the recorded result"
    );
    assert_eq!(
        runs.lock().unwrap().get(&Bytes::from_static(b"entry")),
        Some(&1),
        "ran once"
    );
    for server in servers {
        server.shutdown().await;
    }
}

/// One fault of the harsh run, on one server.
#[derive(Clone, Copy, Debug)]
enum Fault {
    Kill,
    Hang,
    Blackhole,
    OneWayPartition,
    BitFlips,
    Latency,
}

/// Issue 13's harsh run, scaled: five server processes, each behind a fault proxy; seeded random
/// kills, hangs, blackholes, one-way partitions, bit flips and +200 ms latency, never more than
/// two servers faulted at once; 10 callers with 1 s deadlines and every default.
async fn harsh_run(duration: Duration, seed: u64) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let dir = std::env::temp_dir().join(format!("keel-cluster-harsh-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (mut servers, mut journals, mut proxies) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..5u64 {
        let journal = dir.join(format!("server-{i}"));
        let _ = std::fs::remove_file(&journal);
        let server = ServerProcess::start(
            support::echo_example(),
            ["--journal".into(), journal.clone().into_os_string()],
        )
        .await
        .unwrap();
        proxies.push(
            Proxy::start(server.addr(), seed.wrapping_add(i))
                .await
                .unwrap(),
        );
        servers.push(server);
        journals.push(journal);
    }
    let channel =
        Channel::cluster(proxies.iter().map(Proxy::local_addr).collect::<Vec<_>>()).build();
    let start = tokio::time::Instant::now();
    let until = start + duration;
    let corrupted = Arc::new(AtomicUsize::new(0));
    let callers: Vec<_> = (0..10u32)
        .map(|caller| {
            let (channel, corrupted) = (channel.clone(), Arc::clone(&corrupted));
            tokio::spawn(async move {
                let mut results = Vec::new();
                let mut n = 0u32;
                while tokio::time::Instant::now() < until {
                    n += 1;
                    let text = format!("{caller}-{n}");
                    let options = CallOptions::new().timeout(Duration::from_secs(1));
                    let began = start.elapsed();
                    let result = if caller < 8 {
                        let sent = Bytes::from(format!("{text}-{}", "x".repeat(64)));
                        let reply = channel
                            .call(
                                "Echo.echo_bytes",
                                args(sent.clone()),
                                options.idempotent(true),
                            )
                            .await;
                        if let Ok(reply) = &reply {
                            if reply.payload != args(sent) {
                                corrupted.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        reply.map(|_| ())
                    } else {
                        channel
                            .call("Echo.echo", args(text.clone()), options)
                            .await
                            .map(|_| ())
                    };
                    results.push((caller, format!("{text} at {began:.2?}"), result));
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                results
            })
        })
        .collect();

    // The schedule: every 1.5 s, a fault of 1 to 3 s on a server not faulted, at most 2 at once.
    let mut healing: Vec<(usize, Fault, tokio::time::Instant)> = Vec::new();
    let mut applied = Vec::new();
    let mut next_fault = start + Duration::from_millis(1000);
    while tokio::time::Instant::now() < until - Duration::from_secs(1) {
        let now = tokio::time::Instant::now();
        let mut still = Vec::new();
        for (server, fault, heal_at) in healing.drain(..) {
            if now < heal_at {
                still.push((server, fault, heal_at));
                continue;
            }
            match fault {
                Fault::Kill => servers[server].restart().await.unwrap(),
                Fault::Hang => servers[server].resume().unwrap(),
                _ => proxies[server].clear_faults(),
            }
        }
        healing = still;
        if now >= next_fault && healing.len() < 2 {
            let free: Vec<usize> = (0..5)
                .filter(|s| healing.iter().all(|h| h.0 != *s))
                .collect();
            let server = free[rng.random_range(0..free.len())];
            let kinds = [
                Fault::Kill,
                Fault::Hang,
                Fault::Blackhole,
                Fault::OneWayPartition,
                Fault::BitFlips,
                Fault::Latency,
            ];
            let fault = kinds[rng.random_range(0..kinds.len())];
            let lasts = Duration::from_millis(rng.random_range(1000..3000));
            let proxy = &proxies[server];
            match fault {
                Fault::Kill => servers[server].kill().await.unwrap(),
                Fault::Hang => servers[server].stop().unwrap(),
                Fault::Blackhole => {
                    proxy.set_faults(Direction::ClientToServer, Faults::none().blackhole());
                    proxy.set_faults(Direction::ServerToClient, Faults::none().blackhole());
                }
                Fault::OneWayPartition => {
                    proxy.set_faults(Direction::ServerToClient, Faults::none().partition());
                }
                Fault::BitFlips => {
                    proxy.set_faults(Direction::ClientToServer, Faults::none().flip_random(1e-4));
                    proxy.set_faults(Direction::ServerToClient, Faults::none().flip_random(1e-4));
                }
                Fault::Latency => proxy.set_faults(
                    Direction::ServerToClient,
                    Faults::none().latency(Duration::from_millis(200), Duration::ZERO),
                ),
            }
            applied.push((now - start, server, fault, lasts));
            healing.push((server, fault, now + lasts));
            next_fault = now + Duration::from_millis(1500);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (server, fault, _) in healing {
        match fault {
            Fault::Kill => servers[server].restart().await.unwrap(),
            Fault::Hang => servers[server].resume().unwrap(),
            _ => proxies[server].clear_faults(),
        }
    }

    let mut results = Vec::new();
    for caller in callers {
        results.extend(caller.await.unwrap());
    }
    let runs = echo_runs(&journals);
    // The results' texts carry " at <time>"; the journals have the text alone.
    let results: Vec<_> = results
        .into_iter()
        .map(|(caller, text, result)| {
            let bare = text.split(" at ").next().unwrap_or_default().to_owned();
            (caller, bare, text, result)
        })
        .collect();
    let idempotent: Vec<_> = results.iter().filter(|(c, ..)| *c < 8).collect();
    let failed: Vec<_> = idempotent.iter().filter(|(.., r)| r.is_err()).collect();
    let plain: Vec<_> = results.iter().filter(|(c, ..)| *c >= 8).collect();
    let plain_failed = plain.iter().filter(|(.., r)| r.is_err()).count();
    eprintln!(
        "harsh run, seed {seed}: faults {applied:?}\n{} idempotent calls, {} failed, {} corrupted; \
         {} non-idempotent, {plain_failed} failed",
        idempotent.len(),
        failed.len(),
        corrupted.load(Ordering::SeqCst),
        plain.len()
    );
    for (_, _, text, result) in failed.iter().take(20) {
        eprintln!("  {text}: {result:?}");
    }
    assert_eq!(
        corrupted.load(Ordering::SeqCst),
        0,
        "a corrupted value was delivered"
    );
    assert!(
        runs.values().all(|&n| n == 1),
        "a non-idempotent handler ran twice"
    );
    for (_, text, _, result) in &plain {
        if let Err(err) = result {
            assert_honest(&runs, text, err);
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} idempotent calls failed",
        failed.len(),
        idempotent.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_harsh_seeded_run_over_five_servers_loses_no_idempotent_call() {
    harsh_run(Duration::from_secs(15), support::chaos_seed("harsh run")).await;
}

/// The full length, 120 s: `cargo test --test cluster -- --ignored harsh`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a 120 s soak"]
async fn a_harsh_seeded_run_of_120_s() {
    harsh_run(
        Duration::from_secs(120),
        support::chaos_seed("harsh run 120 s"),
    )
    .await;
}

/// `#[fork]` and `#[failfast]` through the typed client.
#[keel::service]
pub trait Racer {
    /// Forked to two servers: the first answer wins.
    #[idempotent]
    #[fork(2)]
    async fn race(&self) -> String;
    /// One attempt on one server.
    #[idempotent]
    #[failfast]
    async fn once(&self) -> String;
}

struct Racing {
    name: &'static str,
    delay: Duration,
}

impl Racer for Racing {
    async fn race(&self) -> String {
        tokio::time::sleep(self.delay).await;
        self.name.to_owned()
    }
    async fn once(&self) -> String {
        self.name.to_owned()
    }
}

#[tokio::test]
async fn a_fork_attribute_sends_the_typed_call_to_two_servers() {
    let mut servers = Vec::new();
    for (name, delay) in [("slow", Duration::from_secs(5)), ("fast", Duration::ZERO)] {
        servers.push(
            support::start(Server::builder().add_service(RacerServer::new(Racing { name, delay })))
                .await,
        );
    }
    let channel = Channel::cluster(
        servers
            .iter()
            .map(ServerHandle::local_addr)
            .collect::<Vec<_>>(),
    )
    .balancer(Balancer::RoundRobin)
    .build();
    let client = RacerClient::new(channel);
    for _ in 0..6 {
        // Round robin alone would send every other call to the slow one.
        let started = tokio::time::Instant::now();
        assert_eq!(client.race().await.unwrap(), "fast");
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    let once = client.once().await.unwrap();
    assert!(once == "slow" || once == "fast");
    for server in servers {
        server.shutdown().await;
    }
}

#[tokio::test]
async fn a_server_failing_every_other_call_is_ejected_by_the_success_rate_rule() {
    let (bad, bad_calls) = {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let server = support::start(Server::builder().register(
            "Who.name",
            move |_ctx: CallContext, _payload: Bytes| {
                // Every other call fails: never 5 in a row.
                let fail = counter.fetch_add(1, Ordering::SeqCst) % 2 == 0;
                async move {
                    if fail {
                        Err(keel::core::Status::new(StatusCode::UNAVAILABLE, "flaky"))
                    } else {
                        Ok(Bytes::from_static(b"bad"))
                    }
                }
            },
        ))
        .await;
        (server, calls)
    };
    let mut good = Vec::new();
    for name in ["a", "b", "c", "d"] {
        good.push(named(name).await.0);
    }
    let addrs: Vec<SocketAddr> = std::iter::once(bad.local_addr())
        .chain(good.iter().map(ServerHandle::local_addr))
        .collect();
    let (events, observer) = recorder();
    let rule = keel::client::SuccessRate::new()
        .interval(Duration::from_secs(1))
        .request_volume(20);
    let channel = Channel::cluster(addrs)
        .balancer(Balancer::RoundRobin)
        .outlier_detection(keel::client::OutlierDetection::new().success_rate(rule))
        .disable_circuit_breaker()
        .on_event(observer)
        .build();
    who(&channel, options().idempotent(true)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let call = || channel.call("Who.name", Bytes::new(), options().no_retry());
    // Over 20 attempts on each endpoint in the first interval, then past its end.
    for _ in 0..150 {
        let _ = call().await;
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let _ = call().await;
    let before = bad_calls.load(Ordering::SeqCst);
    for _ in 0..50 {
        call().await.unwrap();
    }
    assert_eq!(
        bad_calls.load(Ordering::SeqCst),
        before,
        "ejected: no call reaches it"
    );
    assert!(
        events.lock().unwrap().iter().any(|e| matches!(
            e,
            ClusterEvent::Ejected { addr, times: 1, .. } if *addr == bad.local_addr()
        )),
        "{:?}",
        events.lock().unwrap()
    );
    bad.shutdown().await;
    for server in good {
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ejected_endpoint_that_accepts_tcp_but_does_not_answer_stays_ejected() {
    let (a, _) = named("a").await;
    let (b, b_calls, b_failing) = switchable("b").await;
    b_failing.store(false, Ordering::SeqCst);
    // b behind the proxy: pausing it holds every byte, as a stopped process's kernel does.
    let proxy = Proxy::start(b.local_addr(), support::chaos_seed("probe"))
        .await
        .unwrap();
    let (events, observer) = recorder();
    let channel = Channel::cluster([a.local_addr(), proxy.local_addr()])
        .balancer(Balancer::RoundRobin)
        .outlier_detection(
            keel::client::OutlierDetection::new().base_ejection_time(Duration::from_millis(300)),
        )
        .disable_circuit_breaker()
        .connect_timeout(Duration::from_millis(500))
        .on_event(observer)
        .build();
    warm_up(&channel).await;
    b_failing.store(true, Ordering::SeqCst);
    let ejected = || {
        events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, ClusterEvent::Ejected { .. }))
    };
    for _ in 0..100 {
        if ejected() {
            break;
        }
        who(&channel, options().idempotent(true)).await;
    }
    assert!(ejected());
    // Ejected; now b's path holds bytes: a probe connects (the proxy accepts) but gets no
    // handshake, so b stays out, ejected again for longer after each failed probe.
    proxy.pause();
    b_failing.store(false, Ordering::SeqCst);
    let at_pause = b_calls.load(Ordering::SeqCst);
    let until = tokio::time::Instant::now() + Duration::from_millis(2500);
    while tokio::time::Instant::now() < until {
        assert_eq!(who(&channel, options().idempotent(true)).await, "a");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        b_calls.load(Ordering::SeqCst),
        at_pause,
        "no call reached b while it held bytes"
    );
    let failed_probes = events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, ClusterEvent::Ejected { times, .. } if *times >= 2))
        .count();
    assert!(failed_probes >= 1, "{:?}", events.lock().unwrap());
    assert!(
        !events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, ClusterEvent::Probed { .. })),
        "no probe passed while it held bytes"
    );
    // Answering again: a probe passes, then a call on probation succeeds and readmits it.
    proxy.resume();
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut back = false;
    while tokio::time::Instant::now() < until && !back {
        back = who(&channel, options().idempotent(true)).await == "b";
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(back, "b never came back: {:?}", events.lock().unwrap());
    let events = events.lock().unwrap().clone();
    let probed = events
        .iter()
        .position(|e| matches!(e, ClusterEvent::Probed { .. }));
    let readmitted = events
        .iter()
        .position(|e| matches!(e, ClusterEvent::Readmitted { .. }));
    assert!(probed.is_some() && readmitted > probed, "{events:?}");
    a.shutdown().await;
    b.shutdown().await;
}
