//! The client's fault handling is observable: every retry, hedge, spent budget and failed
//! connection attempt is a `tracing` event with its fields. A binary of its own, with the
//! subscriber installed as the global default before anything runs: `tracing` caches per call
//! site whether anyone listens, and a call site first reached by a concurrent test could be
//! cached as unheard by a thread-local subscriber.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel::{Bytes, CallContext, CallOptions, Channel, HedgePolicy, Server, Status, StatusCode};

/// Records every event's fields as `name=value` strings, and every span's (its name as `name`).
#[derive(Clone, Default)]
struct Events(
    Arc<Mutex<Vec<HashMap<String, String>>>>,
    Arc<Mutex<Vec<HashMap<String, String>>>>,
);

impl Events {
    fn spans(&self, name: &str) -> Vec<HashMap<String, String>> {
        self.1
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.get("name").map(String::as_str) == Some(name))
            .cloned()
            .collect()
    }

    fn with_message(&self, message: &str) -> Vec<HashMap<String, String>> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.get("message").map(String::as_str) == Some(message))
            .cloned()
            .collect()
    }
}

struct Fields<'a>(&'a mut HashMap<String, String>);

impl tracing::field::Visit for Fields<'_> {
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.to_string());
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl tracing::Subscriber for Events {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, attributes: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut fields = HashMap::new();
        fields.insert("name".to_owned(), attributes.metadata().name().to_owned());
        attributes.record(&mut Fields(&mut fields));
        let mut spans = self.1.lock().unwrap();
        spans.push(fields);
        tracing::span::Id::from_u64(spans.len() as u64)
    }
    fn record(&self, id: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        let mut spans = self.1.lock().unwrap();
        let index = usize::try_from(id.into_u64()).unwrap() - 1;
        values.record(&mut Fields(&mut spans[index]));
    }
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut fields = HashMap::new();
        fields.insert("level".to_owned(), event.metadata().level().to_string());
        event.record(&mut Fields(&mut fields));
        self.0.lock().unwrap().push(fields);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[tokio::test(flavor = "current_thread")]
async fn retries_hedges_spent_budgets_and_reconnects_are_tracing_events() {
    let events = Events::default();
    tracing::subscriber::set_global_default(events.clone()).unwrap();
    let server = Server::builder()
        .register(
            "Sick.call",
            |_ctx: CallContext, _payload: Bytes| async move {
                Err(Status::new(StatusCode::UNAVAILABLE, "down"))
            },
        )
        .register(
            "Slow.first",
            |ctx: CallContext, payload: Bytes| async move {
                if ctx.attempt() == 1 {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
                Ok(payload)
            },
        )
        .build()
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let idempotent = || CallOptions::new().idempotent(true);
    let channel = Channel::builder(server.local_addr())
        .hedge_policy(HedgePolicy::after(Duration::from_millis(20)))
        .build();
    channel
        .call("Sick.call", Bytes::new(), idempotent())
        .await
        .unwrap_err();
    let retries = events.with_message("retrying");
    assert_eq!(retries.len(), 2, "{retries:?}");
    assert_eq!(retries[0]["method"], "Sick.call");
    assert_eq!(retries[0]["attempt"], "2");
    assert_eq!(retries[1]["attempt"], "3");
    assert_eq!(retries[0]["outcome"], "EXECUTED");
    assert_eq!(retries[0]["why"], "the policy retries this status");
    // And why it stopped, after the last attempt the events announced.
    let stopped = events.with_message("not retried: 3 attempts made");
    assert_eq!(stopped.len(), 1, "{stopped:?}");
    assert_eq!(stopped[0]["attempts"], "3");

    // A failure the rules do not retry says so too.
    channel
        .call("Sick.call", Bytes::new(), CallOptions::new())
        .await
        .unwrap_err();
    let refused =
        events.with_message("not retried: this outcome and status do not allow another attempt");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(
        (refused[0]["outcome"].as_str(), refused[0]["code"].as_str()),
        ("EXECUTED", "UNAVAILABLE")
    );

    let started = std::time::Instant::now();
    channel
        .call("Slow.first", Bytes::new(), idempotent())
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the hedge answered"
    );
    let hedges = events.with_message("hedging");
    assert_eq!(hedges.len(), 1, "{hedges:?}");
    assert_eq!(hedges[0]["method"], "Slow.first");
    assert_eq!(hedges[0]["attempt"], "2");

    let broke = Channel::builder(server.local_addr())
        .retry_budget(keel::RetryBudget::new().min_per_sec(0).percent(0.0))
        .build();
    broke
        .call("Sick.call", Bytes::new(), idempotent())
        .await
        .unwrap_err();
    let spent = events.with_message("retry budget exhausted");
    assert_eq!(spent.len(), 1, "{spent:?}");
    assert_eq!(spent[0]["method"], "Sick.call");
    assert_eq!(spent[0]["outcome"], "EXECUTED");
    let stopped = events.with_message("not retried: the retry budget is spent");
    assert_eq!(stopped.len(), 1, "{stopped:?}");
    server.shutdown().await;

    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = unused.local_addr().unwrap();
    drop(unused);
    let down = Channel::builder(addr).build();
    down.call(
        "Sick.call",
        Bytes::new(),
        CallOptions::new().timeout(Duration::from_millis(400)),
    )
    .await
    .unwrap_err();
    let failed = events.with_message("connect failed");
    assert!((2..=5).contains(&failed.len()), "{failed:?}");
    assert_eq!(failed[0]["attempt"], "1");
    assert_eq!(failed[0]["addr"], addr.to_string());
    assert_eq!(
        failed[0]["error"],
        format!("could not connect to {addr}: Connection refused (os error 111)")
    );
    // One WARN while the server stays down (then one per 30 s); the other failures are DEBUG.
    let levels: Vec<&str> = failed.iter().map(|e| e["level"].as_str()).collect();
    assert_eq!(levels[0], "WARN");
    assert!(levels[1..].iter().all(|&l| l == "DEBUG"), "{levels:?}");

    // Every call is a span on both sides, with the same method, attempt and call id.
    let server = Server::builder()
        .register(
            "Echo.echo",
            |_ctx: CallContext, payload: Bytes| async move { Ok(payload) },
        )
        .build()
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let channel = Channel::builder(server.local_addr()).build();
    channel
        .call("Echo.echo", Bytes::from_static(b"hi"), CallOptions::new())
        .await
        .unwrap();
    let client = events.spans("rpc.attempt");
    let client = client.iter().find(|s| s["method"] == "Echo.echo").unwrap();
    let served = events.spans("rpc.call");
    let served = served.iter().find(|s| s["method"] == "Echo.echo").unwrap();
    assert_eq!(client["attempt"], "1");
    assert_eq!(served["attempt"], "1");
    assert_eq!(client["call_id"], served["call_id"]);
    assert_eq!(client["peer"], server.local_addr().to_string());
    assert!(served["peer"].starts_with("127.0.0.1:"), "{served:?}");
    server.shutdown().await;
}
