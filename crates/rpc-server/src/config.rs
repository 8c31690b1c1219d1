//! Server configuration, with every default in one place.

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
    pub(crate) drain_grace: Duration,
    pub(crate) max_unstarted_cancels: u32,
    pub(crate) unstarted_cancel_window: Duration,
    pub(crate) dedupe: Option<DedupeConfig>,
    /// Announced as DEDUPE_INSTANCE: non-zero exactly when the dedupe window is on, new for each
    /// built server (set by `ServerBuilder::build`).
    pub(crate) dedupe_instance: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(10),
            // Three intervals: a client declares us dead after two, so it notices first.
            dead_after_intervals: 3,
            max_frame_size: rpc_codec::DEFAULT_MAX_FRAME_SIZE,
            max_concurrent_calls: rpc_codec::DEFAULT_MAX_CONCURRENT_CALLS,
            max_metadata_size: rpc_core::metadata::DEFAULT_MAX_METADATA_SIZE,
            max_connections: 1024,
            drain_grace: Duration::from_secs(30),
            max_unstarted_cancels: 200,
            unstarted_cancel_window: Duration::from_secs(10),
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

/// A random non-zero id for one server instance's dedupe window.
pub(crate) fn new_dedupe_instance() -> u32 {
    use std::hash::BuildHasher;
    let hash = std::collections::hash_map::RandomState::new()
        .hash_one((std::process::id(), std::time::SystemTime::now()));
    u32::try_from(hash & u64::from(u32::MAX))
        .unwrap_or(1)
        .max(1)
}
