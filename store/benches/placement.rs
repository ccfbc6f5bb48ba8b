//! Microbenchmark of placement (`plexi_store::placement`): the owners of a
//! key (its partition, then the top-RF rendezvous ranking spread over zones)
//! among 3, 10 and 100 nodes, at replication factor 3.
//!
//! Run: `cargo bench -p plexi-store --bench placement -- --sample-count 20 --min-time 0.5`

use divan::{black_box, Bencher};
use plexi_store::placement::{partition_of, rank, replicas, Candidate};
use plexi_util::types::StorageStrategy;

const NODES: &[usize] = &[3, 10, 100];
const RF: usize = 3;
const KEY: &str = "photos/2024/06/img-000123.jpg";

fn main() {
    divan::main();
}

/// A cluster of `n` nodes in 3 regions and 6 zones, with varied figures.
fn cluster(n: usize) -> Vec<Candidate> {
    (0..n)
        .map(|i| Candidate {
            id: format!("12D3KooWPeer{i:040}"),
            region: format!("region-{}", i % 3),
            zone: format!("zone-{}", i % 6),
            capacity_bytes: (50 + (i as u64 % 7) * 25) * 1_000_000_000,
            latency_ms: Some(1.0 + (i % 40) as f64 * 3.0),
            reliability: 1.0 - (i % 5) as f64 * 0.05,
        })
        .collect()
}

/// The partition of a key (one blake3 of the id).
#[divan::bench]
fn partition_of_key() -> u16 {
    partition_of(black_box(KEY))
}

/// The owners of a key: `partition_of` then `replicas` (load_balanced).
#[divan::bench(args = NODES)]
fn owners_load_balanced(bencher: Bencher, n: usize) {
    let nodes = cluster(n);
    bencher.bench(|| {
        let p = partition_of(black_box(KEY));
        replicas(p, black_box(&nodes), StorageStrategy::LoadBalanced, RF)
    });
}

/// The owners of a key under `geographic` (regions first, then zones).
#[divan::bench(args = NODES)]
fn owners_geographic(bencher: Bencher, n: usize) {
    let nodes = cluster(n);
    bencher.bench(|| {
        let p = partition_of(black_box(KEY));
        replicas(p, black_box(&nodes), StorageStrategy::Geographic, RF)
    });
}

/// The full ranking of one partition (what `replicas` builds on).
#[divan::bench(args = NODES)]
fn rank_partition(bencher: Bencher, n: usize) {
    let nodes = cluster(n);
    bencher.bench(|| {
        rank(
            black_box(517),
            black_box(&nodes),
            StorageStrategy::LoadBalanced,
        )
    });
}
