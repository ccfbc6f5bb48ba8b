//! Per-replica read statistics ([`AccessStats`], not replicated): counted
//! in memory and written to the `objects.access` tree in batches, so that a
//! read costs no sled write. Before this, every read rewrote its key's
//! entry: a 4 KiB get workload wrote about 30 MB/s and sled's I/O threads
//! took a fifth of the node's CPU (docs/BENCHMARKS.md).
//!
//! What a crash or kill can lose: the counts of at most
//! [`ACCESS_WRITE_INTERVAL_MS`] of reads (and the last batch not yet
//! flushed by sled). Statistics, never object data.
//!
//! Must not happen: an entry for an object this replica no longer holds
//! written back by a batch (a batch skips keys without metadata).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Per-replica read statistics (not replicated).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessStats {
    pub last_accessed_ms: u64,
    pub access_count: u64,
}

impl AccessStats {
    /// Both counts together: reads add up, the last read is the later one.
    pub fn merge(self, other: AccessStats) -> AccessStats {
        AccessStats {
            last_accessed_ms: self.last_accessed_ms.max(other.last_accessed_ms),
            access_count: self.access_count.saturating_add(other.access_count),
        }
    }
}

/// Bound on objects whose reads are counted in memory and not yet written:
/// past it the batch is written (4096 entries of about 60 bytes).
pub const MAX_PENDING_ACCESS: usize = 4096;

/// How long reads are counted in memory before the batch is written, at
/// the latest (checked at each read).
pub const ACCESS_WRITE_INTERVAL_MS: u64 = 5_000;

/// Reads counted since the last batch (key: object key).
#[derive(Default)]
struct Pending {
    /// Wall time (ms) of the first read of this batch.
    since_ms: u64,
    stats: HashMap<Vec<u8>, AccessStats>,
}

/// The access tree and the reads counted since its last write.
pub struct AccessLog {
    tree: sled::Tree,
    /// The object metadata tree: a batch writes only keys it still holds.
    meta: sled::Tree,
    pending: Mutex<Pending>,
    /// A batch write is asked for and not finished: further reads do not ask
    /// again (one write in flight at most).
    writing: AtomicBool,
}

/// Whether a batch begun at `since_ms` holding `len` entries is written now.
fn batch_due(len: usize, since_ms: u64, now_ms: u64) -> bool {
    // A wall clock that went back also ends the batch.
    len >= MAX_PENDING_ACCESS || now_ms < since_ms || now_ms - since_ms >= ACCESS_WRITE_INTERVAL_MS
}

fn decode(bytes: &[u8]) -> AccessStats {
    ciborium::de::from_reader_with_recursion_limit(bytes, 4).unwrap_or_default()
}

fn encode(s: &AccessStats) -> Vec<u8> {
    let mut out = Vec::with_capacity(24);
    ciborium::ser::into_writer(s, &mut out).expect("access stats encode into a Vec");
    out
}

impl AccessLog {
    pub fn new(tree: sled::Tree, meta: sled::Tree) -> Self {
        AccessLog {
            tree,
            meta,
            pending: Mutex::new(Pending::default()),
            writing: AtomicBool::new(false),
        }
    }

    /// Counts one read of `key` at `now_ms`; true when the batch is due
    /// (full, or [`ACCESS_WRITE_INTERVAL_MS`] old): the caller then has
    /// [`Self::write_pending`] run where blocking is fine (a read may count
    /// on an async worker; the batch write must not run there).
    pub fn record(&self, key: Vec<u8>, now_ms: u64) -> bool {
        let mut p = self.pending.lock().expect("access lock");
        if p.stats.is_empty() {
            p.since_ms = now_ms;
        }
        let s = p.stats.entry(key).or_default();
        s.access_count = s.access_count.saturating_add(1);
        s.last_accessed_ms = s.last_accessed_ms.max(now_ms);
        batch_due(p.stats.len(), p.since_ms, now_ms) && !self.writing.swap(true, Ordering::AcqRel)
    }

    /// Writes every read counted so far (when [`Self::record`] says the
    /// batch is due, and when the node stops).
    pub fn write_pending(&self) -> Result<(), sled::Error> {
        let batch = std::mem::take(&mut self.pending.lock().expect("access lock").stats);
        let res = self.write(batch);
        self.writing.store(false, Ordering::Release);
        res
    }

    fn write(&self, batch: HashMap<Vec<u8>, AccessStats>) -> Result<(), sled::Error> {
        for (key, add) in batch {
            if !self.meta.contains_key(&key)? {
                continue;
            }
            self.tree.update_and_fetch(key, |old| {
                Some(encode(&old.map(decode).unwrap_or_default().merge(add)))
            })?;
        }
        Ok(())
    }

    /// The statistics of `key`: what is written merged with what is counted.
    pub fn get(&self, key: &[u8]) -> AccessStats {
        let written = self
            .tree
            .get(key)
            .ok()
            .flatten()
            .map(|b| decode(&b))
            .unwrap_or_default();
        let pending = self
            .pending
            .lock()
            .expect("access lock")
            .stats
            .get(key)
            .copied()
            .unwrap_or_default();
        written.merge(pending)
    }

    /// Forgets `key` (its object was removed from this replica).
    pub fn remove(&self, key: &[u8]) -> Result<(), sled::Error> {
        self.pending.lock().expect("access lock").stats.remove(key);
        self.tree.remove(key).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log() -> AccessLog {
        let db = sled::Config::new().temporary(true).open().unwrap();
        AccessLog::new(
            db.open_tree("access").unwrap(),
            db.open_tree("meta").unwrap(),
        )
    }

    #[test]
    fn a_batch_is_due_when_full_old_or_the_clock_went_back() {
        assert!(!batch_due(1, 1_000, 1_000));
        assert!(!batch_due(
            MAX_PENDING_ACCESS - 1,
            1_000,
            1_000 + ACCESS_WRITE_INTERVAL_MS - 1
        ));
        assert!(batch_due(MAX_PENDING_ACCESS, 1_000, 1_000));
        assert!(batch_due(1, 1_000, 1_000 + ACCESS_WRITE_INTERVAL_MS));
        assert!(batch_due(1, 1_000, 999));
    }

    #[test]
    fn reads_are_counted_without_a_write_until_the_batch_is_due() {
        let l = log();
        l.meta.insert(b"k", &b"m"[..]).unwrap();
        for t in 0..3 {
            assert!(!l.record(b"k".to_vec(), 1_000 + t));
        }
        assert!(l.tree.is_empty(), "no sled write before the batch is due");
        let want = AccessStats {
            last_accessed_ms: 1_002,
            access_count: 3,
        };
        assert_eq!(l.get(b"k"), want);
        // The batch falls due: written, merged with what was there.
        assert!(l.record(b"k".to_vec(), 1_000 + ACCESS_WRITE_INTERVAL_MS));
        // Asked once: the next read does not ask again until it is written.
        assert!(!l.record(b"k".to_vec(), 2_000 + ACCESS_WRITE_INTERVAL_MS));
        l.write_pending().unwrap();
        assert_eq!(l.tree.len(), 1);
        let want = AccessStats {
            last_accessed_ms: 2_000 + ACCESS_WRITE_INTERVAL_MS,
            access_count: 5,
        };
        assert_eq!(l.get(b"k"), want);
        // The next batch begins with the next read and asks when it is due.
        assert!(!l.record(b"k".to_vec(), 90_000));
        assert!(l.record(b"k".to_vec(), 90_000 + ACCESS_WRITE_INTERVAL_MS));
        l.write_pending().unwrap();
        assert_eq!(l.get(b"k").access_count, 7);
        assert_eq!(decode(&l.tree.get(b"k").unwrap().unwrap()).access_count, 7);
    }

    #[test]
    fn a_full_batch_is_written_and_skips_objects_no_longer_held() {
        let l = log();
        for i in 0..MAX_PENDING_ACCESS {
            let key = format!("k{i}").into_bytes();
            if i % 2 == 0 {
                l.meta.insert(&key, &b"m"[..]).unwrap();
            }
            let due = l.record(key, 1_000);
            assert_eq!(due, i == MAX_PENDING_ACCESS - 1, "due only when full");
        }
        l.write_pending().unwrap();
        assert!(l.pending.lock().unwrap().stats.is_empty());
        assert_eq!(l.tree.len(), MAX_PENDING_ACCESS / 2);
        // A removed object's pending reads go with it.
        l.meta.insert(b"gone", &b"m"[..]).unwrap();
        l.record(b"gone".to_vec(), 2_000);
        l.remove(b"gone").unwrap();
        l.write_pending().unwrap();
        assert_eq!(l.get(b"gone"), AccessStats::default());
        assert!(!l.tree.contains_key(b"gone").unwrap());
    }
}
