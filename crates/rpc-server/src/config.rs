//! Server configuration, with every default in one place.

use std::collections::HashMap;
use std::time::Duration;

use rpc_codec::Settings;

use crate::dedupe::DedupeConfig;

/// How a [`Server`](crate::Server) behaves. Built with [`ServerBuilder`](crate::ServerBuilder),
/// whose setters document each default.
#[derive(Clone, Debug)]
pub(crate) struct ServerConfig {
    pub(crate) handshake_timeout: Duration,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) dead_after_intervals: u32,
    pub(crate) max_frame_size: u32,
    pub(crate) max_concurrent_calls: u32,
    pub(crate) max_metadata_size: u32,
    pub(crate) max_connections: usize,
    pub(crate) max_handshaking: usize,
    pub(crate) max_unsent_bytes: usize,
    pub(crate) server_concurrency_limit: usize,
    pub(crate) method_concurrency_limits: HashMap<Box<str>, usize>,
    pub(crate) drain_grace: Duration,
    pub(crate) cancel_flood: CancelFloodLimit,
    pub(crate) dedupe: Option<DedupeConfig>,
    /// Announced as DEDUPE_INSTANCE: non-zero exactly when the dedupe window is on, new for each
    /// built server (set by `ServerBuilder::build`).
    pub(crate) dedupe_instance: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(5),
            heartbeat_interval: Duration::from_secs(10),
            // Three intervals: a client declares us dead after two, so it notices first.
            dead_after_intervals: 3,
            max_frame_size: rpc_codec::DEFAULT_MAX_FRAME_SIZE,
            max_concurrent_calls: rpc_codec::DEFAULT_MAX_CONCURRENT_CALLS,
            max_metadata_size: rpc_core::metadata::DEFAULT_MAX_METADATA_SIZE,
            max_connections: 1024,
            max_handshaking: 256,
            max_unsent_bytes: 1024 * 1024,
            server_concurrency_limit: 10_000,
            method_concurrency_limits: HashMap::new(),
            drain_grace: Duration::from_secs(30),
            cancel_flood: CancelFloodLimit::default(),
            dedupe: None,
            dedupe_instance: 0,
        }
    }
}

impl ServerConfig {
    /// The settings this server announces in HELLO_ACK.
    pub(crate) fn settings(&self) -> Settings {
        Settings {
            max_frame_size: self.max_frame_size,
            max_concurrent_calls: self.max_concurrent_calls,
            heartbeat_interval_ms: u32::try_from(self.heartbeat_interval.as_millis())
                .unwrap_or(u32::MAX),
            max_metadata_size: self.max_metadata_size,
            dedupe_instance: self.dedupe_instance,
        }
    }
}

/// Files kept for everything but connections (the listener, logs, the application's own).
const RESERVED_FILES: u64 = 64;

impl ServerConfig {
    /// The connection limits lowered to fit `files` open files, or `None` when they fit: the
    /// serving limit gives way first, the handshake pool keeps at least a quarter of what is
    /// left (and one place).
    pub(crate) fn fit_file_limit(&self, files: u64) -> Option<(usize, usize)> {
        let usable = usize::try_from(files.saturating_sub(RESERVED_FILES)).unwrap_or(usize::MAX);
        if self.max_connections.saturating_add(self.max_handshaking) <= usable {
            return None;
        }
        let handshaking = self.max_handshaking.min(usable / 4).max(1);
        let connections = usable.saturating_sub(handshaking).max(1);
        Some((connections.min(self.max_connections), handshaking))
    }
}

/// The process's soft limit on open files, where there is one.
pub(crate) fn open_file_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        use nix::sys::resource::{Resource, getrlimit};
        let (soft, _hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
        (soft != nix::sys::resource::RLIM_INFINITY).then_some(soft)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// The rapid-reset defence's bound (see `ServerBuilder::cancel_flood_limit`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct CancelFloodLimit {
    pub(crate) min_cancels: u32,
    pub(crate) max_share_percent: u32,
}

impl Default for CancelFloodLimit {
    fn default() -> Self {
        Self {
            min_cancels: 100,
            max_share_percent: 90,
        }
    }
}

/// A random non-zero id for one server instance's dedupe window.
pub(crate) fn new_dedupe_instance() -> u32 {
    use std::hash::BuildHasher;
    let hash = std::collections::hash_map::RandomState::new()
        .hash_one((std::process::id(), std::time::SystemTime::now()));
    u32::try_from(hash & u64::from(u32::MAX))
        .unwrap_or(1)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_limits_are_lowered_to_fit_the_open_file_limit() {
        let config = ServerConfig::default();
        assert_eq!(config.fit_file_limit(20_000), None, "1024 + 256 + 64 fit");
        assert_eq!(config.fit_file_limit(1344), None, "exactly");
        // The common default soft limit: 1024 - 64 = 960 files for connections.
        assert_eq!(config.fit_file_limit(1024), Some((720, 240)));
        assert_eq!(config.fit_file_limit(10), Some((1, 1)));
    }
}
