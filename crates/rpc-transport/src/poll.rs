//! Small pieces both connection loops poll with.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::AsyncRead;
use tokio::time::{Instant, Sleep};

/// Bytes the read buffer keeps free before each read.
const READ_ROOM: usize = 4 * 1024;
/// How much the read buffer grows when it runs short.
const READ_GROWTH: usize = 16 * 1024;
/// What a buffer without capacity (freed while the connection was idle) gets for its first
/// read: enough for heartbeat frames; it grows as usual once more arrives.
pub const IDLE_READ_ROOM: usize = 512;

/// Reads what the transport has into `buf`, growing it first if it is nearly full.
/// `Ready(Ok(0))` is the end of the stream.
///
/// A buffer with no capacity at all (an idle connection frees its buffer) gets
/// [`IDLE_READ_ROOM`] bytes, and an empty one with at least half that free reads into what it
/// has, so heartbeats on an idle connection keep it small; any other gets `READ_GROWTH` (16 KiB)
/// more when less than `READ_ROOM` (4 KiB) is free.
pub fn poll_fill<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    let room = buf.capacity() - buf.len();
    if buf.capacity() == 0 {
        buf.reserve(IDLE_READ_ROOM);
    } else if room < READ_ROOM && !(buf.is_empty() && room >= IDLE_READ_ROOM / 2) {
        buf.reserve(READ_GROWTH);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

/// Arms `timer` for `next` (if anything is due) and polls it; true when it has already fired, so
/// the loop should run again.
pub fn poll_timer(
    timer: &mut Pin<Box<Sleep>>,
    next: Option<Instant>,
    cx: &mut Context<'_>,
) -> bool {
    let Some(at) = next else {
        return false;
    };
    if timer.deadline() != at {
        timer.as_mut().reset(at);
    }
    timer.as_mut().poll(cx).is_ready()
}
