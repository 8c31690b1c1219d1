//! What the proxy does to the bytes of one direction of one connection.

use std::time::Duration;

/// Which way bytes flow through the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the client to the server.
    ClientToServer,
    /// From the server to the client.
    ServerToClient,
}

impl Direction {
    pub(crate) fn index(self) -> usize {
        match self {
            Self::ClientToServer => 0,
            Self::ServerToClient => 1,
        }
    }
}

/// How a connection is cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropMode {
    /// An abortive close: both peers see a reset (the proxy closes with `SO_LINGER` 0).
    Reset,
    /// An orderly close: both peers see end of stream.
    Close,
}

/// The faults applied to one direction. Built by chaining; the default is none.
///
/// ```
/// use std::time::Duration;
/// use rpc_chaos::{DropMode, Faults};
/// let faults = Faults::none()
///     .latency(Duration::from_millis(20), Duration::from_millis(5))
///     .slice(3, Duration::from_millis(1))
///     .flip_bit(100, 0x04)
///     .drop_after(4096, DropMode::Reset);
/// assert!(!Faults::none().partition().is_none());
/// assert!(!faults.is_none());
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
#[must_use]
pub struct Faults {
    pub(crate) latency: Duration,
    pub(crate) jitter: Duration,
    pub(crate) bytes_per_second: Option<u64>,
    pub(crate) slice: Option<(usize, Duration)>,
    pub(crate) drop_after: Option<(u64, DropMode)>,
    pub(crate) blackhole: bool,
    pub(crate) partition: bool,
    pub(crate) flips: Vec<(u64, u8)>,
    pub(crate) flip_rate: f64,
}

impl Faults {
    /// No faults: bytes pass unchanged and at once.
    pub fn none() -> Self {
        Self::default()
    }

    /// Whether nothing is configured.
    #[must_use]
    pub fn is_none(&self) -> bool {
        *self == Self::default()
    }

    /// Delays every chunk by `latency` plus a uniformly random part of `jitter`, drawn from the
    /// proxy's seeded generator. Order is kept. With neither set, bytes pass at once, with no
    /// timer on the way.
    pub fn latency(mut self, latency: Duration, jitter: Duration) -> Self {
        self.latency = latency;
        self.jitter = jitter;
        self
    }

    /// Limits the rate to `bytes_per_second`.
    pub fn bandwidth(mut self, bytes_per_second: u64) -> Self {
        self.bytes_per_second = Some(bytes_per_second.max(1));
        self
    }

    /// Writes at most `bytes` per write call, waiting `gap` between writes. With no gap the
    /// receiver's kernel may join the pieces again; a gap of a millisecond or two makes each piece
    /// a read of its own, so the receiver's decoder sees the stream split everywhere.
    pub fn slice(mut self, bytes: usize, gap: Duration) -> Self {
        self.slice = Some((bytes.max(1), gap));
        self
    }

    /// Cuts the connection (both directions) once `bytes` have passed in this direction; the
    /// bytes up to the cut are delivered first.
    pub fn drop_after(mut self, bytes: u64, mode: DropMode) -> Self {
        self.drop_after = Some((bytes, mode));
        self
    }

    /// Discards bytes, a broken middlebox: they are read and dropped, both sockets stay open, and
    /// when the fault is cleared the stream resumes with a gap (which a receiver may see as
    /// garbage mid-frame). No real network does this to TCP: for a network partition, see
    /// [`Faults::partition`].
    pub fn blackhole(mut self) -> Self {
        self.blackhole = true;
        self
    }

    /// Holds bytes, a network partition: nothing is forwarded this way, bytes wait (in the
    /// proxy and in the kernel's buffers, so the sender's writes stall once those are full, as
    /// TCP's flow control does), and when the fault is cleared they are delivered, in order and
    /// without a gap, as TCP's retransmissions would.
    pub fn partition(mut self) -> Self {
        self.partition = true;
        self
    }

    /// XORs `mask` into the byte at stream offset `offset` of this direction (0 is the first byte
    /// the connection carries this way). Offsets already passed have no effect.
    pub fn flip_bit(mut self, offset: u64, mask: u8) -> Self {
        self.flips.push((offset, mask));
        self
    }

    /// Flips one random bit in each byte with probability `per_byte` (0.0–1.0). Whether a byte is
    /// flipped, and which bit, is a function of the proxy's seed, the connection's number, the
    /// direction and the byte's offset alone, so a seed replays the same flips whatever the
    /// timing. [`Proxy::flips`](crate::Proxy::flips) lists the flips made.
    pub fn flip_random(mut self, per_byte: f64) -> Self {
        self.flip_rate = per_byte.clamp(0.0, 1.0);
        self
    }
}
