//! Concurrency limits shared by every connection of a server: one for the whole server and,
//! optionally, one per method. A call takes a permit from each before any application code runs
//! and gives them back when it ends, however it ends.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rpc_codec::MethodName;

/// At most `max` holders at once.
#[derive(Debug)]
pub(crate) struct ConcurrencyLimit {
    in_use: AtomicUsize,
    max: usize,
}

impl ConcurrencyLimit {
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            in_use: AtomicUsize::new(0),
            max,
        })
    }

    /// A permit, or `None` when `max` are held.
    fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        self.in_use
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| Permit {
                limit: Arc::clone(self),
            })
    }

    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// Permits held now.
    #[cfg(test)]
    pub(crate) fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Acquire)
    }
}

/// One place under a [`ConcurrencyLimit`], given back on drop.
#[derive(Debug)]
struct Permit {
    limit: Arc<ConcurrencyLimit>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limit.in_use.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a running call holds: its places under the server's limit and its method's.
#[derive(Debug)]
pub(crate) struct CallPermit {
    _server: Permit,
    _method: Option<Permit>,
}

/// Which limit refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    Server { max: usize },
    Method { max: usize },
}

/// The server-wide limit and the per-method ones.
#[derive(Debug)]
pub(crate) struct Limits {
    server: Arc<ConcurrencyLimit>,
    methods: HashMap<Box<str>, Arc<ConcurrencyLimit>>,
}

impl Limits {
    pub(crate) fn new(server: usize, methods: &HashMap<Box<str>, usize>) -> Self {
        Self {
            server: ConcurrencyLimit::new(server),
            methods: methods
                .iter()
                .map(|(method, &max)| (method.clone(), ConcurrencyLimit::new(max)))
                .collect(),
        }
    }

    /// Permits for one call of `method`, or which limit is full.
    pub(crate) fn acquire(&self, method: &MethodName) -> Result<CallPermit, Refused> {
        // Without per-method limits (the default) the name is not even read.
        let limit = if self.methods.is_empty() {
            None
        } else {
            self.methods.get(method.as_str())
        };
        let method = match limit {
            None => None,
            Some(limit) => Some(
                limit
                    .try_acquire()
                    .ok_or_else(|| Refused::Method { max: limit.max() })?,
            ),
        };
        let server = self.server.try_acquire().ok_or_else(|| Refused::Server {
            max: self.server.max(),
        })?;
        Ok(CallPermit {
            _server: server,
            _method: method,
        })
    }

    #[cfg(test)]
    pub(crate) fn server_in_use(&self) -> usize {
        self.server.in_use()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_are_bounded_and_given_back_on_drop() {
        let methods = HashMap::from([(Box::from("S.slow"), 2)]);
        let limits = Limits::new(3, &methods);
        let (slow, fast) = (
            MethodName::from_static("S.slow"),
            MethodName::from_static("S.fast"),
        );
        let a = limits.acquire(&slow).unwrap();
        let b = limits.acquire(&slow).unwrap();
        assert_eq!(
            limits.acquire(&slow).unwrap_err(),
            Refused::Method { max: 2 }
        );
        assert_eq!(limits.server_in_use(), 2, "a refused call holds nothing");
        let c = limits.acquire(&fast).unwrap();
        assert_eq!(
            limits.acquire(&fast).unwrap_err(),
            Refused::Server { max: 3 }
        );
        drop(a);
        let d = limits.acquire(&slow).unwrap();
        drop((b, c, d));
        assert_eq!(limits.server_in_use(), 0);
    }
}
