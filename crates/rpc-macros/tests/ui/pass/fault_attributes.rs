//! Every fault-handling attribute compiles, and a client built from them makes calls.

#[keel::service]
trait Ledger {
    /// Retried after a lost response: the server's dedupe window answers with the first result.
    #[dedupe]
    async fn append(&self, entry: u64) -> u64;
    #[idempotent]
    #[hedge(after = 20ms)]
    #[retry(max_attempts = 5)]
    async fn len(&self) -> u64;
    #[idempotent]
    #[hedge(percentile = 95)]
    async fn last(&self) -> u64;
    #[no_retry]
    #[deadline(2s)]
    async fn reset(&self);
}

fn main() {
    fn assert_client(_: &LedgerClient) {}
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let _inside = runtime.enter();
    let channel = keel::Channel::builder("127.0.0.1:1".parse().unwrap()).build();
    assert_client(&LedgerClient::new(channel));
}
