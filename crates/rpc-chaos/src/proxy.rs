//! The fault-injecting TCP proxy.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::faults::{Direction, DropMode, Faults};

/// Closed connections [`Proxy::connections`] keeps reporting, newest first out.
const MAX_CLOSED_KEPT: usize = 256;

/// How long the proxy waits to connect to the upstream server.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A TCP proxy on 127.0.0.1:0 in front of one upstream server, injecting faults that can be
/// changed while it runs: per direction for every connection, or for one connection.
///
/// Every random choice (jitter, random bit flips) comes from generators seeded from the proxy's
/// seed, the connection's number and the direction, so a failing run replays from its printed
/// seed. Dropping the proxy stops it and closes every connection.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// use rpc_chaos::{Direction, Faults, Proxy};
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
///
/// // An upstream that echoes.
/// let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let upstream_addr = upstream.local_addr()?;
/// tokio::spawn(async move {
///     let (mut io, _) = upstream.accept().await.unwrap();
///     let mut buf = [0u8; 5];
///     io.read_exact(&mut buf).await.unwrap();
///     io.write_all(&buf).await.unwrap();
/// });
///
/// let proxy = Proxy::start(upstream_addr, 7).await?;
/// // Flip bit 0 of the first byte the server sends back.
/// proxy.set_faults(Direction::ServerToClient, Faults::none().flip_bit(0, 0x01));
/// let mut client = tokio::net::TcpStream::connect(proxy.local_addr()).await?;
/// client.write_all(b"hello").await?;
/// let mut echoed = [0u8; 5];
/// client.read_exact(&mut echoed).await?;
/// assert_eq!(&echoed, b"iello");
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Proxy {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    accept: JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    upstream: Mutex<SocketAddr>,
    defaults: Mutex<[Faults; 2]>,
    links: Mutex<Vec<Arc<Link>>>,
    refuse: AtomicBool,
    paused: watch::Sender<bool>,
    seed: u64,
    accepted: AtomicU64,
    flips: Arc<Mutex<Vec<Flip>>>,
}

/// Random flips [`Proxy::flips`] keeps; later ones are not recorded.
const MAX_FLIPS_KEPT: usize = 100_000;

/// One random bit flip the proxy made ([`Faults::flip_random`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Flip {
    /// The connection's number ([`ConnectionInfo::id`]).
    pub connection: u64,
    /// The direction of the flipped byte.
    pub direction: Direction,
    /// The byte's offset in that direction's stream (0 is the first byte the connection carries
    /// that way).
    pub offset: u64,
    /// The bit flipped (XORed into the byte).
    pub mask: u8,
}

/// One proxied connection.
#[derive(Debug)]
struct Link {
    id: u64,
    faults: [Mutex<Faults>; 2],
    /// Bumped whenever `faults` change, so forwarding that waits on a partition looks again.
    faults_changed: watch::Sender<()>,
    forwarded: [AtomicU64; 2],
    cut: CancellationToken,
    reset: AtomicBool,
    flips: Arc<Mutex<Vec<Flip>>>,
}

/// What the proxy knows about one of its connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The connection's number: 0 for the first accepted, and so on.
    pub id: u64,
    /// Whether it is still open.
    pub open: bool,
    /// Bytes delivered client to server.
    pub to_server: u64,
    /// Bytes delivered server to client.
    pub to_client: u64,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Link {
    fn set_faults(&self, direction: Direction, faults: Faults) {
        *lock(&self.faults[direction.index()]) = faults;
        self.faults_changed.send_replace(());
    }

    fn record_flip(&self, direction: Direction, offset: u64, mask: u8) {
        let mut flips = lock(&self.flips);
        if flips.len() < MAX_FLIPS_KEPT {
            flips.push(Flip {
                connection: self.id,
                direction,
                offset,
                mask,
            });
        }
    }

    fn cut(&self, mode: DropMode) {
        if mode == DropMode::Reset {
            self.reset.store(true, Ordering::SeqCst);
        }
        self.cut.cancel();
    }
}

impl Proxy {
    /// Starts a proxy on 127.0.0.1:0 forwarding to `upstream`, with no faults, its randomness
    /// seeded with `seed`.
    ///
    /// # Errors
    /// When 127.0.0.1:0 cannot be bound.
    pub async fn start(upstream: SocketAddr, seed: u64) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let local_addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream: Mutex::new(upstream),
            defaults: Mutex::new([Faults::none(), Faults::none()]),
            links: Mutex::new(Vec::new()),
            refuse: AtomicBool::new(false),
            paused: watch::Sender::new(false),
            seed,
            accepted: AtomicU64::new(0),
            flips: Arc::default(),
        });
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        tracing::info!(%local_addr, %upstream, seed, "chaos proxy started");
        Ok(Self {
            shared,
            local_addr,
            accept,
        })
    }

    /// The address clients connect to.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The seed of the proxy's randomness, to print with a failure.
    #[must_use]
    pub fn seed(&self) -> u64 {
        self.shared.seed
    }

    /// Forwards new connections to `upstream` from now on.
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *lock(&self.shared.upstream) = upstream;
    }

    /// Applies `faults` to `direction` of every open connection and of every new one.
    pub fn set_faults(&self, direction: Direction, faults: Faults) {
        lock(&self.shared.defaults)[direction.index()] = faults.clone();
        for link in lock(&self.shared.links).iter() {
            link.set_faults(direction, faults.clone());
        }
    }

    /// Applies `faults` to `direction` of connection `id` only. Returns false if there is no such
    /// connection.
    pub fn set_connection_faults(&self, id: u64, direction: Direction, faults: Faults) -> bool {
        let links = lock(&self.shared.links);
        let Some(link) = links.iter().find(|l| l.id == id) else {
            return false;
        };
        link.set_faults(direction, faults);
        true
    }

    /// Removes every fault from every connection, open and new.
    pub fn clear_faults(&self) {
        self.set_faults(Direction::ClientToServer, Faults::none());
        self.set_faults(Direction::ServerToClient, Faults::none());
    }

    /// While `refuse` is true, new connections are accepted and reset at once.
    pub fn refuse_new(&self, refuse: bool) {
        self.shared.refuse.store(refuse, Ordering::SeqCst);
    }

    /// Stops reading from every connection: bytes wait in the kernel's buffers, nothing is lost.
    pub fn pause(&self) {
        self.shared.paused.send_replace(true);
    }

    /// Resumes after [`Proxy::pause`].
    pub fn resume(&self) {
        self.shared.paused.send_replace(false);
    }

    /// Cuts every open connection.
    pub fn cut_all(&self, mode: DropMode) {
        for link in lock(&self.shared.links).iter() {
            link.cut(mode);
        }
    }

    /// Cuts connection `id`. Returns false if there is no such connection.
    pub fn cut(&self, id: u64, mode: DropMode) -> bool {
        let links = lock(&self.shared.links);
        let Some(link) = links.iter().find(|l| l.id == id) else {
            return false;
        };
        link.cut(mode);
        true
    }

    /// How many connections the proxy has accepted (refused ones included).
    #[must_use]
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Every random bit flip made so far (the first 100 000), in the order they were made per
    /// direction of each connection. Which bytes are flipped depends only on the seed, the
    /// connection's number, the direction and the byte's offset, never on timing.
    #[must_use]
    pub fn flips(&self) -> Vec<Flip> {
        lock(&self.shared.flips).clone()
    }

    /// The connections proxied so far, oldest first: every open one and the latest 256 closed.
    #[must_use]
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        lock(&self.shared.links)
            .iter()
            .map(|link| ConnectionInfo {
                id: link.id,
                open: !link.cut.is_cancelled(),
                to_server: link.forwarded[0].load(Ordering::SeqCst),
                to_client: link.forwarded[1].load(Ordering::SeqCst),
            })
            .collect()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut_all(DropMode::Close);
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((client, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let id = shared.accepted.fetch_add(1, Ordering::SeqCst);
        if shared.refuse.load(Ordering::SeqCst) {
            tracing::debug!(id, %peer, "refusing");
            let _ = client.set_zero_linger();
            continue;
        }
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let upstream = *lock(&shared.upstream);
            let connect = TcpStream::connect(upstream);
            let Ok(Ok(server)) = tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, connect).await
            else {
                tracing::debug!(id, %upstream, "upstream unreachable; resetting client");
                let _ = client.set_zero_linger();
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let defaults = lock(&shared.defaults).clone();
            let [to_server, to_client] = defaults;
            let link = Arc::new(Link {
                id,
                faults: [Mutex::new(to_server), Mutex::new(to_client)],
                faults_changed: watch::Sender::new(()),
                forwarded: [AtomicU64::new(0), AtomicU64::new(0)],
                cut: CancellationToken::new(),
                reset: AtomicBool::new(false),
                flips: Arc::clone(&shared.flips),
            });
            {
                let mut links = lock(&shared.links);
                // Keep every open connection and the most recent closed ones, so a long run does
                // not accumulate them.
                let closed = links.iter().filter(|l| l.cut.is_cancelled()).count();
                if closed > MAX_CLOSED_KEPT {
                    let mut drop_closed = closed - MAX_CLOSED_KEPT;
                    links.retain(|l| {
                        let remove = drop_closed > 0 && l.cut.is_cancelled();
                        drop_closed -= usize::from(remove);
                        !remove
                    });
                }
                links.push(Arc::clone(&link));
            }
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            let rng = |dir: u64| SmallRng::seed_from_u64(shared.seed ^ (id << 1 | dir));
            let seed = shared.seed;
            let up = forward(
                Arc::clone(&link),
                Direction::ClientToServer,
                client_read,
                server_write,
                shared.paused.subscribe(),
                rng(0),
                seed,
            );
            let down = forward(
                Arc::clone(&link),
                Direction::ServerToClient,
                server_read,
                client_write,
                shared.paused.subscribe(),
                rng(1),
                seed,
            );
            tokio::join!(up, down);
            link.cut.cancel();
        });
    }
}

/// A chunk on its way through the delay line.
enum Chunk {
    Bytes {
        due: Instant,
        data: Vec<u8>,
        cut: Option<DropMode>,
    },
    End,
}

/// Waits until forwarding in this direction may go on: neither the proxy is paused nor the
/// direction partitioned. `Err` when the proxy is gone.
async fn wait_until_open(
    link: &Link,
    index: usize,
    paused: &mut watch::Receiver<bool>,
    changed: &mut watch::Receiver<()>,
) -> Result<(), watch::error::RecvError> {
    loop {
        changed.mark_unchanged();
        let partitioned = lock(&link.faults[index]).partition;
        if !*paused.borrow_and_update() && !partitioned {
            return Ok(());
        }
        tokio::select! {
            changed = paused.changed() => changed?,
            changed = changed.changed() => changed?,
        }
    }
}

/// Whether `offset` of this direction's stream gets a random flip at `rate`, and which bit: a
/// function of the seed, the connection, the direction and the offset alone, so a seed replays
/// the same flips however the bytes were chunked or timed.
fn random_flip(seed: u64, connection: u64, direction: u64, offset: u64, rate: f64) -> Option<u8> {
    // SplitMix64 over the four inputs: well mixed, and cheap enough for every byte.
    let mut z = seed
        ^ connection.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ direction.wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
        ^ offset.wrapping_mul(0x1656_67B1_9E37_79F9);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    // The top 53 bits as a uniform value in [0, 1); the low 3 bits pick the bit.
    let uniform = (z >> 11) as f64 / (1u64 << 53) as f64;
    (uniform < rate).then(|| 1 << (z & 7))
}

/// One direction of one connection: a reader applying the faults and a writer delivering the
/// chunks when due, joined by a delay line so latency does not limit throughput.
async fn forward(
    link: Arc<Link>,
    direction: Direction,
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    paused: watch::Receiver<bool>,
    mut rng: SmallRng,
    seed: u64,
) {
    let (line, mut arrivals) = mpsc::unbounded_channel();
    let index = direction.index();
    let read = async {
        let mut paused = paused.clone();
        let mut changed = link.faults_changed.subscribe();
        let mut buf = vec![0u8; 16 * 1024];
        let mut offset = 0u64;
        let mut last_due = Instant::now();
        loop {
            if wait_until_open(&link, index, &mut paused, &mut changed)
                .await
                .is_err()
            {
                return;
            }
            // A pause or a partition that starts while a read waits must stop that read too
            // (reads are cancel-safe: no byte is lost).
            let read = tokio::select! {
                read = from.read(&mut buf) => read,
                _ = paused.changed() => continue,
                _ = changed.changed() => continue,
            };
            let n = match read {
                Ok(0) | Err(_) => {
                    let _ = line.send(Chunk::End);
                    return;
                }
                Ok(n) => n,
            };
            let faults = lock(&link.faults[index]).clone();
            let start = offset;
            offset += n as u64;
            if faults.blackhole {
                continue;
            }
            let mut data = buf.get(..n).unwrap_or_default().to_vec();
            let mut cut = None;
            if let Some((limit, mode)) = faults.drop_after {
                if offset >= limit {
                    data.truncate(usize::try_from(limit.saturating_sub(start)).unwrap_or(0));
                    cut = Some(mode);
                }
            }
            for &(at, mask) in &faults.flips {
                if let Some(byte) = at
                    .checked_sub(start)
                    .and_then(|i| usize::try_from(i).ok())
                    .and_then(|i| data.get_mut(i))
                {
                    *byte ^= mask;
                }
            }
            if faults.flip_rate > 0.0 {
                for (at, byte) in (start..).zip(data.iter_mut()) {
                    if let Some(mask) =
                        random_flip(seed, link.id, index as u64, at, faults.flip_rate)
                    {
                        *byte ^= mask;
                        link.record_flip(direction, at, mask);
                    }
                }
            }
            let due = if faults.latency.is_zero() && faults.jitter.is_zero() {
                last_due
            } else {
                let jitter = faults.jitter.mul_f64(rng.random::<f64>());
                (Instant::now() + faults.latency + jitter).max(last_due)
            };
            last_due = due;
            let stop = cut.is_some();
            if line.send(Chunk::Bytes { due, data, cut }).is_err() || stop {
                return;
            }
        }
    };
    let write = async {
        let mut paused = paused.clone();
        let mut changed = link.faults_changed.subscribe();
        while let Some(chunk) = arrivals.recv().await {
            let Chunk::Bytes { due, data, cut } = chunk else {
                let _ = to.shutdown().await;
                return;
            };
            // No timer at all when the chunk is already due: with no latency set, bytes pass
            // straight through (a timer rounds up to the next millisecond).
            if due > Instant::now() {
                tokio::time::sleep_until(due).await;
            }
            // Bytes already read wait out a partition too: delivered, in order, when it heals.
            if wait_until_open(&link, index, &mut paused, &mut changed)
                .await
                .is_err()
            {
                return;
            }
            let faults = lock(&link.faults[index]).clone();
            let (piece, gap) = faults
                .slice
                .unwrap_or_else(|| (data.len().max(1), Duration::ZERO));
            for (i, part) in data.chunks(piece).enumerate() {
                if i > 0 && !gap.is_zero() {
                    tokio::time::sleep(gap).await;
                }
                if to.write_all(part).await.is_err() {
                    return;
                }
                link.forwarded[index].fetch_add(part.len() as u64, Ordering::SeqCst);
                if let Some(rate) = faults.bytes_per_second {
                    let secs = part.len() as f64 / rate as f64;
                    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
                }
            }
            if let Some(mode) = cut {
                link.cut(mode);
                return;
            }
        }
    };
    tokio::select! {
        () = async { tokio::join!(read, write); } => {}
        () = link.cut.cancelled() => {}
    }
    if link.reset.load(Ordering::SeqCst) {
        // SO_LINGER 0 makes the close send RST. Dropping a write half would first shut it down
        // (a FIN, which the peer would read as a clean end); forget() leaves the socket to close,
        // with the RST, when its read half drops.
        let _ = to.as_ref().set_zero_linger();
        to.forget();
    }
}
