//! Fuzzes keel's payload reader (`rpc_core::Bincode::decode`) with arbitrary bytes, as the types a
//! `#[service]` method may take: integers of every width, strings, bytes, options, enums, maps,
//! sequences of zero-width elements, and recursive types.
//!
//! Input layout: `[limit, payload...]`: the decode limit is `64 << (limit % 12)` bytes (64 B to
//! 128 KiB).
//!
//! Checked besides "no panic":
//! - no allocation while decoding is larger than the limit, or than room for one element per byte
//!   left in a sequence (the global allocator here records the largest single allocation): a
//!   length from the bytes is never reserved beyond that;
//! - a decode never runs long on a short input: sequences of `()` are bounded by the limit;
//! - nested input never overflows the stack: recursion stops at 128 levels;
//! - whatever decodes, re-encodes with bincode and decodes again to a value with the same bytes.
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use rpc_core::{Bincode, PayloadCodec};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Records the largest single allocation since the last reset.
struct Largest;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call goes straight to `System`; only a counter is added.
unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Largest = Largest;

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Tree {
    Leaf(i32),
    Node(Box<Self>, Box<Self>),
    Tagged { name: String, child: Option<Box<Self>> },
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Record {
    id: u64,
    small: i16,
    wide: u128,
    signed: i128,
    flag: bool,
    letter: char,
    ratio: f32,
    name: String,
    blob: Bytes,
    tags: Vec<String>,
    table: BTreeMap<u32, Option<i64>>,
    units: Vec<()>,
    result: Result<u8, String>,
}

fn check<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(codec: Bincode, bytes: &[u8]) {
    LARGEST.store(0, Ordering::Relaxed);
    let decoded = codec.decode::<T>(bytes);
    // A string or byte buffer reserves at most the limit. A sequence reserves room for at most as
    // many elements as bytes are left (each takes at least one), elements of at most 64 bytes here.
    let bound = codec.limit().max(bytes.len() * 64) + 4096;
    assert!(
        LARGEST.load(Ordering::Relaxed) <= bound,
        "an allocation of {} bytes from {} bytes under a limit of {}",
        LARGEST.load(Ordering::Relaxed),
        bytes.len(),
        codec.limit()
    );
    if let Ok(value) = decoded {
        let again = Bincode::with_limit(usize::MAX).encode(&value).unwrap();
        let round_trip: T = Bincode::with_limit(usize::MAX).decode(&again).unwrap();
        // Compared as bytes, so a NaN equals itself.
        assert_eq!(Bincode::new().encode(&round_trip).unwrap(), again);
    }
}

fuzz_target!(|data: &[u8]| {
    let [limit, payload @ ..] = data else {
        return;
    };
    let codec = Bincode::with_limit(64 << (limit % 12));
    check::<Tree>(codec, payload);
    check::<Record>(codec, payload);
    check::<Vec<Tree>>(codec, payload);
    check::<(Vec<()>, Vec<Vec<()>>, Option<()>)>(codec, payload);
    check::<BTreeMap<String, Vec<u64>>>(codec, payload);
});
