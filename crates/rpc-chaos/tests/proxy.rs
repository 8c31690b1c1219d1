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
