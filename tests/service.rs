//! `#[service]` end to end over real TCP: every supported method shape, application errors as
//! typed values, per-call options, method attributes, and the call context in handlers.

mod support;

use std::time::{Duration, Instant};

use keel::{Bytes, CallOptions, Channel, Outcome, Server, StatusCode};
use serde::{Deserialize, Serialize};

/// An application error: travels as a typed value, not a string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LookupError {
    /// Nothing under that key.
    Missing(String),
    /// The key is malformed.
    BadKey {
        /// Why.
        reason: String,
    },
}

/// The service under test.
#[keel::service]
pub trait Store {
    /// No arguments, no result.
    async fn ping(&self);
    /// Several arguments of different types.
    async fn sum(&self, a: u32, b: u64, scale: i8) -> i64;
    /// Bytes in and out, retried freely.
    #[idempotent]
    async fn echo_bytes(&self, data: Bytes) -> Bytes;
    /// An application error.
    async fn lookup(&self, key: String) -> Result<String, LookupError>;
    /// Sleeps; its default deadline is 100 ms.
    #[deadline(100ms)]
    async fn nap(&self, millis: u64) -> u64;
    /// What the handler sees of its call.
    async fn whoami(&self) -> (String, bool, Option<u64>);
    /// A raw identifier as a method name.
    async fn r#type(&self) -> String;
}

struct MemoryStore;

impl Store for MemoryStore {
    async fn ping(&self) {}

    async fn sum(&self, a: u32, b: u64, scale: i8) -> i64 {
        (i64::from(a) + i64::try_from(b).unwrap()) * i64::from(scale)
    }

    async fn echo_bytes(&self, data: Bytes) -> Bytes {
        data
    }

    async fn lookup(&self, key: String) -> Result<String, LookupError> {
        match key.as_str() {
            "" => Err(LookupError::BadKey {
                reason: "empty".into(),
            }),
            "answer" => Ok("42".into()),
            _ => Err(LookupError::Missing(key)),
        }
    }

    async fn nap(&self, millis: u64) -> u64 {
        tokio::time::sleep(Duration::from_millis(millis)).await;
        millis
    }

    async fn whoami(&self) -> (String, bool, Option<u64>) {
        keel::server::context::with_current(|ctx| {
            let left = ctx.deadline().map(|d| {
                u64::try_from(d.remaining(keel::core::Instant::now()).as_millis()).unwrap()
            });
            let idempotent = ctx.idempotency() == keel::Idempotency::Idempotent;
            (ctx.method().to_owned(), idempotent, left)
        })
        .expect("a handler runs with its call's context")
    }

    async fn r#type(&self) -> String {
        "raw".into()
    }
}

async fn store() -> (keel::ServerHandle, StoreClient) {
    let server = Server::builder()
        .add_service(StoreServer::new(MemoryStore))
        .build()
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let client = StoreClient::new(Channel::builder(server.local_addr()).build());
    (server, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_shape_round_trips() {
    let (server, client) = store().await;
    client.ping().await.unwrap();
    assert_eq!(client.sum(2, 40, -1).await.unwrap(), -42);
    let blob = Bytes::from(vec![7u8; 100_000]);
    assert_eq!(client.echo_bytes(blob.clone()).await.unwrap(), blob);
    assert_eq!(client.r#type().await.unwrap(), "raw");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_errors_stay_typed_values() {
    let (server, client) = store().await;
    assert_eq!(
        client.lookup("answer".into()).await.unwrap(),
        Ok("42".into())
    );
    assert_eq!(
        client.lookup("nope".into()).await.unwrap(),
        Err(LookupError::Missing("nope".into()))
    );
    assert_eq!(
        client.lookup(String::new()).await.unwrap(),
        Err(LookupError::BadKey {
            reason: "empty".into()
        })
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_deadline_applies_unless_the_call_sets_one() {
    let (server, client) = store().await;
    assert_eq!(client.nap(10).await.unwrap(), 10);
    let started = Instant::now();
    let err = client.nap(1000).await.unwrap_err();
    assert_eq!(err.code(), StatusCode::DEADLINE_EXCEEDED);
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    // Per-call options override the method's default.
    let patient = client.with_options(CallOptions::new().timeout(Duration::from_secs(2)));
    assert_eq!(patient.nap(200).await.unwrap(), 200);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_see_their_call_context_and_the_idempotent_flag() {
    let (server, client) = store().await;
    let (method, idempotent, left) = client
        .with_options(CallOptions::new().timeout(Duration::from_millis(800)))
        .whoami()
        .await
        .unwrap();
    assert_eq!(method, "Store.whoami");
    assert!(!idempotent);
    assert!(left.is_some_and(|ms| ms <= 800 && ms > 500), "{left:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arguments_that_do_not_decode_are_refused_before_the_method_runs() {
    let (server, client) = store().await;
    // Three bytes cannot be (u32, u64, i8) followed by nothing: refused, never run.
    let err = client
        .channel()
        .call(
            "Store.sum",
            Bytes::from_static(&[0xff, 0xff, 0xff]),
            CallOptions::new(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.outcome()),
        (StatusCode::INVALID_ARGUMENT, Outcome::NotExecuted)
    );
    assert!(
        err.status()
            .message()
            .starts_with("Store.sum: the arguments do not decode")
    );
    server.shutdown().await;
}

/// Fault-handling attributes, seen from the server.
#[keel::service]
pub trait Flaky {
    /// Two attempts at most.
    #[idempotent]
    #[retry(max_attempts = 2)]
    async fn two(&self) -> u32;
    /// One attempt.
    #[idempotent]
    #[no_retry]
    async fn one(&self) -> u32;
    /// The channel's policy: three attempts.
    #[idempotent]
    async fn three(&self) -> u32;
    /// Not idempotent: one attempt after an EXECUTED failure.
    async fn once(&self) -> u32;
    /// Sends a request id.
    #[dedupe]
    async fn deduped(&self) -> bool;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_and_dedupe_attributes_reach_the_wire() {
    use keel::PayloadCodec;
    let attempts = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let mut builder = Server::builder();
    for method in ["Flaky.two", "Flaky.one", "Flaky.three", "Flaky.once"] {
        let attempts = std::sync::Arc::clone(&attempts);
        builder = builder.register(method, move |ctx: keel::CallContext, _: Bytes| {
            *attempts
                .lock()
                .unwrap()
                .entry(ctx.method().to_owned())
                .or_insert(0) += 1;
            async move { Err(keel::Status::new(StatusCode::UNAVAILABLE, "always failing")) }
        });
    }
    let server = support::start(builder.register(
        "Flaky.deduped",
        |ctx: keel::CallContext, _: Bytes| async move {
            let has_id = ctx.metadata().get("rpc-request-id").is_some();
            Ok(keel::Bincode::new().encode(&has_id).unwrap())
        },
    ))
    .await;
    let client = FlakyClient::new(Channel::builder(server.local_addr()).build());
    for err in [
        client.two().await.unwrap_err(),
        client.one().await.unwrap_err(),
        client.three().await.unwrap_err(),
        client.once().await.unwrap_err(),
    ] {
        assert_eq!(
            (err.code(), err.outcome()),
            (StatusCode::UNAVAILABLE, Outcome::Executed)
        );
    }
    let attempts = attempts.lock().unwrap().clone();
    assert_eq!(attempts["Flaky.two"], 2);
    assert_eq!(attempts["Flaky.one"], 1);
    assert_eq!(attempts["Flaky.three"], 3);
    assert_eq!(attempts["Flaky.once"], 1);
    assert!(
        client.deduped().await.unwrap(),
        "#[dedupe] sends rpc-request-id"
    );
    server.shutdown().await;
}
