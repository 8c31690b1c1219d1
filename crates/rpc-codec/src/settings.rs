//! The settings each peer announces in its handshake frame.

use std::collections::HashSet;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use rpc_core::metadata::DEFAULT_MAX_METADATA_SIZE;

use crate::error::BodyError;
use crate::wire::BodyReader;

/// Setting id of [`Settings::max_frame_size`].
pub const SETTING_MAX_FRAME_SIZE: u16 = 0x0001;
/// Setting id of [`Settings::max_concurrent_calls`].
pub const SETTING_MAX_CONCURRENT_CALLS: u16 = 0x0002;
/// Setting id of [`Settings::heartbeat_interval_ms`].
pub const SETTING_HEARTBEAT_INTERVAL_MS: u16 = 0x0003;
/// Setting id of [`Settings::max_metadata_size`].
pub const SETTING_MAX_METADATA_SIZE: u16 = 0x0004;
/// Setting id of [`Settings::dedupe_instance`].
pub const SETTING_DEDUPE_INSTANCE: u16 = 0x0005;

/// The smallest MAX_FRAME_SIZE a peer may announce: every handshake frame fits in it.
pub const MIN_MAX_FRAME_SIZE: u32 = 4096;
/// Default MAX_FRAME_SIZE: 4 MiB.
pub const DEFAULT_MAX_FRAME_SIZE: u32 = 4 * 1024 * 1024;
/// Default MAX_CONCURRENT_CALLS: 100.
pub const DEFAULT_MAX_CONCURRENT_CALLS: u32 = 100;
/// Default HEARTBEAT_INTERVAL_MS: 10 000 (10 s).
pub const DEFAULT_HEARTBEAT_INTERVAL_MS: u32 = 10_000;
/// The smallest heartbeat interval a connection uses: a smaller announced HEARTBEAT_INTERVAL_MS
/// is raised to it, so a peer announcing 1 ms cannot make the other PING a thousand times a
/// second, nor have itself declared dead after a scheduling hiccup.
pub const MIN_HEARTBEAT_INTERVAL_MS: u32 = 100;

/// What a peer announces about itself. A setting missing from a handshake frame takes its default;
/// an id this version does not know is ignored, so new settings need no new version.
///
/// ```
/// use rpc_codec::Settings;
/// let s = Settings::default();
/// assert_eq!(s.max_frame_size, 4 * 1024 * 1024);
/// assert_eq!(s.max_concurrent_calls, 100);
/// assert_eq!(s.heartbeat_interval_ms, 10_000);
/// assert_eq!(s.max_metadata_size, 16 * 1024);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Settings {
    /// The largest frame *body*, in bytes, the announcer accepts. At least 4096.
    pub max_frame_size: u32,
    /// How many calls the announcer runs at once on this connection; REQUESTs beyond it are
    /// refused with RESOURCE_EXHAUSTED and NOT_EXECUTED. A client announces 0 (it serves no calls).
    pub max_concurrent_calls: u32,
    /// The announcer's heartbeat interval in milliseconds; 0 means it asks for none. The
    /// connection uses the smaller non-zero value of the two peers.
    pub heartbeat_interval_ms: u32,
    /// The largest metadata block, in bytes, the announcer accepts in one frame.
    pub max_metadata_size: u32,
    /// Non-zero when the announcer (a server) keeps a dedupe window: a random id, new for each
    /// server instance, so a client can tell whether a retry reaches the instance that recorded
    /// the first attempt. 0 (the default, not sent): no dedupe window.
    pub dedupe_instance: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            max_concurrent_calls: DEFAULT_MAX_CONCURRENT_CALLS,
            heartbeat_interval_ms: DEFAULT_HEARTBEAT_INTERVAL_MS,
            max_metadata_size: DEFAULT_MAX_METADATA_SIZE,
            dedupe_instance: 0,
        }
    }
}

impl Settings {
    /// The heartbeat interval the two peers use: the smaller non-zero interval, raised to
    /// [`MIN_HEARTBEAT_INTERVAL_MS`]; `None` when both announced 0.
    ///
    /// ```
    /// use std::time::Duration;
    /// use rpc_codec::Settings;
    /// let ours = Settings { heartbeat_interval_ms: 10_000, ..Settings::default() };
    /// let eager = Settings { heartbeat_interval_ms: 1, ..Settings::default() };
    /// assert_eq!(ours.negotiated_heartbeat(&eager), Some(Duration::from_millis(100)));
    /// let none = Settings { heartbeat_interval_ms: 0, ..Settings::default() };
    /// assert_eq!(none.negotiated_heartbeat(&none), None);
    /// assert_eq!(none.negotiated_heartbeat(&ours), Some(Duration::from_secs(10)));
    /// ```
    #[must_use]
    pub fn negotiated_heartbeat(&self, peer: &Self) -> Option<Duration> {
        let ms = match (self.heartbeat_interval_ms, peer.heartbeat_interval_ms) {
            (0, 0) => return None,
            (0, x) | (x, 0) => x,
            (a, b) => a.min(b),
        };
        Some(Duration::from_millis(u64::from(
            ms.max(MIN_HEARTBEAT_INTERVAL_MS),
        )))
    }

    /// The entries sent: the four limits always, DEDUPE_INSTANCE when non-zero.
    fn entries(&self) -> impl Iterator<Item = (u16, u32)> {
        [
            (SETTING_MAX_FRAME_SIZE, self.max_frame_size),
            (SETTING_MAX_CONCURRENT_CALLS, self.max_concurrent_calls),
            (SETTING_HEARTBEAT_INTERVAL_MS, self.heartbeat_interval_ms),
            (SETTING_MAX_METADATA_SIZE, self.max_metadata_size),
            (SETTING_DEDUPE_INSTANCE, self.dedupe_instance),
        ]
        .into_iter()
        .filter(|&(id, value)| id != SETTING_DEDUPE_INSTANCE || value != 0)
    }

    /// Bytes the settings list takes: its `u16` count and six bytes per entry.
    pub(crate) fn wire_len(&self) -> usize {
        2 + 6 * self.entries().count()
    }

    pub(crate) fn write(&self, dst: &mut BytesMut) {
        let count = u16::try_from(self.entries().count()).unwrap_or(u16::MAX);
        dst.put_u16(count);
        for (id, value) in self.entries() {
            dst.put_u16(id);
            dst.put_u32(value);
        }
    }

    pub(crate) fn read(body: &mut BodyReader) -> Result<Self, BodyError> {
        let count = body.u16("settings count")?;
        let mut settings = Self::default();
        let mut seen = HashSet::new();
        for _ in 0..count {
            let id = body.u16("setting id")?;
            let value = body.u32("setting value")?;
            if !seen.insert(id) {
                return Err(BodyError::DuplicateSetting { id });
            }
            match id {
                SETTING_MAX_FRAME_SIZE if value < MIN_MAX_FRAME_SIZE => {
                    return Err(BodyError::SettingOutOfRange { id, value });
                }
                SETTING_MAX_FRAME_SIZE => settings.max_frame_size = value,
                SETTING_MAX_CONCURRENT_CALLS => settings.max_concurrent_calls = value,
                SETTING_HEARTBEAT_INTERVAL_MS => settings.heartbeat_interval_ms = value,
                SETTING_MAX_METADATA_SIZE => settings.max_metadata_size = value,
                SETTING_DEDUPE_INSTANCE => settings.dedupe_instance = value,
                _ => {} // unknown settings are ignored
            }
        }
        Ok(settings)
    }
}
