//! The shared vocabulary of keel: what a call is, how it ends, and how its failure is labelled.
//!
//! - [`StatusCode`] and [`Status`]: how a call ended, numbered as gRPC numbers codes.
//! - [`Outcome`]: whether a failed call may have run on the server (not sent, not executed,
//!   executed, maybe executed), and [`Outcome::permits_retry`], the one place the retry-safety rule
//!   lives.
//! - [`Error`]: what a failed call returns: status, outcome, [`ErrorKind`] and cause chain.
//! - [`Deadline`]: an absolute instant locally, a relative budget on the wire.
//! - [`Metadata`]: validated keys with binary values, and their size on the wire.
//! - [`CallContext`]: what a handler knows about its call; [`current`]: the call being served,
//!   as the code inside its handler (and the calls it makes) sees it.
//! - [`PayloadCodec`] and [`Bincode`]: application values to payload bytes, decoded under a limit.
//!
//! ```
//! use keel::core::{Error, Idempotency, Outcome, Status, StatusCode};
//!
//! // A call whose connection dropped after the request was written:
//! let err = Error::new(Status::new(StatusCode::UNAVAILABLE, "connection reset"), Outcome::MaybeExecuted);
//! // Only an idempotent method may be tried again.
//! assert!(!err.outcome().permits_retry(Idempotency::NonIdempotent));
//! assert!(err.outcome().permits_retry(Idempotency::Idempotent));
//! assert_eq!(err.to_string(), "UNAVAILABLE (MAYBE_EXECUTED): connection reset");
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )
)]

mod context;
pub mod current;
mod deadline;
mod error;
pub mod metadata;
mod outcome;
mod payload;
mod reply;
mod retry_stop;
mod status;

pub use context::CallContext;
pub use deadline::{Deadline, Instant};
pub use error::{BoxError, Error, ErrorKind};
pub use metadata::{Metadata, MetadataError, MetadataKey};
pub use outcome::{Idempotency, Outcome};
pub use payload::{
    Bincode, DECODE_LIMIT_PER_FRAME_BYTE, DEFAULT_DECODE_LIMIT, DecodeError, MAX_DEPTH,
    PayloadCodec, PayloadError,
};
pub use reply::Reply;
pub use retry_stop::{RetryStopped, StopReason};
pub use status::{Status, StatusCode};
