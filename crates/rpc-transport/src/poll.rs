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

/// Reads what the transport has into `buf`, growing it first if it is nearly full.
/// `Ready(Ok(0))` is the end of the stream.
pub fn poll_fill<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < READ_ROOM {
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
