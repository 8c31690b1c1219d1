//! Connection plumbing shared by keel's server and client: the [`WriteQueue`] that batches
//! outbound frames, the handshake I/O both sides perform, the [`Heartbeat`] both keep, and the
//! small polling helpers of their connection loops.
//!
//! Internal to keel; its API follows the runtimes' needs, not a user's.
//!
//! ```
//! use bytes::Bytes;
//! use rpc_codec::{Frame, FrameEncoder, MethodName, Request, Settings};
//! use rpc_transport::WriteQueue;
//!
//! let mut encoder = FrameEncoder::without_preface();
//! encoder.set_peer_settings(Settings::default());
//! let mut queue = WriteQueue::new(encoder);
//! let request = Request::new(1, MethodName::from_static("Echo.echo"), Bytes::from_static(b"hi"));
//! let batch = queue.push(&Frame::Request(request))?;
//! assert_eq!(batch, 1);
//! assert_eq!(queue.started_through(), 0); // queued: not a byte has left
//! # Ok::<(), rpc_codec::EncodeError>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod handshake;
mod heartbeat;
mod poll;
mod write_queue;

pub use handshake::HandshakeError;
pub use heartbeat::{Beat, Heartbeat, MIN_HEARTBEAT_INTERVAL};
pub use poll::{IDLE_READ_ROOM, poll_fill, poll_timer};
pub use write_queue::WriteQueue;
