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
/// The read buffer of an idle connection: enough for heartbeat frames; it grows as usual once
/// more arrives.
pub const IDLE_READ_ROOM: usize = 512;
/// Below this much room, an idle buffer grows as usual (its next read could not hold a PING).
const IDLE_MIN_ROOM: usize = 64;

/// Reads what the transport has into `buf`, growing it first if it is nearly full.
/// `Ready(Ok(0))` is the end of the stream.
///
/// A buffer gets `READ_GROWTH` (16 KiB) more when less than `READ_ROOM` (4 KiB) is free, except an
/// empty one of at most [`IDLE_READ_ROOM`] bytes with a little room left: that is the buffer of an
/// idle connection (which shrinks to `IDLE_READ_ROOM`), and heartbeats are read into it as it is,
/// so they do not grow it back. A buffer with no room at all gets `IDLE_READ_ROOM`.
pub fn poll_fill<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    let room = buf.capacity() - buf.len();
    let idle = buf.is_empty() && buf.capacity() <= IDLE_READ_ROOM && room >= IDLE_MIN_ROOM;
    if buf.capacity() == 0 {
        buf.reserve(IDLE_READ_ROOM);
    } else if room < READ_ROOM && !idle {
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
