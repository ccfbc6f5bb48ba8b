//! The local object engine: object bytes and metadata on sled, behind the
//! [`ObjectStore`] trait so the engine can change.
//!
//! Keys are `partition (u16 BE) ++ data_id`, so one partition is one range
//! scan. Each write runs in one sled transaction over three trees: metadata,
//! bytes, and a per-partition digest (XOR of blake3(key, version) over the
//! partition's entries, updated incrementally), so anti-entropy compares two
//! replicas' partitions by one 32-byte value. Writes are last-writer-wins by
//! [`Version`]; deletes are tombstones. Nothing is durable until
//! [`ObjectStore::flush`] returns; [`GroupCommit`] batches flushes across
//! concurrent writers. Reads re-hash the bytes and never return bytes whose
//! blake3 does not match the metadata.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;
use tokio::sync::{mpsc, oneshot};

use crate::placement::partition_of;
use crate::StoreError;
use plexi_util::hlc::Version;

use plexi_util::types::Consistency;

/// What every replica keeps about an object (or its tombstone).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMeta {
    pub data_id: String,
    pub data_type: String,
    pub size_bytes: u64,
    pub checksum: [u8; 32],
    pub version: Version,
    pub replication_factor: u8,
    pub consistency_level: Consistency,
    /// Wall-clock milliseconds at the coordinator when written.
    pub created_at_ms: u64,
    pub tombstone: bool,
}

impl ObjectMeta {
    pub fn checksum_hex(&self) -> String {
        blake3::Hash::from(self.checksum).to_hex().to_string()
    }
}

/// Whether a write changed the replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The write was newer and is now the replica's state.
    Stored,
    /// The replica already held this or a newer version.
    Stale,
}

/// Per-replica read statistics (not replicated).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessStats {
    pub last_accessed_ms: u64,
    pub access_count: u64,
}

/// A local object engine.
pub trait ObjectStore: Send + Sync + 'static {
    /// Applies a write if its version is newer than what the replica holds.
    /// `data` is the object's bytes (ignored for tombstones) and must hash to
    /// `meta.checksum`.
    fn apply(&self, meta: &ObjectMeta, data: &[u8]) -> Result<Applied, StoreError>;
    /// Metadata and verified bytes; `Corrupt` if the bytes fail their checksum.
    fn get(&self, data_id: &str) -> Result<Option<(ObjectMeta, Vec<u8>)>, StoreError>;
    fn meta(&self, data_id: &str) -> Result<Option<ObjectMeta>, StoreError>;
    /// Removes the replica if it still holds exactly `version` (cleanup of a
    /// replica this node no longer owns; a tombstone past its grace period).
    fn remove_if(&self, data_id: &str, version: Version) -> Result<bool, StoreError>;
    /// The 32-byte digest of every partition (index = partition).
    fn digests(&self) -> Result<Vec<[u8; 32]>, StoreError>;
    /// `(data_id, version)` of every entry of a partition, tombstones included.
    fn entries(&self, partition: u16) -> Result<Vec<(String, Version)>, StoreError>;
    /// Live (non-tombstone) objects and their bytes on this replica.
    fn counts(&self) -> (u64, u64);
    /// Metadata of up to `limit` entries (tombstones included), in key order.
    fn census(&self, limit: usize) -> Result<Vec<ObjectMeta>, StoreError>;
    fn record_access(&self, data_id: &str, now_ms: u64);
    fn access(&self, data_id: &str) -> AccessStats;
    /// Makes every write applied so far durable.
    fn flush(&self) -> Result<(), StoreError>;
}

pub fn object_key(data_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + data_id.len());
    k.extend_from_slice(&partition_of(data_id).to_be_bytes());
    k.extend_from_slice(data_id.as_bytes());
    k
}

fn entry_hash(data_id: &str, v: &Version) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(data_id.as_bytes());
    h.update(&v.physical_ms.to_be_bytes());
    h.update(&v.logical.to_be_bytes());
    h.update(&v.node.to_be_bytes());
    *h.finalize().as_bytes()
}

fn xor(a: &mut [u8; 32], b: &[u8; 32]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x ^= y;
    }
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(v, &mut out).expect("encoding to a Vec cannot fail");
    out
}

fn decode_meta(bytes: &[u8]) -> Option<ObjectMeta> {
    ciborium::de::from_reader_with_recursion_limit(bytes, 16).ok()
}

/// The sled engine.
pub struct SledObjects {
    db: sled::Db,
    meta: sled::Tree,
    data: sled::Tree,
    digests: sled::Tree,
    access: sled::Tree,
    live_objects: AtomicU64,
    live_bytes: AtomicU64,
    path: String,
    /// When the last flush started scanning `blobs/`.
    blobs_synced_at: std::sync::Mutex<std::time::SystemTime>,
    /// Blob files fsynced by flushes so far.
    blobs_fsynced: AtomicU64,
}

impl SledObjects {
    /// Opens the engine's trees in `db` and counts what they hold.
    pub fn open(db: &sled::Db, path: &str) -> Result<Self, StoreError> {
        let wrap = |source| StoreError::Sled {
            path: path.to_string(),
            source,
        };
        let meta = db.open_tree("objects.meta").map_err(wrap)?;
        let s = SledObjects {
            db: db.clone(),
            data: db.open_tree("objects.data").map_err(wrap)?,
            digests: db.open_tree("objects.digests").map_err(wrap)?,
            access: db.open_tree("objects.access").map_err(wrap)?,
            meta,
            live_objects: AtomicU64::new(0),
            live_bytes: AtomicU64::new(0),
            path: path.to_string(),
            blobs_synced_at: std::sync::Mutex::new(std::time::UNIX_EPOCH),
            blobs_fsynced: AtomicU64::new(0),
        };
        let (mut n, mut bytes) = (0, 0);
        for item in s.meta.iter() {
            let (_, v) = item.map_err(wrap)?;
            if let Some(m) = decode_meta(&v) {
                if !m.tombstone {
                    n += 1;
                    bytes += m.size_bytes;
                }
            }
        }
        s.live_objects.store(n, Ordering::Relaxed);
        s.live_bytes.store(bytes, Ordering::Relaxed);
        Ok(s)
    }

    /// Blob files (values sled keeps outside its log) fsynced by flushes
    /// since the engine was opened.
    pub fn blob_files_fsynced(&self) -> u64 {
        self.blobs_fsynced.load(Ordering::Relaxed)
    }

    fn err(&self, source: sled::Error) -> StoreError {
        StoreError::Sled {
            path: self.path.clone(),
            source,
        }
    }

    fn tx_err(&self, e: TransactionError<StoreError>) -> StoreError {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => self.err(e),
        }
    }
}

impl SledObjects {
    /// sled 0.34 writes values too large for its log (over about 128 KiB)
    /// to files under `blobs/` and never fsyncs them; its flush covers only
    /// the log. So a flush here also fsyncs every blob file written since the
    /// previous flush, and the directory, before a write counts as durable.
    fn sync_new_blobs(&self) -> Result<(), StoreError> {
        let dir = std::path::Path::new(&self.path).join("blobs");
        let io = |e: std::io::Error| StoreError::Flush(format!("{}: {e}", dir.display()));
        let scan_started = std::time::SystemTime::now();
        let since = *self.blobs_synced_at.lock().expect("blob sync lock");
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(e)),
        };
        let mut synced = 0usize;
        for entry in entries {
            let entry = entry.map_err(io)?;
            // sled removes superseded blobs at any time: a vanished file is
            // simply no longer ours to sync.
            let modified = match entry.metadata().and_then(|m| m.modified()) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(e)),
            };
            // One second of slack for coarse file-system timestamps.
            if modified + std::time::Duration::from_secs(1) >= since {
                match std::fs::File::open(entry.path()) {
                    Ok(f) => {
                        f.sync_all().map_err(io)?;
                        self.blobs_fsynced.fetch_add(1, Ordering::Relaxed);
                    }
                    // sled may have removed a superseded blob meanwhile.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io(e)),
                }
                synced += 1;
            }
        }
        if synced > 0 {
            std::fs::File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
        }
        *self.blobs_synced_at.lock().expect("blob sync lock") = scan_started;
        Ok(())
    }
}

impl ObjectStore for SledObjects {
    fn apply(&self, meta: &ObjectMeta, data: &[u8]) -> Result<Applied, StoreError> {
        if !meta.tombstone
            && (data.len() as u64 != meta.size_bytes
                || *blake3::hash(data).as_bytes() != meta.checksum)
        {
            return Err(StoreError::ChecksumMismatch {
                data_id: meta.data_id.clone(),
            });
        }
        let key = object_key(&meta.data_id);
        let partition = partition_of(&meta.data_id).to_be_bytes();
        let encoded = encode(meta);
        let new_hash = entry_hash(&meta.data_id, &meta.version);
        let res = (&self.meta, &self.data, &self.digests).transaction(|(m, d, g)| {
            let old = m.get(&key)?.and_then(|v| decode_meta(&v));
            if let Some(old) = &old {
                if old.version >= meta.version {
                    return Ok((Applied::Stale, None));
                }
            }
            m.insert(key.as_slice(), encoded.as_slice())?;
            if meta.tombstone {
                d.remove(key.as_slice())?;
            } else {
                d.insert(key.as_slice(), data)?;
            }
            let mut digest = [0u8; 32];
            if let Some(cur) = g.get(partition)? {
                digest.copy_from_slice(&cur);
            }
            if let Some(old) = &old {
                xor(&mut digest, &entry_hash(&old.data_id, &old.version));
            }
            xor(&mut digest, &new_hash);
            g.insert(&partition, &digest)?;
            Ok::<_, ConflictableTransactionError<StoreError>>((Applied::Stored, Some(old)))
        });
        let (applied, old) = res.map_err(|e| self.tx_err(e))?;
        if applied == Applied::Stored {
            let old = old.flatten();
            let (was_live, old_bytes) = match &old {
                Some(o) if !o.tombstone => (1, o.size_bytes),
                _ => (0, 0),
            };
            let (is_live, new_bytes) = if meta.tombstone {
                (0, 0)
            } else {
                (1, meta.size_bytes)
            };
            self.live_objects.fetch_add(is_live, Ordering::Relaxed);
            self.live_objects.fetch_sub(was_live, Ordering::Relaxed);
            self.live_bytes.fetch_add(new_bytes, Ordering::Relaxed);
            self.live_bytes.fetch_sub(old_bytes, Ordering::Relaxed);
        }
        Ok(applied)
    }

    fn get(&self, data_id: &str) -> Result<Option<(ObjectMeta, Vec<u8>)>, StoreError> {
        let key = object_key(data_id);
        // Metadata and bytes from one transaction: a concurrent write must
        // not pair new metadata with old bytes (a false "corrupt").
        let res = (&self.meta, &self.data).transaction(|(m, d)| {
            let meta = m.get(&key)?;
            let data = match &meta {
                Some(_) => d.get(&key)?,
                None => None,
            };
            Ok::<_, ConflictableTransactionError<StoreError>>((meta, data))
        });
        let (meta, data) = res.map_err(|e| self.tx_err(e))?;
        let Some(meta) = meta else { return Ok(None) };
        let meta = decode_meta(&meta).ok_or_else(|| StoreError::Corrupt {
            path: self.path.clone(),
            key: data_id.to_string(),
        })?;
        if meta.tombstone {
            return Ok(Some((meta, Vec::new())));
        }
        let data = data.map(|d| d.to_vec()).unwrap_or_default();
        if data.len() as u64 != meta.size_bytes || *blake3::hash(&data).as_bytes() != meta.checksum
        {
            tracing::error!(data_id, "stored bytes fail their checksum; not served");
            return Err(StoreError::Corrupt {
                path: self.path.clone(),
                key: data_id.to_string(),
            });
        }
        Ok(Some((meta, data)))
    }

    fn meta(&self, data_id: &str) -> Result<Option<ObjectMeta>, StoreError> {
        let v = self
            .meta
            .get(object_key(data_id))
            .map_err(|e| self.err(e))?;
        match v {
            None => Ok(None),
            Some(v) => decode_meta(&v)
                .map(Some)
                .ok_or_else(|| StoreError::Corrupt {
                    path: self.path.clone(),
                    key: data_id.to_string(),
                }),
        }
    }

    fn remove_if(&self, data_id: &str, version: Version) -> Result<bool, StoreError> {
        let key = object_key(data_id);
        let partition = partition_of(data_id).to_be_bytes();
        let res = (&self.meta, &self.data, &self.digests).transaction(|(m, d, g)| {
            let Some(old) = m.get(&key)?.and_then(|v| decode_meta(&v)) else {
                return Ok(None);
            };
            if old.version != version {
                return Ok(None);
            }
            m.remove(key.as_slice())?;
            d.remove(key.as_slice())?;
            let mut digest = [0u8; 32];
            if let Some(cur) = g.get(partition)? {
                digest.copy_from_slice(&cur);
            }
            xor(&mut digest, &entry_hash(&old.data_id, &old.version));
            g.insert(&partition, &digest)?;
            Ok::<_, ConflictableTransactionError<StoreError>>(Some(old))
        });
        let old = res.map_err(|e| self.tx_err(e))?;
        if let Some(o) = &old {
            if !o.tombstone {
                self.live_objects.fetch_sub(1, Ordering::Relaxed);
                self.live_bytes.fetch_sub(o.size_bytes, Ordering::Relaxed);
            }
            let _ = self.access.remove(object_key(data_id));
        }
        Ok(old.is_some())
    }

    fn digests(&self) -> Result<Vec<[u8; 32]>, StoreError> {
        let mut out = vec![[0u8; 32]; crate::placement::PARTITIONS as usize];
        for item in self.digests.iter() {
            let (k, v) = item.map_err(|e| self.err(e))?;
            if k.len() == 2 && v.len() == 32 {
                let p = u16::from_be_bytes([k[0], k[1]]) as usize;
                if p < out.len() {
                    out[p].copy_from_slice(&v);
                }
            }
        }
        Ok(out)
    }

    fn entries(&self, partition: u16) -> Result<Vec<(String, Version)>, StoreError> {
        let mut out = Vec::new();
        for item in self.meta.scan_prefix(partition.to_be_bytes()) {
            let (_, v) = item.map_err(|e| self.err(e))?;
            if let Some(m) = decode_meta(&v) {
                out.push((m.data_id, m.version));
            }
        }
        Ok(out)
    }

    fn census(&self, limit: usize) -> Result<Vec<ObjectMeta>, StoreError> {
        let mut out = Vec::new();
        for item in self.meta.iter().take(limit) {
            let (_, v) = item.map_err(|e| self.err(e))?;
            if let Some(m) = decode_meta(&v) {
                out.push(m);
            }
        }
        Ok(out)
    }

    fn counts(&self) -> (u64, u64) {
        (
            self.live_objects.load(Ordering::Relaxed),
            self.live_bytes.load(Ordering::Relaxed),
        )
    }

    fn record_access(&self, data_id: &str, now_ms: u64) {
        let key = object_key(data_id);
        let _ = self.access.update_and_fetch(key, |old| {
            let mut s: AccessStats = old
                .and_then(|b| ciborium::de::from_reader_with_recursion_limit(b, 4).ok())
                .unwrap_or_default();
            s.access_count += 1;
            s.last_accessed_ms = now_ms;
            Some(encode(&s))
        });
    }

    fn access(&self, data_id: &str) -> AccessStats {
        self.access
            .get(object_key(data_id))
            .ok()
            .flatten()
            .and_then(|b| ciborium::de::from_reader_with_recursion_limit(&b[..], 4).ok())
            .unwrap_or_default()
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(|e| self.err(e))?;
        self.sync_new_blobs()
    }
}

/// Batches flushes across concurrent writers: every waiter that arrives
/// while a flush runs is served by the next single flush. Queue bounded.
#[derive(Clone)]
pub struct GroupCommit {
    waiters: mpsc::Sender<oneshot::Sender<Result<(), String>>>,
    flushes: Arc<AtomicU64>,
}

/// Bound on writers waiting for the next flush.
const MAX_FLUSH_WAITERS: usize = 4096;

impl GroupCommit {
    pub fn start(store: Arc<dyn ObjectStore>) -> Self {
        let (tx, mut rx) = mpsc::channel::<oneshot::Sender<Result<(), String>>>(MAX_FLUSH_WAITERS);
        let flushes = Arc::new(AtomicU64::new(0));
        let count = flushes.clone();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                }
                let s = store.clone();
                let res = tokio::task::spawn_blocking(move || s.flush())
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()));
                if let Err(e) = &res {
                    // A flush error is fatal for this node's durability.
                    tracing::error!(error = %e, "store flush failed");
                }
                count.fetch_add(1, Ordering::Relaxed);
                for w in batch {
                    let _ = w.send(res.clone());
                }
            }
        });
        GroupCommit {
            waiters: tx,
            flushes,
        }
    }

    /// Returns once every write applied before the call is durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.waiters
            .send(tx)
            .await
            .map_err(|_| StoreError::Flush("flusher stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Flush("flusher stopped".into()))?
            .map_err(StoreError::Flush)
    }

    /// Flushes done so far (for tests and metrics).
    pub fn flush_count(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: &str, data: &[u8], physical_ms: u64) -> ObjectMeta {
        ObjectMeta {
            data_id: id.into(),
            data_type: "bin".into(),
            size_bytes: data.len() as u64,
            checksum: *blake3::hash(data).as_bytes(),
            version: Version {
                physical_ms,
                logical: 0,
                node: 1,
            },
            replication_factor: 3,
            consistency_level: Consistency::Eventual,
            created_at_ms: physical_ms,
            tombstone: false,
        }
    }

    fn open() -> (tempfile::TempDir, SledObjects) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let s = SledObjects::open(&db, &dir.path().display().to_string()).unwrap();
        (dir, s)
    }

    #[test]
    fn last_writer_wins_and_tombstones_delete() {
        let (_d, s) = open();
        assert_eq!(
            s.apply(&meta("a", b"one", 10), b"one").unwrap(),
            Applied::Stored
        );
        assert_eq!(
            s.apply(&meta("a", b"old", 5), b"old").unwrap(),
            Applied::Stale
        );
        assert_eq!(s.get("a").unwrap().unwrap().1, b"one");
        assert_eq!(s.counts(), (1, 3));
        let mut t = meta("a", b"", 20);
        t.tombstone = true;
        assert_eq!(s.apply(&t, b"").unwrap(), Applied::Stored);
        assert!(s.get("a").unwrap().unwrap().0.tombstone);
        assert_eq!(s.counts(), (0, 0));
        // A late older write does not resurrect it.
        assert_eq!(
            s.apply(&meta("a", b"one", 10), b"one").unwrap(),
            Applied::Stale
        );
    }

    #[test]
    fn checksum_mismatch_is_refused() {
        let (_d, s) = open();
        assert!(s.apply(&meta("a", b"one", 10), b"two").is_err());
        assert!(s.get("a").unwrap().is_none());
    }

    #[test]
    fn corrupt_bytes_are_never_served() {
        let (_d, s) = open();
        s.apply(&meta("a", b"good bytes", 10), b"good bytes")
            .unwrap();
        // Flip the stored bytes behind the engine's back.
        s.data.insert(object_key("a"), &b"evil bytes"[..]).unwrap();
        assert!(matches!(s.get("a"), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn digests_agree_whatever_the_order_of_writes() {
        let (_d1, a) = open();
        let (_d2, b) = open();
        let writes: Vec<ObjectMeta> = (0..50)
            .map(|i| meta(&format!("k{i}"), b"x", 100 + i))
            .collect();
        for w in &writes {
            a.apply(w, b"x").unwrap();
        }
        for w in writes.iter().rev() {
            b.apply(w, b"x").unwrap();
        }
        // An older version first, then the newer: same digest as just the newer.
        b.apply(&meta("k0", b"x", 1), b"x").unwrap();
        assert_eq!(a.digests().unwrap(), b.digests().unwrap());
        a.apply(&meta("k1", b"x", 999), b"x").unwrap();
        assert_ne!(a.digests().unwrap(), b.digests().unwrap());
        let p = partition_of("k1");
        assert_eq!(
            a.entries(p)
                .unwrap()
                .iter()
                .filter(|(id, _)| id == "k1")
                .count(),
            1
        );
        // Removing the exact version restores an empty partition's digest.
        let v = a.meta("k1").unwrap().unwrap().version;
        assert!(a.remove_if("k1", v).unwrap());
        assert!(!a.remove_if("k1", v).unwrap());
    }

    #[test]
    fn large_values_overwritten_and_flushed() {
        // Values over sled's blob threshold live in blob files that sled
        // never fsyncs and removes when superseded; a flush must fsync the
        // new ones and cope with the vanished ones.
        let (_d, s) = open();
        // Small values stay in sled's log: no blob file to fsync.
        for i in 0..20u64 {
            let data = vec![i as u8; 1024];
            s.apply(&meta(&format!("small{i}"), &data, 100 + i), &data)
                .unwrap();
        }
        s.flush().unwrap();
        assert_eq!(s.blob_files_fsynced(), 0, "small values fsync no blob");
        for i in 0..20u64 {
            let data: Vec<u8> = (0..300_000u32).map(|j| (j as u64 * 7 + i) as u8).collect();
            let m = meta("big", &data, 100 + i);
            assert_eq!(s.apply(&m, &data).unwrap(), Applied::Stored);
            let before = s.blob_files_fsynced();
            s.flush().unwrap();
            assert!(
                s.blob_files_fsynced() > before,
                "flush {i} after a 300 KB write fsynced no blob file"
            );
            assert_eq!(s.get("big").unwrap().unwrap().1, data);
        }
        assert!(std::path::Path::new(&s.path).join("blobs").exists());
    }

    /// An engine that records, for every flush, how many applies had
    /// completed when it began, and whether it has finished.
    struct Recording {
        inner: SledObjects,
        applies: AtomicU64,
        /// (applies completed when the flush began, flush finished)
        flushes: std::sync::Mutex<Vec<(u64, bool)>>,
    }

    impl Recording {
        /// Whether a flush that began after `applies` applies had completed
        /// has finished.
        fn covered(&self, applies: u64) -> bool {
            self.flushes
                .lock()
                .unwrap()
                .iter()
                .any(|&(before, done)| done && before >= applies)
        }
    }

    impl ObjectStore for Recording {
        fn apply(&self, meta: &ObjectMeta, data: &[u8]) -> Result<Applied, StoreError> {
            let r = self.inner.apply(meta, data);
            self.applies.fetch_add(1, Ordering::SeqCst);
            r
        }
        fn get(&self, data_id: &str) -> Result<Option<(ObjectMeta, Vec<u8>)>, StoreError> {
            self.inner.get(data_id)
        }
        fn meta(&self, data_id: &str) -> Result<Option<ObjectMeta>, StoreError> {
            self.inner.meta(data_id)
        }
        fn remove_if(&self, data_id: &str, version: Version) -> Result<bool, StoreError> {
            self.inner.remove_if(data_id, version)
        }
        fn digests(&self) -> Result<Vec<[u8; 32]>, StoreError> {
            self.inner.digests()
        }
        fn entries(&self, partition: u16) -> Result<Vec<(String, Version)>, StoreError> {
            self.inner.entries(partition)
        }
        fn counts(&self) -> (u64, u64) {
            self.inner.counts()
        }
        fn census(&self, limit: usize) -> Result<Vec<ObjectMeta>, StoreError> {
            self.inner.census(limit)
        }
        fn record_access(&self, data_id: &str, now_ms: u64) {
            self.inner.record_access(data_id, now_ms)
        }
        fn access(&self, data_id: &str) -> AccessStats {
            self.inner.access(data_id)
        }
        fn flush(&self) -> Result<(), StoreError> {
            let index = {
                let mut f = self.flushes.lock().unwrap();
                f.push((self.applies.load(Ordering::SeqCst), false));
                f.len() - 1
            };
            // A slow disk, so that writers pile up behind a running flush.
            std::thread::sleep(std::time::Duration::from_millis(20));
            let r = self.inner.flush();
            self.flushes.lock().unwrap()[index].1 = true;
            r
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn group_commit_batches_concurrent_flushes() {
        let (_d, inner) = open();
        let rec = Arc::new(Recording {
            inner,
            applies: AtomicU64::new(0),
            flushes: std::sync::Mutex::new(Vec::new()),
        });
        let s: Arc<dyn ObjectStore> = rec.clone();
        let gc = GroupCommit::start(s.clone());
        let mut tasks = Vec::new();
        for i in 0..64u64 {
            let (s, gc, rec) = (s.clone(), gc.clone(), rec.clone());
            tasks.push(tokio::spawn(async move {
                let id = format!("k{i}");
                s.apply(&meta(&id, b"v", 10 + i), b"v").unwrap();
                // Our write is among the first `mine` applies completed.
                let mine = rec.applies.load(Ordering::SeqCst);
                gc.flush().await.unwrap();
                if !rec.covered(mine) {
                    let log = rec.flushes.lock().unwrap().clone();
                    panic!("flush returned before a flush begun after write {i} finished: {log:?}");
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let flushes = rec.flushes.lock().unwrap().clone();
        assert!(!flushes.is_empty(), "no flush reached the store");
        assert!(flushes.iter().all(|&(_, done)| done));
        assert_eq!(gc.flush_count(), flushes.len() as u64);
        assert!(
            flushes.len() < 64,
            "flushes were batched: {}",
            flushes.len()
        );
        assert_eq!(s.counts().0, 64);
    }
}
