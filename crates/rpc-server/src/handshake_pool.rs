//! The connections still in their handshake: a pool of its own, separate from the serving limit,
//! where a newcomer evicts the oldest when it is full. Sockets that connect and never finish the
//! handshake (a slowloris, a port scan, a half-open flood) then cannot keep honest clients out:
//! an honest handshake takes one round trip, so it is done long before `capacity` newer
//! connections arrive to evict it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use tokio_util::sync::CancellationToken;

/// Handshaking connections, oldest first.
#[derive(Debug)]
pub(crate) struct HandshakePool {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    /// Every handshaking connection's id and eviction token, oldest first.
    entries: VecDeque<(u64, CancellationToken)>,
}

impl HandshakePool {
    pub(crate) fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            capacity: capacity.max(1),
            inner: Mutex::new(Inner::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A place for a new connection's handshake; when the pool is full, the oldest handshake is
    /// told to stop (its ticket's [`evicted`](Ticket::evicted) token fires).
    pub(crate) fn enter(self: &Arc<Self>) -> Ticket {
        let mut inner = self.lock();
        while inner.entries.len() >= self.capacity {
            if let Some((_, oldest)) = inner.entries.pop_front() {
                oldest.cancel();
            }
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let evicted = CancellationToken::new();
        inner.entries.push_back((id, evicted.clone()));
        Ticket {
            pool: Arc::clone(self),
            id,
            evicted,
        }
    }

    /// Handshakes in the pool now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().entries.len()
    }
}

/// One connection's place in the [`HandshakePool`]; dropping it (the handshake ended) frees it.
#[derive(Debug)]
pub(crate) struct Ticket {
    pool: Arc<HandshakePool>,
    id: u64,
    evicted: CancellationToken,
}

impl Ticket {
    /// Fires when a newer connection took this one's place.
    pub(crate) fn evicted(&self) -> &CancellationToken {
        &self.evicted
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut inner = self.pool.lock();
        // Most handshakes end in arrival order: the entry is at the front or near it.
        if let Some(at) = inner.entries.iter().position(|(id, _)| *id == self.id) {
            inner.entries.remove(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_pool_evicts_its_oldest_handshake() {
        let pool = HandshakePool::new(2);
        let first = pool.enter();
        let second = pool.enter();
        assert!(!first.evicted().is_cancelled());
        let third = pool.enter();
        assert!(first.evicted().is_cancelled(), "the oldest goes");
        assert!(!second.evicted().is_cancelled() && !third.evicted().is_cancelled());
        assert_eq!(pool.len(), 2);
        drop(second); // finished its handshake
        let fourth = pool.enter();
        assert!(
            !third.evicted().is_cancelled(),
            "room was made by the one that finished"
        );
        drop((first, third, fourth));
        assert_eq!(pool.len(), 0);
    }
}
