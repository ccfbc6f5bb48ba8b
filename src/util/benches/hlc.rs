//! Microbenchmark of the hybrid logical clock (`plexi_util::hlc::Hlc`):
//! a tick (`now`, a new version) with the wall clock advancing and with it
//! standing still (the logical counter moves), and an update (`observe`,
//! merging a version seen from a peer). The wall clock is injected as the
//! code does it: the caller passes `wall_ms`.
//!
//! Run: `cargo bench -p plexi-util --bench hlc -- --sample-count 20 --min-time 0.5`

use divan::{black_box, Bencher};
use plexi_util::hlc::{Hlc, Version};

const START_MS: u64 = 1_718_000_000_000;

fn main() {
    divan::main();
}

fn clock() -> Hlc {
    Hlc::new(Hlc::node_of("12D3KooWBenchNode"))
}

/// Tick with a wall clock that moves on by 1 ms each call.
#[divan::bench]
fn now_wall_advancing(bencher: Bencher) {
    let mut hlc = clock();
    let mut wall = START_MS;
    bencher.bench_local(|| {
        wall += 1;
        hlc.now(black_box(wall))
    });
}

/// Tick with a wall clock that stands still (many versions in one ms).
#[divan::bench]
fn now_wall_still(bencher: Bencher) {
    let mut hlc = clock();
    bencher.bench_local(|| hlc.now(black_box(START_MS)))
}

/// Update from a peer's version that is ahead (within the drift bound),
/// so the clock moves past it each time.
#[divan::bench]
fn observe_ahead(bencher: Bencher) {
    let mut hlc = clock();
    let mut seen = Version {
        physical_ms: START_MS + 1_000,
        logical: 0,
        node: 42,
    };
    bencher.bench_local(|| {
        seen.logical = seen.logical.wrapping_add(1);
        hlc.observe(black_box(seen), black_box(START_MS))
    });
}

/// Update from a peer's version that is behind (the clock keeps its own).
#[divan::bench]
fn observe_behind(bencher: Bencher) {
    let mut hlc = clock();
    hlc.now(START_MS);
    let seen = Version {
        physical_ms: START_MS - 5_000,
        logical: 3,
        node: 42,
    };
    bencher.bench_local(|| hlc.observe(black_box(seen), black_box(START_MS)));
}

/// What a replica does per write it receives: observe the writer's
/// version, then tick for its own next version (the writer's versions are
/// made outside the timing).
#[divan::bench]
fn observe_then_now(bencher: Bencher) {
    let mut hlc = clock();
    let mut writer = Hlc::new(42);
    let mut wall = START_MS;
    bencher
        .with_inputs(|| {
            wall += 1;
            (writer.now(wall), wall)
        })
        .bench_local_values(|(v, wall)| {
            hlc.observe(v, wall);
            hlc.now(black_box(wall))
        });
}
