//! Microbenchmark of the CBOR (ciborium) encoding and decoding of an
//! object's metadata (`plexi_store::objects::ObjectMeta`), as the store
//! writes and reads it (decoding with the store's recursion limit, 16).
//!
//! Run: `cargo bench -p plexi-store --bench meta_codec -- --sample-count 20 --min-time 0.5`

use divan::{black_box, Bencher};
use plexi_store::objects::ObjectMeta;
use plexi_util::hlc::Version;
use plexi_util::types::Consistency;

fn main() {
    divan::main();
}

fn meta() -> ObjectMeta {
    ObjectMeta {
        data_id: "photos/2024/06/img-000123.jpg".into(),
        data_type: "image/jpeg".into(),
        size_bytes: 2_345_678,
        checksum: *blake3::hash(b"the object's bytes").as_bytes(),
        version: Version {
            physical_ms: 1_718_000_000_123,
            logical: 7,
            node: 0x9e37_79b9_7f4a_7c15,
        },
        replication_factor: 3,
        consistency_level: Consistency::Strong,
        created_at_ms: 1_718_000_000_123,
        tombstone: false,
    }
}

fn encode(m: &ObjectMeta) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(m, &mut out).expect("encoding to a Vec cannot fail");
    out
}

/// ObjectMeta to CBOR bytes (a fresh Vec each time, as the store does).
#[divan::bench]
fn encode_meta(bencher: Bencher) {
    let m = meta();
    bencher.bench(|| encode(black_box(&m)));
}

/// CBOR bytes back to ObjectMeta.
#[divan::bench]
fn decode_meta(bencher: Bencher) {
    let bytes = encode(&meta());
    bencher.bench(|| {
        ciborium::de::from_reader_with_recursion_limit::<ObjectMeta, _>(black_box(&bytes[..]), 16)
            .expect("decodes")
    });
}
