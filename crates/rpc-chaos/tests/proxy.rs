//! Each fault of the proxy, against a raw echo upstream on 127.0.0.1.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rpc_chaos::{Direction, DropMode, Faults, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An upstream that echoes everything and records the size of each read it did.
async fn echo_upstream() -> (SocketAddr, Arc<Mutex<Vec<usize>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let reads = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&reads);
    tokio::spawn(async move {
        while let Ok((mut io, _)) = listener.accept().await {
            let record = Arc::clone(&record);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    record.lock().unwrap().push(n);
                    if io.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, reads)
}

async fn round_trip(client: &mut TcpStream, data: &[u8]) -> Vec<u8> {
    client.write_all(data).await.unwrap();
    let mut back = vec![0u8; data.len()];
    tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut back))
        .await
        .expect("the echo came back")
        .unwrap();
    back
}

#[tokio::test]
async fn no_faults_pass_bytes_unchanged() {
    let (upstream, _) = echo_upstream().await;
    let proxy = Proxy::start(upstream, 1).await.unwrap();
    let mut client = TcpStream::connect(proxy.local_addr()).await.unwrap();
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(round_trip(&mut client, &data).await, data);
    let info = proxy.connections()[0];
    assert_eq!((info.to_server, info.to_client), (100_000, 100_000));
}

#[tokio::test]
async fn latency_delays_each_direction() {
    let (upstream, _) = echo_upstream().await;
    let proxy = Proxy::start(upstream, 1).await.unwrap();
    let latency = Duration::from_millis(40);
    proxy.set_faults(
        Direction::ClientToServer,
        Faults::none().latency(latency, Duration::ZERO),
    );
    proxy.set_faults(
        Direction::ServerToClient,
        Faults::none().latency(latency, Duration::ZERO),
    );
    let mut client = TcpStream::connect(proxy.local_addr()).await.unwrap();
    let started = Instant::now();
    assert_eq!(round_trip(&mut client, b"ping").await, b"ping");
    let took = started.elapsed();
    assert!(
        took >= 2 * latency && took < 2 * latency + Duration::from_millis(60),
        "{took:?}"
    );
}

#[tokio::test]
async fn slicing_delivers_tiny_pieces() {
    let (upstream, reads) = echo_upstream().await;
    let proxy = Proxy::start(upstream, 1).await.unwrap();
    proxy.set_faults(
        Direction::ClientToServer,
        Faults::none().slice(3, Duration::from_millis(2)),
    );
    let mut client = TcpStream::connect(proxy.local_addr()).await.unwrap();
    let data = b"a message of some forty-two bytes, sliced".to_vec();
    assert_eq!(round_trip(&mut client, &data).await, data);
    let reads = reads.lock().unwrap().clone();
    assert!(reads.iter().all(|&n| n <= 3), "{reads:?}");
    assert_eq!(reads.iter().sum::<usize>(), data.len());
}

#[tokio::test]
async fn bandwidth_limits_the_rate() {
    let (upstream, _) = echo_upstream().await;
    let proxy = Proxy::start(upstream, 1).await.unwrap();
    proxy.set_faults(
        Direction::ServerToClient,
        Faults::none().bandwidth(1_000_000),
    );
    let mut client = TcpStream::connect(proxy.local_addr()).await.unwrap();
    let started = Instant::now();
    round_trip(&mut client, &vec![9u8; 200_000]).await;
    assert!(
        started.elapsed() >= Duration::from_millis(180),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn drop_after_n_bytes_resets_or_closes_after_delivering_them() {
    for (mode, expect_reset) in [(DropMode::Reset, true), (DropMode::Close, false)] {
        let (upstream, _) = echo_upstream().await;
        let proxy = Proxy::start(upstream, 1).await.unwrap();
        proxy.set_faults(
            Direction::ServerToClient,
            Faults::none().drop_after(10, mode),
        );
        let mut client = TcpStream::connect(proxy.local_addr()).await.unwrap();
        client.write_all(b"0123456789abcdefghij").await.unwrap();
        let mut got = Vec::new();
        let end = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut got))
            .await
            .unwrap();
        assert_eq!(got, b"0123456789", "{mode:?}");
        match (end, expect_reset) {
            (Err(e), true) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
            (Ok(_), false) => {}
            (other, _) => panic!("{mode:?}: unexpected end {other:?}"),
        }
        assert!(!proxy.connections()[0].open);
    }
}

/// A blackhole is a broken middlebox: bytes sent through it are lost for good.
#[tokio::test]
async fn blackhole_forwards_nothing_and_keeps_the_socket_open() {
    let (upstream, reads) = echo_upstream().await;
    let proxy = Proxy::start(upstream, 1).await.unwrap();
    proxy.set_faults(Direction::ClientToServer, Faults::none().blackhole());
    let mut client = TcpStream::connect(proxy.local_addr()).await.unwrap();
    client.write_all(b"into the void").await.unwrap();
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_millis(200), client.read(&mut buf)).await;
    assert!(
        read.is_err(),
        "nothing comes back and the socket is not closed"
    );
    assert!(reads.lock().unwrap().is_empty());
    // Lifting it lets new bytes through on the same connection.
    proxy.clear_faults();
    assert_eq!(round_trip(&mut client, b"back").await, b"back");
}

#[tokio::test]
async fn random_flips_replay_from_the_seed() {
    async fn run(seed: u64) -> Vec<u8> {
        let (upstream, _) = echo_upstream().await;
        let proxy = Proxy::start(upstream, seed).await.unwrap();
        proxy.set_faults(Direction::ClientToServer, Faults::none().flip_random(0.01));
        let mut client = TcpStream::connect(proxy.local_addr()).await.unwrap();
        round_trip(&mut client, &[0u8; 20_000]).await
    }
    let first = run(99).await;
    let flipped = first.iter().filter(|&&b| b != 0).count();
    assert!(
        (100..=300).contains(&flipped),
        "{flipped} bytes flipped at 1%"
    );
    assert!(
        first.iter().all(|b| b.count_ones() <= 1),
        "one bit per flipped byte"
    );
    assert_eq!(run(99).await, first, "same seed, same flips");
    assert_ne!(run(100).await, first);
}

#[tokio::test]
async fn random_flips_depend_on_offsets_not_on_how_the_bytes_were_chunked_or_timed() {
    /// Sends 20 000 zero bytes in pieces of `piece` (a pause between pieces), with jitter on the
    /// way back so the chunks differ in time too; returns what came back and the flips made.
    async fn run(piece: usize) -> (Vec<u8>, Vec<rpc_chaos::Flip>) {
        let (upstream, _) = echo_upstream().await;
        let proxy = Proxy::start(upstream, 7).await.unwrap();
        proxy.set_faults(Direction::ClientToServer, Faults::none().flip_random(0.01));
        proxy.set_faults(
            Direction::ServerToClient,
            Faults::none()
                .flip_random(0.01)
                .latency(Duration::ZERO, Duration::from_millis(2)),
        );
        let mut client = TcpStream::connect(proxy.local_addr()).await.unwrap();
        let data = vec![0u8; 20_000];
        let (mut read, mut write) = client.split();
        let send = async {
            for chunk in data.chunks(piece) {
                write.write_all(chunk).await.unwrap();
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        };
        let mut back = vec![0u8; data.len()];
        let receive = read.read_exact(&mut back);
        let ((), received) = tokio::join!(send, receive);
        received.unwrap();
        (back, proxy.flips())
    }
    let (whole, whole_flips) = run(20_000).await;
    let (sliced, sliced_flips) = run(37).await;
    assert_eq!(whole, sliced, "the same bytes flipped, both ways");
    assert_eq!(whole_flips.len(), sliced_flips.len());
    let key = |f: &rpc_chaos::Flip| (f.direction == Direction::ServerToClient, f.offset, f.mask);
    let mut a: Vec<_> = whole_flips.iter().map(key).collect();
    let mut b: Vec<_> = sliced_flips.iter().map(key).collect();
    a.sort_unstable();
    b.sort_unstable();
    assert_eq!(a, b);
    // The log says exactly what happened to the stream that came back: the upstream echoes the
    // flipped bytes, and the way back flips its own offsets on top.
    let mut expected = vec![0u8; 20_000];
    for flip in &whole_flips {
        expected[usize::try_from(flip.offset).unwrap()] ^= flip.mask;
    }
    assert_eq!(whole, expected);
}

#[tokio::test]
async fn a_partition_holds_bytes_and_delivers_them_in_order_when_it_heals() {
    let (upstream, reads) = echo_upstream().await;
    let proxy = Proxy::start(upstream, 1).await.unwrap();
    let mut client = TcpStream::connect(proxy.local_addr()).await.unwrap();
    assert_eq!(round_trip(&mut client, b"before").await, b"before");
    // Towards the client only: the server still receives, its answers wait.
    proxy.set_faults(Direction::ServerToClient, Faults::none().partition());
    let data: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    client.write_all(&data).await.unwrap();
    let mut first = [0u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(200), client.read(&mut first))
            .await
            .is_err(),
        "nothing comes back during the partition, and the socket stays open"
    );
    let upstream_got: usize = reads.lock().unwrap().iter().sum();
    assert_eq!(upstream_got, 6 + data.len(), "the other direction flows");
    proxy.clear_faults();
    let mut back = vec![0u8; data.len()];
    tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, data, "every byte, in order, no gap");
    // Towards the server, bytes already read by the proxy wait too.
    proxy.set_faults(Direction::ClientToServer, Faults::none().partition());
    client.write_all(b"held").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(reads.lock().unwrap().iter().sum::<usize>(), 6 + data.len());
    proxy.clear_faults();
    let mut held = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(2), client.read_exact(&mut held))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&held, b"held");
}

#[tokio::test]
async fn refused_connections_are_reset() {
    let (upstream, _) = echo_upstream().await;
    let proxy = Proxy::start(upstream, 1).await.unwrap();
    proxy.refuse_new(true);
    let mut client = TcpStream::connect(proxy.local_addr()).await.unwrap();
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(2), client.read(&mut buf))
        .await
        .unwrap();
    assert!(
        matches!(read, Err(ref e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "{read:?}"
    );
    proxy.refuse_new(false);
    let mut client = TcpStream::connect(proxy.local_addr()).await.unwrap();
    assert_eq!(round_trip(&mut client, b"ok").await, b"ok");
    assert_eq!(proxy.accepted(), 2);
}

#[tokio::test]
async fn pause_holds_bytes_and_resume_delivers_them() {
    let (upstream, _) = echo_upstream().await;
    let proxy = Proxy::start(upstream, 1).await.unwrap();
    let mut client = TcpStream::connect(proxy.local_addr()).await.unwrap();
    assert_eq!(round_trip(&mut client, b"1").await, b"1");
    proxy.pause();
    client.write_all(b"held").await.unwrap();
    let mut buf = [0u8; 4];
    assert!(
        tokio::time::timeout(Duration::from_millis(150), client.read_exact(&mut buf))
            .await
            .is_err()
    );
    proxy.resume();
    tokio::time::timeout(Duration::from_secs(2), client.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"held");
}

#[tokio::test]
async fn faults_can_target_one_connection() {
    let (upstream, _) = echo_upstream().await;
    let proxy = Proxy::start(upstream, 1).await.unwrap();
    let mut first = TcpStream::connect(proxy.local_addr()).await.unwrap();
    let mut second = TcpStream::connect(proxy.local_addr()).await.unwrap();
    assert_eq!(round_trip(&mut first, b"a").await, b"a");
    assert_eq!(round_trip(&mut second, b"b").await, b"b");
    assert!(proxy.set_connection_faults(
        0,
        Direction::ServerToClient,
        Faults::none().flip_bit(1, 0x20)
    ));
    assert_eq!(
        round_trip(&mut first, b"x").await,
        b"X",
        "offset 1 is this byte; 0x20 flips case"
    );
    assert_eq!(round_trip(&mut second, b"x").await, b"x");
    assert!(!proxy.set_connection_faults(9, Direction::ServerToClient, Faults::none()));
}

/// With no fault set, bytes pass straight through: no chunk waits on a timer. On tokio's paused
/// clock any sleep would advance the clock (the runtime jumps to the next timer when it idles),
/// so a clock that stays put proves that none was armed on the way. (Timers have a resolution of
/// 1 ms, rounded up: starting half-way into a millisecond makes even a zero-length sleep wait.)
#[tokio::test(start_paused = true)]
async fn without_faults_no_byte_waits_on_a_timer() {
    tokio::time::advance(Duration::from_micros(500)).await;
    let (upstream, _) = echo_upstream().await;
    let proxy = Proxy::start(upstream, 1).await.unwrap();
    let mut client = TcpStream::connect(proxy.local_addr()).await.unwrap();
    let started = tokio::time::Instant::now();
    for i in 0..50u8 {
        assert_eq!(round_trip(&mut client, &[i; 100]).await, vec![i; 100]);
    }
    assert_eq!(
        tokio::time::Instant::now(),
        started,
        "a chunk waited on a timer"
    );
}
