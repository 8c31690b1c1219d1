//! Serialization of application values into call payloads.

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::BoxError;

mod decode;

pub use decode::{DecodeError, MAX_DEPTH};

/// How much memory a decode may claim for each byte of the receiver's frame limit: 4, so the
/// default 4 MiB frames give the default 16 MiB, room for integers that grow when decoded.
pub const DECODE_LIMIT_PER_FRAME_BYTE: usize = 4;

/// The default decode limit of [`Bincode`]: 16 MiB, [`DECODE_LIMIT_PER_FRAME_BYTE`] times the
/// default max frame size of 4 MiB.
pub const DEFAULT_DECODE_LIMIT: usize = 16 * 1024 * 1024;

/// Why a payload could not be serialized or deserialized.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PayloadError {
    /// The value could not be encoded.
    #[error("payload could not be encoded")]
    Encode(#[source] BoxError),
    /// The bytes are not a valid encoding of the expected type.
    #[error("payload could not be decoded")]
    Decode(#[source] BoxError),
    /// Decoding would have claimed more memory than the limit allows: the bytes claim a larger
    /// collection than the limit admits.
    #[error("payload decoding exceeded its limit of {limit} bytes")]
    LimitExceeded {
        /// The limit in bytes.
        limit: usize,
    },
    /// The value ended before the payload did.
    #[error("payload has {extra} bytes after the value")]
    TrailingBytes {
        /// How many bytes were left over.
        extra: usize,
    },
}

/// Turns application values into payload bytes and back.
///
/// The envelope around a payload is fixed binary (docs/PROTOCOL.md); only the payload is
/// serialized with this trait, so a proxy can route calls without knowing the application's types.
/// Implementations must bound the memory a decode may allocate: the bytes come from the network.
pub trait PayloadCodec: Clone + Send + Sync + 'static {
    /// Encodes `value`.
    ///
    /// # Errors
    /// [`PayloadError::Encode`] when the value cannot be represented.
    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Bytes, PayloadError>;

    /// Decodes a `T` from the whole of `bytes`.
    ///
    /// # Errors
    /// [`PayloadError`] when the bytes are malformed, claim more memory than the limit, or have
    /// bytes left over after the value.
    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, PayloadError>;
}

/// bincode 2's standard layout (little endian, varint integers; docs/PROTOCOL.md §5.8), decoded
/// under a limit on the memory the decoded values may claim.
///
/// The limit matters: the bytes come from the network, and a four-byte payload may claim a
/// 2^60-byte string. Each value decoded counts its width in memory (a `u64` 8, a string its
/// length plus 8, each element of a sequence at least 1) against one running total, and the decode
/// fails with [`PayloadError::LimitExceeded`] before the total passes the limit. A length is also
/// checked against the bytes left before anything is reserved, and values may nest at most
/// [`MAX_DEPTH`] deep. keel's typed layer decodes under [`Bincode::for_frame_limit`] of the
/// receiver's max frame size.
///
/// Encoding is bincode 2.0.1's own. Decoding is keel's reader of the same layout, because
/// bincode's limit is fixed at compile time and it reserves a claimed length before checking the
/// bytes are there. Byte buffers should be `bytes::Bytes` or `serde_bytes` types so they encode as
/// one block rather than element by element.
///
/// ```
/// use keel::core::{Bincode, PayloadCodec, PayloadError};
/// let codec = Bincode::with_limit(1024);
/// let bytes = codec.encode(&("hello", 7u32)).unwrap();
/// let (s, n): (String, u32) = codec.decode(&bytes).unwrap();
/// assert_eq!((s.as_str(), n), ("hello", 7));
///
/// // A string claiming 2^40 bytes is refused before anything is allocated.
/// let hostile = [0xfd, 0, 0, 0, 0, 0, 1, 0, 0];
/// let err = codec.decode::<String>(&hostile).unwrap_err();
/// assert!(matches!(err, PayloadError::LimitExceeded { limit: 1024 }));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bincode {
    limit: usize,
}

impl Bincode {
    /// The codec with the [`DEFAULT_DECODE_LIMIT`] of 16 MiB.
    pub const fn new() -> Self {
        Self::with_limit(DEFAULT_DECODE_LIMIT)
    }

    /// The codec with a decode limit of `limit` bytes.
    pub const fn with_limit(limit: usize) -> Self {
        Self { limit }
    }

    /// The codec whose decode limit follows a receiver's max frame size:
    /// [`DECODE_LIMIT_PER_FRAME_BYTE`] × `max_frame_size` bytes.
    ///
    /// ```
    /// use keel::core::{Bincode, DEFAULT_DECODE_LIMIT};
    /// assert_eq!(Bincode::for_frame_limit(4 * 1024 * 1024).limit(), DEFAULT_DECODE_LIMIT);
    /// assert_eq!(Bincode::for_frame_limit(64 * 1024 * 1024).limit(), 256 * 1024 * 1024);
    /// ```
    pub const fn for_frame_limit(max_frame_size: u32) -> Self {
        Self::with_limit((max_frame_size as usize).saturating_mul(DECODE_LIMIT_PER_FRAME_BYTE))
    }

    /// The decode limit in bytes.
    pub const fn limit(&self) -> usize {
        self.limit
    }
}

impl Default for Bincode {
    /// [`Bincode::new`]: the 16 MiB default limit.
    fn default() -> Self {
        Self::new()
    }
}

fn bincode_config() -> bincode::config::Configuration {
    bincode::config::standard()
}

impl PayloadCodec for Bincode {
    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Bytes, PayloadError> {
        bincode::serde::encode_to_vec(value, bincode_config())
            .map(Bytes::from)
            .map_err(|e| PayloadError::Encode(Box::new(e)))
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, PayloadError> {
        match decode::from_slice(bytes, self.limit) {
            Ok((value, read)) if read == bytes.len() => Ok(value),
            Ok((_, read)) => Err(PayloadError::TrailingBytes {
                extra: bytes.len().saturating_sub(read),
            }),
            Err(DecodeError::LimitExceeded { limit }) => Err(PayloadError::LimitExceeded { limit }),
            Err(e) => Err(PayloadError::Decode(Box::new(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Sample {
        name: String,
        tags: Vec<u64>,
        blob: Bytes,
        nested: Option<Box<Self>>,
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let codec = Bincode::with_limit(1024);
        let mut bytes = codec.encode(&5u8).unwrap().to_vec();
        bytes.push(0);
        assert!(matches!(
            codec.decode::<u8>(&bytes),
            Err(PayloadError::TrailingBytes { extra: 1 })
        ));
    }

    #[test]
    fn bytes_encode_as_one_block() {
        let blob = Bytes::from(vec![0xAB; 1000]);
        let encoded = Bincode::with_limit(4096).encode(&blob).unwrap();
        // Length prefix (varint, 3 bytes for 1000) and the bytes themselves: no per-element tags.
        assert_eq!(encoded.len(), 3 + 1000);
    }

    proptest! {
        // A fixed seed, so that every run replays the same cases (the fuzz targets explore).
    #![proptest_config(ProptestConfig {
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x6b65_656c),
        ..ProptestConfig::with_cases(256)
    })]

        #[test]
        fn round_trips(name in ".{0,40}", tags in proptest::collection::vec(any::<u64>(), 0..20),
                       blob in proptest::collection::vec(any::<u8>(), 0..200)) {
            let value = Sample {
                name: name.clone(),
                tags: tags.clone(),
                blob: Bytes::from(blob.clone()),
                nested: Some(Box::new(Sample { name, tags, blob: Bytes::from(blob), nested: None })),
            };
            let codec = Bincode::new();
            let decoded: Sample = codec.decode(&codec.encode(&value).unwrap()).unwrap();
            prop_assert_eq!(decoded, value);
        }

        #[test]
        fn arbitrary_bytes_never_panic_or_overallocate(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let codec = Bincode::with_limit(65536);
            let _ = codec.decode::<Sample>(&bytes);
            let _ = codec.decode::<Vec<String>>(&bytes);
        }
    }
}
