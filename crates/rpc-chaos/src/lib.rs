//! Fault injection for keel, and for anyone testing a service over TCP.
//!
//! - [`Proxy`]: a TCP proxy on 127.0.0.1:0 in front of a server that, per direction and per
//!   connection and while it runs, delays bytes (latency and jitter), limits bandwidth, slices
//!   writes into tiny pieces, cuts the connection after N bytes (reset or clean close), partitions
//!   (holds bytes and delivers them when it heals, as a network does to TCP) or blackholes (drops
//!   them, as a broken middlebox does), flips chosen bits at chosen offsets or random bits at a
//!   seeded rate, refuses new connections, and pauses and resumes.
//! - [`ServerProcess`]: a server in a child process, to SIGKILL, SIGSTOP (a hung server whose
//!   sockets stay open), SIGCONT, and restart on the same port.
//!
//! Randomness is seeded, so a failing run can be replayed from the seed it printed.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! use std::time::Duration;
//! use rpc_chaos::{Direction, DropMode, Faults, Proxy};
//!
//! let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let proxy = Proxy::start(upstream.local_addr()?, 42).await?;
//! proxy.set_faults(
//!     Direction::ClientToServer,
//!     Faults::none().latency(Duration::from_millis(5), Duration::ZERO).slice(1, Duration::ZERO),
//! );
//! proxy.set_faults(Direction::ServerToClient, Faults::none().drop_after(100, DropMode::Reset));
//! assert_eq!(proxy.seed(), 42);
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod faults;
mod process;
mod proxy;

pub use faults::{Direction, DropMode, Faults};
pub use process::{ServerProcess, StartError};
pub use proxy::{ConnectionInfo, Flip, Proxy};
