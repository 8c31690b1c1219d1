#[keel::service]
trait Ledger {
    // A hedge may run the method twice: only idempotent methods.
    #[hedge(after = 20ms)]
    async fn append(&self, entry: u64) -> u64;
    // Servers dedupe only non-idempotent requests.
    #[idempotent]
    #[dedupe]
    async fn len(&self) -> u64;
    #[retry(max_attempts = 9)]
    async fn many(&self) -> u64;
    #[idempotent]
    #[hedge(after = 20)]
    async fn unitless(&self) -> u64;
    #[retry(attempts = 2)]
    async fn misspelt(&self) -> u64;
    // Forking runs the method on several servers: only idempotent methods.
    #[fork(2)]
    async fn forked(&self) -> u64;
    #[idempotent]
    #[fork(1)]
    async fn fork_of_one(&self) -> u64;
}

fn main() {}
