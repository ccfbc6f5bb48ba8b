//! Opened large values kept for a short while, so that a reader fetching an
//! object in `Read` slices (`wire::READ_CHUNK_BYTES` each) makes its
//! replica read, open and check the stored value once rather than once per
//! slice: a value is sealed in one piece, so every slice used to cost the
//! whole object (a 28 MB release: 7 full reads and opens per fetch).
//!
//! Bounded by bytes ([`MAX_OPEN_VALUE_BYTES`]) and by idleness
//! ([`OPEN_VALUE_IDLE`]); only values larger than one slice are kept.
//! Pure: the caller brings the clock.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use plexi_store::objects::ObjectMeta;

/// Bytes of opened values held at once. A value that would not fit is not
/// kept (its reader pays a full open per slice, as without this cache).
pub const MAX_OPEN_VALUE_BYTES: usize = 64 * 1024 * 1024;
/// An opened value nobody has read for this long is dropped (a reader asks
/// for its next slice right after the last).
pub const OPEN_VALUE_IDLE: Duration = Duration::from_secs(2);

struct Entry {
    meta: ObjectMeta,
    data: Arc<Vec<u8>>,
    used: Instant,
}

/// The cache (one per storage service).
#[derive(Default)]
pub struct OpenValues {
    entries: Mutex<VecDeque<Entry>>,
}

impl OpenValues {
    /// The opened value of `data_id` if it is kept and still of `version`
    /// (the replica's current one: a newer write makes the old copy
    /// useless). Drops what has been idle too long first.
    pub fn get(
        &self,
        data_id: &str,
        version: plexi_util::hlc::Version,
        now: Instant,
    ) -> Option<(ObjectMeta, Arc<Vec<u8>>)> {
        let mut q = self.entries.lock().expect("open values lock");
        expire(&mut q, now);
        let e = q.iter_mut().find(|e| e.meta.data_id == data_id)?;
        if e.meta.version != version {
            q.retain(|e| e.meta.data_id != data_id);
            return None;
        }
        e.used = now;
        Some((e.meta.clone(), e.data.clone()))
    }

    /// Keeps an opened value, replacing an older copy of the same object,
    /// when it fits beside the others (after the idle ones are dropped).
    pub fn insert(&self, meta: ObjectMeta, data: Arc<Vec<u8>>, now: Instant) {
        if data.len() > MAX_OPEN_VALUE_BYTES {
            return;
        }
        let mut q = self.entries.lock().expect("open values lock");
        expire(&mut q, now);
        q.retain(|e| e.meta.data_id != meta.data_id);
        let mut held: usize = q.iter().map(|e| e.data.len()).sum();
        // The least recently used go first to make room.
        while held + data.len() > MAX_OPEN_VALUE_BYTES {
            let Some(i) = (0..q.len()).min_by_key(|&i| q[i].used) else {
                break;
            };
            held -= q[i].data.len();
            q.remove(i);
        }
        q.push_back(Entry {
            meta,
            data,
            used: now,
        });
        debug_assert!(q.iter().map(|e| e.data.len()).sum::<usize>() <= MAX_OPEN_VALUE_BYTES);
    }

    /// Drops what has been idle too long (a periodic sweep, so that an idle
    /// node holds nothing).
    pub fn expire(&self, now: Instant) {
        expire(&mut self.entries.lock().expect("open values lock"), now);
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        let q = self.entries.lock().expect("open values lock");
        q.iter().map(|e| e.data.len()).sum()
    }
}

fn expire(q: &mut VecDeque<Entry>, now: Instant) {
    q.retain(|e| now.saturating_duration_since(e.used) < OPEN_VALUE_IDLE);
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexi_util::hlc::Version;

    fn meta(id: &str, ms: u64, size: usize) -> ObjectMeta {
        ObjectMeta {
            data_id: id.to_string(),
            version: Version {
                physical_ms: ms,
                logical: 0,
                node: 1,
            },
            size_bytes: size as u64,
            data_type: "application/octet-stream".into(),
            checksum: [0; 32],
            replication_factor: 3,
            consistency_level: plexi_util::types::Consistency::Eventual,
            created_at_ms: ms,
            tombstone: false,
        }
    }

    #[test]
    fn a_kept_value_is_served_until_idle_or_superseded() {
        let c = OpenValues::default();
        let t0 = Instant::now();
        let m = meta("a", 1, 10);
        c.insert(m.clone(), Arc::new(vec![7; 10]), t0);
        let (got, data) = c.get("a", m.version, t0 + Duration::from_secs(1)).unwrap();
        assert_eq!((got.version, data.len()), (m.version, 10));
        // Used at 1 s: still there at 2.5 s, gone 2 s after its last use.
        assert!(c
            .get("a", m.version, t0 + Duration::from_millis(2500))
            .is_some());
        assert!(c
            .get("a", m.version, t0 + Duration::from_millis(4600))
            .is_none());
        // A newer version on the replica: the old copy is not served, and dropped.
        c.insert(m.clone(), Arc::new(vec![7; 10]), t0);
        assert!(c.get("a", meta("a", 2, 10).version, t0).is_none());
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn the_bytes_held_stay_under_the_bound() {
        let c = OpenValues::default();
        let t0 = Instant::now();
        let third = MAX_OPEN_VALUE_BYTES / 3 + 1;
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            let at = t0 + Duration::from_millis(i as u64);
            c.insert(meta(id, 1, third), Arc::new(vec![0; third]), at);
            assert!(c.bytes() <= MAX_OPEN_VALUE_BYTES);
        }
        // "a" (least recently used) made room for "c".
        assert!(c.get("a", meta("a", 1, 0).version, t0).is_none());
        assert!(c.get("c", meta("c", 1, 0).version, t0).is_some());
        // Too large to keep at all.
        let big = MAX_OPEN_VALUE_BYTES + 1;
        c.insert(meta("d", 1, big), Arc::new(vec![0; big]), t0);
        assert!(c.get("d", meta("d", 1, 0).version, t0).is_none());
        c.expire(t0 + OPEN_VALUE_IDLE + Duration::from_secs(1));
        assert_eq!(c.bytes(), 0);
    }
}
