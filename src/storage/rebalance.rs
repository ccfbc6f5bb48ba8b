//! What "rebalance" means, as a decision without I/O.
//!
//! Anti-entropy moves an object onto an owner (a node of its current
//! placement set) that lacks its current version. That move is one of two
//! things:
//!
//! - **Repair**: the owner holds an older version (stale), or holds none
//!   while fewer than `rf` reachable members other than it hold the current
//!   version: it missed the write (it was down: catch-up), lost its copy, or
//!   took over from a member placement dropped (dead longer than
//!   `rereplication_delay_seconds`, left, above `max_node_usage_percentage`:
//!   re-replication). A stale owner would serve old data; an object short
//!   of copies is at risk. This always runs.
//! - **Rebalance**: the owner holds no copy and `rf` current copies already
//!   exist elsewhere, on the members placement ranks below it since it
//!   joined. Nothing is at risk; the move only spreads data onto the
//!   newcomer. It runs by itself only with `auto_rebalance: true`,
//!   otherwise on `POST /clustering/storage/rebalance`.
//!
//! With `auto_rebalance: false` a node that joined receives new writes it
//! owns and repairs of objects short of copies, never the share that still
//! sits, fully replicated, on the members it displaced.

/// Why an owner lacking an object's current version would receive it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transfer {
    Repair,
    Rebalance,
}

/// Which moves a pass of anti-entropy makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Moves {
    /// Repairs and rebalancing: `auto_rebalance: true`, and rebalance jobs.
    All,
    /// Repairs only: `auto_rebalance: false`.
    RepairOnly,
}

impl Moves {
    /// The moves the background loops make by themselves.
    pub fn automatic(auto_rebalance: bool) -> Moves {
        if auto_rebalance {
            Moves::All
        } else {
            Moves::RepairOnly
        }
    }

    pub fn allows(self, t: Transfer) -> bool {
        match self {
            Moves::All => true,
            Moves::RepairOnly => t == Transfer::Repair,
        }
    }
}

/// What the receiving owner holds of the object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held {
    /// No copy (not even a tombstone).
    Nothing,
    /// An older version than the one moved.
    Older,
}

/// Classifies moving an object (factor `rf`) onto `receiver`, an owner
/// that lacks its current version, given what it holds and the reachable
/// members known to hold the current version (or a newer one). The
/// receiver itself and duplicates do not count as holders.
pub fn classify(rf: usize, receiver: &str, held: Held, holders: &[&str]) -> Transfer {
    if held == Held::Older {
        return Transfer::Repair;
    }
    let mut elsewhere: Vec<&str> = holders.iter().copied().filter(|h| *h != receiver).collect();
    elsewhere.sort_unstable();
    elsewhere.dedup();
    if elsewhere.len() >= rf {
        Transfer::Rebalance
    } else {
        Transfer::Repair
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newcomer_displacing_a_full_set_of_holders_is_rebalancing() {
        // a, b, z held the object at RF 3; y joined and ranks above z.
        assert_eq!(
            classify(3, "y", Held::Nothing, &["a", "b", "z"]),
            Transfer::Rebalance
        );
        // Two joined (y, x): each still finds 3 copies elsewhere.
        assert_eq!(
            classify(3, "x", Held::Nothing, &["a", "z1", "z2"]),
            Transfer::Rebalance
        );
        assert!(!Moves::RepairOnly.allows(Transfer::Rebalance));
        assert!(Moves::All.allows(Transfer::Rebalance));
    }

    #[test]
    fn missing_copies_are_always_repaired() {
        // Re-replication: z died past the delay (unreachable, not a holder),
        // y is the owner that replaces it.
        assert_eq!(
            classify(3, "y", Held::Nothing, &["a", "b"]),
            Transfer::Repair
        );
        // Catch-up or stale repair: r missed the write (or holds an older
        // version), the other two owners hold the current one.
        assert_eq!(
            classify(3, "r", Held::Nothing, &["a", "b"]),
            Transfer::Repair
        );
        // A stale owner is repaired even when enough current copies exist
        // elsewhere: it would serve the old version.
        assert_eq!(
            classify(3, "r", Held::Older, &["a", "b", "z"]),
            Transfer::Repair
        );
        // The receiver and duplicates are not copies elsewhere.
        assert_eq!(
            classify(3, "r", Held::Nothing, &["a", "r", "a", "b"]),
            Transfer::Repair
        );
        // A lone copy at RF 1 elsewhere is a full set: moving it rebalances.
        assert_eq!(classify(1, "y", Held::Nothing, &["a"]), Transfer::Rebalance);
        assert_eq!(classify(1, "y", Held::Nothing, &[]), Transfer::Repair);
        for moves in [Moves::All, Moves::RepairOnly] {
            assert!(moves.allows(Transfer::Repair));
        }
    }

    #[test]
    fn auto_rebalance_chooses_the_moves() {
        assert_eq!(Moves::automatic(true), Moves::All);
        assert_eq!(Moves::automatic(false), Moves::RepairOnly);
    }
}
