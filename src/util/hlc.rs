//! Object versions: a hybrid logical clock plus the writing node, so last
//! writer wins without trusting wall clocks to be in sync. Pure: the caller
//! passes the wall clock.

use serde::{Deserialize, Serialize};

/// Totally ordered: physical time, then logical counter, then node.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Version {
    /// Milliseconds since the Unix epoch, never behind any version seen.
    pub physical_ms: u64,
    /// Orders events within one millisecond.
    pub logical: u32,
    /// Identifies the writing node (first 8 bytes of blake3 of its peer id).
    pub node: u64,
}

impl Version {
    /// A compact, sortable text form: `physical.logical.node(hex)`.
    pub fn to_text(&self) -> String {
        format!("{}.{}.{:016x}", self.physical_ms, self.logical, self.node)
    }
}

/// A hybrid logical clock for one node.
#[derive(Clone, Debug)]
pub struct Hlc {
    node: u64,
    last: Version,
}

/// How far ahead of our wall clock a remote version may be before we refuse
/// to let it drag our clock (a peer with a broken clock).
pub const MAX_DRIFT_MS: u64 = 60_000;

/// The highest physical time the clock takes from a wall clock or accepts
/// from a peer. Leaves 2^32 ms of headroom above it, so that a clock pushed
/// to the limit can still issue 2^64 increasing versions (the logical
/// counter carries into the physical part) and `now` never runs out.
const MAX_PHYSICAL_MS: u64 = u64::MAX - (1 << 32);

impl Hlc {
    pub fn new(node: u64) -> Self {
        Hlc {
            node,
            last: Version {
                node,
                ..Version::default()
            },
        }
    }

    pub fn node_of(peer_id: &str) -> u64 {
        let h = blake3::hash(peer_id.as_bytes());
        u64::from_be_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"))
    }

    /// A new version, greater than every version issued or observed. Never
    /// panics: when the logical counter of a millisecond is spent (a peer may
    /// send `logical = u32::MAX`), the clock moves to the next millisecond.
    pub fn now(&mut self, wall_ms: u64) -> Version {
        let wall_ms = wall_ms.min(MAX_PHYSICAL_MS);
        let next = if wall_ms > self.last.physical_ms {
            Version {
                physical_ms: wall_ms,
                logical: 0,
                node: self.node,
            }
        } else if let Some(logical) = self.last.logical.checked_add(1) {
            Version {
                physical_ms: self.last.physical_ms,
                logical,
                node: self.node,
            }
        } else if let Some(physical_ms) = self.last.physical_ms.checked_add(1) {
            Version {
                physical_ms,
                logical: 0,
                node: self.node,
            }
        } else {
            // The very end of the version space: unreachable, since observe
            // never moves the clock past MAX_PHYSICAL_MS and walking the
            // remaining headroom takes 2^64 calls. Repeat rather than panic.
            self.last
        };
        self.last = next;
        next
    }

    /// Moves the clock past a version seen from elsewhere; refuses versions
    /// too far in the future of `wall_ms` (and beyond the clock's range).
    pub fn observe(&mut self, seen: Version, wall_ms: u64) -> bool {
        if seen.physical_ms > wall_ms.saturating_add(MAX_DRIFT_MS).min(MAX_PHYSICAL_MS) {
            return false;
        }
        if (seen.physical_ms, seen.logical) > (self.last.physical_ms, self.last.logical) {
            self.last = Version {
                node: self.node,
                ..seen
            };
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn monotonic_even_when_the_wall_clock_goes_back() {
        let mut c = Hlc::new(1);
        let a = c.now(1000);
        let b = c.now(900);
        let d = c.now(1000);
        assert!(a < b && b < d);
        assert_eq!(b.physical_ms, 1000);
    }

    #[test]
    fn observing_a_later_version_orders_after_it() {
        let mut a = Hlc::new(1);
        let mut b = Hlc::new(2);
        let v = b.now(5000);
        assert!(a.observe(v, 1000));
        assert!(a.now(1000) > v);
        // A clock an hour ahead does not drag us.
        assert!(!a.observe(
            Version {
                physical_ms: 1000 + 3_600_000,
                logical: 0,
                node: 2
            },
            1000
        ));
    }

    #[test]
    fn ties_break_by_node() {
        let x = Version {
            physical_ms: 1,
            logical: 0,
            node: 1,
        };
        let y = Version {
            physical_ms: 1,
            logical: 0,
            node: 2,
        };
        assert!(x < y);
    }

    #[test]
    fn a_spent_logical_counter_moves_to_the_next_millisecond() {
        // A peer 30 s ahead (within MAX_DRIFT_MS) with its counter at the top.
        let seen = Version {
            physical_ms: 31_000,
            logical: u32::MAX,
            node: 2,
        };
        let mut c = Hlc::new(1);
        assert!(c.observe(seen, 1000));
        let v = c.now(1000);
        assert!(v > seen);
        assert_eq!(
            v,
            Version {
                physical_ms: 31_001,
                logical: 0,
                node: 1
            }
        );
        assert!(c.now(1000) > v);
    }

    #[test]
    fn the_top_of_the_range_neither_panics_nor_goes_back() {
        let mut c = Hlc::new(1);
        // `wall_ms + MAX_DRIFT_MS` must not overflow.
        assert!(!c.observe(
            Version {
                physical_ms: u64::MAX,
                logical: u32::MAX,
                node: u64::MAX
            },
            u64::MAX
        ));
        assert!(c.observe(
            Version {
                physical_ms: MAX_PHYSICAL_MS,
                logical: u32::MAX,
                node: u64::MAX
            },
            u64::MAX
        ));
        let mut last = c.now(u64::MAX);
        assert!(last.physical_ms == MAX_PHYSICAL_MS + 1);
        for wall in [u64::MAX, 0, u64::MAX - 1] {
            let v = c.now(wall);
            assert!(v > last);
            last = v;
        }
    }

    fn any_ms() -> impl Strategy<Value = u64> {
        prop_oneof![
            any::<u64>(),
            (0u64..10_000).prop_map(|d| u64::MAX - d),
            (0u64..10_000).prop_map(|d| MAX_PHYSICAL_MS - 5_000 + d),
            (0u64..200_000).prop_map(|d| 1_700_000_000_000 + d),
            0u64..100,
        ]
    }

    fn any_logical() -> impl Strategy<Value = u32> {
        prop_oneof![
            any::<u32>(),
            Just(u32::MAX),
            (0u32..4).prop_map(|d| u32::MAX - d),
            0u32..4,
        ]
    }

    #[derive(Clone, Debug)]
    enum Op {
        Tick { wall_ms: u64 },
        Observe { seen: Version, wall_ms: u64 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            any_ms().prop_map(|wall_ms| Op::Tick { wall_ms }),
            (any_ms(), any_logical(), any::<u64>(), any_ms()).prop_map(
                |(physical_ms, logical, node, wall_ms)| Op::Observe {
                    seen: Version {
                        physical_ms,
                        logical,
                        node
                    },
                    wall_ms
                }
            ),
            // A peer a little ahead of the wall clock: accepted, drags ours.
            (any_ms(), 0u64..=MAX_DRIFT_MS, any_logical(), any::<u64>()).prop_map(
                |(wall_ms, ahead, logical, node)| Op::Observe {
                    seen: Version {
                        physical_ms: wall_ms.saturating_add(ahead),
                        logical,
                        node
                    },
                    wall_ms
                }
            ),
        ]
    }

    proptest! {
        /// Whatever the wall clock does and whatever peers send, every
        /// version issued is above every version issued or accepted before.
        #[test]
        fn versions_only_increase(
            node in any::<u64>(),
            ops in prop::collection::vec(op(), 1..200),
        ) {
            let mut c = Hlc::new(node);
            let mut floor: Option<Version> = None;
            for op in ops {
                match op {
                    Op::Tick { wall_ms } => {
                        let v = c.now(wall_ms);
                        prop_assert_eq!(v.node, node);
                        if let Some(f) = floor {
                            prop_assert!(v > f, "{:?} after {:?}", v, f);
                        }
                        floor = Some(v);
                    }
                    Op::Observe { seen, wall_ms } => {
                        if c.observe(seen, wall_ms) {
                            prop_assert!(seen.physical_ms <= wall_ms.saturating_add(MAX_DRIFT_MS));
                            floor = Some(floor.map_or(seen, |f| f.max(seen)));
                        } else {
                            prop_assert!(seen.physical_ms > wall_ms.saturating_add(MAX_DRIFT_MS).min(MAX_PHYSICAL_MS));
                        }
                    }
                }
            }
        }
    }
}
