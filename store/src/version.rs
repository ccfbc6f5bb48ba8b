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

    /// A new version, greater than every version issued or observed.
    pub fn now(&mut self, wall_ms: u64) -> Version {
        let next = if wall_ms > self.last.physical_ms {
            Version {
                physical_ms: wall_ms,
                logical: 0,
                node: self.node,
            }
        } else {
            Version {
                physical_ms: self.last.physical_ms,
                logical: self
                    .last
                    .logical
                    .checked_add(1)
                    .expect("logical clock overflow"),
                node: self.node,
            }
        };
        debug_assert!(next > self.last);
        self.last = next;
        next
    }

    /// Moves the clock past a version seen from elsewhere; refuses versions
    /// too far in the future of `wall_ms`.
    pub fn observe(&mut self, seen: Version, wall_ms: u64) -> bool {
        if seen.physical_ms > wall_ms + MAX_DRIFT_MS {
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
}
