//! Call metadata: an ordered list of validated keys with binary values.

use std::fmt;

use bytes::Bytes;

/// The longest key, in bytes.
pub const MAX_KEY_LEN: usize = 255;

/// The default limit on a frame's encoded metadata, in bytes: 16 KiB (see
/// [`Metadata::encoded_len`]).
pub const DEFAULT_MAX_METADATA_SIZE: u32 = 16 * 1024;

/// The key prefix reserved for keel itself (attempt numbers, request ids); applications should not
/// use it.
pub const RESERVED_PREFIX: &str = "rpc-";

/// Request metadata: the 1-based number of this attempt of a call, in ASCII decimal. Sent on
/// every attempt after the first (retries and hedges); absent means 1.
pub const ATTEMPT_KEY: &str = "rpc-attempt";

/// Request metadata: an opaque id of 1 to 64 bytes, the same on every attempt of one call, by
/// which a server's dedupe window recognises a retry (docs/PROTOCOL.md §14.2).
pub const REQUEST_ID_KEY: &str = "rpc-request-id";

/// The longest [`REQUEST_ID_KEY`] value, in bytes; a server's dedupe window refuses an empty or
/// longer one with INVALID_ARGUMENT, NOT_EXECUTED, and a client refuses to send one.
pub const MAX_REQUEST_ID_LEN: usize = 64;

/// Request metadata: the 8-byte schema fingerprint of a `#[service]` method's argument and result
/// types, big-endian (docs/PROTOCOL.md §5.8). A server whose fingerprint for the method differs
/// refuses the call with FAILED_PRECONDITION, NOT_EXECUTED, before decoding it.
pub const SCHEMA_KEY: &str = "rpc-schema";

/// Response metadata, value `1`: the response is a recorded result of an earlier attempt, replayed
/// by the server's dedupe window instead of running the handler again.
pub const REPLAYED_KEY: &str = "rpc-replayed";

/// Bytes an entry costs on the wire beyond its key and value: one byte of key length and four
/// of value length.
const ENTRY_OVERHEAD: usize = 1 + 4;

/// Why a metadata key was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MetadataError {
    /// A key must have at least one byte.
    #[error("metadata key is empty")]
    EmptyKey,
    /// A key must have at most [`MAX_KEY_LEN`] bytes.
    #[error("metadata key is {len} bytes long, more than the limit of 255")]
    KeyTooLong {
        /// The key's length.
        len: usize,
    },
    /// A key may hold only `a-z`, `0-9`, `-`, `_` and `.`.
    #[error("metadata key has byte 0x{byte:02x} at index {index}; only a-z 0-9 - _ . are allowed")]
    InvalidKeyByte {
        /// The offending byte.
        byte: u8,
        /// Its index in the key.
        index: usize,
    },
    /// The metadata is larger on the wire than the limit allows.
    #[error("metadata is {len} bytes on the wire, over the limit of {max}")]
    TooLarge {
        /// Its encoded length ([`Metadata::encoded_len`]).
        len: usize,
        /// The limit.
        max: u32,
    },
}

/// A validated metadata key: 1 to 255 bytes of `a-z`, `0-9`, `-`, `_`, `.`.
///
/// Lower case only, so that keys compare byte for byte with no case folding on the hot path.
///
/// ```
/// use keel::core::MetadataKey;
/// assert!(MetadataKey::try_from("trace-id").is_ok());
/// assert!(MetadataKey::try_from("Trace-Id").is_err());
/// assert!(MetadataKey::try_from("").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct MetadataKey(Bytes);

impl MetadataKey {
    /// A key from a static string.
    ///
    /// # Panics
    /// If `key` breaks the key rules: a static key is part of the program, so a bad one is a bug.
    #[must_use]
    #[allow(
        clippy::panic,
        reason = "static keys are program text; a bad one is a bug"
    )]
    pub fn from_static(key: &'static str) -> Self {
        match validate_key(key.as_bytes()) {
            Ok(()) => Self(Bytes::from_static(key.as_bytes())),
            Err(err) => panic!("invalid static metadata key {key:?}: {err}"),
        }
    }

    /// A key from bytes, validated; shares `bytes` rather than copying it.
    ///
    /// # Errors
    /// [`MetadataError`] naming the broken rule.
    pub fn from_bytes(bytes: Bytes) -> Result<Self, MetadataError> {
        validate_key(&bytes)?;
        Ok(Self(bytes))
    }

    /// The key as a string.
    #[must_use]
    pub fn as_str(&self) -> &str {
        // Validation admits only ASCII, so this cannot fail; the fallback keeps us panic-free.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The key's bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Whether the key starts with the reserved prefix `rpc-`.
    #[must_use]
    pub fn is_reserved(&self) -> bool {
        self.0.starts_with(RESERVED_PREFIX.as_bytes())
    }
}

fn validate_key(key: &[u8]) -> Result<(), MetadataError> {
    if key.is_empty() {
        return Err(MetadataError::EmptyKey);
    }
    if key.len() > MAX_KEY_LEN {
        return Err(MetadataError::KeyTooLong { len: key.len() });
    }
    match key
        .iter()
        .position(|&b| !matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.'))
    {
        Some(index) => Err(MetadataError::InvalidKeyByte {
            byte: key.get(index).copied().unwrap_or_default(),
            index,
        }),
        None => Ok(()),
    }
}

impl TryFrom<&str> for MetadataKey {
    type Error = MetadataError;

    fn try_from(key: &str) -> Result<Self, Self::Error> {
        validate_key(key.as_bytes())?;
        Ok(Self(Bytes::copy_from_slice(key.as_bytes())))
    }
}

impl TryFrom<String> for MetadataKey {
    type Error = MetadataError;

    fn try_from(key: String) -> Result<Self, Self::Error> {
        Self::from_bytes(Bytes::from(key))
    }
}

impl fmt::Debug for MetadataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for MetadataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Metadata sent with a request or a response: an ordered list of `(key, value)` entries.
///
/// Values are arbitrary bytes. A key may appear more than once ([`Metadata::append`]); order is
/// kept on the wire. Lookups are linear: metadata is small by design (16 KiB by default, see
/// [`DEFAULT_MAX_METADATA_SIZE`]), and a list beats a hash map at that size.
///
/// ```
/// use keel::core::{Metadata, MetadataKey};
/// let mut md = Metadata::new();
/// md.insert(MetadataKey::from_static("tenant"), "acme");
/// md.append(MetadataKey::from_static("tag"), "a");
/// md.append(MetadataKey::from_static("tag"), "b");
/// assert_eq!(md.get_str("tenant"), Some("acme"));
/// assert_eq!(md.get_all("tag").count(), 2);
/// assert_eq!(md.encoded_len(), (1 + 6 + 4 + 4) + 2 * (1 + 3 + 4 + 1));
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    entries: Vec<(MetadataKey, Bytes)>,
}

impl Metadata {
    /// Empty metadata; does not allocate.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            entries: Vec::new(),
        }
    }

    /// Empty metadata with room for `capacity` entries.
    #[must_use]
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            entries: Vec::with_capacity(capacity),
        }
    }

    /// Sets `key` to `value`, removing any values it had.
    pub fn insert(&mut self, key: MetadataKey, value: impl Into<Bytes>) {
        self.remove(key.as_str());
        self.entries.push((key, value.into()));
    }

    /// Adds `value` under `key`, keeping the values it had.
    pub fn append(&mut self, key: MetadataKey, value: impl Into<Bytes>) {
        self.entries.push((key, value.into()));
    }

    /// The first value of `key`.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&Bytes> {
        self.entries
            .iter()
            .find(|(k, _)| k.as_bytes() == key.as_bytes())
            .map(|(_, v)| v)
    }

    /// The first value of `key`, if it is valid UTF-8.
    #[must_use]
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Every value of `key`, in order.
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a Bytes> + 'a {
        self.entries
            .iter()
            .filter(move |(k, _)| k.as_bytes() == key.as_bytes())
            .map(|(_, v)| v)
    }

    /// Removes every value of `key`; returns how many there were.
    pub fn remove(&mut self, key: &str) -> usize {
        let before = self.entries.len();
        self.entries.retain(|(k, _)| k.as_bytes() != key.as_bytes());
        before - self.entries.len()
    }

    /// Every entry, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&MetadataKey, &Bytes)> {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    /// The number of entries.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The size of the entries on the wire, in bytes: for each entry one byte of key length, the
    /// key, four bytes of value length and the value. This is what the MAX_METADATA_SIZE setting
    /// limits.
    #[must_use]
    pub fn encoded_len(&self) -> usize {
        self.entries
            .iter()
            .map(|(k, v)| ENTRY_OVERHEAD + k.as_bytes().len() + v.len())
            .sum()
    }

    /// Checks the metadata against a MAX_METADATA_SIZE of `max` bytes.
    ///
    /// # Errors
    /// [`MetadataError::TooLarge`] when [`Metadata::encoded_len`] exceeds `max`.
    ///
    /// ```
    /// use keel::core::{Metadata, MetadataKey};
    /// let mut md = Metadata::new();
    /// md.insert(MetadataKey::from_static("k"), vec![0u8; 10]); // 5 + 1 + 10 bytes
    /// assert!(md.check_size(16).is_ok());
    /// assert!(md.check_size(15).is_err());
    /// ```
    pub fn check_size(&self, max: u32) -> Result<(), MetadataError> {
        let len = self.encoded_len();
        if u32::try_from(len).map_or(true, |len| len > max) {
            return Err(MetadataError::TooLarge { len, max });
        }
        Ok(())
    }
}

impl fmt::Debug for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.entries.iter().map(|(k, v)| (k, v)))
            .finish()
    }
}

impl Extend<(MetadataKey, Bytes)> for Metadata {
    fn extend<I: IntoIterator<Item = (MetadataKey, Bytes)>>(&mut self, iter: I) {
        self.entries.extend(iter);
    }
}

/// The entries in order, keys repeated as appended.
impl IntoIterator for Metadata {
    type Item = (MetadataKey, Bytes);
    type IntoIter = std::vec::IntoIter<(MetadataKey, Bytes)>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

impl FromIterator<(MetadataKey, Bytes)> for Metadata {
    fn from_iter<I: IntoIterator<Item = (MetadataKey, Bytes)>>(iter: I) -> Self {
        Self {
            entries: iter.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_rules() {
        assert_eq!(MetadataKey::try_from(""), Err(MetadataError::EmptyKey));
        assert_eq!(
            MetadataKey::try_from("a".repeat(256)),
            Err(MetadataError::KeyTooLong { len: 256 })
        );
        assert!(MetadataKey::try_from("a".repeat(255)).is_ok());
        assert_eq!(
            MetadataKey::try_from("ab C"),
            Err(MetadataError::InvalidKeyByte {
                byte: b' ',
                index: 2
            })
        );
        assert!(MetadataKey::try_from("x-request.id_2").is_ok());
        assert!(MetadataKey::from_static("rpc-attempt").is_reserved());
        assert!(!MetadataKey::from_static("rpcx").is_reserved());
    }

    #[test]
    fn insert_replaces_append_keeps() {
        let key = MetadataKey::from_static("k");
        let mut md = Metadata::new();
        md.append(key.clone(), "1");
        md.append(key.clone(), "2");
        md.insert(key, "3");
        assert_eq!(md.get_all("k").collect::<Vec<_>>(), vec!["3"]);
        assert_eq!(md.remove("k"), 1);
        assert!(md.is_empty());
    }
}
