//! Statuses and metadata both ways, over real TCP: typed handlers failing with a wire status
//! (NOT_EXECUTED when they say so), response metadata set by handlers and read by typed clients,
//! keel's reserved `rpc-*` keys refused from user code, and a caller's own idempotency key.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use keel::server::DedupeConfig;
use keel::server::context::{
    ResponseMetadataError, append_response_metadata, insert_response_metadata,
};
use keel::{
    Bytes, CallOptions, Channel, Metadata, MetadataKey, Outcome, Server, Status, StatusCode,
};

/// A versioned register, failing with wire statuses.
#[keel::service]
pub trait Register {
    /// The value; NOT_FOUND before the first put. Sets `x-version` on the response.
    #[idempotent]
    async fn get(&self) -> Result<u64, Status>;
    /// Sets the value; refused with UNAVAILABLE, NOT_EXECUTED, while the register is paused.
    /// Returns the new version.
    #[dedupe]
    async fn put(&self, value: u64) -> Result<u64, keel::Status>;
    /// Takes a ticket (not idempotent, not deduplicated); refused as `put` is.
    async fn take(&self) -> Result<u64, Status>;
    /// Tries to set a reserved response key, and reports what happened.
    async fn forge(&self) -> String;
}

#[derive(Default)]
struct Cell {
    value: AtomicU64,
    version: AtomicU64,
    puts_run: AtomicUsize,
    tickets: AtomicU64,
    /// Refuse the next puts and takes, before doing anything, this many times.
    refuse_puts: AtomicUsize,
    paused: AtomicBool,
}

impl Cell {
    /// Whether this call is refused before anything changes: one of the `refuse_puts` left, or
    /// paused.
    fn refuses(&self) -> bool {
        let counted = self
            .refuse_puts
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        counted || self.paused.load(Ordering::SeqCst)
    }
}

fn version_key() -> MetadataKey {
    MetadataKey::from_static("x-version")
}

impl Register for Arc<Cell> {
    async fn get(&self) -> Result<u64, Status> {
        let version = self.version.load(Ordering::SeqCst);
        insert_response_metadata(version_key(), Bytes::from(version.to_string())).unwrap();
        if version == 0 {
            return Err(Status::new(StatusCode::NOT_FOUND, "nothing was put yet"));
        }
        Ok(self.value.load(Ordering::SeqCst))
    }

    async fn put(&self, value: u64) -> Result<u64, Status> {
        if self.refuses() {
            return Err(Status::new(StatusCode::UNAVAILABLE, "paused").not_executed());
        }
        self.puts_run.fetch_add(1, Ordering::SeqCst);
        self.value.store(value, Ordering::SeqCst);
        Ok(self.version.fetch_add(1, Ordering::SeqCst) + 1)
    }

    async fn take(&self) -> Result<u64, Status> {
        if self.refuses() {
            return Err(Status::new(StatusCode::UNAVAILABLE, "no tickets").not_executed());
        }
        Ok(self.tickets.fetch_add(1, Ordering::SeqCst) + 1)
    }

    async fn forge(&self) -> String {
        let replayed = MetadataKey::from_static("rpc-replayed");
        let forged = insert_response_metadata(replayed.clone(), Bytes::from_static(b"1"));
        let appended = append_response_metadata(replayed, Bytes::from_static(b"1"));
        assert_eq!(forged, appended);
        match forged {
            Err(err @ ResponseMetadataError::Reserved { .. }) => err.to_string(),
            other => format!("unexpected: {other:?}"),
        }
    }
}

async fn serve(cell: &Arc<Cell>) -> (keel::ServerHandle, RegisterClient) {
    let server = Server::builder()
        .add_service(RegisterServer::new(Arc::clone(cell)))
        .dedupe(DedupeConfig::new().ttl(Duration::from_secs(60)))
        .build()
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let client = RegisterClient::new(Channel::builder(server.local_addr()).build());
    (server, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_status_reaches_the_caller_with_its_code_message_and_metadata() {
    let cell = Arc::new(Cell::default());
    let (server, client) = serve(&cell).await;

    let err = client.get().await.unwrap_err();
    assert_eq!(err.code(), StatusCode::NOT_FOUND);
    assert_eq!(err.outcome(), Outcome::Executed);
    assert_eq!(err.status().message(), "nothing was put yet");
    assert_eq!(err.status().metadata().get_str("x-version"), Some("0"));

    assert_eq!(client.put(41).await.unwrap(), 1);
    let got = client.get_with_metadata().await.unwrap();
    assert_eq!(got.value, 41);
    assert_eq!(got.metadata.get_str("x-version"), Some("1"));
    assert!(!got.replayed());
    assert_eq!(
        client.get().await.unwrap(),
        41,
        "the short form is unchanged"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_marked_not_executed_is_retried_even_for_a_non_idempotent_call() {
    let cell = Arc::new(Cell::default());
    let (server, client) = serve(&cell).await;

    // Refused twice before doing anything: NOT_EXECUTED lets the channel retry a
    // non-idempotent call, and the third attempt runs it once.
    cell.refuse_puts.store(2, Ordering::SeqCst);
    assert_eq!(client.put(5).await.unwrap(), 1);
    assert_eq!(cell.puts_run.load(Ordering::SeqCst), 1);

    // Refused on every attempt: the caller is told, truthfully, that it never ran.
    cell.paused.store(true, Ordering::SeqCst);
    let once = client.with_options(CallOptions::new().no_retry());
    let err = once.put(6).await.unwrap_err();
    assert_eq!(err.code(), StatusCode::UNAVAILABLE);
    assert_eq!(err.outcome(), Outcome::NotExecuted);
    assert_eq!(cell.puts_run.load(Ordering::SeqCst), 1);
    assert_eq!(cell.value.load(Ordering::SeqCst), 5);

    // The same without the dedupe window in the way.
    let err = once.take().await.unwrap_err();
    assert_eq!(err.code(), StatusCode::UNAVAILABLE);
    assert_eq!(err.outcome(), Outcome::NotExecuted);
    cell.paused.store(false, Ordering::SeqCst);
    cell.refuse_puts.store(2, Ordering::SeqCst);
    assert_eq!(client.take().await.unwrap(), 1);
    assert_eq!(cell.tickets.load(Ordering::SeqCst), 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_cannot_set_reserved_response_keys() {
    let cell = Arc::new(Cell::default());
    let (server, client) = serve(&cell).await;
    let said = client.forge_with_metadata().await.unwrap();
    assert_eq!(
        said.value,
        "response metadata key \"rpc-replayed\" is reserved for keel (every key starting \
         \"rpc-\"); name it otherwise"
    );
    assert!(!said.replayed(), "nothing forged reached the caller");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_request_keys_from_the_caller_fail_before_sending() {
    let cell = Arc::new(Cell::default());
    let (server, client) = serve(&cell).await;
    for key in ["rpc-attempt", "rpc-schema", "rpc-request-id"] {
        let mut metadata = Metadata::new();
        metadata.insert(MetadataKey::from_static("x-fine"), "1");
        metadata.insert(MetadataKey::from_static(key), "7");
        let forged = client.with_options(CallOptions::new().metadata(metadata));
        let err = forged.put(9).await.unwrap_err();
        assert_eq!(err.code(), StatusCode::INVALID_ARGUMENT, "{key}");
        assert_eq!(err.outcome(), Outcome::NotSent, "{key}");
        assert_eq!(err.kind(), keel::ErrorKind::Local, "{key}");
        let message = err.status().message();
        assert!(
            message.starts_with(&format!("metadata key {key:?} is reserved for keel")),
            "{message}"
        );
        assert_eq!(
            message.contains("CallOptions::idempotency_key"),
            key == "rpc-request-id",
            "{message}"
        );
    }
    assert_eq!(cell.puts_run.load(Ordering::SeqCst), 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callers_idempotency_key_dedupes_calls_across_channels() {
    let cell = Arc::new(Cell::default());
    let (server, client) = serve(&cell).await;
    let key = CallOptions::new().idempotency_key(&b"order-1234"[..]);

    let first = client
        .with_options(key.clone())
        .put_with_metadata(7)
        .await
        .unwrap();
    assert_eq!((first.value, first.replayed()), (1, false));

    // Another channel (a restarted caller, say) with the same key gets the recorded result.
    let other = RegisterClient::new(Channel::builder(server.local_addr()).build());
    let again = other.with_options(key).put_with_metadata(8).await.unwrap();
    assert_eq!((again.value, again.replayed()), (1, true));
    assert_eq!(cell.puts_run.load(Ordering::SeqCst), 1);
    assert_eq!(
        cell.value.load(Ordering::SeqCst),
        7,
        "the second put never ran"
    );

    // A different key is a different operation.
    let fresh = CallOptions::new().idempotency_key(Bytes::from_static(b"order-1235"));
    assert_eq!(client.with_options(fresh).put(8).await.unwrap(), 2);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_deduped_call_leaves_no_entry_so_the_key_can_run_later() {
    let cell = Arc::new(Cell::default());
    let (server, client) = serve(&cell).await;
    let key = CallOptions::new().idempotency_key(&b"k"[..]).no_retry();

    cell.paused.store(true, Ordering::SeqCst);
    let err = client.with_options(key.clone()).put(3).await.unwrap_err();
    assert_eq!(err.outcome(), Outcome::NotExecuted);

    cell.paused.store(false, Ordering::SeqCst);
    let ran = client.with_options(key).put_with_metadata(3).await.unwrap();
    assert_eq!((ran.value, ran.replayed()), (1, false));
    assert_eq!(cell.puts_run.load(Ordering::SeqCst), 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_of_the_wrong_length_fail_before_sending() {
    let cell = Arc::new(Cell::default());
    let (server, client) = serve(&cell).await;
    for (len, key) in [(0, Bytes::new()), (65, Bytes::from(vec![b'k'; 65]))] {
        let bad = client.with_options(CallOptions::new().idempotency_key(key));
        let err = bad.put(1).await.unwrap_err();
        assert_eq!(err.code(), StatusCode::INVALID_ARGUMENT);
        assert_eq!(err.outcome(), Outcome::NotSent);
        assert_eq!(
            err.status().message(),
            format!("the idempotency key must be 1 to 64 bytes, got {len}")
        );
    }
    let max = client.with_options(CallOptions::new().idempotency_key(vec![b'k'; 64]));
    assert_eq!(max.put(1).await.unwrap(), 1);
    assert_eq!(cell.puts_run.load(Ordering::SeqCst), 1);
    server.shutdown().await;
}
