//! Schema fingerprints: a method's argument and result types reduced to 8 bytes, so a client and
//! a server built from different versions of a trait find out before a payload is decoded as
//! something it is not (docs/PROTOCOL.md §11.3).
//!
//! A type's structure is read from its `Deserialize` impl, the one every keel type has already:
//! a tracing deserializer hands the impl placeholder values and records what it asks for, one
//! pass per enum variant still unseen, until every variant of every enum it reaches (however
//! deep) has been seen. The fingerprint is FNV-1a 64 of a canonical text of that structure, in
//! which:
//! - every field's and variant's name and position, every primitive's exact width and
//!   signedness, options, sequences, maps, tuples and byte strings are spelled out;
//! - the names of the types themselves are not: renaming a struct or moving it to another module
//!   changes nothing on the wire, and changes no fingerprint;
//! - a type met again inside itself is a back-reference to its enclosing level (`rec0` is the
//!   outermost).
//!
//! A type the tracer cannot read (a `Deserialize` impl that calls `deserialize_any`, as untagged
//! enums do, which bincode cannot decode either; one that rejects every placeholder) has no
//! fingerprint: its method goes unchecked, with a warning.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};

use serde::de::value::U32Deserializer;
use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer as _, Visitor};

/// The fingerprint of a method whose arguments (as a tuple) are `A` and whose result is `R`, or
/// why it could not be computed.
pub(crate) fn fingerprint<A: DeserializeOwned, R: DeserializeOwned>() -> Result<u64, String> {
    canonical::<A, R>().map(|text| fnv1a64(text.as_bytes()))
}

/// The canonical text the fingerprint hashes: `ARGS->RESULT`.
pub(crate) fn canonical<A: DeserializeOwned, R: DeserializeOwned>() -> Result<String, String> {
    let mut tracer = Tracer::default();
    let mut args = Shape::Unknown;
    let mut result = Shape::Unknown;
    for _ in 0..MAX_PASSES {
        let seen = tracer.variants_seen;
        args = args.merge(tracer.pass::<A>()?)?;
        result = result.merge(tracer.pass::<R>()?)?;
        if tracer.complete() {
            let mut text = String::new();
            let mut writer = Writer {
                containers: &tracer.containers,
                open: Vec::new(),
                out: &mut text,
            };
            writer.shape(&args);
            writer.out.push_str("->");
            writer.shape(&result);
            return Ok(text);
        }
        if tracer.variants_seen == seen {
            return Err("enum variants that no placeholder value reaches".into());
        }
    }
    Err("too many enum variants to trace".into())
}

/// FNV-1a, 64 bits: small, stable, and written out in PROTOCOL.md so any peer can compute it.
fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(PRIME))
}

/// Bounds on tracing, which runs once per method: a type past them goes unchecked rather than
/// stall a call.
const MAX_PASSES: usize = 4096;
const MAX_DEPTH: usize = 64;

/// The structure of one value.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Shape {
    /// Not seen yet: the inside of an option or a sequence cut short to stop a recursion.
    Unknown,
    Primitive(&'static str),
    Option(Box<Self>),
    Seq(Box<Self>),
    Map(Box<Self>, Box<Self>),
    Tuple(Vec<Self>),
    /// A struct or enum, by its Rust path (never written out: see the module docs).
    Named(&'static str),
}

impl Shape {
    /// One shape from two traces of the same place: an unknown part is filled in, anything else
    /// must agree.
    fn merge(self, other: Self) -> Result<Self, String> {
        Ok(match (self, other) {
            (Self::Unknown, other) | (other, Self::Unknown) => other,
            (Self::Option(a), Self::Option(b)) => Self::Option(Box::new(a.merge(*b)?)),
            (Self::Seq(a), Self::Seq(b)) => Self::Seq(Box::new(a.merge(*b)?)),
            (Self::Map(ka, va), Self::Map(kb, vb)) => {
                Self::Map(Box::new(ka.merge(*kb)?), Box::new(va.merge(*vb)?))
            }
            (Self::Tuple(a), Self::Tuple(b)) => Self::Tuple(merge_all(a, b)?),
            (a, b) if a == b => a,
            (a, b) => return Err(format!("one place traced as {a:?} and as {b:?}")),
        })
    }
}

fn merge_all(a: Vec<Shape>, b: Vec<Shape>) -> Result<Vec<Shape>, String> {
    if a.len() != b.len() {
        return Err("a tuple traced with two lengths".into());
    }
    a.into_iter().zip(b).map(|(a, b)| a.merge(b)).collect()
}

/// What a struct or an enum variant holds.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Fields {
    Unit,
    Newtype(Shape),
    Tuple(Vec<Shape>),
    Named(Vec<(&'static str, Shape)>),
}

impl Fields {
    fn merge(self, other: Self) -> Result<Self, String> {
        Ok(match (self, other) {
            (Self::Unit, Self::Unit) => Self::Unit,
            (Self::Newtype(a), Self::Newtype(b)) => Self::Newtype(a.merge(b)?),
            (Self::Tuple(a), Self::Tuple(b)) => Self::Tuple(merge_all(a, b)?),
            (Self::Named(a), Self::Named(b)) => {
                let (names, a): (Vec<_>, Vec<_>) = a.into_iter().unzip();
                let (names_b, b): (Vec<_>, Vec<_>) = b.into_iter().unzip();
                if names != names_b {
                    return Err("a struct traced with two sets of fields".into());
                }
                Self::Named(names.into_iter().zip(merge_all(a, b)?).collect())
            }
            (a, b) => return Err(format!("fields traced as {a:?} and as {b:?}")),
        })
    }
}

#[derive(Debug)]
enum Container {
    Struct(Fields),
    Enum(Vec<Variant>),
}

#[derive(Debug)]
struct Variant {
    name: &'static str,
    fields: Option<Fields>,
    /// The named types met inside this variant: which variant to take to reach an enum not yet
    /// complete.
    reaches: BTreeSet<&'static str>,
}

/// A named type being traced, with the enum variant taken.
struct Open {
    name: &'static str,
    variant: Option<usize>,
}

#[derive(Default)]
struct Tracer {
    containers: BTreeMap<&'static str, Container>,
    open: Vec<Open>,
    variants_seen: usize,
}

impl Tracer {
    fn pass<T: DeserializeOwned>(&mut self) -> Result<Shape, String> {
        self.open.clear();
        let mut shape = Shape::Unknown;
        T::deserialize(Tracing {
            tracer: self,
            out: &mut shape,
        })
        .map_err(|e| e.0)?;
        Ok(shape)
    }

    fn complete(&self) -> bool {
        self.containers.values().all(|c| match c {
            Container::Struct(_) => true,
            Container::Enum(variants) => variants.iter().all(|v| v.fields.is_some()),
        })
    }

    /// How many times `name` is being traced already.
    fn depth_of(&self, name: &str) -> usize {
        self.open.iter().filter(|o| o.name == name).count()
    }

    /// Whether a recursion is under way: an option or sequence here is traced empty.
    fn recursing(&self) -> bool {
        self.open.iter().any(|o| self.depth_of(o.name) >= 2)
    }

    fn enter(&mut self, name: &'static str) -> Result<(), TraceError> {
        if self.open.len() >= MAX_DEPTH {
            return Err(TraceError(format!(
                "{name} nests deeper than {MAX_DEPTH} levels"
            )));
        }
        let reached: Vec<(&'static str, usize)> = self
            .open
            .iter()
            .filter_map(|o| o.variant.map(|v| (o.name, v)))
            .collect();
        for (enum_name, v) in reached {
            if let Some(Container::Enum(variants)) = self.containers.get_mut(enum_name) {
                if let Some(variant) = variants.get_mut(v) {
                    variant.reaches.insert(name);
                }
            }
        }
        self.open.push(Open {
            name,
            variant: None,
        });
        Ok(())
    }

    fn leave(&mut self) {
        self.open.pop();
    }

    /// Runs `trace` with the named type `name` open.
    fn within<T>(
        &mut self,
        name: &'static str,
        trace: impl FnOnce(&mut Self) -> Result<T, TraceError>,
    ) -> Result<T, TraceError> {
        self.enter(name)?;
        let result = trace(self);
        self.leave();
        result
    }

    /// Hands `visitor` `len` elements (of a sequence, tuple, struct or variant) and returns what
    /// it made with each element's shape.
    fn items<'de, V: Visitor<'de>>(
        &mut self,
        len: usize,
        visitor: V,
    ) -> Result<(V::Value, Vec<Shape>), TraceError> {
        let mut items = Vec::new();
        let value = visitor.visit_seq(Items {
            tracer: self,
            left: len,
            items: &mut items,
        })?;
        Ok((value, items))
    }

    fn record_struct(&mut self, name: &'static str, fields: Fields) -> Result<(), TraceError> {
        let merged = match self.containers.remove(name) {
            None => fields,
            Some(Container::Struct(known)) => known.merge(fields).map_err(TraceError)?,
            Some(Container::Enum(_)) => {
                return Err(TraceError(format!("{name} traced as a struct and an enum")));
            }
        };
        self.containers.insert(name, Container::Struct(merged));
        Ok(())
    }

    /// The variant to take this time. Never one already being traced further out (that would
    /// recurse without end). Inside itself, an enum takes a variant known not to lead back
    /// here, else one never seen; otherwise one never seen, else one that leads to an enum not
    /// yet complete, else the first.
    fn choose(&mut self, name: &'static str, names: &'static [&'static str]) -> usize {
        let in_progress: BTreeSet<usize> = self
            .open
            .iter()
            .filter(|o| o.name == name)
            .filter_map(|o| o.variant)
            .collect();
        let inside_itself = !in_progress.is_empty();
        let incomplete: BTreeSet<&str> = self
            .containers
            .iter()
            .filter(
                |(_, c)| matches!(c, Container::Enum(vs) if vs.iter().any(|v| v.fields.is_none())),
            )
            .map(|(n, _)| *n)
            .collect();
        let container = self.containers.entry(name).or_insert_with(|| {
            Container::Enum(
                names
                    .iter()
                    .map(|&name| Variant {
                        name,
                        fields: None,
                        reaches: BTreeSet::new(),
                    })
                    .collect(),
            )
        });
        let Container::Enum(variants) = container else {
            return 0;
        };
        let free = || {
            variants
                .iter()
                .enumerate()
                .filter(|(i, _)| !in_progress.contains(i))
        };
        let seen_and_ends = free()
            .find(|(_, v)| v.fields.is_some() && !v.reaches.contains(name))
            .map(|(i, _)| i);
        let unseen = free().find(|(_, v)| v.fields.is_none()).map(|(i, _)| i);
        let leads_on = free()
            .find(|(_, v)| v.reaches.iter().any(|r| incomplete.contains(r)))
            .map(|(i, _)| i);
        let first_free = free().map(|(i, _)| i).next();
        let choice = if inside_itself {
            seen_and_ends.or(unseen).or(first_free)
        } else {
            unseen.or(leads_on).or(first_free)
        };
        choice.unwrap_or(0)
    }

    fn record_variant(
        &mut self,
        name: &'static str,
        index: usize,
        fields: Fields,
    ) -> Result<(), TraceError> {
        let Some(Container::Enum(variants)) = self.containers.get_mut(name) else {
            return Err(TraceError(format!("{name} traced as an enum and a struct")));
        };
        let Some(variant) = variants.get_mut(index) else {
            return Err(TraceError(format!("{name} has no variant {index}")));
        };
        variant.fields = Some(match variant.fields.take() {
            None => {
                self.variants_seen += 1;
                fields
            }
            Some(known) => known.merge(fields).map_err(TraceError)?,
        });
        Ok(())
    }
}

#[derive(Debug)]
struct TraceError(String);

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TraceError {}

impl de::Error for TraceError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self(msg.to_string())
    }
}

/// The tracing deserializer for one value, writing its shape to `out`.
struct Tracing<'t> {
    tracer: &'t mut Tracer,
    out: &'t mut Shape,
}

macro_rules! primitive {
    ($($method:ident => $visit:ident($value:expr), $word:literal;)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
                *self.out = Shape::Primitive($word);
                visitor.$visit($value)
            }
        )*
    };
}

impl<'de> de::Deserializer<'de> for Tracing<'_> {
    type Error = TraceError;

    // Placeholders are 1, not 0, so types that refuse zero (NonZeroU64) trace too.
    primitive! {
        deserialize_bool => visit_bool(false), "bool";
        deserialize_i8 => visit_i8(1), "i8";
        deserialize_i16 => visit_i16(1), "i16";
        deserialize_i32 => visit_i32(1), "i32";
        deserialize_i64 => visit_i64(1), "i64";
        deserialize_i128 => visit_i128(1), "i128";
        deserialize_u8 => visit_u8(1), "u8";
        deserialize_u16 => visit_u16(1), "u16";
        deserialize_u32 => visit_u32(1), "u32";
        deserialize_u64 => visit_u64(1), "u64";
        deserialize_u128 => visit_u128(1), "u128";
        deserialize_f32 => visit_f32(1.0), "f32";
        deserialize_f64 => visit_f64(1.0), "f64";
        deserialize_char => visit_char('a'), "char";
        deserialize_str => visit_str(""), "str";
        deserialize_string => visit_string(String::new()), "str";
        deserialize_bytes => visit_bytes(&[]), "bytes";
        deserialize_byte_buf => visit_byte_buf(Vec::new()), "bytes";
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        *self.out = Shape::Primitive("unit");
        visitor.visit_unit()
    }

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, TraceError> {
        Err(TraceError(
            "a type that decodes by looking at the data (deserialize_any), which bincode cannot \
             decode either"
                .into(),
        ))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.deserialize_any(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.deserialize_any(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        if self.tracer.recursing() {
            *self.out = Shape::Option(Box::new(Shape::Unknown));
            return visitor.visit_none();
        }
        let mut inner = Shape::Unknown;
        let value = visitor.visit_some(Tracing {
            tracer: self.tracer,
            out: &mut inner,
        })?;
        *self.out = Shape::Option(Box::new(inner));
        Ok(value)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let name = std::any::type_name::<V::Value>();
        self.tracer.record_struct(name, Fields::Unit)?;
        *self.out = Shape::Named(name);
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let name = std::any::type_name::<V::Value>();
        let mut inner = Shape::Unknown;
        let value = self.tracer.within(name, |tracer| {
            visitor.visit_newtype_struct(Tracing {
                tracer,
                out: &mut inner,
            })
        })?;
        self.tracer.record_struct(name, Fields::Newtype(inner))?;
        *self.out = Shape::Named(name);
        Ok(value)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        let len = usize::from(!self.tracer.recursing());
        let (value, mut items) = self.tracer.items(len, visitor)?;
        *self.out = Shape::Seq(Box::new(items.pop().unwrap_or(Shape::Unknown)));
        Ok(value)
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let (value, items) = self.tracer.items(len, visitor)?;
        *self.out = Shape::Tuple(items);
        Ok(value)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let name = std::any::type_name::<V::Value>();
        let (value, items) = self.tracer.within(name, |t| t.items(len, visitor))?;
        self.tracer.record_struct(name, Fields::Tuple(items))?;
        *self.out = Shape::Named(name);
        Ok(value)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        let len = usize::from(!self.tracer.recursing());
        let mut entry = (Shape::Unknown, Shape::Unknown);
        let value = visitor.visit_map(Entries {
            tracer: self.tracer,
            left: len,
            entry: &mut entry,
        })?;
        *self.out = Shape::Map(Box::new(entry.0), Box::new(entry.1));
        Ok(value)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let name = std::any::type_name::<V::Value>();
        let (value, items) = self
            .tracer
            .within(name, |t| t.items(fields.len(), visitor))?;
        let named = fields.iter().copied().zip(items).collect();
        self.tracer.record_struct(name, Fields::Named(named))?;
        *self.out = Shape::Named(name);
        Ok(value)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let name = std::any::type_name::<V::Value>();
        if variants.is_empty() {
            return Err(TraceError(format!("{name} has no variants")));
        }
        let index = self.tracer.choose(name, variants);
        let mut fields = None;
        let value = self.tracer.within(name, |tracer| {
            if let Some(open) = tracer.open.last_mut() {
                open.variant = Some(index);
            }
            visitor.visit_enum(Choice {
                tracer,
                index,
                fields: &mut fields,
            })
        })?;
        let fields = fields.ok_or_else(|| TraceError(format!("{name}: no variant was read")))?;
        self.tracer.record_variant(name, index, fields)?;
        *self.out = Shape::Named(name);
        Ok(value)
    }

    fn is_human_readable(&self) -> bool {
        // As bincode: types that serialize differently for people (addresses, times) take
        // their compact form.
        false
    }
}

/// The elements of a sequence, tuple or struct: `left` of them, each traced into `items`.
struct Items<'t> {
    tracer: &'t mut Tracer,
    left: usize,
    items: &'t mut Vec<Shape>,
}

impl<'de> de::SeqAccess<'de> for Items<'_> {
    type Error = TraceError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, TraceError> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        let mut shape = Shape::Unknown;
        let value = seed.deserialize(Tracing {
            tracer: self.tracer,
            out: &mut shape,
        })?;
        self.items.push(shape);
        Ok(Some(value))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

/// The entries of a map: at most one, its key and value traced into `entry`.
struct Entries<'t> {
    tracer: &'t mut Tracer,
    left: usize,
    entry: &'t mut (Shape, Shape),
}

impl<'de> de::MapAccess<'de> for Entries<'_> {
    type Error = TraceError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, TraceError> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(Tracing {
            tracer: self.tracer,
            out: &mut self.entry.0,
        })
        .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, TraceError> {
        seed.deserialize(Tracing {
            tracer: self.tracer,
            out: &mut self.entry.1,
        })
    }
}

/// An enum whose variant `index` was chosen; what the variant holds goes to `fields`.
struct Choice<'t> {
    tracer: &'t mut Tracer,
    index: usize,
    fields: &'t mut Option<Fields>,
}

impl<'de, 't> de::EnumAccess<'de> for Choice<'t> {
    type Error = TraceError;
    type Variant = Self;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Self), TraceError> {
        let index =
            u32::try_from(self.index).map_err(|_| TraceError("too many variants".into()))?;
        let id: U32Deserializer<TraceError> = index.into_deserializer();
        let value = seed.deserialize(id)?;
        Ok((value, self))
    }
}

impl<'de> de::VariantAccess<'de> for Choice<'_> {
    type Error = TraceError;

    fn unit_variant(self) -> Result<(), TraceError> {
        *self.fields = Some(Fields::Unit);
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, TraceError> {
        let mut shape = Shape::Unknown;
        let value = seed.deserialize(Tracing {
            tracer: self.tracer,
            out: &mut shape,
        })?;
        *self.fields = Some(Fields::Newtype(shape));
        Ok(value)
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let (value, items) = self.tracer.items(len, visitor)?;
        *self.fields = Some(Fields::Tuple(items));
        Ok(value)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let (value, items) = self.tracer.items(fields.len(), visitor)?;
        *self.fields = Some(Fields::Named(fields.iter().copied().zip(items).collect()));
        Ok(value)
    }
}

/// Writes the canonical text.
struct Writer<'a> {
    containers: &'a BTreeMap<&'static str, Container>,
    /// The named types being written, outermost first.
    open: Vec<&'static str>,
    out: &'a mut String,
}

impl Writer<'_> {
    fn shape(&mut self, shape: &Shape) {
        match shape {
            Shape::Unknown => self.out.push('?'),
            Shape::Primitive(word) => self.out.push_str(word),
            Shape::Option(inner) => self.wrapped("option<", inner, ">"),
            Shape::Seq(inner) => self.wrapped("seq<", inner, ">"),
            Shape::Map(key, value) => {
                self.out.push_str("map<");
                self.shape(key);
                self.out.push(',');
                self.shape(value);
                self.out.push('>');
            }
            Shape::Tuple(items) => self.tuple(items),
            Shape::Named(name) => self.named(name),
        }
    }

    fn wrapped(&mut self, before: &str, inner: &Shape, after: &str) {
        self.out.push_str(before);
        self.shape(inner);
        self.out.push_str(after);
    }

    fn tuple(&mut self, items: &[Shape]) {
        self.out.push('(');
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            self.shape(item);
        }
        self.out.push(')');
    }

    fn named(&mut self, name: &'static str) {
        if let Some(level) = self.open.iter().position(|open| *open == name) {
            let _ = write!(self.out, "rec{level}");
            return;
        }
        self.open.push(name);
        match self.containers.get(name) {
            None => self.out.push('?'),
            Some(Container::Struct(fields)) => {
                self.out.push_str("struct");
                self.fields(fields);
            }
            Some(Container::Enum(variants)) => {
                self.out.push_str("enum{");
                for (i, variant) in variants.iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                    }
                    let _ = write!(self.out, "{i}:{}", variant.name);
                    match &variant.fields {
                        None => self.out.push('?'),
                        Some(fields) => self.fields(fields),
                    }
                }
                self.out.push('}');
            }
        }
        self.open.pop();
    }

    fn fields(&mut self, fields: &Fields) {
        match fields {
            Fields::Unit => {}
            Fields::Newtype(inner) => self.wrapped("(", inner, ")"),
            Fields::Tuple(items) => self.tuple(items),
            Fields::Named(named) => {
                self.out.push('{');
                for (i, (name, shape)) in named.iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                    }
                    let _ = write!(self.out, "{name}:");
                    self.shape(shape);
                }
                self.out.push('}');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Serialize};

    use super::*;

    mod v1 {
        use super::*;
        #[derive(Serialize, Deserialize)]
        pub(super) struct Entry {
            pub(super) key: String,
            pub(super) version: u64,
        }
        #[derive(Serialize, Deserialize)]
        pub(super) enum KvError {
            NotFound,
            Conflict { current: u64 },
        }
    }

    mod v2 {
        use super::*;
        #[derive(Serialize, Deserialize)]
        pub(super) struct Entry {
            pub(super) key: String,
            pub(super) version: u64,
            pub(super) ttl: Option<u32>,
        }
    }

    mod renamed {
        use super::*;
        /// `v1::Entry` under another name, in another module.
        #[derive(Serialize, Deserialize)]
        pub(super) struct Record {
            pub(super) key: String,
            pub(super) version: u64,
        }
    }

    #[derive(Serialize, Deserialize)]
    struct Swapped {
        version: u64,
        key: String,
    }

    #[derive(Serialize, Deserialize)]
    enum Tree {
        Leaf(u32),
        Node(Box<Self>, Box<Self>),
    }

    type Cas = (String, u64, u64);
    type CasResult = Result<u64, v1::KvError>;

    #[test]
    fn the_canonical_text_spells_out_widths_names_and_variants() {
        let text = canonical::<(v1::Entry, Vec<u8>), Result<u64, v1::KvError>>().unwrap();
        assert_eq!(
            text,
            "(struct{key:str,version:u64},seq<u8>)->\
             enum{0:Ok(u64),1:Err(enum{0:NotFound,1:Conflict{current:u64}})}"
        );
    }

    #[test]
    fn a_changed_integer_type_changes_the_fingerprint() {
        // The bug a user hit: cas(expected: u64) against cas(expected: i64) ran with 2 for 1.
        let unsigned = fingerprint::<Cas, CasResult>().unwrap();
        let signed = fingerprint::<(String, i64, u64), CasResult>().unwrap();
        assert_ne!(unsigned, signed);
        assert_eq!(unsigned, fingerprint::<Cas, CasResult>().unwrap());
    }

    #[test]
    fn a_field_added_removed_or_reordered_changes_it() {
        let v1 = fingerprint::<(v1::Entry,), ()>().unwrap();
        assert_ne!(v1, fingerprint::<(v2::Entry,), ()>().unwrap(), "added");
        assert_ne!(v1, fingerprint::<(Swapped,), ()>().unwrap(), "reordered");
        assert_ne!(
            fingerprint::<(), CasResult>().unwrap(),
            fingerprint::<(), Result<u64, ()>>().unwrap(),
            "a result's error type"
        );
    }

    #[test]
    fn renaming_a_type_keeps_it() {
        assert_eq!(
            fingerprint::<(v1::Entry,), ()>().unwrap(),
            fingerprint::<(renamed::Record,), ()>().unwrap()
        );
    }

    #[test]
    fn recursive_and_container_types_are_traced() {
        let text = canonical::<(Tree, BTreeMap<String, Vec<i16>>), Option<[u8; 4]>>().unwrap();
        assert_eq!(
            text,
            "(enum{0:Leaf(u32),1:Node(rec0,rec0)},map<str,seq<i16>>)->option<(u8,u8,u8,u8)>"
        );
    }

    #[derive(Serialize, Deserialize)]
    enum Deep {
        First,
        Second(Option<Inner>),
    }

    #[derive(Serialize, Deserialize)]
    struct Inner {
        levels: Vec<Level>,
    }

    #[derive(Serialize, Deserialize)]
    enum Level {
        A,
        B(u8),
        C { c: i32 },
    }

    /// Recursion in the first variant and through options and sequences.
    #[derive(Serialize, Deserialize)]
    enum List {
        Cons(u8, Box<Self>),
        Nil,
    }

    #[derive(Serialize, Deserialize)]
    struct Node {
        next: Option<Box<Self>>,
        children: Vec<Self>,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Untagged {
        Number(u64),
        Text(String),
    }

    #[test]
    fn every_variant_of_an_enum_nested_behind_another_variant_is_traced() {
        let text = canonical::<(Deep,), ()>().unwrap();
        assert_eq!(
            text,
            "(enum{0:First,1:Second(option<struct{levels:seq<enum{0:A,1:B(u8),2:C{c:i32}}>}>)})->unit"
        );
    }

    #[test]
    fn recursion_through_any_variant_option_or_sequence_ends() {
        assert_eq!(
            canonical::<(List, Node), ()>().unwrap(),
            "(enum{0:Cons(u8,rec0),1:Nil},struct{next:option<rec0>,children:seq<rec0>})->unit"
        );
    }

    #[test]
    fn values_that_refuse_zero_and_byte_strings_trace() {
        assert_eq!(
            canonical::<(std::num::NonZeroU64, bytes::Bytes), ()>().unwrap(),
            "(u64,bytes)->unit"
        );
    }

    #[test]
    fn a_type_that_bincode_cannot_decode_has_no_fingerprint() {
        let err = fingerprint::<(Untagged,), ()>().unwrap_err();
        assert!(err.contains("deserialize_any"), "{err}");
    }

    #[test]
    fn the_worked_examples_of_protocol_5_8_hold() {
        assert_eq!(canonical::<(u32, u64), i64>().unwrap(), "(u32,u64)->i64");
        assert_eq!(
            fingerprint::<(u32, u64), i64>().unwrap(),
            0x8471_4051_b16c_ca13
        );
        assert_eq!(
            canonical::<Cas, Result<u64, String>>().unwrap(),
            "(str,u64,u64)->enum{0:Ok(u64),1:Err(str)}"
        );
        assert_eq!(
            fingerprint::<Cas, Result<u64, String>>().unwrap(),
            0xe876_22e1_72fd_acdf
        );
        assert_eq!(
            fingerprint::<(String, i64, u64), Result<u64, String>>().unwrap(),
            0xf71a_e581_17d5_42eb
        );
    }

    #[test]
    fn the_hash_is_fnv1a_64() {
        // Published test vectors of FNV-1a 64.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
