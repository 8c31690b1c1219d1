//! Serialization of application values into call payloads.

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::BoxError;

/// The default decode limit of [`Bincode`]: 16 MiB, four times the default max frame size, to
/// leave room for varint-encoded integers that grow when decoded.
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

/// bincode 2 (serde) with its standard configuration (little endian, varint integers) and a decode
/// limit of `LIMIT` bytes.
///
/// The limit matters: bincode allocates a claimed collection length up front, so without one a
/// four-byte payload claiming a 2^60-byte string would abort the process. Byte buffers should be
/// `bytes::Bytes` or `serde_bytes` types so they encode as one block rather than element by
/// element.
///
/// ```
/// use rpc_core::{Bincode, PayloadCodec, PayloadError};
/// let codec = Bincode::<1024>;
/// let bytes = codec.encode(&("hello", 7u32)).unwrap();
/// let (s, n): (String, u32) = codec.decode(&bytes).unwrap();
/// assert_eq!((s.as_str(), n), ("hello", 7));
///
/// // A string claiming 2^40 bytes is refused before anything is allocated.
/// let hostile = [0xfd, 0, 0, 0, 0, 0, 1, 0, 0];
/// let err = codec.decode::<String>(&hostile).unwrap_err();
/// assert!(matches!(err, PayloadError::LimitExceeded { limit: 1024 }));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bincode<const LIMIT: usize = DEFAULT_DECODE_LIMIT>;

impl<const LIMIT: usize> Bincode<LIMIT> {
    const fn config() -> bincode::config::Configuration<
        bincode::config::LittleEndian,
        bincode::config::Varint,
        bincode::config::Limit<LIMIT>,
    > {
        bincode::config::standard().with_limit::<LIMIT>()
    }
}

impl<const LIMIT: usize> PayloadCodec for Bincode<LIMIT> {
    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Bytes, PayloadError> {
        bincode::serde::encode_to_vec(value, Self::config())
            .map(Bytes::from)
            .map_err(|e| PayloadError::Encode(Box::new(e)))
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, PayloadError> {
        match bincode::serde::decode_from_slice(bytes, Self::config()) {
            Ok((value, read)) if read == bytes.len() => Ok(value),
            Ok((_, read)) => Err(PayloadError::TrailingBytes {
                extra: bytes.len().saturating_sub(read),
            }),
            Err(bincode::error::DecodeError::LimitExceeded) => {
                Err(PayloadError::LimitExceeded { limit: LIMIT })
            }
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
        let codec = Bincode::<1024>;
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
        let encoded = Bincode::<4096>.encode(&blob).unwrap();
        // Length prefix (varint, 3 bytes for 1000) and the bytes themselves: no per-element tags.
        assert_eq!(encoded.len(), 3 + 1000);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn round_trips(name in ".{0,40}", tags in proptest::collection::vec(any::<u64>(), 0..20),
                       blob in proptest::collection::vec(any::<u8>(), 0..200)) {
            let value = Sample {
                name: name.clone(),
                tags: tags.clone(),
                blob: Bytes::from(blob.clone()),
                nested: Some(Box::new(Sample { name, tags, blob: Bytes::from(blob), nested: None })),
            };
            let codec = Bincode::<DEFAULT_DECODE_LIMIT>;
            let decoded: Sample = codec.decode(&codec.encode(&value).unwrap()).unwrap();
            prop_assert_eq!(decoded, value);
        }

        #[test]
        fn arbitrary_bytes_never_panic_or_overallocate(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let codec = Bincode::<65536>;
            let _ = codec.decode::<Sample>(&bytes);
            let _ = codec.decode::<Vec<String>>(&bytes);
        }
    }
}
