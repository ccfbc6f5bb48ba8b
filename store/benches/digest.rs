//! Microbenchmark of the partition digest update: the hash an entry adds
//! to its partition's digests (`plexi_store::objects::entry_hash`), the
//! XOR that folds it in (`plexi_store::objects::xor`), and both together
//! (one digest update).
//!
//! Run: `cargo bench -p plexi-store --bench digest -- --sample-count 20 --min-time 0.5`

use divan::black_box;
use plexi_store::objects::{entry_hash, xor};
use plexi_util::hlc::Version;

const KEY: &str = "photos/2024/06/img-000123.jpg";
const VERSION: Version = Version {
    physical_ms: 1_718_000_000_123,
    logical: 7,
    node: 0x9e37_79b9_7f4a_7c15,
};

fn main() {
    divan::main();
}

/// blake3 of (data id, version).
#[divan::bench]
fn entry_hash_of_entry() -> [u8; 32] {
    entry_hash(black_box(KEY), black_box(&VERSION))
}

/// XOR of one 32-byte hash into a digest.
#[divan::bench]
fn xor_32_bytes() -> [u8; 32] {
    let mut digest = black_box([0x5au8; 32]);
    xor(&mut digest, black_box(&[0xa7u8; 32]));
    digest
}

/// One digest update: hash the entry, XOR it into the digest.
#[divan::bench]
fn digest_update() -> [u8; 32] {
    let mut digest = black_box([0x5au8; 32]);
    let h = entry_hash(black_box(KEY), black_box(&VERSION));
    xor(&mut digest, &h);
    digest
}
