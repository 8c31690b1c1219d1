//! Outbound frames: coalesced into batches, large payloads sent without copying, urgent frames
//! first.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use rpc_codec::{EncodeError, Frame, FrameEncoder};
use tokio::io::AsyncWrite;

/// Payloads at least this large are written from their own buffer (a vectored write) instead of
/// being copied into the batch.
const COPY_LIMIT: usize = 8 * 1024;

/// Most slices handed to one vectored write.
const MAX_SLICES: usize = 64;

/// Small frames are coalesced into chunks of about this size: an urgent frame can enter a batch
/// being written only between chunks, so this bounds how much of a batch it waits behind.
const CHUNK_LIMIT: usize = 64 * 1024;

/// Chunk slots an idle queue keeps allocated; more are freed by
/// [`WriteQueue::shrink_when_empty`].
const IDLE_CHUNKS: usize = 8;

/// A run of bytes to write, and whether a frame ends where it ends (an urgent frame may only go
/// in after a chunk that ends one).
#[derive(Debug)]
struct Chunk {
    bytes: Bytes,
    ends_frame: bool,
    /// A PONG moved ahead of the batch: a newer one replaces it while it has not started.
    pong: bool,
}

/// The frames a connection has to write, in batches.
///
/// Frames pushed while a batch is being written wait in the *next* batch, so many small frames
/// leave in one write call. Urgent frames (PONGs) go ahead of every frame that has not started:
/// into the batch being written at the next frame boundary (small frames are coalesced in chunks
/// of at most 64 KiB plus one frame, so that is where boundaries are seen), or at the front of the
/// next batch. Only bytes the transport already took and the rest of the frame being written go
/// first. Each batch has a sequence number, so the owner can tell which frames cannot have left
/// yet ([`WriteQueue::started_through`]): that is how a client knows a request was NOT_SENT.
#[derive(Debug)]
pub struct WriteQueue {
    encoder: FrameEncoder,
    /// The batch being written.
    current: VecDeque<Chunk>,
    current_seq: u64,
    /// Whether the next byte to write starts a frame.
    at_frame_start: bool,
    /// Frames for the next batch: small ones coalesced in `staging`, large payloads as chunks.
    next: VecDeque<Chunk>,
    staging: BytesMut,
    urgent: BytesMut,
    /// Bytes queued and not yet handed to the transport, in every part above.
    unsent: usize,
    /// The transport refused bytes (a write was pending) and has not taken any since.
    stalled: bool,
    /// The transport took bytes after a stall: the peer read from the connection.
    peer_read: bool,
}

impl WriteQueue {
    /// A queue encoding with `encoder`.
    #[must_use]
    pub fn new(encoder: FrameEncoder) -> Self {
        Self {
            encoder,
            current: VecDeque::new(),
            current_seq: 0,
            at_frame_start: true,
            next: VecDeque::new(),
            staging: BytesMut::new(),
            urgent: BytesMut::new(),
            unsent: 0,
            stalled: false,
            peer_read: false,
        }
    }

    /// The encoder, to record the peer's settings after the handshake.
    pub fn encoder_mut(&mut self) -> &mut FrameEncoder {
        &mut self.encoder
    }

    /// Queues `frame` in the next batch and returns that batch's sequence number.
    ///
    /// # Errors
    /// [`EncodeError`] if the frame breaks the peer's limits; nothing is queued then.
    pub fn push(&mut self, frame: &Frame) -> Result<u64, EncodeError> {
        let before = self.staging.len();
        let payload = self.encoder.encode_head(frame, &mut self.staging)?;
        self.unsent += self.staging.len() - before + payload.len();
        if payload.len() >= COPY_LIMIT {
            self.next.push_back(Chunk {
                bytes: self.staging.split().freeze(),
                ends_frame: false,
                pong: false,
            });
            self.next.push_back(Chunk {
                bytes: payload,
                ends_frame: true,
                pong: false,
            });
        } else {
            self.staging.extend_from_slice(&payload);
            if self.staging.len() >= CHUNK_LIMIT {
                self.flush_staging();
            }
        }
        Ok(self.current_seq + 1)
    }

    /// Queues the PONG `frame` ahead of every frame not yet started, *replacing* a PONG queued
    /// before it that has not started either: at most one PONG waits, however many PINGs arrive
    /// (the HTTP/2 "ping flood" defence, CVE-2019-9512). Answering only the newest PING is what
    /// §5.6 asks: a PONG proves the peer read everything up to that PING.
    ///
    /// # Errors
    /// [`EncodeError`] if the frame cannot be encoded.
    pub fn replace_pong(&mut self, frame: &Frame) -> Result<(), EncodeError> {
        self.unsent -= self.urgent.len();
        self.urgent.clear();
        let payload = self.encoder.encode_head(frame, &mut self.urgent)?;
        self.urgent.extend_from_slice(&payload);
        self.unsent += self.urgent.len();
        Ok(())
    }

    /// Drops every frame not yet started, keeping the batch being written. A connection that has
    /// told its callers their requests were never sent must make that true: nothing queued after
    /// that point may reach the socket.
    pub fn discard_unstarted(&mut self) {
        self.next.clear();
        self.staging.clear();
        self.urgent.clear();
        self.unsent = self.current.iter().map(|chunk| chunk.bytes.len()).sum();
    }

    /// Bytes queued that the transport has not taken yet: what the connection's bound on unsent
    /// bytes is checked against.
    #[must_use]
    pub fn unsent_bytes(&self) -> usize {
        self.unsent
    }

    /// Whether the transport took bytes after it had refused some, since the last call: the
    /// peer's receive window opened, so the peer is reading. A sign of life for the heartbeat
    /// that holds when the peer's frames are slow to come because it is busy reading a backlog
    /// (its answer to our PING is behind it). Bytes taken while the transport never refused any
    /// prove nothing: the kernel takes them for a dead peer too, until its buffers fill.
    pub fn take_peer_read(&mut self) -> bool {
        std::mem::take(&mut self.peer_read)
    }

    /// Frees the buffers' spare capacity when nothing is queued, so an idle connection keeps no
    /// memory from its busiest moment. Cheap when there is nothing to free.
    pub fn shrink_when_empty(&mut self) {
        if self.is_empty() {
            if self.staging.capacity() > 0 {
                self.staging = BytesMut::new();
            }
            if self.urgent.capacity() > 0 {
                self.urgent = BytesMut::new();
            }
            if self.current.capacity() > IDLE_CHUNKS {
                self.current = VecDeque::new();
            }
            if self.next.capacity() > IDLE_CHUNKS {
                self.next = VecDeque::new();
            }
        }
    }

    /// Whether nothing is waiting to be written.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.current.is_empty()
            && self.next.is_empty()
            && self.staging.is_empty()
            && self.urgent.is_empty()
    }

    /// Frames pushed into a batch numbered above this have not had a single byte handed to the
    /// transport. A frame in the batch being written may already be wholly on the wire even though
    /// the batch is not: this is the bound for claiming a request was never sent.
    #[must_use]
    pub fn started_through(&self) -> u64 {
        self.current_seq
    }

    /// Ends the staging chunk (it holds whole frames only).
    fn flush_staging(&mut self) {
        if !self.staging.is_empty() {
            self.next.push_back(Chunk {
                bytes: self.staging.split().freeze(),
                ends_frame: true,
                pong: false,
            });
        }
    }

    /// Moves urgent frames to the front of the batch being written, if a frame boundary is next.
    fn take_urgent(&mut self) {
        if self.at_frame_start && !self.urgent.is_empty() {
            // At a frame boundary the front chunk has not started: an older PONG there is
            // replaced, so a stalled transport still holds one.
            if self.current.front().is_some_and(|chunk| chunk.pong) {
                if let Some(older) = self.current.pop_front() {
                    self.unsent -= older.bytes.len();
                }
            }
            self.current.push_front(Chunk {
                bytes: self.urgent.split().freeze(),
                ends_frame: true,
                pong: true,
            });
        }
    }

    /// Starts the next batch if the current one is done; false if there is nothing to write.
    fn refill(&mut self) -> bool {
        if !self.current.is_empty() {
            self.take_urgent();
            return true;
        }
        self.flush_staging();
        if self.next.is_empty() && self.urgent.is_empty() {
            return false;
        }
        self.current.append(&mut self.next);
        self.current_seq += 1;
        // A finished batch ends at a frame boundary.
        self.at_frame_start = true;
        self.take_urgent();
        true
    }

    fn advance(&mut self, mut n: usize) {
        self.unsent -= n;
        while n > 0 {
            let Some(front) = self.current.front_mut() else {
                return;
            };
            if n < front.bytes.len() {
                front.bytes.advance(n);
                self.at_frame_start = false;
                return;
            }
            n -= front.bytes.len();
            self.at_frame_start = front.ends_frame;
            self.current.pop_front();
        }
    }

    /// Writes until everything queued is written (`Ready(Ok)`) or the transport is full
    /// (`Pending`).
    ///
    /// # Errors
    /// The transport's error, or `WriteZero` if it accepts no bytes.
    pub fn poll_write<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while self.refill() {
            // With an urgent frame waiting, write only to the end of the frame under way, so it
            // can go in next.
            let mut slices_upto = MAX_SLICES;
            if !self.urgent.is_empty() {
                if let Some(end) = self.current.iter().position(|chunk| chunk.ends_frame) {
                    slices_upto = slices_upto.min(end + 1);
                }
            }
            let n = {
                let slices: Vec<IoSlice<'_>> = self
                    .current
                    .iter()
                    .take(slices_upto)
                    .map(|chunk| IoSlice::new(&chunk.bytes))
                    .collect();
                match Pin::new(&mut *io).poll_write_vectored(cx, &slices) {
                    Poll::Pending => {
                        self.stalled = true;
                        return Poll::Pending;
                    }
                    Poll::Ready(result) => result?,
                }
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if std::mem::take(&mut self.stalled) {
                self.peer_read = true;
            }
            self.advance(n);
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rpc_codec::{FrameDecoder, MethodName, Ping, Request, Role, Settings};
    use tokio_util::codec::Decoder;

    fn queue() -> WriteQueue {
        let mut encoder = FrameEncoder::without_preface();
        encoder.set_peer_settings(Settings::default());
        WriteQueue::new(encoder)
    }

    fn request(id: u64, len: usize) -> Frame {
        Frame::Request(Request::new(
            id,
            MethodName::from_static("T.m"),
            Bytes::from(vec![u8::try_from(id % 256).unwrap(); len]),
        ))
    }

    /// A writer that accepts at most `max` bytes per call, like a congested socket.
    struct Trickle {
        out: Vec<u8>,
        max: usize,
        calls: usize,
    }

    impl Trickle {
        /// One that takes everything.
        fn unlimited() -> Self {
            Self {
                out: Vec::new(),
                max: usize::MAX,
                calls: 0,
            }
        }
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.max);
            self.out.extend_from_slice(&buf[..n]);
            self.calls += 1;
            Poll::Ready(Ok(n))
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let mut left = self.max;
            let mut n = 0;
            for buf in bufs {
                let take = buf.len().min(left);
                self.out.extend_from_slice(&buf[..take]);
                n += take;
                left -= take;
                if left == 0 {
                    break;
                }
            }
            self.calls += 1;
            Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn drain(queue: &mut WriteQueue, io: &mut Trickle) {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(queue.poll_write(io, &mut cx).is_ready());
    }

    fn decode(bytes: &[u8]) -> Vec<Frame> {
        let mut decoder = FrameDecoder::builder(Role::Server).handshake(false).build();
        let mut buf = BytesMut::from(bytes);
        let mut frames = Vec::new();
        while let Some(item) = decoder.decode(&mut buf).unwrap() {
            frames.push(item.unwrap());
        }
        assert!(buf.is_empty());
        frames
    }

    #[test]
    fn discarding_unstarted_frames_keeps_the_batch_in_progress() {
        let mut q = queue();
        q.push(&request(1, 10)).unwrap();
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut blocked = Trickle {
            out: Vec::new(),
            max: 0,
            calls: 0,
        };
        let _ = q.poll_write(&mut blocked, &mut cx); // batch 1 started, nothing written
        q.push(&request(2, 10)).unwrap();
        q.replace_pong(&Frame::Ping(Ping { opaque: [1; 8] }))
            .unwrap();
        q.discard_unstarted();
        let mut io = Trickle::unlimited();
        drain(&mut q, &mut io);
        assert_eq!(
            decode(&io.out),
            vec![request(1, 10)],
            "request 2 never leaves"
        );
    }

    #[test]
    fn small_frames_coalesce_into_one_write() {
        let mut q = queue();
        for id in 1..=50 {
            q.push(&request(id, 10)).unwrap();
        }
        let mut io = Trickle::unlimited();
        drain(&mut q, &mut io);
        assert_eq!(io.calls, 1);
        assert_eq!(
            decode(&io.out),
            (1..=50).map(|id| request(id, 10)).collect::<Vec<_>>()
        );
        assert!(q.is_empty());
    }

    #[test]
    fn large_payloads_and_partial_writes_keep_the_byte_stream_intact() {
        let mut q = queue();
        let frames: Vec<Frame> = (1..=6)
            .map(|id| request(id, if id % 2 == 0 { 100_000 } else { 7 }))
            .collect();
        for f in &frames {
            q.push(f).unwrap();
        }
        let mut io = Trickle {
            out: Vec::new(),
            max: 999,
            calls: 0,
        };
        drain(&mut q, &mut io);
        assert_eq!(decode(&io.out), frames);
    }

    /// A transport that takes `left` bytes in all, then is full.
    struct Stalls {
        out: Vec<u8>,
        left: usize,
    }

    impl AsyncWrite for Stalls {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.poll_write_vectored(cx, &[IoSlice::new(buf)])
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            if self.left == 0 {
                return Poll::Pending;
            }
            let mut n = 0;
            for buf in bufs {
                let take = buf.len().min(self.left);
                self.out.extend_from_slice(&buf[..take]);
                self.left -= take;
                n += take;
            }
            Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Writes `n` bytes of the queue, then finds the transport full.
    fn write_some(q: &mut WriteQueue, n: usize) -> Vec<u8> {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut io = Stalls {
            out: Vec::new(),
            left: n,
        };
        assert!(q.poll_write(&mut io, &mut cx).is_pending());
        io.out
    }

    #[test]
    fn urgent_frames_go_ahead_of_everything_not_started() {
        let mut q = queue();
        q.push(&request(1, 40)).unwrap();
        // Batch 1 (request 1) is taken by the writer, but not a byte is written.
        let mut pending = Trickle {
            out: Vec::new(),
            max: 0,
            calls: 0,
        };
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let _ = q.poll_write(&mut pending, &mut cx);
        q.push(&request(2, 5)).unwrap();
        let pong = Frame::Pong(Ping { opaque: [7; 8] }.pong());
        q.replace_pong(&pong).unwrap();
        let mut io = Trickle {
            out: Vec::new(),
            max: 30,
            calls: 0,
        };
        drain(&mut q, &mut io);
        assert_eq!(decode(&io.out), vec![pong, request(1, 40), request(2, 5)]);
    }

    #[test]
    fn an_urgent_frame_enters_the_batch_being_written_at_the_next_frame_boundary() {
        let mut q = queue();
        // Large payloads: each frame is chunks of its own.
        for id in 1..=3 {
            q.push(&request(id, 10_000)).unwrap();
        }
        let mut out = write_some(&mut q, 5); // inside request 1
        let pong = Frame::Pong(Ping { opaque: [7; 8] }.pong());
        q.replace_pong(&pong).unwrap();
        let mut io = Trickle {
            out: Vec::new(),
            max: 999,
            calls: 0,
        };
        drain(&mut q, &mut io);
        out.extend_from_slice(&io.out);
        assert_eq!(
            decode(&out),
            vec![
                request(1, 10_000),
                pong,
                request(2, 10_000),
                request(3, 10_000)
            ]
        );
    }

    #[test]
    fn small_frames_coalesce_in_bounded_chunks_so_an_urgent_frame_waits_little() {
        let mut q = queue();
        let frames: Vec<Frame> = (1..=4000).map(|id| request(id, 20)).collect();
        for frame in &frames {
            q.push(frame).unwrap();
        }
        let mut out = write_some(&mut q, 10);
        let pong = Frame::Pong(Ping { opaque: [7; 8] }.pong());
        q.replace_pong(&pong).unwrap();
        let mut io = Trickle::unlimited();
        drain(&mut q, &mut io);
        out.extend_from_slice(&io.out);
        let decoded = decode(&out);
        let at = decoded.iter().position(|f| *f == pong).unwrap();
        let frame_len = (out.len() - 32) / frames.len();
        assert!(
            at * frame_len <= CHUNK_LIMIT + frame_len,
            "the PONG waited behind {at} frames"
        );
        let mut rest = decoded;
        rest.remove(at);
        assert_eq!(rest, frames);
    }

    #[test]
    fn a_newer_pong_replaces_one_not_started_so_a_ping_flood_queues_one() {
        let mut q = queue();
        for n in 0..10_000_u64 {
            let pong = Frame::Pong(
                Ping {
                    opaque: n.to_be_bytes(),
                }
                .pong(),
            );
            q.replace_pong(&pong).unwrap();
        }
        assert_eq!(
            q.unsent_bytes(),
            32,
            "one PONG: a 24-byte header and 8 opaque bytes"
        );
        let mut io = Trickle::unlimited();
        drain(&mut q, &mut io);
        let last = Frame::Pong(
            Ping {
                opaque: 9_999_u64.to_be_bytes(),
            }
            .pong(),
        );
        assert_eq!(
            decode(&io.out),
            vec![last],
            "only the newest PING is answered"
        );
    }

    #[test]
    fn a_stalled_transport_still_holds_one_pong() {
        let mut q = queue();
        q.push(&request(1, 10)).unwrap();
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut stalled = Stalls {
            out: Vec::new(),
            left: 0,
        };
        let request_bytes = q.unsent_bytes();
        for n in 0..1000_u64 {
            let pong = Frame::Pong(
                Ping {
                    opaque: n.to_be_bytes(),
                }
                .pong(),
            );
            q.replace_pong(&pong).unwrap();
            assert!(q.poll_write(&mut stalled, &mut cx).is_pending());
            assert_eq!(q.unsent_bytes(), request_bytes + 32);
        }
        let mut io = Trickle::unlimited();
        drain(&mut q, &mut io);
        let last = Frame::Pong(
            Ping {
                opaque: 999_u64.to_be_bytes(),
            }
            .pong(),
        );
        assert_eq!(decode(&io.out), vec![last, request(1, 10)]);
    }

    #[test]
    fn unsent_bytes_count_what_the_transport_has_not_taken() {
        let frames = [request(1, 100), request(2, 20_000)];
        let mut reference = queue();
        let mut all = Trickle::unlimited();
        for frame in &frames {
            reference.push(frame).unwrap();
        }
        drain(&mut reference, &mut all);
        let mut q = queue();
        for frame in &frames {
            q.push(frame).unwrap();
        }
        let queued = q.unsent_bytes();
        assert_eq!(queued, all.out.len(), "every byte of both frames");
        let taken = write_some(&mut q, 1000);
        assert_eq!(q.unsent_bytes(), queued - taken.len());
        q.replace_pong(&Frame::Pong(Ping { opaque: [1; 8] }.pong()))
            .unwrap();
        assert_eq!(q.unsent_bytes(), queued - taken.len() + 32);
        q.push(&request(3, 10)).unwrap();
        q.discard_unstarted();
        drain(&mut q, &mut all);
        assert_eq!(q.unsent_bytes(), 0);
        assert!(q.is_empty());
    }

    #[test]
    fn bytes_taken_after_a_stall_show_the_peer_reads() {
        let mut q = queue();
        q.push(&request(1, 100)).unwrap();
        let mut free = Trickle::unlimited();
        drain(&mut q, &mut free);
        assert!(
            !q.take_peer_read(),
            "a transport that never refused bytes proves nothing"
        );
        q.push(&request(2, 100)).unwrap();
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut full = Stalls {
            out: Vec::new(),
            left: 0,
        };
        assert!(q.poll_write(&mut full, &mut cx).is_pending());
        assert!(!q.take_peer_read());
        drain(&mut q, &mut free);
        assert!(
            q.take_peer_read(),
            "the stalled transport took bytes: the peer read"
        );
        assert!(!q.take_peer_read(), "taken once");
    }

    #[test]
    fn an_empty_queue_frees_its_spare_capacity() {
        let mut q = queue();
        for id in 1..=2000 {
            q.push(&request(id, 100)).unwrap();
        }
        let mut io = Trickle::unlimited();
        drain(&mut q, &mut io);
        q.shrink_when_empty();
        assert_eq!(q.staging.capacity(), 0);
        assert!(q.current.capacity() <= IDLE_CHUNKS && q.next.capacity() <= IDLE_CHUNKS);
        q.push(&request(1, 10)).unwrap();
        let queued = q.unsent_bytes();
        q.shrink_when_empty();
        assert_eq!(q.unsent_bytes(), queued, "a queue with frames keeps them");
        let mut io = Trickle::unlimited();
        drain(&mut q, &mut io);
        assert_eq!(decode(&io.out), vec![request(1, 10)]);
    }

    #[test]
    fn started_through_counts_a_partly_written_batch_as_possibly_sent() {
        let mut q = queue();
        assert_eq!(q.started_through(), 0);
        let seq = q.push(&request(1, 10)).unwrap();
        assert_eq!(seq, 1);
        assert_eq!(q.started_through(), 0, "queued has not started");
        let mut io = Trickle {
            out: Vec::new(),
            max: 10,
            calls: 0,
        };
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        // A transport that takes 10 bytes and then blocks.
        struct Once(Trickle, bool);
        impl AsyncWrite for Once {
            fn poll_write(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                b: &[u8],
            ) -> Poll<io::Result<usize>> {
                if self.1 {
                    return Poll::Pending;
                }
                self.1 = true;
                Pin::new(&mut self.0).poll_write(cx, b)
            }
            fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
            fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
        }
        let mut once = Once(
            Trickle {
                out: Vec::new(),
                max: 10,
                calls: 0,
            },
            false,
        );
        assert!(q.poll_write(&mut once, &mut cx).is_pending());
        assert_eq!(q.started_through(), 1, "partly written: it may have left");
        assert_eq!(q.push(&request(2, 10)).unwrap(), 2, "joins the next batch");
        assert_eq!(q.started_through(), 1, "request 2 has not started");
        drain(&mut q, &mut io);
        assert_eq!(q.started_through(), 2);
    }
}
