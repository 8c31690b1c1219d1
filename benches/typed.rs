//! What the typed layer's schema check costs a `#[keel::service]` call: the same `String ->
//! String` echo as two methods, one checked (the client sends `rpc-schema`, the server compares
//! it) and one with `#[no_schema_check]`, over one connection on 127.0.0.1, client and server in
//! one process.
//!
//! - `cargo bench --bench typed`: rounds that alternate the two methods (checked first in even
//!   rounds), 64 calls in flight, a fixed number of calls per round; prints each side's median
//!   µs per call and the median (range) of the per-round ratios checked / unchecked. Wall time on
//!   a shared machine is noisy; the ratio within a round is what to read.
//! - `cargo bench --bench typed -- --only checked --calls 30000` (or `unchecked`): one method
//!   only, for instruction counts under callgrind: per call = (instructions at 30,000 − at
//!   10,000) / 20,000, so start-up cancels (see benches/README.md, "What the schema fingerprint
//!   costs").
//!
//! Any run without `--bench` (as `cargo test --benches` makes) is a smoke run of one short round.

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use keel::{Channel, Server};

/// The service measured.
#[keel::service]
pub trait Echo {
    /// Checked: the client sends the schema fingerprint, the server compares it.
    async fn checked(&self, text: String) -> String;
    /// The same without the check.
    #[no_schema_check]
    async fn unchecked(&self, text: String) -> String;
}

struct Same;

impl Echo for Same {
    async fn checked(&self, text: String) -> String {
        text
    }
    async fn unchecked(&self, text: String) -> String {
        text
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Method {
    Checked,
    Unchecked,
}

/// Makes `calls` calls of `method`, 64 in flight; the time they took.
async fn run(client: &EchoClient, method: Method, calls: usize) -> Duration {
    let started = Instant::now();
    let text = "a short string of 32 bytes......".to_owned();
    futures::stream::iter(0..calls)
        .map(|_| {
            let (client, text) = (client.clone(), text.clone());
            async move {
                let echoed = match method {
                    Method::Checked => client.checked(text).await,
                    Method::Unchecked => client.unchecked(text).await,
                };
                assert_eq!(echoed.expect("the echo").len(), 32);
            }
        })
        .buffer_unordered(64)
        .collect::<()>()
        .await;
    started.elapsed()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bench = args.iter().any(|a| a == "--bench");
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let only = value("--only").map(|m| match m.as_str() {
        "checked" => Method::Checked,
        "unchecked" => Method::Unchecked,
        other => panic!("--only takes checked or unchecked, not {other:?}"),
    });
    let calls: usize = value("--calls").map_or(if bench { 20_000 } else { 500 }, |n| {
        n.parse().expect("--calls takes a number")
    });
    let rounds = if bench { 15 } else { 1 };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let server = Server::builder()
            .add_service(EchoServer::new(Same))
            .build()
            .bind("127.0.0.1:0")
            .await
            .unwrap();
        let client = EchoClient::new(Channel::builder(server.local_addr()).build());
        if let Some(method) = only {
            let took = run(&client, method, calls).await;
            println!("{method:?}: {calls} calls in {took:?}");
            server.shutdown().await;
            return;
        }
        // Warm up both paths (connection, fingerprints, latency estimates).
        run(&client, Method::Checked, 500).await;
        run(&client, Method::Unchecked, 500).await;
        let (mut checked, mut unchecked, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            let order = if round % 2 == 0 {
                [Method::Checked, Method::Unchecked]
            } else {
                [Method::Unchecked, Method::Checked]
            };
            let mut took = [0.0; 2];
            for method in order {
                let per_call = run(&client, method, calls).await.as_secs_f64() * 1e6 / calls as f64;
                took[usize::from(method == Method::Unchecked)] = per_call;
            }
            checked.push(took[0]);
            unchecked.push(took[1]);
            ratios.push(took[0] / took[1]);
        }
        let (low, high) = ratios
            .iter()
            .fold((f64::MAX, f64::MIN), |(l, h), r| (l.min(*r), h.max(*r)));
        println!(
            "{rounds} rounds of {calls} calls, 64 in flight: checked {:.2} µs/call, unchecked {:.2} \
             µs/call, checked / unchecked {:.3} ({low:.3}–{high:.3})",
            median(&mut checked),
            median(&mut unchecked),
            median(&mut ratios),
        );
        server.shutdown().await;
    });
}
