//! End-to-end echo over TCP on 127.0.0.1: keel against a raw baseline written here, in the same
//! process run.
//!
//! The baseline is what a hand-rolled multiplexed echo over tokio looks like: tokio-util's
//! `LengthDelimitedCodec` framing with a `u64` request id in front of the payload
//! (`[u32 length | u64 id | payload]`), no checksums, no deadlines, no heartbeats.
//!
//! - Baseline server: one task per connection over `Framed<TcpStream, _>`. It echoes every frame
//!   that is already readable with `feed`, then flushes once, so responses coalesce the way keel's
//!   do.
//! - Baseline client, one call in flight: send, then receive, on one `Framed`.
//! - Baseline client, many calls in flight: the socket split in two halves. A writer task takes
//!   requests from an unbounded mpsc and feeds every queued one before flushing. A reader task
//!   completes each caller's oneshot by request id.
//! - keel: `Server` with an echo handler, `Channel::call`.
//!
//! Workloads (payload bytes are the same for both sides):
//! - `1 conn x 1 in flight, 32 B`: one caller task in a loop; p50 and p99 latency.
//! - `1 conn x 64 in flight, 32 B`: 64 caller tasks (`tokio::spawn`) share one connection, each
//!   in a call loop; calls per second.
//! - `4 conns x 64 in flight, 32 B`: the same on each of 4 connections (256 callers); calls/s.
//! - `1 conn x 8 in flight, 64 KiB`: 8 caller tasks on one connection; MB/s of payload echoed, one
//!   way: calls/s x 65,536 bytes / 10^6.
//!
//! Every reply is checked against its request (32 B: every byte; 64 KiB: the length and the first,
//! middle and last bytes). Each caller task sends its own byte pattern, so a reply delivered to the
//! wrong caller fails the run instead of looking fast.
//!
//! Each workload runs in rounds that alternate baseline and keel (B K, K B, B K, ...), on a
//! multi-thread tokio runtime with 2 worker threads. A round is 0.5 s of warm-up and then 2 s
//! measured: only calls that complete inside the measured window count. Ratios are keel over
//! baseline, paired by round; the table gives their median and range. Two more figures come from
//! the process's CPU time over the window (both client and server run in this process):
//! `CPU µs/call`, the whole echo's CPU cost per call, and `cores busy`, how many of the cores it
//! kept busy. Throughput is about `cores busy / CPU µs per call`, which tells whether a gap comes
//! from work per call or from waiting.
//!
//! Modes:
//! - `cargo bench --bench echo`: the full run, 3 rounds per side per workload (about a minute).
//! - `cargo test --benches`, or any run without `--bench` or with `--test`: a smoke run, 1 round
//!   of 20 ms warm-up and 50 ms measured per workload, so CI checks that every path works; it
//!   judges no target.
//! - Arguments: `--rounds N`; `--side keel|baseline` runs one side only (for profiling);
//!   `--baseline-mux` sends the baseline's single caller through its multiplexed client, to price
//!   the task hops such a client adds; any other word runs only the workloads whose name contains
//!   it, with or without spaces (`cargo bench --bench echo -- 64KiB`).
//!
//! benches/README.md has the measured figures.

use std::collections::HashMap;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use keel::{CallOptions, Channel, Server, ServerHandle};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::codec::{Decoder, Encoder, Framed, FramedRead, FramedWrite, LengthDelimitedCodec};

/// The echo method on the keel side.
const METHOD: &str = "Echo.echo";

/// Frame size limit on both sides, well above the largest payload.
const MAX_FRAME_SIZE: u32 = 8 << 20;

/// How long a round may overrun its window before the bench gives up on it.
const ROUND_SLACK: Duration = Duration::from_secs(30);

/// What a workload reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Metric {
    /// p50 and p99 latency of single calls (and calls/s, for information).
    Latency,
    /// Completed calls per second.
    CallsPerSec,
    /// Payload megabytes (10^6 bytes) echoed per second, counted one way.
    MegabytesPerSec,
}

#[derive(Clone, Copy, Debug)]
struct Workload {
    name: &'static str,
    connections: usize,
    in_flight: usize,
    payload: usize,
    metric: Metric,
}

const WORKLOADS: [Workload; 4] = [
    Workload {
        name: "1 conn x 1 in flight, 32 B",
        connections: 1,
        in_flight: 1,
        payload: 32,
        metric: Metric::Latency,
    },
    Workload {
        name: "1 conn x 64 in flight, 32 B",
        connections: 1,
        in_flight: 64,
        payload: 32,
        metric: Metric::CallsPerSec,
    },
    Workload {
        name: "4 conns x 64 in flight, 32 B",
        connections: 4,
        in_flight: 64,
        payload: 32,
        metric: Metric::CallsPerSec,
    },
    Workload {
        name: "1 conn x 8 in flight, 64 KiB",
        connections: 1,
        in_flight: 8,
        payload: 64 * 1024,
        metric: Metric::MegabytesPerSec,
    },
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Baseline,
    /// keel as users get it: the retry layer on (its default policy and budget).
    Keel,
    /// keel with the retry layer off (`ChannelBuilder::disable_retries`): prices the layer.
    KeelNoRetry,
    /// keel over a channel of 3 endpoints (`Channel::cluster`, default balancer), 3 servers in
    /// this process: prices spreading calls over 3 connections, with the balancing layer.
    KeelCluster,
    /// keel over a balanced channel of 1 endpoint (a discovery source that never changes it):
    /// every per-call step of the balancing layer, without spreading the calls.
    KeelBalanced1,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Self::Baseline => "baseline",
            Self::Keel => "keel",
            Self::KeelNoRetry => "keel-noretry",
            Self::KeelCluster => "keel-cluster3",
            Self::KeelBalanced1 => "keel-balanced1",
        }
    }
}

#[derive(Clone, Debug)]
struct Config {
    warmup: Duration,
    measure: Duration,
    rounds: usize,
    sides: Vec<Side>,
    filters: Vec<String>,
    full: bool,
    /// The baseline's single caller uses the multiplexed client (mpsc, writer and reader tasks,
    /// oneshot) instead of send-then-receive: a diagnostic that prices those hops.
    baseline_mux: bool,
}

impl Config {
    fn from_args(args: &[String]) -> Self {
        let full = args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test");
        let (warmup, measure, rounds) = if full {
            (Duration::from_millis(500), Duration::from_secs(2), 3)
        } else {
            (Duration::from_millis(20), Duration::from_millis(50), 1)
        };
        let mut config = Self {
            warmup,
            measure,
            rounds,
            sides: vec![
                Side::Baseline,
                Side::Keel,
                Side::KeelNoRetry,
                Side::KeelCluster,
                Side::KeelBalanced1,
            ],
            filters: Vec::new(),
            full,
            baseline_mux: false,
        };
        let mut sides_given = false;
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--rounds" => {
                    config.rounds = args
                        .next()
                        .and_then(|n| n.parse().ok())
                        .filter(|&n| n > 0)
                        .expect("--rounds takes a positive number");
                }
                "--side" => {
                    // Repeatable: the first one replaces the default set of sides.
                    if !sides_given {
                        config.sides.clear();
                        sides_given = true;
                    }
                    config.sides.push(match args.next().map(String::as_str) {
                        Some("keel") => Side::Keel,
                        Some("keel-noretry") => Side::KeelNoRetry,
                        Some("keel-cluster3") => Side::KeelCluster,
                        Some("keel-balanced1") => Side::KeelBalanced1,
                        Some("baseline") => Side::Baseline,
                        _ => panic!(
                            "--side takes keel, keel-noretry, keel-cluster3, keel-balanced1 or baseline"
                        ),
                    });
                }
                "--baseline-mux" => config.baseline_mux = true,
                flag if flag.starts_with('-') => {} // --bench, --test and harness flags
                word => config.filters.push(word.to_owned()),
            }
        }
        config
    }

    fn selects(&self, workload: &Workload) -> bool {
        let compact: String = workload.name.chars().filter(|c| *c != ' ').collect();
        self.filters.is_empty()
            || self
                .filters
                .iter()
                .any(|f| workload.name.contains(f.as_str()) || compact.contains(f.as_str()))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = Config::from_args(&args);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run(config));
    runtime.shutdown_timeout(Duration::from_secs(5));
}

async fn run(config: Config) {
    let others = [
        keel_server().await.expect("keel server"),
        keel_server().await.expect("keel server"),
    ];
    let keel_server = keel_server().await.expect("keel server");
    let (raw_addr, raw_accept) = raw_server().await.expect("baseline server");
    let addrs = Addrs {
        keel: keel_server.local_addr(),
        cluster: [
            keel_server.local_addr(),
            others[0].local_addr(),
            others[1].local_addr(),
        ],
        baseline: raw_addr,
    };
    println!(
        "echo benchmark, {} mode: {} round(s) per side, {:?} warm-up + {:?} measured per round, \
         2 tokio worker threads",
        if config.full { "full" } else { "smoke" },
        config.rounds,
        config.warmup,
        config.measure,
    );
    let mut rows = Vec::new();
    for workload in WORKLOADS.iter().filter(|w| config.selects(w)) {
        let mut results: HashMap<&'static str, Vec<RoundResult>> = HashMap::new();
        for round in 0..config.rounds {
            let mut order = config.sides.clone();
            if round % 2 == 1 {
                order.reverse();
            }
            for side in order {
                let result = run_round(side, workload, &addrs, &config).await;
                println!(
                    "  {:<30} round {} {:<8} {}",
                    workload.name,
                    round + 1,
                    side.name(),
                    result.describe(workload),
                );
                results.entry(side.name()).or_default().push(result);
            }
        }
        rows.push((*workload, results));
    }
    print_table(&rows, config.full);
    raw_accept.abort();
    for server in others {
        let _ = tokio::time::timeout(Duration::from_secs(5), server.shutdown()).await;
    }
    if tokio::time::timeout(Duration::from_secs(5), keel_server.shutdown())
        .await
        .is_err()
    {
        eprintln!("keel server did not shut down within 5 s");
    }
}

#[derive(Clone, Copy, Debug)]
struct Addrs {
    keel: SocketAddr,
    /// The keel server and two more, for the 3-endpoint channel.
    cluster: [SocketAddr; 3],
    baseline: SocketAddr,
}

// ---------------------------------------------------------------------------------------------
// keel side

async fn keel_server() -> io::Result<ServerHandle> {
    Server::builder()
        .max_concurrent_calls(1024)
        .max_frame_size(MAX_FRAME_SIZE)
        .drain_grace(Duration::from_secs(1))
        .register(
            METHOD,
            |_ctx: keel::CallContext, payload: Bytes| async move { Ok(payload) },
        )
        .build()
        .bind("127.0.0.1:0")
        .await
}

fn keel_channel(addrs: &Addrs, side: Side) -> Channel {
    let builder = match side {
        Side::KeelCluster => Channel::cluster(addrs.cluster),
        Side::KeelBalanced1 => Channel::cluster([addrs.keel]).discover(futures::stream::pending()),
        _ => Channel::builder(addrs.keel),
    }
    .max_frame_size(MAX_FRAME_SIZE);
    if side == Side::KeelNoRetry {
        builder.disable_retries().build()
    } else {
        builder.build()
    }
}

// ---------------------------------------------------------------------------------------------
// Baseline side

/// `[u32 length | u64 request id | payload]`: tokio-util's `LengthDelimitedCodec` framing (its
/// default 4-byte big-endian length prefix, which counts the bytes after it) carrying a request
/// id. Decoding is `LengthDelimitedCodec`'s; encoding writes the same format directly, because the
/// id and the payload are two buffers and `LengthDelimitedCodec::encode` takes one (concatenating
/// them first would cost the baseline a second copy of the payload).
#[derive(Debug)]
struct IdCodec {
    frames: LengthDelimitedCodec,
}

impl IdCodec {
    fn new() -> Self {
        Self {
            frames: LengthDelimitedCodec::builder()
                .max_frame_length(usize::try_from(MAX_FRAME_SIZE).unwrap_or(usize::MAX))
                .new_codec(),
        }
    }
}

impl Decoder for IdCodec {
    type Item = (u64, Bytes);
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<(u64, Bytes)>> {
        let Some(mut frame) = self.frames.decode(src)? else {
            return Ok(None);
        };
        if frame.len() < 8 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "frame shorter than a request id",
            ));
        }
        let id = frame.get_u64();
        Ok(Some((id, frame.freeze())))
    }
}

impl Encoder<(u64, Bytes)> for IdCodec {
    type Error = io::Error;

    fn encode(&mut self, (id, payload): (u64, Bytes), dst: &mut BytesMut) -> io::Result<()> {
        let len = u32::try_from(8 + payload.len())
            .ok()
            .filter(|&len| len <= MAX_FRAME_SIZE)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
        dst.reserve(12 + payload.len());
        dst.put_u32(len);
        dst.put_u64(id);
        dst.extend_from_slice(&payload);
        Ok(())
    }
}

/// Binds the baseline echo server; the returned task accepts until aborted.
async fn raw_server() -> io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let accept = tokio::spawn(async move {
        while let Ok((io, _peer)) = listener.accept().await {
            tokio::spawn(async move {
                if let Err(err) = raw_serve(io).await {
                    eprintln!("baseline server connection failed: {err}");
                }
            });
        }
    });
    Ok((addr, accept))
}

/// Echoes every frame until the client closes: all frames already readable are fed, then one
/// flush.
async fn raw_serve(io: TcpStream) -> io::Result<()> {
    io.set_nodelay(true)?;
    let mut framed = Framed::new(io, IdCodec::new());
    while let Some(frame) = framed.next().await {
        framed.feed(frame?).await?;
        loop {
            match poll_fn(|cx| Poll::Ready(framed.poll_next_unpin(cx))).await {
                Poll::Ready(Some(frame)) => framed.feed(frame?).await?,
                Poll::Ready(None) => return framed.flush().await,
                Poll::Pending => break,
            }
        }
        framed.flush().await?;
    }
    Ok(())
}

async fn raw_connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let io = TcpStream::connect(addr).await?;
    io.set_nodelay(true)?;
    Ok(io)
}

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<Bytes>>>>;

/// The natural raw multiplexed client: callers register a oneshot under a fresh request id and
/// queue the request; a writer task feeds every queued request and flushes; a reader task
/// completes oneshots by id. Clones share the connection.
#[derive(Clone, Debug)]
struct RawClient {
    requests: mpsc::UnboundedSender<(u64, Bytes)>,
    waiters: Waiters,
    next_id: Arc<AtomicU64>,
}

impl RawClient {
    async fn connect(addr: SocketAddr) -> io::Result<Self> {
        let (read, write) = raw_connect(addr).await?.into_split();
        let mut reader = FramedRead::new(read, IdCodec::new());
        let mut writer = FramedWrite::new(write, IdCodec::new());
        let (requests, mut queue) = mpsc::unbounded_channel::<(u64, Bytes)>();
        let waiters: Waiters = Arc::default();
        tokio::spawn(async move {
            while let Some(first) = queue.recv().await {
                if writer.feed(first).await.is_err() {
                    return;
                }
                while let Ok(more) = queue.try_recv() {
                    if writer.feed(more).await.is_err() {
                        return;
                    }
                }
                if writer.flush().await.is_err() {
                    return;
                }
            }
            // Every client clone is gone: dropping the write half closes our side.
        });
        let table = Arc::clone(&waiters);
        tokio::spawn(async move {
            while let Some(Ok((id, payload))) = reader.next().await {
                let waiter = lock(&table).remove(&id);
                if let Some(waiter) = waiter {
                    let _ = waiter.send(payload);
                }
            }
            // The connection ended: every caller still waiting fails.
            lock(&table).clear();
        });
        Ok(Self {
            requests,
            waiters,
            next_id: Arc::new(AtomicU64::new(1)),
        })
    }

    async fn call(&self, payload: Bytes) -> io::Result<Bytes> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (done, reply) = oneshot::channel();
        lock(&self.waiters).insert(id, done);
        let closed = || io::Error::new(io::ErrorKind::BrokenPipe, "baseline connection closed");
        self.requests.send((id, payload)).map_err(|_| closed())?;
        reply.await.map_err(|_| closed())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------------------------
// Callers

/// A shared connection that many caller tasks use at once.
#[derive(Clone, Debug)]
enum Multiplexed {
    Keel(Channel),
    Baseline(RawClient),
}

impl Multiplexed {
    async fn connect(side: Side, addrs: &Addrs) -> Self {
        match side {
            Side::Keel | Side::KeelNoRetry | Side::KeelCluster | Side::KeelBalanced1 => {
                Self::Keel(keel_channel(addrs, side))
            }
            Side::Baseline => Self::Baseline(
                RawClient::connect(addrs.baseline)
                    .await
                    .expect("baseline connect"),
            ),
        }
    }
}

/// One caller with one call in flight.
#[derive(Debug)]
enum Serial {
    Keel(Channel),
    Baseline {
        framed: Framed<TcpStream, IdCodec>,
        next_id: u64,
    },
    Shared(Multiplexed),
}

impl Serial {
    async fn call(&mut self, payload: Bytes) -> Bytes {
        match self {
            Self::Keel(channel) | Self::Shared(Multiplexed::Keel(channel)) => {
                channel
                    .call(METHOD, payload, CallOptions::new())
                    .await
                    .expect("keel call")
                    .payload
            }
            Self::Shared(Multiplexed::Baseline(client)) => {
                client.call(payload).await.expect("baseline call")
            }
            Self::Baseline { framed, next_id } => {
                *next_id += 1;
                framed
                    .send((*next_id, payload))
                    .await
                    .expect("baseline send");
                let (id, reply) = framed
                    .next()
                    .await
                    .expect("baseline connection closed")
                    .expect("baseline receive");
                assert_eq!(id, *next_id, "baseline reply to another request");
                reply
            }
        }
    }
}

/// A payload whose bytes depend on `seed`, so replies sent to the wrong caller are caught.
fn payload(len: usize, seed: usize) -> Bytes {
    (0..len)
        .map(|i| (i.wrapping_mul(31).wrapping_add(seed.wrapping_mul(7))).to_le_bytes()[0])
        .collect()
}

fn check_reply(sent: &Bytes, got: &Bytes) {
    if sent.len() <= 1024 {
        assert_eq!(got, sent, "echo reply differs from the request");
    } else {
        let mid = sent.len() / 2;
        assert!(
            got.len() == sent.len()
                && got[0] == sent[0]
                && got[mid] == sent[mid]
                && got[sent.len() - 1] == sent[sent.len() - 1],
            "echo reply differs from the request"
        );
    }
}

/// The measured window of a round.
#[derive(Clone, Copy, Debug)]
struct Window {
    start: Instant,
    end: Instant,
}

/// What one caller saw in the window.
#[derive(Debug)]
struct Tally {
    calls: u64,
    /// Call latencies in nanoseconds, kept only where the workload reports them.
    latency: Option<Histogram<u64>>,
}

impl Tally {
    fn new(latency: bool) -> Self {
        Self {
            calls: 0,
            // 10 ns to 60 s, 3 significant digits.
            latency: latency.then(|| {
                Histogram::new_with_bounds(10, 60_000_000_000, 3).expect("histogram bounds")
            }),
        }
    }
}

/// User plus system CPU time of this process so far, from /proc/self/stat (Linux; `None`
/// elsewhere). The kernel counts it in ticks of 10 ms (USER_HZ = 100), so a 2 s window is read
/// to within 1%.
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses: state is field 3, utime 14.
    let mut fields = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Calls in a loop until the window ends, and at least once. A call counts, and its latency is
/// recorded, when it starts and completes inside the window.
async fn caller_loop(mut caller: Serial, sent: Bytes, window: Window, latency: bool) -> Tally {
    let mut tally = Tally::new(latency);
    let mut first = true;
    loop {
        let started = Instant::now();
        if started >= window.end && !first {
            return tally;
        }
        first = false;
        let got = caller.call(sent.clone()).await;
        let done = Instant::now();
        check_reply(&sent, &got);
        if started >= window.start && done <= window.end {
            tally.calls += 1;
            if let Some(histogram) = &mut tally.latency {
                histogram.saturating_record(nanos(done - started));
            }
        }
    }
}

#[derive(Debug)]
struct RoundResult {
    calls: u64,
    /// CPU time of the whole process (user + system) during the window.
    cpu: Option<Duration>,
    secs: f64,
    payload: usize,
    latency: Option<Histogram<u64>>,
}

impl RoundResult {
    fn calls_per_sec(&self) -> f64 {
        self.calls as f64 / self.secs
    }

    fn megabytes_per_sec(&self) -> f64 {
        self.calls_per_sec() * self.payload as f64 / 1e6
    }

    fn quantile_us(&self, q: f64) -> f64 {
        self.latency
            .as_ref()
            .map_or(f64::NAN, |h| h.value_at_quantile(q) as f64 / 1e3)
    }

    /// The workload's figures: (name, value, whether higher is better).
    fn figures(&self, workload: &Workload) -> Vec<(&'static str, f64, bool)> {
        let mut figures = self.metric_figures(workload);
        if let Some(cpu) = self.cpu {
            let secs = cpu.as_secs_f64();
            figures.push(("CPU µs/call", secs * 1e6 / self.calls as f64, false));
            figures.push(("cores busy", secs / self.secs, false));
        }
        figures
    }

    fn metric_figures(&self, workload: &Workload) -> Vec<(&'static str, f64, bool)> {
        match workload.metric {
            Metric::Latency => vec![
                ("p50 µs", self.quantile_us(0.5), false),
                ("p99 µs", self.quantile_us(0.99), false),
                ("calls/s", self.calls_per_sec(), true),
            ],
            Metric::CallsPerSec => vec![("calls/s", self.calls_per_sec(), true)],
            Metric::MegabytesPerSec => vec![
                ("MB/s", self.megabytes_per_sec(), true),
                ("calls/s", self.calls_per_sec(), true),
            ],
        }
    }

    fn describe(&self, workload: &Workload) -> String {
        self.figures(workload)
            .iter()
            .map(|(name, value, _)| format!("{name} {}", fmt_value(*value)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

async fn run_round(side: Side, workload: &Workload, addrs: &Addrs, config: &Config) -> RoundResult {
    let mut callers = Vec::new();
    for _ in 0..workload.connections {
        if workload.in_flight == 1 && !(side == Side::Baseline && config.baseline_mux) {
            callers.push(match side {
                Side::Keel | Side::KeelNoRetry | Side::KeelCluster | Side::KeelBalanced1 => {
                    Serial::Keel(keel_channel(addrs, side))
                }
                Side::Baseline => Serial::Baseline {
                    framed: Framed::new(
                        raw_connect(addrs.baseline).await.expect("baseline connect"),
                        IdCodec::new(),
                    ),
                    next_id: 0,
                },
            });
        } else {
            let shared = Multiplexed::connect(side, addrs).await;
            for _ in 0..workload.in_flight {
                callers.push(Serial::Shared(shared.clone()));
            }
        }
    }
    let latency = workload.metric == Metric::Latency;
    let start = Instant::now() + config.warmup;
    let window = Window {
        start,
        end: start + config.measure,
    };
    // The process's CPU time across the window: both sides' client and server run in this
    // process, so this is the CPU the whole echo costs.
    // Skipped in smoke runs: the kernel's 10 ms ticks are too coarse for a 50 ms window.
    let full = config.full;
    let cpu = tokio::spawn(async move {
        if !full {
            return None;
        }
        tokio::time::sleep_until(window.start.into()).await;
        let before = process_cpu();
        tokio::time::sleep_until(window.end.into()).await;
        Some(process_cpu()?.saturating_sub(before?))
    });
    let tasks: Vec<JoinHandle<Tally>> = callers
        .into_iter()
        .enumerate()
        .map(|(seed, caller)| {
            let sent = payload(workload.payload, seed);
            tokio::spawn(caller_loop(caller, sent, window, latency))
        })
        .collect();
    let mut total = Tally::new(latency);
    let limit = config.warmup + config.measure + ROUND_SLACK;
    for task in tasks {
        let tally = tokio::time::timeout(limit, task)
            .await
            .unwrap_or_else(|_| panic!("{} round of {:?} hung", side.name(), workload.name))
            .expect("caller task panicked");
        total.calls += tally.calls;
        if let (Some(total), Some(one)) = (&mut total.latency, &tally.latency) {
            total.add(one).expect("histograms with the same bounds");
        }
    }
    // Every caller made at least one verified call. A smoke run on a loaded machine may see none
    // complete inside its 50 ms window; a full run must.
    assert!(
        total.calls > 0 || !config.full,
        "{} completed no call in the window of {:?}",
        side.name(),
        workload.name
    );
    RoundResult {
        calls: total.calls,
        cpu: cpu.await.ok().flatten(),
        secs: config.measure.as_secs_f64(),
        payload: workload.payload,
        latency: total.latency,
    }
}

// ---------------------------------------------------------------------------------------------
// Report

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn fmt_value(value: f64) -> String {
    if value >= 1000.0 {
        format!("{value:.0}")
    } else if value >= 100.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// The target for a figure, as a ratio keel / baseline, and its direction.
fn target(workload: &Workload, figure: &str) -> Option<(f64, bool)> {
    match (workload.metric, figure) {
        (Metric::Latency, "p50 µs") => Some((1.25, false)),
        (Metric::CallsPerSec, "calls/s") => Some((0.8, true)),
        (Metric::MegabytesPerSec, "MB/s") => Some((0.85, true)),
        _ => None,
    }
}

type Row = (Workload, HashMap<&'static str, Vec<RoundResult>>);

/// The retry layer's target, as a ratio keel (retry layer on) / keel (off): at most 5 % slower.
fn retry_layer_target(workload: &Workload, figure: &str) -> Option<(f64, bool)> {
    match (workload.metric, figure) {
        (Metric::Latency, "p50 µs") => Some((1.05, false)),
        (Metric::CallsPerSec, "calls/s") => Some((0.95, true)),
        (Metric::MegabytesPerSec, "MB/s") => Some((0.95, true)),
        _ => None,
    }
}

fn print_table(rows: &[Row], judge: bool) {
    println!();
    if !judge {
        println!("smoke run: too short for figures to mean anything; targets are not judged");
    }
    print_comparison(rows, judge, ("baseline", "keel"), target);
    println!();
    println!(
        "the retry layer's cost, no faults: keel as built by default / keel with disable_retries"
    );
    print_comparison(rows, judge, ("keel-noretry", "keel"), retry_layer_target);
    println!();
    println!("the balancing layer's cost: keel over 3 endpoints / keel over 1");
    print_comparison(rows, judge, ("keel", "keel-cluster3"), cluster_target);
    println!();
    println!(
        "the balancing layer's own steps: keel balanced over 1 endpoint / keel over 1 (no balancing)"
    );
    print_comparison(rows, judge, ("keel", "keel-balanced1"), cluster_target);
}

/// Issue 13: a channel over 3 endpoints at most 5 % slower than one over 1, on the
/// multiplexed workloads.
fn cluster_target(workload: &Workload, figure: &str) -> Option<(f64, bool)> {
    match (workload.metric, figure) {
        (Metric::CallsPerSec, "calls/s") if workload.in_flight > 1 => Some((0.95, true)),
        _ => None,
    }
}

/// One table: `names.1`'s figures against `names.0`'s, median ratio over rounds, judged by
/// `goal_of`.
fn print_comparison(
    rows: &[Row],
    judge: bool,
    names: (&str, &str),
    goal_of: fn(&Workload, &str) -> Option<(f64, bool)>,
) {
    let (base_name, ours_name) = names;
    let ratio_name = format!("{ours_name}/{base_name} (range)");
    println!(
        "{:<30} {:<11} {:>12} {:>12} {:>26} {:>14}",
        "workload", "figure", base_name, ours_name, ratio_name, "target"
    );
    for (workload, results) in rows {
        let base = results.get(base_name).map(Vec::as_slice).unwrap_or(&[]);
        let ours = results.get(ours_name).map(Vec::as_slice).unwrap_or(&[]);
        let names: Vec<&'static str> = base
            .first()
            .or_else(|| ours.first())
            .map(|r| r.figures(workload).iter().map(|f| f.0).collect())
            .unwrap_or_default();
        for (index, figure) in names.iter().enumerate() {
            let values = |side: &[RoundResult]| -> Vec<f64> {
                side.iter()
                    .filter_map(|r| r.figures(workload).get(index).map(|f| f.1))
                    .collect()
            };
            let (mut b, mut k) = (values(base), values(ours));
            let mut ratios: Vec<f64> = b.iter().zip(&k).map(|(b, k)| k / b).collect();
            let cell = |v: &mut Vec<f64>| {
                if v.is_empty() {
                    "-".to_owned()
                } else {
                    fmt_value(median(v))
                }
            };
            let ratio = if ratios.is_empty() {
                "-".to_owned()
            } else {
                let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                format!("{:.2} ({lo:.2}-{hi:.2})", median(&mut ratios))
            };
            let goal = match goal_of(workload, figure) {
                None => String::new(),
                Some((bound, higher)) => {
                    let sign = if higher { ">=" } else { "<=" };
                    let verdict = if ratios.is_empty() || !judge {
                        ""
                    } else {
                        let m = median(&mut ratios);
                        if (higher && m >= bound) || (!higher && m <= bound) {
                            " met"
                        } else {
                            " MISSED"
                        }
                    };
                    format!("{sign} {bound}{verdict}")
                }
            };
            let label = if index == 0 { workload.name } else { "" };
            println!(
                "{label:<30} {figure:<11} {:>12} {:>12} {ratio:>26} {goal:>14}",
                cell(&mut b),
                cell(&mut k)
            );
        }
    }
}
