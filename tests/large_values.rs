//! How large a value a typed call can carry, end to end over real TCP: values past 16 MiB pass once
//! both sides raise `max_frame_size`; with the defaults the README's largest value fits and a
//! larger one fails before it is sent, naming the setting; and the memory a decode may claim
//! follows the receiver's frame limit on each side, instead of a fixed 16 MiB.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use keel::{Bytes, Channel, Outcome, Server, ServerHandle, StatusCode};

#[keel::service]
trait Blobs {
    /// Stores `value` under `key`; returns its length.
    async fn put(&self, key: String, value: Bytes) -> u64;
    /// A value of `len` bytes.
    async fn get(&self, len: u64) -> Bytes;
    /// The sum of `values` (each decodes to 8 bytes, whatever its varint's length).
    async fn sum(&self, values: Vec<u64>) -> u64;
    /// `n` zeros.
    async fn zeros(&self, n: u64) -> Vec<u64>;
}

/// Counts each method's runs.
#[derive(Default)]
struct Runs {
    put: AtomicU32,
    get: AtomicU32,
    sum: AtomicU32,
}

struct Store(Arc<Runs>);

impl Blobs for Store {
    async fn put(&self, _key: String, value: Bytes) -> u64 {
        self.0.put.fetch_add(1, Ordering::SeqCst);
        value.len() as u64
    }

    async fn get(&self, len: u64) -> Bytes {
        self.0.get.fetch_add(1, Ordering::SeqCst);
        Bytes::from(vec![0xa5; usize::try_from(len).unwrap()])
    }

    async fn sum(&self, values: Vec<u64>) -> u64 {
        self.0.sum.fetch_add(1, Ordering::SeqCst);
        values.iter().sum()
    }

    async fn zeros(&self, n: u64) -> Vec<u64> {
        vec![0; usize::try_from(n).unwrap()]
    }
}

const MIB: u32 = 1024 * 1024;
/// The README's rule: a value of up to max_frame_size − 32 KiB always fits.
const ENVELOPE_ALLOWANCE: u32 = 32 * 1024;

async fn serve(max_frame_size: Option<u32>) -> (ServerHandle, Arc<Runs>) {
    let runs = Arc::new(Runs::default());
    let mut builder = Server::builder().add_service(BlobsServer::new(Store(Arc::clone(&runs))));
    if let Some(max) = max_frame_size {
        builder = builder.max_frame_size(max);
    }
    let server = builder.build().bind("127.0.0.1:0").await.unwrap();
    (server, runs)
}

fn client(server: &ServerHandle, max_frame_size: Option<u32>) -> BlobsClient {
    let mut builder =
        Channel::builder(server.local_addr()).default_deadline(Duration::from_secs(20));
    if let Some(max) = max_frame_size {
        builder = builder.max_frame_size(max);
    }
    BlobsClient::new(builder.build())
}

#[tokio::test]
async fn values_past_sixteen_mib_pass_when_both_sides_raise_max_frame_size() {
    // The user's report: with 64 MiB frames a 20 MB put failed "payload decoding exceeded its
    // limit of 16777216 bytes", a limit no setting changed. It now follows the frame limit.
    let (server, runs) = serve(Some(64 * MIB)).await;
    let client = client(&server, Some(64 * MIB));
    let value = Bytes::from(vec![7u8; 20_000_000]);
    assert_eq!(client.put("big".into(), value).await.unwrap(), 20_000_000);
    let reply = client.get(20_000_000).await.unwrap();
    assert_eq!(reply.len(), 20_000_000);
    assert!(reply.iter().all(|&b| b == 0xa5));
    assert_eq!(runs.put.load(Ordering::SeqCst), 1);
    assert_eq!(runs.get.load(Ordering::SeqCst), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn with_the_defaults_the_largest_documented_value_fits_both_ways() {
    let (server, runs) = serve(None).await;
    let client = client(&server, None);
    let largest = 4 * MIB - ENVELOPE_ALLOWANCE;
    let value = Bytes::from(vec![1u8; largest as usize]);
    assert_eq!(
        client.put("k".into(), value).await.unwrap(),
        u64::from(largest)
    );
    assert_eq!(
        client.get(u64::from(largest)).await.unwrap().len(),
        largest as usize
    );
    assert_eq!(runs.put.load(Ordering::SeqCst), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn a_value_too_large_for_the_frame_limit_fails_naming_the_setting() {
    let (server, runs) = serve(None).await;
    let client = client(&server, None);
    // A request: refused before it is sent, so the handler never runs.
    let err = client
        .put("k".into(), Bytes::from(vec![0u8; (4 * MIB) as usize]))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.outcome()),
        (StatusCode::RESOURCE_EXHAUSTED, Outcome::NotSent),
        "{err}"
    );
    let message = err.status().message();
    assert!(
        message.starts_with("Blobs.put: the request body of 4194"),
        "{message}"
    );
    assert!(
        message.contains("(4194311 of them the arguments) exceeds the server's max frame size of 4194304 bytes; raise max_frame_size on the server and on the client"),
        "{message}"
    );
    assert_eq!(runs.put.load(Ordering::SeqCst), 0);
    // A result: the handler ran, and the server says the client's limit stopped it.
    let err = client.get(u64::from(4 * MIB)).await.unwrap_err();
    assert_eq!(
        (err.code(), err.outcome()),
        (StatusCode::RESOURCE_EXHAUSTED, Outcome::Executed),
        "{err}"
    );
    assert!(
        err.status()
            .message()
            .contains("raise max_frame_size on the client"),
        "{err}"
    );
    assert_eq!(runs.get.load(Ordering::SeqCst), 1);
    server.shutdown().await;

    // Exactly 4 MiB passes once both sides allow the envelope on top of it.
    let (server, runs) = serve(Some(4 * MIB + ENVELOPE_ALLOWANCE)).await;
    let client = self::client(&server, Some(4 * MIB + ENVELOPE_ALLOWANCE));
    let value = Bytes::from(vec![0u8; (4 * MIB) as usize]);
    assert_eq!(
        client.put("k".into(), value).await.unwrap(),
        u64::from(4 * MIB)
    );
    assert_eq!(
        client.get(u64::from(4 * MIB)).await.unwrap().len(),
        (4 * MIB) as usize
    );
    assert_eq!(runs.put.load(Ordering::SeqCst), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn the_servers_decode_limit_is_four_times_its_max_frame_size() {
    // 4 KiB frames: arguments may claim 16 KiB once decoded. n zero u64s are n + 3 bytes on the
    // wire but claim 8 (the count) + 8·n: 2000 fit, 2100 do not, though both frames are small.
    let (server, runs) = serve(Some(4096)).await;
    let client = client(&server, None);
    assert_eq!(client.sum(vec![0; 2000]).await.unwrap(), 0);
    let err = client.sum(vec![0; 2100]).await.unwrap_err();
    assert_eq!(
        (err.code(), err.outcome()),
        (StatusCode::INVALID_ARGUMENT, Outcome::NotExecuted),
        "{err}"
    );
    assert!(
        err.status()
            .message()
            .contains("payload decoding exceeded its limit of 16384 bytes"),
        "{err}"
    );
    assert_eq!(runs.sum.load(Ordering::SeqCst), 1);
    server.shutdown().await;
    // The same call against a server with the default frames decodes.
    let (server, _) = serve(None).await;
    assert_eq!(
        self::client(&server, None)
            .sum(vec![0; 2100])
            .await
            .unwrap(),
        0
    );
    server.shutdown().await;
}

#[tokio::test]
async fn the_clients_decode_limit_is_four_times_its_max_frame_size() {
    let (server, _) = serve(None).await;
    let client = client(&server, Some(4096));
    assert_eq!(client.zeros(2000).await.unwrap().len(), 2000);
    let err = client.zeros(2100).await.unwrap_err();
    assert_eq!(
        (err.code(), err.outcome()),
        (StatusCode::INTERNAL, Outcome::Executed),
        "{err}"
    );
    assert!(
        err.status()
            .message()
            .contains("Blobs.zeros: the reply does not decode: payload decoding exceeded its limit of 16384 bytes"),
        "{err}"
    );
    server.shutdown().await;
}
