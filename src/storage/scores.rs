//! A node's performance and reliability figures, from gossiped facts only:
//! each comes from the node's own record (its measured store latency, its
//! count of unplanned restarts), never from what the answering node
//! measured about it. So every node answers the same for every node, and
//! the figures survive restarts (the count is persisted by its node).

/// Reliability in 0..=1 from the node's unplanned restarts (starts after a
/// run that did not stop cleanly; planned restarts are not counted). Coarse
/// on purpose, since placement buckets it (>= 0.99, >= 0.9, >= 0.5): up to
/// two crashes keep a node at the top, so one moves no data.
pub fn reliability(unplanned_restarts: u64) -> f64 {
    (1.0 - 0.005 * unplanned_restarts as f64).max(0.0)
}

/// `reliability_score` (0-100, one decimal).
pub fn reliability_score(unplanned_restarts: u64) -> f64 {
    (reliability(unplanned_restarts) * 1000.0).round() / 10.0
}

/// `performance_score` (0-100, whole numbers) from the node's own measured
/// store write+flush latency (µs; 0 = not measured yet, scored 50): 100 at
/// 0 ms, 50 at 5 ms, 10 at 45 ms.
pub fn performance_score(store_latency_us: u64) -> f64 {
    if store_latency_us == 0 {
        return 50.0;
    }
    let ms = store_latency_us as f64 / 1000.0;
    (500.0 / (5.0 + ms)).round().min(100.0)
}

/// The store latency as the API shows it (ms, two decimals); `None` until
/// measured.
pub fn store_latency_ms(store_latency_us: u64) -> Option<f64> {
    (store_latency_us > 0).then(|| (store_latency_us as f64 / 10.0).round() / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_facts_same_scores() {
        // Pure functions of the gossiped figures: whoever computes them.
        for us in [0, 1, 800, 5_000, 45_000, 10_000_000] {
            assert_eq!(performance_score(us), performance_score(us));
        }
        assert_eq!(performance_score(0), 50.0);
        assert_eq!(performance_score(1), 100.0);
        assert_eq!(performance_score(5_000), 50.0);
        assert_eq!(performance_score(45_000), 10.0);
        assert!(performance_score(10_000_000) >= 0.0);
        assert!(performance_score(2_000) > performance_score(20_000));
        assert_eq!(store_latency_ms(0), None);
        assert_eq!(store_latency_ms(1_234), Some(1.23));
    }

    #[test]
    fn reliability_falls_only_with_unplanned_restarts() {
        // Planned restarts never reach the count (see restarts.rs), so a
        // node restarted for updates any number of times scores 100.
        assert_eq!(reliability_score(0), 100.0);
        assert_eq!(reliability(0), 1.0);
        assert_eq!(reliability_score(1), 99.5);
        let mut last = reliability(0);
        for n in 1..400 {
            let r = reliability(n);
            assert!(r <= last && r >= 0.0);
            last = r;
        }
        assert_eq!(reliability(1_000), 0.0);
        // Placement's top bucket (>= 0.99) holds through two crashes.
        assert!(reliability(2) >= 0.99 && reliability(3) < 0.99);
    }
}
