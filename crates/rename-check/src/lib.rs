//! A service defined against keel renamed to `rpc` in Cargo.toml: `#[service]` finds the facade
//! through the user's manifest, so the generated code compiles and runs under the new name.
//!
//! ```
//! use rename_check::{Greeter, GreeterClient, GreeterServer};
//!
//! struct Polite;
//! impl Greeter for Polite {
//!     async fn greet(&self, name: String) -> String {
//!         format!("hello, {name}")
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let server = rpc::Server::builder()
//!     .add_service(GreeterServer::new(Polite))
//!     .build()
//!     .bind("127.0.0.1:0")
//!     .await?;
//! let client = GreeterClient::new(rpc::Channel::builder(server.local_addr()).build());
//! assert_eq!(client.greet("keel".into()).await?, "hello, keel");
//! server.shutdown().await;
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

/// Greets people.
#[rpc::service]
pub trait Greeter {
    /// Says hello to `name`.
    async fn greet(&self, name: String) -> String;
}
