//! Decode speed of keel's payload reader (`rpc_core::Bincode`) against bincode 2.0.1's own serde
//! decoder, on the same bytes, in the same process.
//!
//! keel encodes with bincode and decodes with its own reader of the same layout (for a limit set
//! at run time, lengths checked before anything is reserved, bounded zero-width sequences and
//! nesting). This measures what that costs on values a service sends:
//!
//! - `cas args`: `(String of 16 bytes, u64, u64)`, the arguments of a compare-and-swap;
//! - `order`: a struct with strings, an option, an enum and 20 line items of three integers;
//! - `1000 u64`: a `Vec<u64>` of mixed magnitudes (one to nine varint bytes);
//! - `64 KiB bytes`: one `Bytes` value, a length and one block copy.
//!
//! Both sides decode under a 16 MiB limit. Each workload runs in rounds that alternate the two
//! decoders (bincode first in even rounds, keel first in odd ones); a round times a fixed batch
//! of decodes. The table gives each side's median ns per decode and the median of the per-round
//! ratios keel / bincode with their range.
//!
//! `cargo bench --bench payload` runs 15 rounds per workload (a few seconds); any run without
//! `--bench` (as `cargo test --benches` makes) is a smoke run of 1 short round.

use std::hint::black_box;
use std::time::Instant;

use bytes::Bytes;
use keel::{Bincode, PayloadCodec};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Status {
    Open,
    Paid { at: u64 },
    Cancelled(String),
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Item {
    sku: u32,
    quantity: u16,
    price_cents: i64,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u64,
    customer: String,
    items: Vec<Item>,
    note: Option<String>,
    status: Status,
}

fn order() -> Order {
    Order {
        id: 1_234_567_890,
        customer: "customer-0042@example.test".into(),
        items: (0..20)
            .map(|i| Item {
                sku: 100_000 + i * 37,
                quantity: (i % 5) as u16 + 1,
                price_cents: i64::from(i) * 1999 - 5000,
            })
            .collect(),
        note: Some("leave at the door".into()),
        status: Status::Paid { at: 1_700_000_000 },
    }
}

const LIMIT: usize = 16 * 1024 * 1024;

fn bincode_decode<T: DeserializeOwned>(bytes: &[u8]) -> T {
    let config = bincode::config::standard().with_limit::<LIMIT>();
    let (value, read) = bincode::serde::decode_from_slice(bytes, config).unwrap();
    assert_eq!(read, bytes.len());
    value
}

fn keel_decode<T: DeserializeOwned>(bytes: &[u8]) -> T {
    Bincode::with_limit(LIMIT).decode(bytes).unwrap()
}

/// ns per decode over `batch` decodes.
fn time<T: DeserializeOwned>(decode: fn(&[u8]) -> T, bytes: &[u8], batch: u32) -> f64 {
    let start = Instant::now();
    for _ in 0..batch {
        black_box(decode(black_box(bytes)));
    }
    start.elapsed().as_nanos() as f64 / f64::from(batch)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn workload<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(
    name: &str,
    value: &T,
    batch: u32,
    rounds: usize,
) {
    let bytes = Bincode::new().encode(value).unwrap();
    // Both decoders read the value back exactly before anything is timed.
    assert_eq!(&keel_decode::<T>(&bytes), value);
    assert_eq!(&bincode_decode::<T>(&bytes), value);
    let (mut ours, mut theirs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let (k, b) = if round % 2 == 0 {
            let b = time(bincode_decode::<T>, &bytes, batch);
            (time(keel_decode::<T>, &bytes, batch), b)
        } else {
            let k = time(keel_decode::<T>, &bytes, batch);
            (k, time(bincode_decode::<T>, &bytes, batch))
        };
        ours.push(k);
        theirs.push(b);
        ratios.push(k / b);
    }
    let (low, high) = ratios
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), &r| (lo.min(r), hi.max(r)));
    println!(
        "| {name} | {} | {:.0} | {:.0} | {:.2} ({low:.2}–{high:.2}) |",
        bytes.len(),
        median(&mut theirs),
        median(&mut ours),
        median(&mut ratios),
    );
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (rounds, scale) = if full { (15, 1) } else { (1, 100) };
    println!(
        "payload decode, {} run: keel's reader against bincode 2.0.1",
        if full { "full" } else { "smoke" }
    );
    println!(
        "| workload | payload bytes | bincode ns | keel ns | keel / bincode, median (range) |"
    );
    println!("|---|---|---|---|---|");
    let cas = ("user:1234:balance".to_owned(), 41u64, 42u64);
    workload("cas args", &cas, 200_000 / scale, rounds);
    workload("order", &order(), 50_000 / scale, rounds);
    let ints: Vec<u64> = (0..1000u64)
        .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (i % 64))
        .collect();
    workload("1000 u64", &ints, 10_000 / scale, rounds);
    let blob = Bytes::from(vec![0x5a; 64 * 1024]);
    workload("64 KiB bytes", &blob, 20_000 / scale, rounds);
}
