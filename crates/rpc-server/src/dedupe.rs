//! The server-side dedupe window: a table of recent executions of non-idempotent calls, keyed by
//! method and the client's request id, so that a retry of a call whose outcome the client could
//! not learn (MAYBE_EXECUTED) gets the first execution's result instead of running it again.
//!
//! This module is the table and its bounds; the connection decides which requests go through it
//! and `call.rs` runs the detached executions and the waiting calls.
//!
//! - An entry is *running* from the first request with its key until its execution ends, then
//!   *finished*, holding the result, until its TTL passes (counted from when it finished).
//! - Expired entries are swept from the oldest whenever the table is touched: no background task.
//! - Over `max_entries` or `max_bytes` the oldest finished entries are evicted even before their
//!   TTL (a warn event each). Running entries are never evicted: when every slot holds one, a new
//!   key is refused. A result larger than `max_bytes` reaches its waiters but is not kept.
//! - Recorded results are copied out of the buffers they may share (a handler may return a slice
//!   of the request frame), so what the table keeps is what it counts.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use rpc_core::{Metadata, MetadataKey, Reply, Status, StatusCode};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::call::Answer;

/// The metadata keys of the window, defined once in rpc-core: [`REQUEST_ID_KEY`] on a REQUEST (an
/// opaque id, the same on every attempt of one call; only its first value counts), and
/// [`REPLAYED_KEY`] (`1`) on a RESPONSE carrying the result of an execution an earlier request
/// started.
pub use rpc_core::metadata::{MAX_REQUEST_ID_LEN, REPLAYED_KEY, REQUEST_ID_KEY};

/// Configures the server-side dedupe window ([`ServerBuilder::dedupe`](crate::ServerBuilder::dedupe)).
///
/// With the window on, a REQUEST without the IDEMPOTENT flag whose metadata carries
/// [`REQUEST_ID_KEY`] runs at most once per (method, request id) while its entry is kept: the
/// execution is detached from the connection and runs to completion (or to its own deadline), and
/// every request with the same key gets its result, the later ones with [`REPLAYED_KEY`] set.
///
/// ```
/// use std::time::Duration;
/// use keel::server::{DedupeConfig, Server};
///
/// let server = Server::builder()
///     .dedupe(DedupeConfig::new().ttl(Duration::from_secs(30)).max_entries(10_000))
///     .build();
/// # drop(server);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub struct DedupeConfig {
    ttl: Duration,
    max_entries: usize,
    max_bytes: usize,
}

impl Default for DedupeConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(60),
            max_entries: 100_000,
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

impl DedupeConfig {
    /// The defaults: a TTL of 60 s, 100 000 entries, 64 MiB of results.
    pub fn new() -> Self {
        Self::default()
    }

    /// How long a finished result is kept, counted from when its execution finished. Default 60 s.
    /// A retry arriving later runs the handler again, so make it longer than the clients' retry
    /// horizon.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The most entries kept, running and finished together. Default 100 000; at least 1. Over it
    /// the oldest finished entry is evicted; when every entry is still running, a new request id
    /// is refused with RESOURCE_EXHAUSTED and NOT_EXECUTED.
    pub fn max_entries(mut self, entries: usize) -> Self {
        self.max_entries = entries.max(1);
        self
    }

    /// The most bytes of recorded results kept: OK payloads, and the message and metadata of
    /// error statuses. Default 64 MiB. Over it the oldest finished entries are evicted; a single
    /// result larger than this is answered to its waiters but not kept.
    pub fn max_bytes(mut self, bytes: usize) -> Self {
        self.max_bytes = bytes;
        self
    }
}

/// Why a request was refused at the window, before anything ran (answered with NOT_EXECUTED).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The request id is empty or longer than [`MAX_REQUEST_ID_LEN`].
    InvalidId { len: usize },
    /// Every entry is running: there is no room for a new key.
    Full { max_entries: usize },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidId { len } => write!(
                f,
                "metadata {REQUEST_ID_KEY} must be 1 to {MAX_REQUEST_ID_LEN} bytes, got {len}"
            ),
            Self::Full { max_entries } => write!(
                f,
                "dedupe window full: {max_entries} calls with a request id are running"
            ),
        }
    }
}

impl From<Refusal> for Status {
    fn from(refusal: Refusal) -> Self {
        let code = match refusal {
            Refusal::InvalidId { .. } => StatusCode::INVALID_ARGUMENT,
            Refusal::Full { .. } => StatusCode::RESOURCE_EXHAUSTED,
        };
        Self::new(code, refusal.to_string())
    }
}

/// What the table says about a request.
#[derive(Debug)]
pub(crate) enum Claim {
    /// The first request with this key: start the handler, then [`Runner::finish`] or
    /// [`Runner::refuse`]. Dropping the runner unfinished removes the entry.
    Run(Runner),
    /// An execution with this key is running: wait for its result.
    Join(Waiter),
    /// An execution with this key finished: its recorded result.
    Replay(Answer),
}

/// How a shared execution ended, as a waiter sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Shared {
    /// The execution's result.
    Done(Answer),
    /// `Handler::start` refused the call: nothing ran.
    Refused(Status),
    /// The execution was dropped before it ended (hard stop of the server).
    Stopped,
}

/// What the entry's channel carries.
#[derive(Clone, Debug)]
enum Slot {
    Pending,
    Done(Answer),
    Refused(Status),
}

/// An entry's key: the method and the request id.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    method: Arc<str>,
    id: Box<[u8]>,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.method, Hex(&self.id))
    }
}

/// Bytes as lower-case hex, for events.
struct Hex<'a>(&'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

#[derive(Debug)]
enum Entry {
    Running {
        generation: u64,
        results: watch::Receiver<Slot>,
    },
    Finished {
        generation: u64,
        result: Answer,
        cost: usize,
        finished_at: Instant,
    },
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<Arc<Key>, Entry>,
    /// Finished entries, oldest first: exactly the finished entries of `entries`, since they are
    /// removed only from the front (expiry, eviction) and all share one TTL.
    finished: VecDeque<(Arc<Key>, u64)>,
    /// Bytes of the finished entries' results.
    bytes: usize,
    next_generation: u64,
}

/// One server's dedupe table, shared by all its connections.
#[derive(Debug)]
pub(crate) struct DedupeTable {
    config: DedupeConfig,
    inner: Mutex<Inner>,
}

impl DedupeTable {
    pub(crate) fn new(config: DedupeConfig) -> Self {
        Self {
            config,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while the lock is held; a poisoned table is still consistent.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Looks up (method, request id): the first request gets to run it, later ones join or replay.
    ///
    /// # Errors
    /// A [`Refusal`] when the id is not 1 to 64 bytes, or when the table is full of running
    /// entries.
    pub(crate) fn claim(self: &Arc<Self>, method: &Arc<str>, id: &[u8]) -> Result<Claim, Refusal> {
        if id.is_empty() || id.len() > MAX_REQUEST_ID_LEN {
            return Err(Refusal::InvalidId { len: id.len() });
        }
        let key = Key {
            method: Arc::clone(method),
            id: id.into(),
        };
        let now = Instant::now();
        let mut inner = self.lock();
        inner.sweep_expired(now, self.config.ttl);
        let claim = match inner.entries.get(&key) {
            Some(Entry::Finished { result, .. }) => Claim::Replay(result.clone()),
            Some(Entry::Running { results, .. }) => Claim::Join(Waiter {
                results: results.clone(),
            }),
            None => {
                while inner.entries.len() >= self.config.max_entries {
                    if !inner.evict_oldest(now, "max_entries") {
                        return Err(Refusal::Full {
                            max_entries: self.config.max_entries,
                        });
                    }
                }
                let generation = inner.next_generation;
                inner.next_generation += 1;
                let (sender, results) = watch::channel(Slot::Pending);
                let key = Arc::new(key);
                inner.entries.insert(
                    Arc::clone(&key),
                    Entry::Running {
                        generation,
                        results,
                    },
                );
                return Ok(Claim::Run(Runner {
                    table: Arc::clone(self),
                    key,
                    generation,
                    sender,
                    done: false,
                }));
            }
        };
        drop(inner);
        let (method, request_id) = (&*key.method, Hex(&key.id));
        match claim {
            Claim::Replay(_) => debug!(method, %request_id, "dedupe: replaying a recorded result"),
            _ => debug!(method, %request_id, "dedupe: joining a running execution"),
        }
        Ok(claim)
    }

    /// Records the result of the entry `runner` owns, or removes the entry when it cannot be kept.
    fn record(&self, runner: &Runner, result: &Answer) {
        let cost = cost(result);
        // Copied before taking the lock; not at all when it will not be kept.
        let kept = (cost <= self.config.max_bytes).then(|| owned(result));
        let now = Instant::now();
        let mut inner = self.lock();
        if !inner.is_running(&runner.key, runner.generation) {
            return;
        }
        inner.sweep_expired(now, self.config.ttl);
        let Some(kept) = kept else {
            inner.entries.remove(&runner.key);
            drop(inner);
            warn!(
                method = &*runner.key.method,
                request_id = %Hex(&runner.key.id),
                bytes = cost,
                max_bytes = self.config.max_bytes,
                "dedupe: result larger than the window's max_bytes; answered but not kept",
            );
            return;
        };
        while inner.bytes + cost > self.config.max_bytes {
            if !inner.evict_oldest(now, "max_bytes") {
                break; // unreachable: with nothing finished, bytes is 0 and cost fits
            }
        }
        inner.bytes += cost;
        inner.entries.insert(
            Arc::clone(&runner.key),
            Entry::Finished {
                generation: runner.generation,
                result: kept,
                cost,
                finished_at: now,
            },
        );
        inner
            .finished
            .push_back((Arc::clone(&runner.key), runner.generation));
    }

    /// Removes the running entry `runner` owns.
    fn remove_running(&self, runner: &Runner) {
        let mut inner = self.lock();
        if inner.is_running(&runner.key, runner.generation) {
            inner.entries.remove(&runner.key);
        }
    }

    #[cfg(test)]
    fn len(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.entries.len(), inner.bytes)
    }
}

impl Inner {
    fn is_running(&self, key: &Key, generation: u64) -> bool {
        matches!(
            self.entries.get(key),
            Some(Entry::Running { generation: g, .. }) if *g == generation
        )
    }

    /// Removes finished entries whose TTL has passed, oldest first.
    fn sweep_expired(&mut self, now: Instant, ttl: Duration) {
        while let Some((key, generation)) = self.finished.front() {
            match self.entries.get(&**key) {
                Some(Entry::Finished {
                    generation: g,
                    finished_at,
                    ..
                }) if g == generation => {
                    if now.saturating_duration_since(*finished_at) < ttl {
                        return;
                    }
                }
                // Not the entry this item was pushed for: skip it.
                _ => {
                    self.finished.pop_front();
                    continue;
                }
            }
            self.pop_oldest();
        }
    }

    /// Evicts the oldest finished entry before its TTL; false when nothing is finished.
    fn evict_oldest(&mut self, now: Instant, bound: &'static str) -> bool {
        while let Some((key, finished_at, cost)) = self.pop_oldest() {
            if let Some(finished_at) = finished_at {
                warn!(
                    method = &*key.method,
                    request_id = %Hex(&key.id),
                    age = ?now.saturating_duration_since(finished_at),
                    bytes = cost,
                    bound,
                    "dedupe: evicting a recorded result before its TTL",
                );
                return true;
            }
        }
        false
    }

    /// Pops the front of `finished` and removes its entry if it still is that finished entry:
    /// `Some((key, Some(finished_at), cost))` when an entry was removed, `Some((key, None, 0))`
    /// for a stale item, `None` when nothing is finished.
    fn pop_oldest(&mut self) -> Option<(Arc<Key>, Option<Instant>, usize)> {
        let (key, generation) = self.finished.pop_front()?;
        match self.entries.get(&*key) {
            Some(&Entry::Finished {
                generation: g,
                cost,
                finished_at,
                ..
            }) if g == generation => {
                self.entries.remove(&*key);
                self.bytes = self.bytes.saturating_sub(cost);
                Some((key, Some(finished_at), cost))
            }
            _ => Some((key, None, 0)),
        }
    }
}

/// The right and duty to run one key's execution: the first request's handle.
#[derive(Debug)]
pub(crate) struct Runner {
    table: Arc<DedupeTable>,
    key: Arc<Key>,
    generation: u64,
    sender: watch::Sender<Slot>,
    done: bool,
}

impl Runner {
    /// A waiter for this execution's result (the first request's own).
    pub(crate) fn waiter(&self) -> Waiter {
        Waiter {
            results: self.sender.subscribe(),
        }
    }

    /// The execution ended: record `result` (unless it is too large to keep) and hand it to every
    /// waiter.
    pub(crate) fn finish(mut self, result: Answer) {
        self.table.record(&self, &result);
        self.done = true;
        self.sender.send_replace(Slot::Done(result));
    }

    /// `Handler::start` refused the call: nothing ran, so the entry is removed (a later attempt
    /// may run) and the waiters that joined meanwhile get the same refusal.
    pub(crate) fn refuse(mut self, status: Status) {
        self.table.remove_running(&self);
        self.done = true;
        self.sender.send_replace(Slot::Refused(status));
    }
}

impl Drop for Runner {
    /// Dropped unfinished (the execution was stopped): the entry goes, the waiters see `Stopped`.
    fn drop(&mut self) {
        if !self.done {
            self.table.remove_running(self);
        }
    }
}

/// Waits for a running execution's result.
#[derive(Debug)]
pub(crate) struct Waiter {
    results: watch::Receiver<Slot>,
}

impl Waiter {
    /// The execution's end.
    pub(crate) async fn wait(mut self) -> Shared {
        match self
            .results
            .wait_for(|slot| !matches!(slot, Slot::Pending))
            .await
        {
            Ok(slot) => match &*slot {
                Slot::Done(result) => Shared::Done(result.clone()),
                Slot::Refused(status) => Shared::Refused(status.clone()),
                Slot::Pending => Shared::Stopped,
            },
            Err(_) => Shared::Stopped,
        }
    }
}

/// What a result costs against `max_bytes`.
fn cost(result: &Answer) -> usize {
    match result {
        Ok(reply) => reply.payload.len() + reply.metadata.encoded_len(),
        Err(status) => status.message().len() + status.metadata().encoded_len(),
    }
}

/// A copy of `result` that shares no buffer with anything else, so the table holds only what it
/// counts (a payload may be a slice of a received frame, and keep all of it alive).
fn owned(result: &Answer) -> Answer {
    fn copy(bytes: &[u8]) -> Bytes {
        Bytes::copy_from_slice(bytes)
    }
    fn copy_all(metadata: &Metadata) -> Metadata {
        metadata
            .iter()
            .filter_map(|(k, v)| Some((MetadataKey::from_bytes(copy(k.as_bytes())).ok()?, copy(v))))
            .collect()
    }
    match result {
        Ok(reply) => Ok(Reply {
            payload: copy(&reply.payload),
            metadata: copy_all(&reply.metadata),
        }),
        Err(status) => {
            Err(Status::new(status.code(), status.message())
                .with_metadata(copy_all(status.metadata())))
        }
    }
}

/// Marks `status` as a replayed or shared result ([`REPLAYED_KEY`]: `1`).
pub(crate) fn mark_replayed(status: &mut Status) {
    status.metadata_mut().insert(
        MetadataKey::from_static(REPLAYED_KEY),
        Bytes::from_static(b"1"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(config: DedupeConfig) -> Arc<DedupeTable> {
        Arc::new(DedupeTable::new(config))
    }

    fn method(name: &str) -> Arc<str> {
        Arc::from(name)
    }

    fn run(table: &Arc<DedupeTable>, m: &Arc<str>, id: &[u8]) -> Runner {
        match table.claim(m, id) {
            Ok(Claim::Run(runner)) => runner,
            other => panic!("expected Run, got {other:?}"),
        }
    }

    fn replayed(table: &Arc<DedupeTable>, m: &Arc<str>, id: &[u8]) -> Answer {
        match table.claim(m, id) {
            Ok(Claim::Replay(result)) => result,
            other => panic!("expected Replay, got {other:?}"),
        }
    }

    fn ok(bytes: &'static [u8]) -> Answer {
        Ok(Reply::from(Bytes::from_static(bytes)))
    }

    #[tokio::test(start_paused = true)]
    async fn finished_results_replay_until_the_ttl_passes() {
        let t = table(DedupeConfig::new().ttl(Duration::from_secs(10)));
        let m = method("S.m");
        run(&t, &m, b"a").finish(ok(b"one"));
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(replayed(&t, &m, b"a"), ok(b"one"));
        tokio::time::advance(Duration::from_secs(1)).await;
        // Expired: swept on this claim, so the key runs again.
        let again = run(&t, &m, b"a");
        assert_eq!(t.len(), (1, 0));
        again.finish(ok(b"two"));
        assert_eq!(replayed(&t, &m, b"a"), ok(b"two"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_ttl_counts_from_the_finish_not_the_start() {
        let t = table(DedupeConfig::new().ttl(Duration::from_secs(10)));
        let m = method("S.m");
        let runner = run(&t, &m, b"a");
        tokio::time::advance(Duration::from_secs(60)).await;
        runner.finish(ok(b"late"));
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(replayed(&t, &m, b"a"), ok(b"late"));
    }

    #[tokio::test(start_paused = true)]
    async fn expired_entries_are_swept_on_insert() {
        let t = table(DedupeConfig::new().ttl(Duration::from_secs(1)));
        let m = method("S.m");
        for id in 0u8..10 {
            run(&t, &m, &[id]).finish(ok(b"xyz"));
        }
        assert_eq!(t.len(), (10, 30));
        tokio::time::advance(Duration::from_secs(2)).await;
        let _other = run(&t, &m, b"other");
        assert_eq!(t.len(), (1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn max_entries_evicts_the_oldest_finished() {
        let t = table(DedupeConfig::new().max_entries(3));
        let m = method("S.m");
        run(&t, &m, b"1").finish(ok(b"1"));
        let running = run(&t, &m, b"2");
        run(&t, &m, b"3").finish(ok(b"3"));
        // Full: "1" (the oldest finished) goes, "2" runs on.
        run(&t, &m, b"4").finish(ok(b"4"));
        assert!(matches!(t.claim(&m, b"2"), Ok(Claim::Join(_))));
        assert_eq!(replayed(&t, &m, b"3"), ok(b"3"));
        assert_eq!(replayed(&t, &m, b"4"), ok(b"4"));
        // Full again: "3" goes, not the running "2".
        let _five = run(&t, &m, b"5");
        assert!(matches!(t.claim(&m, b"2"), Ok(Claim::Join(_))));
        assert_eq!(replayed(&t, &m, b"4"), ok(b"4"));
        drop(running);
    }

    #[tokio::test(start_paused = true)]
    async fn max_bytes_evicts_the_oldest_finished() {
        let t = table(DedupeConfig::new().max_bytes(10));
        let m = method("S.m");
        run(&t, &m, b"a").finish(ok(b"aaaa"));
        run(&t, &m, b"b").finish(ok(b"bbbb"));
        assert_eq!(t.len(), (2, 8));
        run(&t, &m, b"c").finish(ok(b"cccc"));
        assert_eq!(t.len(), (2, 8));
        assert_eq!(replayed(&t, &m, b"b"), ok(b"bbbb"));
        assert_eq!(replayed(&t, &m, b"c"), ok(b"cccc"));
        // "a" was evicted: it runs again.
        let _a = run(&t, &m, b"a");
        // An error's message and metadata count too.
        run(&t, &m, b"e").finish(Err(Status::new(StatusCode::NOT_FOUND, "0123456789")));
        assert_eq!(t.len(), (2, 10)); // "e" finished and the running "a"
    }

    #[tokio::test(start_paused = true)]
    async fn a_result_over_max_bytes_reaches_its_waiters_but_is_not_kept() {
        let t = table(DedupeConfig::new().max_bytes(4));
        let m = method("S.m");
        run(&t, &m, b"small").finish(ok(b"ok"));
        let runner = run(&t, &m, b"big");
        let Ok(Claim::Join(waiter)) = t.claim(&m, b"big") else {
            panic!("expected Join")
        };
        runner.finish(ok(b"too large"));
        assert_eq!(waiter.wait().await, Shared::Done(ok(b"too large")));
        assert_eq!(t.len(), (1, 2));
        let _again = run(&t, &m, b"big");
    }

    #[tokio::test(start_paused = true)]
    async fn a_table_full_of_running_entries_refuses_new_keys() {
        let t = table(DedupeConfig::new().max_entries(2));
        let m = method("S.m");
        let a = run(&t, &m, b"a");
        let _b = run(&t, &m, b"b");
        assert_eq!(
            t.claim(&m, b"c").map(|_| ()),
            Err(Refusal::Full { max_entries: 2 })
        );
        let status = Status::from(Refusal::Full { max_entries: 2 });
        assert_eq!(status.code(), StatusCode::RESOURCE_EXHAUSTED);
        // Joining a running key needs no room.
        assert!(matches!(t.claim(&m, b"a"), Ok(Claim::Join(_))));
        a.finish(ok(b"done"));
        // Now the finished "a" can be evicted for "c".
        let _c = run(&t, &m, b"c");
        assert!(matches!(t.claim(&m, b"b"), Ok(Claim::Join(_))));
    }

    #[tokio::test]
    async fn waiters_get_the_result_a_refusal_or_stopped() {
        let t = table(DedupeConfig::new());
        let m = method("S.m");
        let runner = run(&t, &m, b"a");
        let own = runner.waiter();
        let Ok(Claim::Join(joined)) = t.claim(&m, b"a") else {
            panic!("expected Join")
        };
        runner.finish(Err(Status::new(StatusCode::INTERNAL, "handler panicked")));
        let expected = Shared::Done(Err(Status::new(StatusCode::INTERNAL, "handler panicked")));
        assert_eq!(own.wait().await, expected);
        assert_eq!(joined.wait().await, expected);

        let runner = run(&t, &m, b"r");
        let Ok(Claim::Join(joined)) = t.claim(&m, b"r") else {
            panic!("expected Join")
        };
        let refusal = Status::new(StatusCode::INVALID_ARGUMENT, "bad arguments");
        runner.refuse(refusal.clone());
        assert_eq!(joined.wait().await, Shared::Refused(refusal));
        let _runs_again = run(&t, &m, b"r");

        let runner = run(&t, &m, b"s");
        let own = runner.waiter();
        drop(runner);
        assert_eq!(own.wait().await, Shared::Stopped);
        let _runs_again = run(&t, &m, b"s");
    }

    #[test]
    fn keys_are_method_and_id_and_ids_are_checked() {
        let t = table(DedupeConfig::new());
        let (m1, m2) = (method("S.one"), method("S.two"));
        let _one = run(&t, &m1, b"id");
        let _two = run(&t, &m2, b"id");
        assert_eq!(
            t.claim(&m1, b"").map(|_| ()),
            Err(Refusal::InvalidId { len: 0 })
        );
        assert_eq!(
            t.claim(&m1, &[7; 65]).map(|_| ()),
            Err(Refusal::InvalidId { len: 65 })
        );
        let _max = run(&t, &m1, &[7; 64]);
        let status = Status::from(Refusal::InvalidId { len: 65 });
        assert_eq!(status.code(), StatusCode::INVALID_ARGUMENT);
        assert!(status.message().contains("rpc-request-id"));
    }

    #[test]
    fn recorded_results_share_no_buffer() {
        let frame = Bytes::from(vec![1u8; 1024]);
        let result: Answer = Ok(Reply::from(frame.slice(0..4)));
        let Ok(copy) = owned(&result) else {
            panic!("expected Ok")
        };
        assert_eq!(&copy.payload[..], &[1, 1, 1, 1]);
        assert_ne!(copy.payload.as_ptr(), frame.as_ptr());
    }
}
