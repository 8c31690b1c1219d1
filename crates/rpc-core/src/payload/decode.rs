//! keel's reader of bincode 2's standard layout (docs/PROTOCOL.md §5.8): a serde `Deserializer`
//! over one payload slice, with every bound a decode of network bytes needs.
//!
//! bincode's own decoder is not used for reading because its limit is a compile-time constant
//! (its `Decoder` trait is sealed, so no runtime limit can be plugged in), it reserves a string's
//! claimed length before it checks that the bytes are there, a sequence of zero-width elements
//! claims nothing per element (a 9-byte payload could make it loop 2^64 times), and nothing bounds
//! the nesting of a recursive type (a long enough payload overflows the stack). This reader keeps
//! bincode's layout and its accounting of decoded widths, and adds:
//!
//! - a limit chosen at run time (the typed layer derives it from the receiver's frame limit);
//! - a length is checked against the bytes left before anything is reserved;
//! - each element of a sequence or map counts at least 1 against the limit;
//! - nesting deeper than [`MAX_DEPTH`] is refused.

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};

/// How deeply values may nest (sequences, maps, tuples, structs, enums, options and newtypes
/// inside one another) before a payload is refused: the same bound serde_json uses, far above what
/// a method signature needs and far below what overflows a 2 MiB thread stack.
pub const MAX_DEPTH: usize = 128;

const U16_MARKER: u8 = 0xfb;
const U32_MARKER: u8 = 0xfc;
const U64_MARKER: u8 = 0xfd;
const U128_MARKER: u8 = 0xfe;

/// Why a payload did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The payload ended inside a value.
    #[error("the payload ends at byte {at}, {needed} bytes short of the value")]
    Truncated {
        /// The payload's length.
        at: usize,
        /// How many more bytes the value needed.
        needed: usize,
    },
    /// A varint's first byte is `ff`, or a marker wider than the integer being read.
    #[error("byte {at}: varint marker {marker:#04x} is not valid for a {width}-bit integer")]
    InvalidVarint {
        /// Where the marker is.
        at: usize,
        /// The marker byte.
        marker: u8,
        /// The width of the integer being read, in bits.
        width: u32,
    },
    /// A length or count does not fit in this machine's `usize`.
    #[error("byte {at}: a length of {len} does not fit in memory on this machine")]
    LengthOverflow {
        /// Where the length is.
        at: usize,
        /// The length read.
        len: u64,
    },
    /// A `bool` byte other than 0 or 1.
    #[error("byte {at}: {byte:#04x} is not a bool (00 or 01)")]
    InvalidBool {
        /// Where the byte is.
        at: usize,
        /// The byte.
        byte: u8,
    },
    /// An `Option` tag other than 0 or 1.
    #[error("byte {at}: {byte:#04x} is not an Option tag (00 or 01)")]
    InvalidOptionTag {
        /// Where the byte is.
        at: usize,
        /// The byte.
        byte: u8,
    },
    /// A `char` that is not one valid UTF-8 sequence.
    #[error("byte {at}: not a valid UTF-8 char")]
    InvalidChar {
        /// Where the char starts.
        at: usize,
    },
    /// A string's bytes are not valid UTF-8.
    #[error("byte {at}: the string is not valid UTF-8")]
    InvalidUtf8 {
        /// Where the string's bytes start.
        at: usize,
    },
    /// Values nest deeper than [`MAX_DEPTH`].
    #[error("byte {at}: values nest deeper than {MAX_DEPTH}")]
    TooDeep {
        /// Where the value that went too deep starts.
        at: usize,
    },
    /// The decoded values would claim more memory than the limit.
    #[error("decoding exceeded its limit of {limit} bytes")]
    LimitExceeded {
        /// The limit.
        limit: usize,
    },
    /// The type asked for something bincode's layout cannot say, such as `deserialize_any`
    /// (untagged or internally tagged enums, `#[serde(flatten)]`).
    #[error("the type needs a self-describing format ({0}), which bincode is not")]
    NotSelfDescribing(&'static str),
    /// The type's `Deserialize` refused what it read (an unknown variant index, a wrong length).
    #[error("{0}")]
    Refused(String),
}

impl de::Error for DecodeError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        Self::Refused(msg.to_string())
    }
}

/// Decodes exactly one `T` from `bytes`, under `limit`, and reports how many bytes it read.
pub(crate) fn from_slice<'de, T: de::Deserialize<'de>>(
    bytes: &'de [u8],
    limit: usize,
) -> Result<(T, usize), DecodeError> {
    let mut reader = Reader {
        bytes,
        pos: 0,
        claimed: 0,
        limit,
        depth: 0,
    };
    let value = T::deserialize(&mut reader)?;
    Ok((value, reader.pos))
}

struct Reader<'de> {
    bytes: &'de [u8],
    pos: usize,
    claimed: usize,
    limit: usize,
    depth: usize,
}

impl<'de> Reader<'de> {
    #[inline]
    fn claim(&mut self, width: usize) -> Result<(), DecodeError> {
        match self.claimed.checked_add(width) {
            Some(total) if total <= self.limit => {
                self.claimed = total;
                Ok(())
            }
            _ => Err(DecodeError::LimitExceeded { limit: self.limit }),
        }
    }

    #[cold]
    fn truncated(&self, n: usize) -> DecodeError {
        DecodeError::Truncated {
            at: self.bytes.len(),
            needed: n - (self.bytes.len() - self.pos),
        }
    }

    #[inline]
    fn take(&mut self, n: usize) -> Result<&'de [u8], DecodeError> {
        let bytes = self.bytes;
        match self
            .pos
            .checked_add(n)
            .and_then(|end| bytes.get(self.pos..end))
        {
            Some(taken) => {
                self.pos += n;
                Ok(taken)
            }
            None => Err(self.truncated(n)),
        }
    }

    #[inline]
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let bytes = self.bytes;
        match bytes
            .get(self.pos..)
            .and_then(|rest| rest.first_chunk::<N>())
        {
            Some(chunk) => {
                self.pos += N;
                Ok(*chunk)
            }
            None => Err(self.truncated(N)),
        }
    }

    #[inline]
    fn byte(&mut self) -> Result<u8, DecodeError> {
        match self.bytes.get(self.pos) {
            Some(&b) => {
                self.pos += 1;
                Ok(b)
            }
            None => Err(self.truncated(1)),
        }
    }

    /// The width in bits a varint marker announces (`u32::MAX` for `ff`), checked against the
    /// width of the integer being read before the bytes after it are read.
    #[cold]
    fn wide_marker(&self, marker: u8, bits: u32) -> Result<u32, DecodeError> {
        let width = match marker {
            U16_MARKER => 16,
            U32_MARKER => 32,
            U64_MARKER => 64,
            U128_MARKER => 128,
            _ => u32::MAX,
        };
        if width > bits {
            return Err(DecodeError::InvalidVarint {
                at: self.pos - 1,
                marker,
                width: bits,
            });
        }
        Ok(width)
    }

    /// An unsigned varint of at most `bits` (16, 32 or 64) bits.
    #[inline]
    fn varint(&mut self, bits: u32) -> Result<u64, DecodeError> {
        let marker = self.byte()?;
        if marker <= 250 {
            return Ok(u64::from(marker));
        }
        Ok(match self.wide_marker(marker, bits)? {
            16 => u64::from(u16::from_le_bytes(self.array()?)),
            32 => u64::from(u32::from_le_bytes(self.array()?)),
            _ => u64::from_le_bytes(self.array()?),
        })
    }

    /// An unsigned varint of up to 128 bits.
    fn varint128(&mut self) -> Result<u128, DecodeError> {
        let marker = self.byte()?;
        if marker <= 250 {
            return Ok(u128::from(marker));
        }
        Ok(match self.wide_marker(marker, 128)? {
            16 => u128::from(u16::from_le_bytes(self.array()?)),
            32 => u128::from(u32::from_le_bytes(self.array()?)),
            64 => u128::from(u64::from_le_bytes(self.array()?)),
            _ => u128::from_le_bytes(self.array()?),
        })
    }

    #[inline]
    fn unsigned(&mut self, bits: u32) -> Result<u64, DecodeError> {
        self.claim(bits as usize / 8)?;
        self.varint(bits)
    }

    #[inline]
    fn signed(&mut self, bits: u32) -> Result<i64, DecodeError> {
        Ok(unzigzag(self.unsigned(bits)?))
    }

    /// A length or count: a u64 varint (counting 8) that must fit in a usize.
    fn len(&mut self) -> Result<usize, DecodeError> {
        let at = self.pos;
        let len = self.unsigned(64)?;
        usize::try_from(len).map_err(|_| DecodeError::LengthOverflow { at, len })
    }

    /// A length-prefixed run of bytes, checked against the limit and against the bytes left
    /// before anything is copied.
    fn blob(&mut self) -> Result<&'de [u8], DecodeError> {
        let len = self.len()?;
        self.claim(len)?;
        self.take(len)
    }

    fn str(&mut self) -> Result<&'de str, DecodeError> {
        let at = self.pos;
        let bytes = self.blob()?;
        std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8 { at })
    }

    fn char(&mut self) -> Result<char, DecodeError> {
        let at = self.pos;
        let first = *self.bytes.get(at).ok_or(DecodeError::Truncated {
            at: self.bytes.len(),
            needed: 1,
        })?;
        let width = match first {
            0x00..=0x7f => 1,
            0xc2..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf4 => 4,
            _ => return Err(DecodeError::InvalidChar { at }),
        };
        self.claim(width)?;
        let bytes = self.take(width)?;
        let mut chars = std::str::from_utf8(bytes)
            .map_err(|_| DecodeError::InvalidChar { at })?
            .chars();
        chars.next().ok_or(DecodeError::InvalidChar { at })
    }

    /// Runs `f` one nesting level deeper.
    fn nested<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<T, DecodeError> {
        if self.depth >= MAX_DEPTH {
            return Err(DecodeError::TooDeep { at: self.pos });
        }
        self.depth += 1;
        let result = f(self);
        self.depth -= 1;
        result
    }

    /// Decodes one element of a sequence or map, counting at least 1 for it: otherwise a count of
    /// zero-width elements would cost nothing and bound nothing.
    fn element<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, DecodeError> {
        let before = self.claimed;
        let value = seed.deserialize(&mut *self)?;
        if self.claimed == before {
            self.claim(1)?;
        }
        Ok(value)
    }
}

/// Zig-zag: 0, 1, 2, 3 are 0, -1, 1, -2.
#[inline]
fn unzigzag(zigzag: u64) -> i64 {
    let magnitude = (zigzag >> 1) as i64;
    if zigzag & 1 == 0 {
        magnitude
    } else {
        -magnitude - 1
    }
}

macro_rules! unsigned {
    ($method:ident, $visit:ident, $ty:ty, $bits:literal) => {
        #[allow(
            clippy::cast_possible_truncation,
            reason = "the varint's marker was checked to fit the width"
        )]
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
            visitor.$visit(self.unsigned($bits)? as $ty)
        }
    };
}

macro_rules! signed {
    ($method:ident, $visit:ident, $ty:ty, $bits:literal) => {
        #[allow(
            clippy::cast_possible_truncation,
            reason = "the zig-zag value was checked to fit the width, so the signed one fits"
        )]
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
            visitor.$visit(self.signed($bits)? as $ty)
        }
    };
}

impl<'de> de::Deserializer<'de> for &mut Reader<'de> {
    type Error = DecodeError;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, DecodeError> {
        Err(DecodeError::NotSelfDescribing("deserialize_any"))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.claim(1)?;
        let at = self.pos;
        match self.byte()? {
            0 => visitor.visit_bool(false),
            1 => visitor.visit_bool(true),
            byte => Err(DecodeError::InvalidBool { at, byte }),
        }
    }

    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.claim(1)?;
        visitor.visit_u8(self.byte()?)
    }

    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.claim(1)?;
        visitor.visit_i8(i8::from_le_bytes([self.byte()?]))
    }

    unsigned!(deserialize_u16, visit_u16, u16, 16);
    unsigned!(deserialize_u32, visit_u32, u32, 32);
    unsigned!(deserialize_u64, visit_u64, u64, 64);

    signed!(deserialize_i16, visit_i16, i16, 16);
    signed!(deserialize_i32, visit_i32, i32, 32);
    signed!(deserialize_i64, visit_i64, i64, 64);

    fn deserialize_u128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.claim(16)?;
        visitor.visit_u128(self.varint128()?)
    }

    fn deserialize_i128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.claim(16)?;
        let zigzag = self.varint128()?;
        let magnitude = (zigzag >> 1) as i128;
        visitor.visit_i128(if zigzag & 1 == 0 {
            magnitude
        } else {
            -magnitude - 1
        })
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.claim(4)?;
        visitor.visit_f32(f32::from_le_bytes(self.array()?))
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.claim(8)?;
        visitor.visit_f64(f64::from_le_bytes(self.array()?))
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_char(self.char()?)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_borrowed_str(self.str()?)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_borrowed_str(self.str()?)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_borrowed_bytes(self.blob()?)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_borrowed_bytes(self.blob()?)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.claim(1)?;
        let at = self.pos;
        match self.byte()? {
            0 => visitor.visit_none(),
            1 => self.nested(|r| visitor.visit_some(r)),
            byte => Err(DecodeError::InvalidOptionTag { at, byte }),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        self.nested(|r| visitor.visit_newtype_struct(r))
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let len = self.len()?;
        self.nested(|r| {
            visitor.visit_seq(Elements {
                reader: r,
                left: len,
            })
        })
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        self.nested(|r| {
            visitor.visit_seq(Fields {
                reader: r,
                left: len,
            })
        })
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        self.deserialize_tuple(len, visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let len = self.len()?;
        self.nested(|r| {
            visitor.visit_map(Elements {
                reader: r,
                left: len,
            })
        })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        self.deserialize_tuple(fields.len(), visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        self.nested(|r| visitor.visit_enum(r))
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, _: V) -> Result<V::Value, DecodeError> {
        Err(DecodeError::NotSelfDescribing("deserialize_identifier"))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, DecodeError> {
        Err(DecodeError::NotSelfDescribing("deserialize_ignored_any"))
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}

/// The elements of a sequence, or the entries of a map, after their count.
struct Elements<'a, 'de> {
    reader: &'a mut Reader<'de>,
    left: usize,
}

impl<'de> Elements<'_, 'de> {
    /// The next element, or map key, while the count lasts.
    fn next<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, DecodeError> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        self.reader.element(seed).map(Some)
    }

    /// A hint only: serde caps what it reserves from it, and the count is not yet proven by the
    /// bytes. Never more than the bytes left could hold at one byte per element.
    fn hint(&self) -> Option<usize> {
        Some(self.left.min(self.reader.bytes.len() - self.reader.pos))
    }
}

impl<'de> de::SeqAccess<'de> for Elements<'_, 'de> {
    type Error = DecodeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DecodeError> {
        self.next(seed)
    }

    fn size_hint(&self) -> Option<usize> {
        self.hint()
    }
}

impl<'de> de::MapAccess<'de> for Elements<'_, 'de> {
    type Error = DecodeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DecodeError> {
        self.next(seed)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, DecodeError> {
        seed.deserialize(&mut *self.reader)
    }

    fn size_hint(&self) -> Option<usize> {
        self.hint()
    }
}

/// The elements of a tuple, array or struct: a count fixed by the type, not read from the bytes.
struct Fields<'a, 'de> {
    reader: &'a mut Reader<'de>,
    left: usize,
}

impl<'de> de::SeqAccess<'de> for Fields<'_, 'de> {
    type Error = DecodeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DecodeError> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.reader).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

impl<'de> de::EnumAccess<'de> for &mut Reader<'de> {
    type Error = DecodeError;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self), DecodeError> {
        // The variant index: a u32 varint, counting 4.
        #[expect(clippy::cast_possible_truncation, reason = "a 32-bit varint")]
        let index = self.unsigned(32)? as u32;
        let variant = seed.deserialize(index.into_deserializer())?;
        Ok((variant, self))
    }
}

impl<'de> de::VariantAccess<'de> for &mut Reader<'de> {
    type Error = DecodeError;

    fn unit_variant(self) -> Result<(), DecodeError> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, DecodeError> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        de::Deserializer::deserialize_tuple(self, len, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        de::Deserializer::deserialize_tuple(self, fields.len(), visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::{Deserialize, Serialize};
    use std::collections::BTreeMap;

    const LIMIT: usize = 4096;

    fn ours<T: de::DeserializeOwned>(bytes: &[u8]) -> Result<(T, usize), DecodeError> {
        from_slice(bytes, LIMIT)
    }

    fn bincodes<T: de::DeserializeOwned>(bytes: &[u8]) -> Option<(T, usize)> {
        let config = bincode::config::standard().with_limit::<LIMIT>();
        bincode::serde::decode_from_slice(bytes, config).ok()
    }

    /// A value read, re-encoded, and the bytes it took.
    type Read = (Vec<u8>, usize);

    /// What each reader makes of `bytes`, each value re-encoded so that the comparison is
    /// bit-exact (a NaN read by both is the same NaN, and equal).
    fn both<T: de::DeserializeOwned + Serialize>(bytes: &[u8]) -> (Option<Read>, Option<Read>) {
        let reencode = |(value, len): (T, usize)| (encode(&value), len);
        (
            ours::<T>(bytes).ok().map(reencode),
            bincodes::<T>(bytes).map(reencode),
        )
    }

    fn encode<T: Serialize>(value: &T) -> Vec<u8> {
        bincode::serde::encode_to_vec(value, bincode::config::standard()).unwrap()
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Shape {
        Dot,
        Circle(i32),
        Rect { w: u16, h: u64 },
        Path(Vec<(i8, char)>),
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Everything {
        flag: bool,
        small: u8,
        signed: i64,
        wide: u128,
        negative: i128,
        ratio: f64,
        name: String,
        #[serde(with = "serde_bytes_like")]
        blob: Vec<u8>,
        shapes: Vec<Shape>,
        maybe: Option<Box<Self>>,
        table: BTreeMap<u32, Option<String>>,
        array: [u16; 3],
        result: Result<u8, String>,
    }

    /// Serializes a `Vec<u8>` as serde bytes, as `serde_bytes` does.
    mod serde_bytes_like {
        pub(super) fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(v)
        }
        pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(
            d: D,
        ) -> Result<Vec<u8>, D::Error> {
            bytes::Bytes::deserialize(d).map(|b| b.to_vec())
        }
        use serde::Deserialize as _;
    }

    fn shape() -> impl Strategy<Value = Shape> {
        prop_oneof![
            Just(Shape::Dot),
            any::<i32>().prop_map(Shape::Circle),
            (any::<u16>(), any::<u64>()).prop_map(|(w, h)| Shape::Rect { w, h }),
            proptest::collection::vec((any::<i8>(), any::<char>()), 0..4).prop_map(Shape::Path),
        ]
    }

    fn leaf() -> impl Strategy<Value = Everything> {
        (
            (any::<bool>(), any::<u8>(), any::<i64>(), any::<u128>()),
            (any::<i128>(), any::<f64>(), ".{0,12}"),
            proptest::collection::vec(any::<u8>(), 0..24),
            proptest::collection::vec(shape(), 0..4),
            proptest::collection::btree_map(any::<u32>(), proptest::option::of(".{0,4}"), 0..3),
            any::<[u16; 3]>(),
            prop_oneof![any::<u8>().prop_map(Ok), ".{0,4}".prop_map(Err)],
        )
            .prop_map(
                |(
                    (flag, small, signed, wide),
                    (negative, ratio, name),
                    blob,
                    shapes,
                    table,
                    array,
                    result,
                )| {
                    Everything {
                        flag,
                        small,
                        signed,
                        wide,
                        negative,
                        ratio: if ratio.is_nan() { 0.0 } else { ratio },
                        name,
                        blob,
                        shapes,
                        maybe: None,
                        table,
                        array,
                        result,
                    }
                },
            )
    }

    fn everything() -> impl Strategy<Value = Everything> {
        (leaf(), proptest::option::of(leaf())).prop_map(|(mut outer, inner)| {
            outer.maybe = inner.map(Box::new);
            outer
        })
    }

    proptest! {
        // A fixed seed, so that every run replays the same cases (the fuzz targets explore).
    #![proptest_config(ProptestConfig {
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x6b65_656c),
        ..ProptestConfig::with_cases(512)
    })]

        /// Whatever bincode writes, this reader reads back to the same value, and reads all of it.
        #[test]
        fn reads_what_bincode_writes(value in everything()) {
            let bytes = encode(&value);
            let (decoded, read) = from_slice::<Everything>(&bytes, usize::MAX).unwrap();
            prop_assert_eq!(read, bytes.len());
            prop_assert_eq!(decoded, value);
        }

        /// On any bytes, this reader and bincode's agree: the same value and length read, or both
        /// refuse. (With no zero-width elements in the type, the limits count the same.)
        #[test]
        fn agrees_with_bincode_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..96)) {
            let (a, b) = both::<Everything>(&bytes);
            prop_assert_eq!(a, b);
            let (a, b) = both::<Vec<Shape>>(&bytes);
            prop_assert_eq!(a, b);
            let (a, b) = both::<(u16, i32, String)>(&bytes);
            prop_assert_eq!(a, b);
            let (a, b) = both::<BTreeMap<i64, char>>(&bytes);
            prop_assert_eq!(a, b);
        }

        /// Mutating one byte of a valid encoding never makes the two disagree.
        #[test]
        fn agrees_with_bincode_on_corrupted_encodings(value in everything(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let mut bytes = encode(&value);
            let i = at.index(bytes.len());
            bytes[i] = byte;
            let (a, b) = both::<Everything>(&bytes);
            prop_assert_eq!(a, b);
        }
    }

    /// Every input of up to two bytes, for the types whose first bytes carry a tag or marker.
    #[test]
    fn agrees_with_bincode_on_every_short_input() {
        fn same<T: de::DeserializeOwned + PartialEq + std::fmt::Debug>(bytes: &[u8]) {
            assert_eq!(
                ours::<T>(bytes).ok(),
                bincodes::<T>(bytes),
                "{} from {bytes:02x?}",
                std::any::type_name::<T>()
            );
        }
        let inputs = (0..=255u8)
            .map(|b| vec![b])
            .chain((0..=u16::MAX).map(|v| v.to_le_bytes().to_vec()));
        for bytes in inputs {
            same::<bool>(&bytes);
            same::<Option<bool>>(&bytes);
            same::<(bool, u8)>(&bytes);
            same::<u16>(&bytes);
            same::<i16>(&bytes);
            same::<u32>(&bytes);
            same::<char>(&bytes);
            same::<String>(&bytes);
            same::<Vec<bool>>(&bytes);
            same::<Shape>(&bytes);
            same::<Result<u8, bool>>(&bytes);
        }
    }

    proptest! {
        /// chars of three and four bytes, and strings around them.
        #[test]
        fn agrees_with_bincode_on_chars(bytes in proptest::collection::vec(any::<u8>(), 3..6)) {
            prop_assert_eq!(ours::<char>(&bytes).ok(), bincodes::<char>(&bytes));
            prop_assert_eq!(ours::<(char, char)>(&bytes).ok(), bincodes::<(char, char)>(&bytes));
        }
    }

    #[test]
    fn a_count_of_zero_width_elements_is_bounded_by_the_limit() {
        // bincode would loop 2^64 − 1 times on these 9 bytes; each element now counts 1.
        let hostile = [0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(
            from_slice::<Vec<()>>(&hostile, LIMIT).unwrap_err(),
            DecodeError::LimitExceeded { limit: LIMIT }
        );
        // 8 for the count, then 1 for each unit: 4088 of them fit, 4089 do not.
        let fits = encode(&vec![(); LIMIT - 8]);
        assert_eq!(
            from_slice::<Vec<()>>(&fits, LIMIT).unwrap().0.len(),
            LIMIT - 8
        );
        let over = encode(&vec![(); LIMIT - 7]);
        assert!(from_slice::<Vec<()>>(&over, LIMIT).is_err());
        // A map of unit keys and values, likewise.
        let hostile_map = [0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(matches!(
            from_slice::<Vec<((), ())>>(&hostile_map, LIMIT),
            Err(DecodeError::LimitExceeded { .. })
        ));
    }

    #[test]
    fn a_length_past_the_end_is_refused_before_anything_is_reserved() {
        // A string of 4000 bytes (within the limit) with 2 bytes present.
        let bytes = [0xfb, 0xa0, 0x0f, b'h', b'i'];
        assert_eq!(
            from_slice::<String>(&bytes, LIMIT).unwrap_err(),
            DecodeError::Truncated {
                at: 5,
                needed: 3998
            }
        );
        assert_eq!(
            from_slice::<bytes::Bytes>(&bytes, LIMIT).unwrap_err(),
            DecodeError::Truncated {
                at: 5,
                needed: 3998
            }
        );
    }

    #[derive(Debug, Serialize, Deserialize)]
    enum Tree {
        Leaf,
        Node(Box<Self>),
    }

    #[derive(Debug, Serialize, Deserialize)]
    struct List {
        next: Option<Box<Self>>,
    }

    #[test]
    fn deep_nesting_is_refused_without_overflowing_the_stack() {
        // 200 000 levels of `Node(...)`: one byte each. Without a bound this overflows the stack.
        let mut hostile = vec![0x01; 200_000];
        hostile.push(0x00);
        let err = from_slice::<Tree>(&hostile, usize::MAX).unwrap_err();
        assert!(matches!(err, DecodeError::TooDeep { .. }), "{err}");
        let err = from_slice::<List>(&hostile, usize::MAX).unwrap_err();
        assert!(matches!(err, DecodeError::TooDeep { .. }), "{err}");
        // Up to the bound, the same shapes decode: enum levels and option levels each count 1.
        let mut fits = vec![0x01; MAX_DEPTH - 1];
        fits.push(0x00);
        assert!(from_slice::<Tree>(&fits, usize::MAX).is_ok());
        let mut too_deep = vec![0x01; MAX_DEPTH];
        too_deep.push(0x00);
        assert!(matches!(
            from_slice::<Tree>(&too_deep, usize::MAX),
            Err(DecodeError::TooDeep { at }) if at == MAX_DEPTH
        ));
    }

    #[test]
    fn errors_say_where_and_what() {
        assert_eq!(
            from_slice::<u16>(&[0xfc, 1, 0, 0, 0], LIMIT)
                .unwrap_err()
                .to_string(),
            "byte 0: varint marker 0xfc is not valid for a 16-bit integer"
        );
        assert_eq!(
            from_slice::<(u8, bool)>(&[7, 2], LIMIT)
                .unwrap_err()
                .to_string(),
            "byte 1: 0x02 is not a bool (00 or 01)"
        );
        assert_eq!(
            from_slice::<u32>(&[0xfc, 1], LIMIT)
                .unwrap_err()
                .to_string(),
            "the payload ends at byte 2, 3 bytes short of the value"
        );
        assert_eq!(
            from_slice::<Shape>(&[9], LIMIT).unwrap_err().to_string(),
            "invalid value: integer `9`, expected variant index 0 <= i < 4"
        );
    }
}
