//! The node's failure history as it records it itself: how many of its
//! starts followed a run that did not stop cleanly. A planned stop (a
//! graceful leave on SIGTERM/SIGINT, or a hand-over to the supervisor for an
//! update) leaves a clean-stop marker in the store; a start that finds none
//! after an earlier run counts an unplanned restart. The count is gossiped
//! in the node's own record, so reliability (placement's weight and the
//! API's `reliability_score`) is the same figure on every node and
//! survives restarts.
//!
//! Kept in the store's `storage.restarts` tree: `started` (this store has
//! run before), `clean_stop` (the last run stopped on purpose),
//! `unplanned_restarts` (u64, big-endian).

use plexi_store::{NodeStore, StoreError};

const TREE: &str = "storage.restarts";
const STARTED: &[u8] = b"started";
const CLEAN_STOP: &[u8] = b"clean_stop";
const UNPLANNED: &[u8] = b"unplanned_restarts";

/// What the previous run left behind, as a start finds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    /// The store has run a node before (or was quarantined at open: it
    /// was corrupt, so the last run did not end well).
    pub ran_before: bool,
    /// The last run marked a clean stop.
    pub clean_stop: bool,
    /// Unplanned restarts counted so far.
    pub unplanned_restarts: u64,
}

/// The count after this start: one more when a run came before and did
/// not stop cleanly. The first start of a store counts nothing.
pub fn count_after_start(found: Found) -> u64 {
    if found.ran_before && !found.clean_stop {
        found.unplanned_restarts.saturating_add(1)
    } else {
        found.unplanned_restarts
    }
}

#[derive(Clone)]
pub struct Restarts {
    tree: sled::Tree,
    path: String,
}

impl Restarts {
    pub fn open(store: &NodeStore) -> Result<Self, StoreError> {
        Ok(Restarts {
            tree: store.tree(TREE)?,
            path: store.path().display().to_string(),
        })
    }

    fn err(&self, source: sled::Error) -> StoreError {
        StoreError::Sled {
            path: self.path.clone(),
            source,
        }
    }

    fn count(&self) -> Result<u64, StoreError> {
        match self.tree.get(UNPLANNED).map_err(|e| self.err(e))? {
            None => Ok(0),
            Some(v) => {
                let bytes: [u8; 8] = v.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                    path: self.path.clone(),
                    key: "unplanned_restarts".into(),
                })?;
                Ok(u64::from_be_bytes(bytes))
            }
        }
    }

    /// Counts this start (see [`count_after_start`]) and consumes the
    /// clean-stop marker, so that this run must mark its own; durable
    /// before it returns the count. `quarantined`: the store was found
    /// corrupt and replaced at open.
    pub fn record_start(&self, quarantined: bool) -> Result<u64, StoreError> {
        let found = Found {
            ran_before: quarantined || self.tree.contains_key(STARTED).map_err(|e| self.err(e))?,
            clean_stop: self
                .tree
                .contains_key(CLEAN_STOP)
                .map_err(|e| self.err(e))?,
            unplanned_restarts: self.count()?,
        };
        let count = count_after_start(found);
        let mut batch = sled::Batch::default();
        batch.insert(STARTED, &[1u8][..]);
        batch.remove(CLEAN_STOP);
        batch.insert(UNPLANNED, &count.to_be_bytes()[..]);
        self.tree.apply_batch(batch).map_err(|e| self.err(e))?;
        self.tree.flush().map_err(|e| self.err(e))?;
        Ok(count)
    }

    /// Marks a planned stop, durably: the next start counts no failure.
    pub fn mark_clean_stop(&self) -> Result<(), StoreError> {
        self.tree
            .insert(CLEAN_STOP, &[1u8][..])
            .map_err(|e| self.err(e))?;
        self.tree.flush().map_err(|e| self.err(e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_starts_after_an_unclean_stop_count() {
        let f = |ran_before, clean_stop| Found {
            ran_before,
            clean_stop,
            unplanned_restarts: 4,
        };
        assert_eq!(count_after_start(f(false, false)), 4, "first start");
        assert_eq!(count_after_start(f(true, true)), 4, "after a planned stop");
        assert_eq!(count_after_start(f(true, false)), 5, "after a crash");
    }

    #[test]
    fn planned_stops_leave_the_count_and_crashes_raise_it_across_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let start = |mark_clean: bool| {
            let store = NodeStore::open(&path).unwrap();
            let r = Restarts::open(&store).unwrap();
            let n = r.record_start(false).unwrap();
            if mark_clean {
                r.mark_clean_stop().unwrap();
            }
            n
        };
        assert_eq!(start(true), 0, "first start");
        assert_eq!(start(true), 0, "after a graceful stop");
        assert_eq!(start(false), 0, "after a graceful stop; this run crashes");
        assert_eq!(start(false), 1, "after the crash; crashes again");
        assert_eq!(start(true), 2, "after the second crash");
        assert_eq!(start(true), 2, "after a planned stop");
    }

    #[test]
    fn a_quarantined_store_counts_its_start_as_unplanned() {
        let dir = tempfile::tempdir().unwrap();
        let store = NodeStore::open(&dir.path().join("store")).unwrap();
        let r = Restarts::open(&store).unwrap();
        assert_eq!(r.record_start(true).unwrap(), 1);
    }
}
