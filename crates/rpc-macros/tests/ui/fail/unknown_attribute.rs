//! An attribute keel does not know is named, with the list of those it does.

#[keel::service]
pub trait Store {
    #[timeout(2s)]
    async fn get(&self, key: String) -> u64;
    #[cached]
    async fn list(&self) -> Vec<String>;
    /// Rust's own attributes and other tools' pass through.
    #[allow(clippy::all)]
    #[rustfmt::skip]
    async fn put(&self, key: String);
}

fn main() {}
