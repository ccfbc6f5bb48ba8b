//! plexi-store: the node's local, durable state on sled, and the pure rules
//! of where data lives. No network I/O here.
//!
//! - [`NodeStore`]: the database; node metadata (incarnation) and, through
//!   [`objects`], the object engine. A store that fails to open is moved aside
//!   (quarantined) and a fresh one is opened, to be refilled from replicas.
//! - [`sealing`]: encryption at rest of object bytes (the data keys and the
//!   stored value format). The `hints` tree holds only peer and object ids
//!   (no object bytes), so it needs no sealing.
//! - [`placement`]: partitions and replica sets (pure).
//! - Object versions are `plexi_util::hlc::Version` (the HLC lives there).

use std::path::{Path, PathBuf};

pub mod access;
pub mod objects;
pub mod placement;
pub mod sealing;

use std::sync::Arc;

const META_TREE: &str = "meta";
const HINTS_TREE: &str = "hints";
/// sled's page cache (its default is 1 GiB per node). 32 MiB, down from
/// 128: the node's whole resident bound is 160 MiB (issue 12), and sled
/// keeps recently written values in its nodes beyond what this counts
/// (heaptrack after 1 MiB puts: 150 MiB of `IVec`s held; docs/BENCHMARKS.md).
const CACHE_BYTES: u64 = 32 * 1024 * 1024;
const INCARNATION_KEY: &[u8] = b"incarnation";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store at {path}: {source}")]
    Sled {
        path: String,
        #[source]
        source: sled::Error,
    },
    #[error("store at {path}: corrupt value for {key}")]
    Corrupt { path: String, key: String },
    #[error("object {data_id}: bytes do not match their checksum or size")]
    ChecksumMismatch { data_id: String },
    #[error("flush failed: {0}")]
    Flush(String),
    /// A value file (a stored value of `objects::FILE_VALUE_BYTES` or more)
    /// could not be written, synced or read.
    #[error("value file {path}: {source}")]
    ValueFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The value is sealed under a data key this node does not hold (a key
    /// lost or not configured as retired): treated as a bad local replica.
    #[error("object {data_id}: sealed under data key {key_id}, which this node does not hold")]
    UnknownKey { data_id: String, key_id: String },
    /// Another open of the same store (another process, or one in this
    /// process still closing) holds its lock past [`LOCK_WAIT`]. Never a
    /// reason to quarantine: the store is fine, only busy.
    #[error("store at {path} is in use by another open (its lock was held for {waited_ms} ms)")]
    Locked { path: String, waited_ms: u64 },
}

impl StoreError {
    /// True when the local replica of an object cannot be served (corrupt,
    /// or sealed under a key this node lacks): read elsewhere, repair it.
    pub fn is_bad_replica(&self) -> bool {
        matches!(
            self,
            StoreError::Corrupt { .. } | StoreError::UnknownKey { .. }
        )
    }
}

/// The node's local database.
pub struct NodeStore {
    db: sled::Db,
    meta: sled::Tree,
    objects: Arc<objects::SledObjects>,
    hints: sled::Tree,
    hint_count: std::sync::atomic::AtomicU64,
    path: PathBuf,
    quarantined: Option<PathBuf>,
}

/// How long an open waits for the store's lock: sled's background threads
/// may hold it for a moment after the last handle of an earlier open in the
/// same process is dropped.
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// True when sled refused to open because another open holds the store's
/// file lock (sled reports it only as an `Other` I/O error with this text;
/// a test pins it).
fn is_lock_held(e: &StoreError) -> bool {
    matches!(e, StoreError::Sled { source: sled::Error::Io(io), .. }
        if io.to_string().contains("could not acquire lock"))
}

/// The I/O error the test-only fault file's `store_write_error_percent`
/// asks for on this write (debug builds; see [`plexi_util::faults`]), or
/// `None`. Checked before anything is written.
pub(crate) fn injected_write_error(path: &str) -> Option<StoreError> {
    use rand::Rng;
    let percent = plexi_util::faults::current().store_write_error_percent;
    if percent == 0 {
        return None;
    }
    let roll = rand::thread_rng().gen_range(0..100u8);
    plexi_util::faults::should_fail(percent, roll).then(|| StoreError::Sled {
        path: path.to_string(),
        source: sled::Error::Io(std::io::Error::other(
            "write error injected by the test-only fault file (store_write_error_percent)",
        )),
    })
}

/// Bound on stored hints; past it new hints are dropped (anti-entropy still
/// repairs those replicas, only later).
pub const MAX_HINTS: u64 = 1_000_000;

impl NodeStore {
    /// Opens the store; if it cannot be opened, moves it aside to
    /// `<path>.quarantine-<unix-ms>` and opens a fresh one (the caller then
    /// refills it from replicas). Fails only if the fresh one fails too.
    /// Object bytes are written plain (no data key).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_sealed(path, sealing::Keyring::none)
    }

    /// [`NodeStore::open`] with object bytes sealed and opened with the
    /// keyring `keys` makes (called again for the fresh store after a
    /// quarantine).
    pub fn open_sealed(
        path: &Path,
        keys: impl Fn() -> sealing::Keyring,
    ) -> Result<Self, StoreError> {
        match Self::open_waiting(path, &keys) {
            Ok(s) => Ok(s),
            Err(e @ StoreError::Locked { .. }) => Err(e),
            Err(e) if path.exists() => {
                let ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis())
                    .unwrap_or(0);
                let aside = PathBuf::from(format!("{}.quarantine-{ms}", path.display()));
                tracing::error!(error = %e, quarantine = %aside.display(), "store failed to open; quarantining it and starting empty");
                std::fs::rename(path, &aside).map_err(|io| StoreError::Sled {
                    path: path.display().to_string(),
                    source: sled::Error::Io(io),
                })?;
                let mut s = Self::open_waiting(path, &keys)?;
                s.quarantined = Some(aside);
                Ok(s)
            }
            Err(e) => Err(e),
        }
    }

    /// [`NodeStore::open_exact`], waiting up to [`LOCK_WAIT`] while another
    /// open holds the lock; then [`StoreError::Locked`].
    fn open_waiting(path: &Path, keys: &impl Fn() -> sealing::Keyring) -> Result<Self, StoreError> {
        let started = std::time::Instant::now();
        loop {
            match Self::open_exact(path, keys()) {
                Err(e) if is_lock_held(&e) => {
                    if started.elapsed() >= LOCK_WAIT {
                        return Err(StoreError::Locked {
                            path: path.display().to_string(),
                            waited_ms: started.elapsed().as_millis() as u64,
                        });
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    fn open_exact(path: &Path, keyring: sealing::Keyring) -> Result<Self, StoreError> {
        let wrap = |source| StoreError::Sled {
            path: path.display().to_string(),
            source,
        };
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(CACHE_BYTES)
            .open()
            .map_err(wrap)?;
        let meta = db.open_tree(META_TREE).map_err(wrap)?;
        let objects = Arc::new(objects::SledObjects::open(
            &db,
            &path.display().to_string(),
            keyring,
        )?);
        let hints = db.open_tree(HINTS_TREE).map_err(wrap)?;
        let hint_count = std::sync::atomic::AtomicU64::new(hints.len() as u64);
        Ok(NodeStore {
            db,
            meta,
            objects,
            hints,
            hint_count,
            path: path.to_path_buf(),
            quarantined: None,
        })
    }

    /// The object engine.
    pub fn objects(&self) -> Arc<objects::SledObjects> {
        self.objects.clone()
    }

    /// Remembers that `peer` missed the write of `data_id` (hinted handoff).
    /// Returns false when the hint table is full.
    pub fn add_hint(&self, peer: &str, data_id: &str) -> Result<bool, StoreError> {
        use std::sync::atomic::Ordering;
        if let Some(e) = injected_write_error(&self.path.display().to_string()) {
            return Err(e);
        }
        if self.hint_count.load(Ordering::Relaxed) >= MAX_HINTS {
            return Ok(false);
        }
        let prev = self
            .hints
            .insert(hint_key(peer, data_id), &[][..])
            .map_err(|e| self.err(e))?;
        if prev.is_none() {
            self.hint_count.fetch_add(1, Ordering::Relaxed);
        }
        Ok(true)
    }

    /// Up to `limit` object ids `peer` has hints for.
    pub fn hints_for(&self, peer: &str, limit: usize) -> Result<Vec<String>, StoreError> {
        let mut prefix = peer.as_bytes().to_vec();
        prefix.push(0);
        let mut out = Vec::new();
        for item in self.hints.scan_prefix(&prefix).take(limit) {
            let (k, _) = item.map_err(|e| self.err(e))?;
            out.push(String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
        }
        Ok(out)
    }

    /// Peers that have hints waiting.
    pub fn hinted_peers(&self) -> Result<Vec<String>, StoreError> {
        let mut out: Vec<String> = Vec::new();
        let mut cursor: Vec<u8> = Vec::new();
        loop {
            let next = self.hints.range(cursor.clone()..).next();
            let Some(item) = next else { break };
            let (k, _) = item.map_err(|e| self.err(e))?;
            let Some(sep) = k.iter().position(|b| *b == 0) else {
                break;
            };
            let peer = String::from_utf8_lossy(&k[..sep]).into_owned();
            cursor = k[..sep].to_vec();
            cursor.push(1); // past every key of this peer
            out.push(peer);
        }
        Ok(out)
    }

    pub fn remove_hint(&self, peer: &str, data_id: &str) -> Result<(), StoreError> {
        if self
            .hints
            .remove(hint_key(peer, data_id))
            .map_err(|e| self.err(e))?
            .is_some()
        {
            self.hint_count
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    pub fn hint_count(&self) -> u64 {
        self.hint_count.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Where a store that failed to open was moved, if this start did that.
    pub fn quarantined(&self) -> Option<&Path> {
        self.quarantined.as_deref()
    }

    fn err(&self, source: sled::Error) -> StoreError {
        StoreError::Sled {
            path: self.path.display().to_string(),
            source,
        }
    }

    /// The persisted incarnation, 0 if never set.
    pub fn incarnation(&self) -> Result<u64, StoreError> {
        match self.meta.get(INCARNATION_KEY).map_err(|e| self.err(e))? {
            None => Ok(0),
            Some(v) => {
                let bytes: [u8; 8] = v.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                    path: self.path.display().to_string(),
                    key: "incarnation".into(),
                })?;
                Ok(u64::from_be_bytes(bytes))
            }
        }
    }

    /// Persists `incarnation` durably (flushed before returning) if it is
    /// higher than the stored one; returns the stored value after the call.
    pub fn raise_incarnation(&self, incarnation: u64) -> Result<u64, StoreError> {
        let current = self.incarnation()?;
        if incarnation <= current {
            return Ok(current);
        }
        self.meta
            .insert(INCARNATION_KEY, &incarnation.to_be_bytes())
            .map_err(|e| self.err(e))?;
        self.db.flush().map_err(|e| self.err(e))?;
        Ok(incarnation)
    }

    /// Moves to the next incarnation (at every start) and returns it, durably.
    pub fn next_incarnation(&self) -> Result<u64, StoreError> {
        let next = self.incarnation()? + 1;
        self.raise_incarnation(next)
    }

    /// A write-and-flush round trip: proves the store accepts durable writes.
    pub fn probe(&self) -> Result<std::time::Duration, StoreError> {
        let started = std::time::Instant::now();
        self.meta
            .insert(
                b"probe",
                &(started.elapsed().as_nanos() as u64).to_be_bytes(),
            )
            .map_err(|e| self.err(e))?;
        self.db.flush().map_err(|e| self.err(e))?;
        Ok(started.elapsed())
    }

    /// Bytes the store occupies on disk: sled's files and the value files.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        let sled = self.db.size_on_disk().map_err(|e| self.err(e))?;
        Ok(sled + self.objects.file_bytes())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A named tree for another module's own records (update operations,
    /// leases, the audit log). Names are namespaced by the caller.
    pub fn tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        self.db.open_tree(name).map_err(|e| self.err(e))
    }

    /// Flushes every tree to disk (sled fsyncs its log).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db
            .flush()
            .map(|_| ())
            .map_err(|e| StoreError::Flush(e.to_string()))
    }
}

fn hint_key(peer: &str, data_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(peer.len() + 1 + data_id.len());
    k.extend_from_slice(peer.as_bytes());
    k.push(0);
    k.extend_from_slice(data_id.as_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_by_peer() {
        let dir = tempfile::tempdir().unwrap();
        let s = NodeStore::open(dir.path()).unwrap();
        s.add_hint("peerA", "x").unwrap();
        s.add_hint("peerA", "y").unwrap();
        s.add_hint("peerA", "y").unwrap();
        s.add_hint("peerB", "z").unwrap();
        assert_eq!(s.hint_count(), 3);
        assert_eq!(s.hinted_peers().unwrap(), vec!["peerA", "peerB"]);
        assert_eq!(s.hints_for("peerA", 10).unwrap(), vec!["x", "y"]);
        s.remove_hint("peerA", "x").unwrap();
        assert_eq!(s.hints_for("peerA", 10).unwrap(), vec!["y"]);
        assert_eq!(s.hint_count(), 2);
    }

    #[test]
    fn incarnation_grows_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = NodeStore::open(dir.path()).unwrap();
            assert_eq!(s.next_incarnation().unwrap(), 1);
            assert_eq!(s.next_incarnation().unwrap(), 2);
        }
        let s = NodeStore::open(dir.path()).unwrap();
        assert_eq!(s.incarnation().unwrap(), 2);
        assert_eq!(s.next_incarnation().unwrap(), 3);
        assert_eq!(s.raise_incarnation(10).unwrap(), 10);
        assert_eq!(s.raise_incarnation(5).unwrap(), 10);
        s.probe().unwrap();
    }

    #[test]
    fn a_store_open_elsewhere_is_reported_locked_never_quarantined() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let held = NodeStore::open(&path).unwrap();
        held.next_incarnation().unwrap();
        let e = NodeStore::open_exact(&path, sealing::Keyring::none())
            .err()
            .expect("a second open must fail while the first holds the lock");
        assert!(is_lock_held(&e), "sled's lock error changed: {e}");
        drop(held);
        // Whatever sled's threads still hold is let go within LOCK_WAIT;
        // the data is the same store's, not a fresh one.
        let s = NodeStore::open(&path).unwrap();
        assert!(s.quarantined().is_none());
        assert_eq!(s.incarnation().unwrap(), 1);
    }

    #[test]
    fn unopenable_store_is_quarantined_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        // A file where the database directory should be: sled cannot open it.
        std::fs::write(&path, b"not a database").unwrap();
        let s = NodeStore::open(&path).unwrap();
        let aside = s.quarantined().unwrap().to_path_buf();
        assert_eq!(std::fs::read(&aside).unwrap(), b"not a database");
        assert_eq!(s.next_incarnation().unwrap(), 1);
    }
}
