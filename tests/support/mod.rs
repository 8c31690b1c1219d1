//! Helpers for the end-to-end tests: servers on 127.0.0.1:0, a raw protocol client to play a
//! misbehaving peer frame by frame, and a guard that shows when a handler's future is dropped.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use keel::codec::{DecodeError, Decoded, Frame, FrameDecoder, FrameEncoder, Hello, Role, Settings};
use keel::core::CallContext;
use keel::server::ServerBuilder;
use keel::{Server, ServerHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::{Decoder, Encoder};

/// Binds `builder` on 127.0.0.1:0.
pub async fn start(builder: ServerBuilder) -> ServerHandle {
    builder.build().bind("127.0.0.1:0").await.unwrap()
}

/// A server with `Echo.echo`.
pub fn echo_builder() -> ServerBuilder {
    Server::builder().register(
        "Echo.echo",
        |_ctx: CallContext, payload: Bytes| async move { Ok(payload) },
    )
}

/// Sets its flag when dropped: put one in a handler's future to see the server drop it.
#[derive(Debug)]
pub struct DropFlag(pub Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Counts handler starts.
#[derive(Clone, Debug, Default)]
pub struct Counter(pub Arc<AtomicUsize>);

impl Counter {
    pub fn bump(&self) -> usize {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }
    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// Polls `check` every 5 ms until it holds or `within` passes; returns whether it held.
pub async fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let until = tokio::time::Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if tokio::time::Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A client that speaks the protocol frame by frame, for playing a misbehaving peer.
pub struct RawClient {
    pub io: TcpStream,
    pub decoder: FrameDecoder,
    pub encoder: FrameEncoder,
    pub buf: BytesMut,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> Self {
        let io = TcpStream::connect(addr).await.unwrap();
        io.set_nodelay(true).unwrap();
        Self {
            io,
            decoder: FrameDecoder::new(Role::Client),
            encoder: FrameEncoder::new(),
            buf: BytesMut::new(),
        }
    }

    /// Connects and completes the handshake with `settings`; returns the server's settings.
    pub async fn handshake(addr: SocketAddr, settings: Settings) -> (Self, Settings) {
        let mut raw = Self::connect(addr).await;
        raw.send(Frame::Hello(Hello::new(settings))).await;
        match raw.recv().await {
            Ok(Some(Ok(Frame::HelloAck(ack)))) => {
                raw.encoder.set_peer_settings(ack.settings);
                (raw, ack.settings)
            }
            other => panic!("expected HELLO_ACK, got {other:?}"),
        }
    }

    pub async fn send(&mut self, frame: Frame) {
        let mut out = BytesMut::new();
        self.encoder.encode(frame, &mut out).unwrap();
        self.io.write_all(&out).await.unwrap();
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.unwrap();
    }

    /// The next item, or `Ok(None)` when the server closed the connection. Fails the test if
    /// nothing arrives within 5 s.
    pub async fn recv(&mut self) -> Result<Option<Decoded>, DecodeError> {
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Some(item) = self.decoder.decode(&mut self.buf)? {
                    return Ok(Some(item));
                }
                match self.io.read_buf(&mut self.buf).await {
                    Ok(0) => return self.decoder.decode_eof(&mut self.buf),
                    Ok(_) => {}
                    // A reset after the server's last frame counts as closed.
                    Err(_) => return Ok(None),
                }
            }
        })
        .await
        .expect("the server answered within 5 s")
    }

    /// Frames until the server closes the connection.
    pub async fn recv_until_closed(&mut self) -> Vec<Decoded> {
        let mut items = Vec::new();
        while let Ok(Some(item)) = self.recv().await {
            items.push(item);
        }
        items
    }
}

/// The first GOAWAY among `items` (what [`RawClient::recv_until_closed`] returned).
pub fn first_goaway(items: &[Decoded]) -> keel::codec::GoAway {
    items
        .iter()
        .find_map(|item| match item {
            Ok(Frame::GoAway(g)) => Some(g.clone()),
            _ => None,
        })
        .expect("a GOAWAY before the close")
}

/// A server played by hand on 127.0.0.1:0 for one connection: it completes the handshake
/// announcing `settings`, then hands every frame it receives to `on_frame` and writes back the
/// frames it returns (so returning nothing plays a hung server). It holds the socket for up to
/// 30 s.
pub async fn fake_server(
    settings: Settings,
    mut on_frame: impl FnMut(Frame) -> Vec<Frame> + Send + 'static,
) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut io, _) = listener.accept().await.unwrap();
        let mut buf = BytesMut::new();
        let mut decoder = FrameDecoder::new(Role::Server);
        let mut encoder = FrameEncoder::new();
        let serve = async {
            loop {
                let mut out = BytesMut::new();
                while let Ok(Some(Ok(frame))) = decoder.decode(&mut buf) {
                    let replies = match frame {
                        Frame::Hello(hello) => {
                            encoder.set_peer_settings(hello.settings);
                            vec![Frame::HelloAck(keel::codec::HelloAck::new(settings))]
                        }
                        other => on_frame(other),
                    };
                    for reply in replies {
                        encoder.encode(reply, &mut out).unwrap();
                    }
                }
                io.write_all(&out).await.unwrap();
                if io.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(30), serve).await;
    });
    addr
}

/// The seed for this test's randomness: `KEEL_CHAOS_SEED`, or the clock. Printed for replay.
pub fn chaos_seed(test: &str) -> u64 {
    let seed = std::env::var("KEEL_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .subsec_nanos();
            u64::from(nanos)
        });
    println!("{test}: KEEL_CHAOS_SEED={seed}");
    seed
}

/// The echo example, built by `cargo test` next to this test.
pub fn echo_example() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("examples")
        .join("echo");
    assert!(
        path.exists(),
        "{} is missing: run `cargo test` without target filters, or `cargo build --example echo`",
        path.display()
    );
    path
}

/// What a [`FrameTap`] saw the client send, summed over its connections.
#[derive(Debug, Default)]
pub struct TapLog {
    /// The budget of every REQUEST, in arrival order.
    pub request_budgets: Vec<Option<Duration>>,
    /// CANCEL frames.
    pub cancels: usize,
}

/// A relay on 127.0.0.1:0 to `target` that decodes what clients send (as the server would) and
/// logs REQUESTs and CANCELs; bytes pass unchanged both ways. For asserting what a hop put on the
/// wire. Each connection's relay ends when either side closes.
pub struct FrameTap {
    pub addr: SocketAddr,
    pub log: Arc<std::sync::Mutex<TapLog>>,
}

impl FrameTap {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(std::sync::Mutex::new(TapLog::default()));
        let logged = Arc::clone(&log);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                client.set_nodelay(true).unwrap();
                server.set_nodelay(true).unwrap();
                let (mut from_client, mut to_client) = client.into_split();
                let (mut from_server, mut to_server) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
                });
                let log = Arc::clone(&logged);
                tokio::spawn(async move {
                    let mut decoder = FrameDecoder::new(Role::Server);
                    let mut seen = BytesMut::new();
                    let mut chunk = vec![0u8; 16 * 1024];
                    loop {
                        let n = match from_client.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        seen.extend_from_slice(&chunk[..n]);
                        while let Ok(Some(Ok(frame))) = decoder.decode(&mut seen) {
                            let mut log = log.lock().unwrap();
                            match frame {
                                Frame::Request(request) => {
                                    log.request_budgets.push(request.budget.as_duration());
                                }
                                Frame::Cancel(_) => log.cancels += 1,
                                _ => {}
                            }
                        }
                        if to_server.write_all(&chunk[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = to_server.shutdown().await;
                });
            }
        });
        Self { addr, log }
    }

    pub fn cancels(&self) -> usize {
        self.log.lock().unwrap().cancels
    }

    pub fn request_budgets(&self) -> Vec<Option<Duration>> {
        self.log.lock().unwrap().request_budgets.clone()
    }
}
