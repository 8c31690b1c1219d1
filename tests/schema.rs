//! Schema fingerprints end to end over real TCP: a client and a server built from different
//! versions of a trait refuse the call before it runs, instead of decoding the arguments as
//! something else (the bug a new user hit: `cas(expected: u64)` against `cas(expected: i64)`
//! ran the compare-and-swap with the wrong expected version).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use keel::{Bytes, CallOptions, Channel, ErrorKind, Outcome, Server};
use keel::{ServerHandle, StatusCode};

/// The service as the client was built. Only its client is used: nothing implements it here.
#[allow(dead_code)]
mod old {
    #[keel::service]
    pub(crate) trait Kv {
        /// Sets `key` to `new` if its version is `expected`; returns the new version.
        async fn cas(&self, key: String, expected: u64, new: u64) -> Result<u64, String>;
        /// The same change, with the check turned off on purpose.
        #[no_schema_check]
        async fn cas_unchecked(&self, key: String, expected: u64, new: u64) -> Result<u64, String>;
        /// Unchanged between the versions.
        async fn get(&self, key: String) -> Option<u64>;
    }
}

/// The service as the server was built: `expected` became signed.
mod new {
    #[keel::service]
    pub(crate) trait Kv {
        /// Sets `key` to `new` if its version is `expected`.
        async fn cas(&self, key: String, expected: i64, new: u64) -> Result<u64, String>;
        /// The same change, with the check turned off on purpose.
        #[no_schema_check]
        async fn cas_unchecked(&self, key: String, expected: i64, new: u64) -> Result<u64, String>;
        /// Unchanged between the versions.
        async fn get(&self, key: String) -> Option<u64>;
    }
}

/// Records the `expected` each handler run saw.
#[derive(Default)]
struct Recorder {
    runs: AtomicU32,
    last_expected: std::sync::Mutex<Option<i64>>,
}

struct Store(Arc<Recorder>);

impl new::Kv for Store {
    async fn cas(&self, _key: String, expected: i64, new: u64) -> Result<u64, String> {
        self.0.runs.fetch_add(1, Ordering::SeqCst);
        *self.0.last_expected.lock().unwrap() = Some(expected);
        Ok(new)
    }

    async fn cas_unchecked(&self, key: String, expected: i64, new: u64) -> Result<u64, String> {
        self.cas(key, expected, new).await
    }

    async fn get(&self, _key: String) -> Option<u64> {
        Some(7)
    }
}

async fn serve() -> (ServerHandle, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    let server = Server::builder()
        .add_service(new::KvServer::new(Store(Arc::clone(&recorder))))
        .build()
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    (server, recorder)
}

fn channel(server: &ServerHandle) -> Channel {
    Channel::builder(server.local_addr())
        .default_deadline(Duration::from_secs(2))
        .build()
}

#[tokio::test]
async fn a_changed_argument_type_is_refused_before_the_handler_runs() {
    let (server, recorder) = serve().await;
    let client = old::KvClient::new(channel(&server));
    let err = client.cas("k".into(), 1, 2).await.unwrap_err();
    assert_eq!(
        (err.code(), err.outcome(), err.kind()),
        (
            StatusCode::FAILED_PRECONDITION,
            Outcome::NotExecuted,
            ErrorKind::Status
        ),
        "{err}"
    );
    let message = err.status().message();
    assert!(
        message.starts_with(
            "Kv.cas: client and server disagree on this method's argument or result types"
        ),
        "{message}"
    );
    assert!(message.contains("the call was not run"), "{message}");
    assert_eq!(recorder.runs.load(Ordering::SeqCst), 0);
    // A method whose types agree still works on the same channel.
    assert_eq!(client.get("k".into()).await.unwrap(), Some(7));
    server.shutdown().await;
}

#[tokio::test]
async fn without_the_check_the_same_mismatch_runs_with_a_wrong_value() {
    // What `#[no_schema_check]` gives up, and what the check prevents: bincode's zig-zag varint
    // turns the client's unsigned 1 into the server's signed -1.
    let (server, recorder) = serve().await;
    let client = old::KvClient::new(channel(&server));
    assert_eq!(client.cas_unchecked("k".into(), 1, 2).await.unwrap(), Ok(2));
    assert_eq!(recorder.runs.load(Ordering::SeqCst), 1);
    assert_eq!(*recorder.last_expected.lock().unwrap(), Some(-1));
    server.shutdown().await;
}

#[tokio::test]
async fn a_caller_that_sends_no_fingerprint_is_served() {
    // A raw call (or a peer in another language) that sends no `rpc-schema` is not checked.
    let (server, recorder) = serve().await;
    let channel = channel(&server);
    // ("k", -1i64, 5u64) as the server's types encode it.
    let payload = Bytes::from_static(&[1, b'k', 1, 5]);
    let reply = channel
        .call("Kv.cas", payload.clone(), CallOptions::new())
        .await
        .unwrap();
    assert_eq!(&reply.payload[..], &[0, 5], "Ok(5)");
    assert_eq!(*recorder.last_expected.lock().unwrap(), Some(-1));
    // One that sends a wrong one is refused like a typed client. (`rpc-schema` is keel's own
    // key: set as plain metadata, the call would fail before it is sent.)
    let wrong = CallOptions::new().schema_fingerprint(Bytes::from_static(&[0; 8]));
    let err = channel.call("Kv.cas", payload, wrong).await.unwrap_err();
    assert_eq!(
        (err.code(), err.outcome()),
        (StatusCode::FAILED_PRECONDITION, Outcome::NotExecuted)
    );
    assert!(
        err.status()
            .message()
            .contains("0x0000000000000000 from the client"),
        "{err}"
    );
    assert_eq!(recorder.runs.load(Ordering::SeqCst), 1);
    server.shutdown().await;
}
