//! The local object engine: object bytes and metadata on sled, behind the
//! [`ObjectStore`] trait so the engine can change.
//!
//! Keys are `partition (u16 BE) ++ data_id`, so one partition is one range
//! scan. Each write runs in one sled transaction over four trees: metadata,
//! bytes, a digest per partition (for peers of an older version), and a
//! digest per partition and replication factor (XOR of
//! blake3(key, version) over the entries of that partition written at that
//! factor, updated incrementally), so anti-entropy compares two replicas'
//! partitions by one 32-byte value per factor, and only where both own the
//! objects of that factor (two nodes' partitions differ for good where one
//! of them owns only the objects written at a larger factor). Writes are last-writer-wins by
//! [`Version`]; deletes are tombstones. Nothing is durable until
//! [`ObjectStore::flush`] returns; [`GroupCommit`] batches flushes across
//! concurrent writers. Reads re-hash the bytes and never return bytes whose
//! blake3 does not match the metadata.
//!
//! With a data key the bytes are sealed before they reach sled and opened
//! after (see [`crate::sealing`]): nothing of an object's bytes is on disk in
//! the clear, and [`SledObjects::reseal`] rewrites one value under the
//! current key (the re-encryption job).
//!
//! In debug builds the test-only fault file reaches every write here
//! ([`plexi_util::faults`]): `store_write_error_percent` fails a write with an
//! I/O error before anything is written, and `store_torn_write` stores the
//! next object's payload cut to half under its full metadata and checksum,
//! flushes it and aborts the process, as a power cut mid-write would leave
//! it; the read path's blake3 check then refuses those bytes.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;
use tokio::sync::{mpsc, oneshot};

use crate::placement::partition_of;
use crate::sealing::{self, Keyring, OpenError, ValueKind};
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

use crate::access::AccessLog;
pub use crate::access::AccessStats;

/// What a read found: the object and its value, or nothing.
pub type Found = Option<(ObjectMeta, Vec<u8>)>;

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
    /// The 32-byte digest of every partition (index = partition): the XOR
    /// of its [`Self::factor_digests`] (kept in its own tree).
    fn digests(&self) -> Result<Vec<[u8; 32]>, StoreError>;
    /// The digest of each (partition, replication factor) that holds an
    /// entry, in partition order.
    fn factor_digests(&self) -> Result<Vec<FactorDigest>, StoreError>;
    /// `(data_id, version)` of every entry of a partition, tombstones included.
    fn entries(&self, partition: u16) -> Result<Vec<(String, Version)>, StoreError>;
    /// Live (non-tombstone) objects and their bytes on this replica.
    fn counts(&self) -> (u64, u64);
    /// Metadata of up to `limit` entries (tombstones included), in key order.
    fn census(&self, limit: usize) -> Result<Vec<ObjectMeta>, StoreError>;
    /// Counts a read; true when the counted reads are due to be written
    /// ([`SledObjects::write_access`], off the async workers).
    fn record_access(&self, data_id: &str, now_ms: u64) -> bool;
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

/// The hash an entry contributes to its partition's digests (public for
/// the digest microbenchmark).
pub fn entry_hash(data_id: &str, v: &Version) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(data_id.as_bytes());
    h.update(&v.physical_ms.to_be_bytes());
    h.update(&v.logical.to_be_bytes());
    h.update(&v.node.to_be_bytes());
    *h.finalize().as_bytes()
}

/// The digest of the entries of one partition written at one replication
/// factor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FactorDigest {
    pub partition: u16,
    pub rf: u8,
    pub digest: [u8; 32],
}

/// The key of a (partition, factor) digest.
fn factor_key(partition: u16, rf: u8) -> [u8; 3] {
    let [a, b] = partition.to_be_bytes();
    [a, b, rf]
}

/// XORs `hash` into the digest under `key` inside a transaction (an
/// absent digest is all zeros; one that comes back to zeros is removed).
fn xor_into(
    g: &sled::transaction::TransactionalTree,
    key: &[u8],
    hash: &[u8; 32],
) -> Result<(), sled::transaction::UnabortableTransactionError> {
    let mut digest = [0u8; 32];
    if let Some(cur) = g.get(key)? {
        if cur.len() == 32 {
            digest.copy_from_slice(&cur);
        }
    }
    xor(&mut digest, hash);
    if digest == [0u8; 32] {
        g.remove(key)?;
    } else {
        g.insert(key, digest.as_slice())?;
    }
    Ok(())
}

/// Adds an entry's `hash` to (or takes it from: XOR) both digests of its
/// partition: the whole partition's in `whole`, its factor's in `factors`.
fn xor_entry(
    whole: &sled::transaction::TransactionalTree,
    factors: &sled::transaction::TransactionalTree,
    partition: u16,
    rf: u8,
    hash: &[u8; 32],
) -> Result<(), sled::transaction::UnabortableTransactionError> {
    xor_into(whole, &partition.to_be_bytes(), hash)?;
    xor_into(factors, &factor_key(partition, rf), hash)
}

/// Marks the factor-digest tree as built from the metadata (a data dir of
/// an earlier version has none).
const FACTOR_DIGESTS_BUILT: &[u8] = b"built";

/// XORs `b` into `a` (a digest update; public for the microbenchmark).
pub fn xor(a: &mut [u8; 32], b: &[u8; 32]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x ^= y;
    }
}

/// Stored values of this many bytes or more are kept in a value file of
/// their own under `values/`, and sled keeps only a [`FileRef`] in
/// `objects.files`: sled 0.34 keeps every value written in its in-memory
/// nodes beyond its cache bound (heaptrack, docs/BENCHMARKS.md), and keeps
/// large ones in blob files it never fsyncs.
pub const FILE_VALUE_BYTES: usize = 64 * 1024;
/// Bound on superseded value files waiting for the next flush to be
/// removed; past it they are left for the next open's sweep (counted).
pub const MAX_PENDING_REMOVALS: usize = 4096;
/// Reads of an entry whose value file a concurrent overwrite removed, in
/// all, before the replica counts as bad.
const READ_ATTEMPTS: usize = 3;
pub use plexi_util::at_rest::VALUES_DIR;

/// Names a value file: the stored value's length and its name under
/// `values/`: `hh/` ++ 32 hex digits of blake3(data id) (`hh` their first
/// two) ++ `-` ++ 16 random hex digits (every write gets a new file).
#[derive(Clone, Debug, PartialEq, Eq)]
struct FileRef {
    len: u64,
    name: String,
}

impl FileRef {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.name.len());
        out.extend_from_slice(&self.len.to_be_bytes());
        out.extend_from_slice(self.name.as_bytes());
        out
    }

    /// `None` for anything but a length and a well-formed name: no entry
    /// can point outside `values/`.
    fn decode(b: &[u8]) -> Option<FileRef> {
        let (len, name) = b.split_at_checked(8)?;
        let name = std::str::from_utf8(name).ok()?;
        let n = name.as_bytes();
        let hex = |r: std::ops::Range<usize>| {
            n[r].iter()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
        };
        let well_formed = n.len() == 52
            && n[2] == b'/'
            && n[35] == b'-'
            && n[..2] == n[3..5]
            && hex(0..2)
            && hex(3..35)
            && hex(36..52);
        well_formed.then(|| FileRef {
            len: u64::from_be_bytes(len.try_into().expect("8 bytes")),
            name: name.to_string(),
        })
    }
}

/// Where a write's stored value goes.
enum Placed {
    /// In `objects.data`.
    Inline(Vec<u8>),
    /// In a value file (already durable), named by `encoded` in `objects.files`.
    File { file: FileRef, encoded: Vec<u8> },
    /// Nowhere: a tombstone, or a removal.
    Nothing,
}

/// Stores `placed` under `key` in a write's transaction; returns the value
/// file it replaces, if any.
fn put_value(
    d: &sled::transaction::TransactionalTree,
    f: &sled::transaction::TransactionalTree,
    key: &[u8],
    placed: &Placed,
) -> Result<Option<FileRef>, sled::transaction::UnabortableTransactionError> {
    let replaced = f.get(key)?.and_then(|v| FileRef::decode(&v));
    match placed {
        Placed::Inline(v) => {
            d.insert(key, v.as_slice())?;
        }
        Placed::File { encoded, .. } => {
            d.remove(key)?;
            f.insert(key, encoded.as_slice())?;
        }
        Placed::Nothing => {
            d.remove(key)?;
        }
    }
    if replaced.is_some() && !matches!(placed, Placed::File { .. }) {
        f.remove(key)?;
    }
    Ok(replaced)
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
    /// Whole-partition digests (key: partition BE), what `Digests`
    /// answers; kept for peers of a version before per-factor digests and
    /// for a rollback to one.
    digests: sled::Tree,
    /// Per-factor digests (key: partition BE ++ rf).
    factor_digests: sled::Tree,
    /// Read statistics, counted in memory and written in batches.
    access: AccessLog,
    /// Values kept in files (key: object key; value: a [`FileRef`]).
    files: sled::Tree,
    /// `<path>/values`, where value files live.
    values_dir: PathBuf,
    /// Superseded value files, removed after the next successful flush
    /// (bounded by [`MAX_PENDING_REMOVALS`]).
    pending_removals: std::sync::Mutex<Vec<FileRef>>,
    /// Superseded value files not queued because the queue was full (the
    /// next open's sweep removes them).
    removals_dropped: AtomicU64,
    /// Bytes of the value files named by `files`.
    file_bytes: AtomicU64,
    live_objects: AtomicU64,
    live_bytes: AtomicU64,
    path: String,
    /// When the last flush started scanning `blobs/`.
    blobs_synced_at: std::sync::Mutex<std::time::SystemTime>,
    /// Blob files fsynced by flushes so far.
    blobs_fsynced: AtomicU64,
    /// The data keys values are sealed and opened with.
    keyring: Keyring,
}

/// What [`SledObjects::reseal`] did to one value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resealed {
    /// Rewritten under the current key.
    Rewritten,
    /// Already under the current key (or a tombstone, or gone).
    Unchanged,
    /// A newer write replaced it meanwhile (that write is sealed already).
    Superseded,
}

impl SledObjects {
    /// [`ObjectStore::get`] of an object whose value is in the tree, on
    /// the caller's thread: `Ok(None)` when its value is in a value file
    /// (the caller reads it with `get` on the blocking pool).
    pub fn get_in_tree(&self, data_id: &str) -> Result<Option<Found>, StoreError> {
        self.read(data_id, false)
    }

    /// The object and its value; with `files` false, `Ok(None)` rather
    /// than reading a value file.
    fn read(&self, data_id: &str, files: bool) -> Result<Option<Found>, StoreError> {
        let key = object_key(data_id);
        let corrupt = || StoreError::Corrupt {
            path: self.path.clone(),
            key: data_id.to_string(),
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            // Metadata and value (or its file's name) from one transaction:
            // a concurrent write must not pair new metadata with old bytes
            // (a false "corrupt").
            let res = (&self.meta, &self.data, &self.files).transaction(|(m, d, f)| {
                let meta = m.get(&key)?;
                let (data, file) = match &meta {
                    Some(_) => (d.get(&key)?, f.get(&key)?),
                    None => (None, None),
                };
                Ok::<_, ConflictableTransactionError<StoreError>>((meta, data, file))
            });
            let (meta, data, file) = res.map_err(|e| self.tx_err(e))?;
            let Some(meta) = meta else {
                return Ok(Some(None));
            };
            let meta = decode_meta(&meta).ok_or_else(corrupt)?;
            if meta.tombstone {
                return Ok(Some(Some((meta, Vec::new()))));
            }
            let stored = match file {
                None => data.map(|d| d.to_vec()).unwrap_or_default(),
                Some(_) if !files => return Ok(None),
                Some(r) => {
                    let Some(r) = FileRef::decode(&r) else {
                        tracing::error!(data_id, "malformed value-file entry; not served");
                        return Err(corrupt());
                    };
                    match self.read_value_file(&r) {
                        Ok(v) => v,
                        // A concurrent overwrite replaced the file and a
                        // flush removed it: read the new entry.
                        Err(e)
                            if e.kind() == std::io::ErrorKind::NotFound
                                && attempt < READ_ATTEMPTS =>
                        {
                            continue
                        }
                        Err(e) => {
                            tracing::error!(data_id, file = %r.name, error = %e, "value file unreadable; not served");
                            return Err(corrupt());
                        }
                    }
                }
            };
            let data = self.open_value(&meta, stored)?;
            return Ok(Some(Some((meta, data))));
        }
    }

    /// Writes the read statistics counted in memory so far (at a stop).
    pub fn write_access(&self) -> Result<(), StoreError> {
        self.access.write_pending().map_err(|e| self.err(e))
    }

    /// Opens the engine's trees in `db` and counts what they hold; values
    /// are sealed and opened with `keyring`.
    pub fn open(db: &sled::Db, path: &str, keyring: Keyring) -> Result<Self, StoreError> {
        let wrap = |source| StoreError::Sled {
            path: path.to_string(),
            source,
        };
        let meta = db.open_tree("objects.meta").map_err(wrap)?;
        let s = SledObjects {
            db: db.clone(),
            data: db.open_tree("objects.data").map_err(wrap)?,
            digests: db.open_tree("objects.digests").map_err(wrap)?,
            factor_digests: db.open_tree("objects.factor_digests").map_err(wrap)?,
            access: AccessLog::new(db.open_tree("objects.access").map_err(wrap)?, meta.clone()),
            files: db.open_tree("objects.files").map_err(wrap)?,
            values_dir: Path::new(path).join(VALUES_DIR),
            pending_removals: std::sync::Mutex::new(Vec::new()),
            removals_dropped: AtomicU64::new(0),
            file_bytes: AtomicU64::new(0),
            meta,
            live_objects: AtomicU64::new(0),
            live_bytes: AtomicU64::new(0),
            path: path.to_string(),
            blobs_synced_at: std::sync::Mutex::new(std::time::UNIX_EPOCH),
            blobs_fsynced: AtomicU64::new(0),
            keyring,
        };
        let (mut n, mut bytes) = (0, 0);
        let built = s
            .factor_digests
            .contains_key(FACTOR_DIGESTS_BUILT)
            .map_err(wrap)?;
        let mut rebuilt: std::collections::BTreeMap<[u8; 3], [u8; 32]> = Default::default();
        for item in s.meta.iter() {
            let (_, v) = item.map_err(wrap)?;
            if let Some(m) = decode_meta(&v) {
                if !m.tombstone {
                    n += 1;
                    bytes += m.size_bytes;
                }
                if !built {
                    let key = factor_key(partition_of(&m.data_id), m.replication_factor);
                    xor(
                        rebuilt.entry(key).or_insert([0; 32]),
                        &entry_hash(&m.data_id, &m.version),
                    );
                }
            }
        }
        if !built {
            // Before any write is served: nothing races the rebuild.
            s.factor_digests.clear().map_err(wrap)?;
            for (k, d) in &rebuilt {
                s.factor_digests.insert(k, d.as_slice()).map_err(wrap)?;
            }
            s.factor_digests
                .insert(FACTOR_DIGESTS_BUILT, &[1u8][..])
                .map_err(wrap)?;
            tracing::info!(
                partitions_factors = rebuilt.len(),
                "built the per-factor digests from the metadata"
            );
        }
        s.live_objects.store(n, Ordering::Relaxed);
        s.live_bytes.store(bytes, Ordering::Relaxed);
        s.sweep_value_files()?;
        Ok(s)
    }

    /// Creates the value-file directories and removes every value file
    /// that `files` does not name (written by a write that crashed before
    /// its transaction, or superseded and not removed before a crash); adds
    /// up the bytes of the named ones. Runs before any write is served.
    fn sweep_value_files(&self) -> Result<(), StoreError> {
        let mut named = std::collections::HashSet::new();
        let mut bytes = 0u64;
        for item in self.files.iter() {
            let (_, v) = item.map_err(|e| self.err(e))?;
            if let Some(r) = FileRef::decode(&v) {
                bytes += r.len;
                named.insert(r.name);
            }
        }
        self.file_bytes.store(bytes, Ordering::Relaxed);
        let mut swept = 0usize;
        for b in 0..=255u8 {
            let sub = format!("{b:02x}");
            let dir = self.values_dir.join(&sub);
            std::fs::create_dir_all(&dir).map_err(|e| self.file_err(&dir, e))?;
            for entry in std::fs::read_dir(&dir).map_err(|e| self.file_err(&dir, e))? {
                let entry = entry.map_err(|e| self.file_err(&dir, e))?;
                let name = format!("{sub}/{}", entry.file_name().to_string_lossy());
                if !named.contains(&name) {
                    let path = entry.path();
                    std::fs::remove_file(&path).map_err(|e| self.file_err(&path, e))?;
                    swept += 1;
                }
            }
        }
        if swept > 0 {
            tracing::info!(
                swept,
                named = named.len(),
                "removed value files no entry names"
            );
        }
        Ok(())
    }

    fn file_err(&self, path: &Path, source: std::io::Error) -> StoreError {
        StoreError::ValueFile {
            path: path.display().to_string(),
            source,
        }
    }

    /// Writes `stored` to a new value file of `data_id` and makes it
    /// durable (the file and its directory fsynced) before anything names it.
    fn write_value_file(&self, data_id: &str, stored: &[u8]) -> Result<FileRef, StoreError> {
        use std::io::Write;
        let hash = blake3::hash(data_id.as_bytes()).to_hex();
        let name = format!(
            "{}/{}-{:016x}",
            &hash[..2],
            &hash[..32],
            rand::random::<u64>()
        );
        let path = self.values_dir.join(&name);
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .and_then(|mut f| {
                f.write_all(stored)?;
                f.sync_all()
            });
        if let Err(e) = written {
            let _ = std::fs::remove_file(&path);
            return Err(self.file_err(&path, e));
        }
        let dir = path.parent().expect("a value file is in a subdirectory");
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| self.file_err(dir, e))?;
        Ok(FileRef {
            len: stored.len() as u64,
            name,
        })
    }

    /// The stored value in a value file, checked against its length.
    fn read_value_file(&self, r: &FileRef) -> std::io::Result<Vec<u8>> {
        let data = std::fs::read(self.values_dir.join(&r.name))?;
        if data.len() as u64 != r.len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} bytes, its entry says {}", data.len(), r.len),
            ));
        }
        Ok(data)
    }

    /// Where a write's stored value goes: `None` for a tombstone.
    fn place(&self, data_id: &str, stored: Option<Vec<u8>>) -> Result<Placed, StoreError> {
        Ok(match stored {
            None => Placed::Nothing,
            Some(v) if v.len() >= FILE_VALUE_BYTES => {
                let file = self.write_value_file(data_id, &v)?;
                let encoded = file.encode();
                Placed::File { file, encoded }
            }
            Some(v) => Placed::Inline(v),
        })
    }

    /// After a write's transaction: a value file written for it but not
    /// named (the write was stale or failed) is removed now; the one it
    /// replaced is removed after the next successful flush, once the entry
    /// naming its successor is durable.
    fn settle_files(&self, placed: &Placed, named: bool, replaced: Option<FileRef>) {
        if let Placed::File { file, .. } = placed {
            if named {
                self.file_bytes.fetch_add(file.len, Ordering::Relaxed);
            } else {
                self.remove_value_file(file);
            }
        }
        if let Some(r) = replaced {
            self.file_bytes.fetch_sub(r.len, Ordering::Relaxed);
            let mut q = self.pending_removals.lock().expect("removal queue lock");
            if q.len() >= MAX_PENDING_REMOVALS {
                self.removals_dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(file = %r.name, "value-file removal queue full; the next open's sweep removes it");
            } else {
                q.push(r);
            }
        }
    }

    fn remove_value_file(&self, r: &FileRef) {
        match std::fs::remove_file(self.values_dir.join(&r.name)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(file = %r.name, error = %e, "could not remove a superseded value file; the next open's sweep removes it")
            }
        }
    }

    /// The five trees one write's transaction spans.
    fn write_trees(
        &self,
    ) -> (
        &sled::Tree,
        &sled::Tree,
        &sled::Tree,
        &sled::Tree,
        &sled::Tree,
    ) {
        (
            &self.meta,
            &self.data,
            &self.digests,
            &self.factor_digests,
            &self.files,
        )
    }

    /// Bytes of the value files entries name (besides sled's own files).
    pub fn file_bytes(&self) -> u64 {
        self.file_bytes.load(Ordering::Relaxed)
    }

    /// Superseded value files left for the next open's sweep because the
    /// removal queue was full.
    pub fn removals_dropped(&self) -> u64 {
        self.removals_dropped.load(Ordering::Relaxed)
    }

    /// Blob files (values sled keeps outside its log) fsynced by flushes
    /// since the engine was opened.
    pub fn blob_files_fsynced(&self) -> u64 {
        self.blobs_fsynced.load(Ordering::Relaxed)
    }

    /// The data keys this engine seals and opens with.
    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    fn err(&self, source: sled::Error) -> StoreError {
        StoreError::Sled {
            path: self.path.clone(),
            source,
        }
    }

    /// The object's bytes from its stored value, checked against the
    /// metadata's size and blake3.
    fn open_value(&self, meta: &ObjectMeta, stored: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        let data_id = meta.data_id.as_str();
        let data = match self
            .keyring
            .open(data_id, &meta.version, meta.size_bytes, stored)
        {
            Ok(d) => d,
            Err(OpenError::UnknownKey(id)) => {
                tracing::error!(data_id, key_id = %id, "stored value sealed under a data key this node does not hold; not served");
                return Err(StoreError::UnknownKey {
                    data_id: data_id.to_string(),
                    key_id: id.to_string(),
                });
            }
            Err(OpenError::Invalid) => {
                tracing::error!(data_id, "stored value fails to open; not served");
                return Err(StoreError::Corrupt {
                    path: self.path.clone(),
                    key: data_id.to_string(),
                });
            }
        };
        if data.len() as u64 != meta.size_bytes || *blake3::hash(&data).as_bytes() != meta.checksum
        {
            tracing::error!(data_id, "stored bytes fail their checksum; not served");
            return Err(StoreError::Corrupt {
                path: self.path.clone(),
                key: data_id.to_string(),
            });
        }
        Ok(data)
    }

    /// Entries (objects and tombstones) this replica holds.
    pub fn entry_count(&self) -> usize {
        self.meta.len()
    }

    /// How the value of `data_id` is kept (`None`: no live value).
    pub fn value_kind(&self, data_id: &str) -> Result<Option<ValueKind>, StoreError> {
        let key = object_key(data_id);
        let Some(meta) = self.meta(data_id)? else {
            return Ok(None);
        };
        if meta.tombstone {
            return Ok(None);
        }
        if let Some(r) = self.files.get(&key).map_err(|e| self.err(e))? {
            let Some(r) = FileRef::decode(&r) else {
                return Ok(None);
            };
            // Only the head of the file: its format byte and key id.
            use std::io::Read;
            let path = self.values_dir.join(&r.name);
            let mut head = Vec::with_capacity(sealing::KIND_HEAD_BYTES);
            std::fs::File::open(&path)
                .and_then(|f| {
                    f.take(sealing::KIND_HEAD_BYTES as u64)
                        .read_to_end(&mut head)
                })
                .map_err(|e| self.file_err(&path, e))?;
            return Ok(sealing::kind_of_head(r.len, &head, meta.size_bytes));
        }
        let stored = self.data.get(&key).map_err(|e| self.err(e))?;
        Ok(stored.and_then(|v| sealing::kind_of(&v, meta.size_bytes)))
    }

    /// Rewrites the value of `data_id` under the current data key if it is
    /// plain or under another key (same metadata, version and digest). A
    /// value that fails to open is left alone and reported (scrub replaces
    /// it from another replica).
    pub fn reseal(&self, data_id: &str) -> Result<Resealed, StoreError> {
        if let Some(e) = crate::injected_write_error(&self.path) {
            return Err(e);
        }
        let Some(current) = self.keyring.current_id() else {
            return Ok(Resealed::Unchanged);
        };
        let Some((meta, data)) = self.get(data_id)? else {
            return Ok(Resealed::Unchanged);
        };
        if meta.tombstone {
            return Ok(Resealed::Unchanged);
        }
        if self.value_kind(data_id)? == Some(ValueKind::Sealed(current)) {
            return Ok(Resealed::Unchanged);
        }
        let key = object_key(data_id);
        let sealed = self.keyring.seal(data_id, &meta.version, &data);
        drop(data);
        let placed = self.place(data_id, Some(sealed))?;
        let res = (&self.meta, &self.data, &self.files).transaction(|(m, d, f)| {
            let now = m.get(&key)?.and_then(|v| decode_meta(&v));
            if now.as_ref().map(|n| n.version) != Some(meta.version) {
                return Ok((Resealed::Superseded, None));
            }
            let replaced = put_value(d, f, &key, &placed)?;
            Ok::<_, ConflictableTransactionError<StoreError>>((Resealed::Rewritten, replaced))
        });
        match res {
            Ok((r, replaced)) => {
                self.settle_files(&placed, r == Resealed::Rewritten, replaced);
                Ok(r)
            }
            Err(e) => {
                self.settle_files(&placed, false, None);
                Err(self.tx_err(e))
            }
        }
    }

    /// Up to `limit` data ids after `after` (exclusive; `None`: from the
    /// start), in key order, tombstones included, and the cursor to go on
    /// from (`None` at the end).
    pub fn ids_page(
        &self,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<String>, Option<Vec<u8>>), StoreError> {
        let range = match after {
            Some(a) => self
                .meta
                .range::<&[u8], _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            None => self.meta.iter(),
        };
        let mut ids = Vec::new();
        let mut last = None;
        let mut taken = 0;
        for item in range.take(limit) {
            let (k, v) = item.map_err(|e| self.err(e))?;
            taken += 1;
            if let Some(m) = decode_meta(&v) {
                ids.push(m.data_id);
            }
            last = Some(k.to_vec());
        }
        Ok((ids, if taken < limit { None } else { last }))
    }

    /// Up to `limit` entries (objects and tombstones) whose data id starts
    /// with `prefix` and sorts after `after` (exclusive), in byte order of
    /// the data id: a k-way merge of one lazy range scan per partition, so
    /// it reads at most `PARTITIONS + limit` keys whatever the store holds.
    pub fn list_page(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<ObjectMeta>, StoreError> {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        use std::ops::Bound;
        // The first id to consider: `prefix` itself, or just past `after`
        // when that sorts at or beyond the prefix.
        let (start, exclusive): (&[u8], bool) = match after {
            Some(a) if a >= prefix => (a, true),
            _ => (prefix, false),
        };
        let mut scans = Vec::with_capacity(crate::placement::PARTITIONS as usize);
        let mut heap = BinaryHeap::new();
        for p in 0..crate::placement::PARTITIONS {
            let mut from = p.to_be_bytes().to_vec();
            from.extend_from_slice(start);
            let lower = if exclusive {
                Bound::Excluded(from)
            } else {
                Bound::Included(from)
            };
            let upper = match p.checked_add(1) {
                Some(n) if n < crate::placement::PARTITIONS => {
                    Bound::Excluded(n.to_be_bytes().to_vec())
                }
                _ => Bound::Unbounded,
            };
            let mut scan = self.meta.range::<Vec<u8>, _>((lower, upper));
            if let Some(item) = scan.next() {
                let (k, v) = item.map_err(|e| self.err(e))?;
                if k[2..].starts_with(prefix) {
                    heap.push(Reverse((k[2..].to_vec(), scans.len(), v)));
                    scans.push(scan);
                }
            }
        }
        let mut out = Vec::new();
        while out.len() < limit {
            let Some(Reverse((_, i, v))) = heap.pop() else {
                break;
            };
            if let Some(m) = decode_meta(&v) {
                out.push(m);
            }
            if let Some(item) = scans[i].next() {
                let (k, v) = item.map_err(|e| self.err(e))?;
                if k[2..].starts_with(prefix) {
                    heap.push(Reverse((k[2..].to_vec(), i, v)));
                }
            }
        }
        Ok(out)
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

/// The stored value of a torn write: the first half of what a whole write
/// would have stored.
fn torn_payload(stored: &[u8]) -> Vec<u8> {
    stored[..stored.len() / 2].to_vec()
}

impl SledObjects {
    /// Flushes the torn write just stored and aborts the process (the
    /// test-only `store_torn_write`: a power cut right after the write).
    fn crash_after_torn_write(&self, data_id: &str) -> ! {
        let flushed = self.flush();
        tracing::error!(
            data_id,
            flushed = ?flushed.map_err(|e| e.to_string()),
            "test-only fault file: torn write stored and flushed (store_torn_write); aborting the process"
        );
        plexi_util::faults::torn_write_done();
        std::process::abort();
    }

    /// [`ObjectStore::apply`] without the fault file: `torn` stores the
    /// payload cut to half under the full value's metadata and checksum.
    fn write(&self, meta: &ObjectMeta, data: &[u8], torn: bool) -> Result<Applied, StoreError> {
        if !meta.tombstone
            && (data.len() as u64 != meta.size_bytes
                || *blake3::hash(data).as_bytes() != meta.checksum)
        {
            return Err(StoreError::ChecksumMismatch {
                data_id: meta.data_id.clone(),
            });
        }
        let key = object_key(&meta.data_id);
        let partition = partition_of(&meta.data_id);
        let encoded = encode(meta);
        let new_hash = entry_hash(&meta.data_id, &meta.version);
        let stored = if meta.tombstone {
            None
        } else if torn {
            Some(torn_payload(&self.keyring.seal(
                &meta.data_id,
                &meta.version,
                data,
            )))
        } else {
            Some(self.keyring.seal(&meta.data_id, &meta.version, data))
        };
        let placed = self.place(&meta.data_id, stored)?;
        let trees = self.write_trees();
        let res = trees.transaction(|(m, d, w, g, f)| {
            let old = m.get(&key)?.and_then(|v| decode_meta(&v));
            if let Some(old) = &old {
                if old.version >= meta.version {
                    return Ok((Applied::Stale, None, None));
                }
            }
            m.insert(key.as_slice(), encoded.as_slice())?;
            let replaced = put_value(d, f, &key, &placed)?;
            if let Some(old) = &old {
                let old_hash = entry_hash(&old.data_id, &old.version);
                xor_entry(w, g, partition, old.replication_factor, &old_hash)?;
            }
            xor_entry(w, g, partition, meta.replication_factor, &new_hash)?;
            Ok::<_, ConflictableTransactionError<StoreError>>((
                Applied::Stored,
                Some(old),
                replaced,
            ))
        });
        let (applied, old, replaced) = match res {
            Ok(r) => r,
            Err(e) => {
                self.settle_files(&placed, false, None);
                return Err(self.tx_err(e));
            }
        };
        self.settle_files(&placed, applied == Applied::Stored, replaced);
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
}

impl ObjectStore for SledObjects {
    fn apply(&self, meta: &ObjectMeta, data: &[u8]) -> Result<Applied, StoreError> {
        if let Some(e) = crate::injected_write_error(&self.path) {
            return Err(e);
        }
        let torn = !meta.tombstone && plexi_util::faults::torn_write_armed();
        let applied = self.write(meta, data, torn)?;
        if torn && applied == Applied::Stored {
            if plexi_util::faults::take_torn_write() {
                self.crash_after_torn_write(&meta.data_id);
            }
            // Another write claimed the torn write and is aborting the
            // process: this one is torn too and must not be acknowledged.
            return Err(StoreError::Flush(
                "torn by the test-only fault file; the process is aborting".into(),
            ));
        }
        Ok(applied)
    }

    fn get(&self, data_id: &str) -> Result<Option<(ObjectMeta, Vec<u8>)>, StoreError> {
        Ok(self
            .read(data_id, true)?
            .expect("a read that may open value files always ends"))
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
        if let Some(e) = crate::injected_write_error(&self.path) {
            return Err(e);
        }
        let key = object_key(data_id);
        let partition = partition_of(data_id);
        let trees = self.write_trees();
        let res = trees.transaction(|(m, d, w, g, f)| {
            let Some(old) = m.get(&key)?.and_then(|v| decode_meta(&v)) else {
                return Ok((None, None));
            };
            if old.version != version {
                return Ok((None, None));
            }
            m.remove(key.as_slice())?;
            let replaced = put_value(d, f, &key, &Placed::Nothing)?;
            let old_hash = entry_hash(&old.data_id, &old.version);
            xor_entry(w, g, partition, old.replication_factor, &old_hash)?;
            Ok::<_, ConflictableTransactionError<StoreError>>((Some(old), replaced))
        });
        let (old, replaced) = res.map_err(|e| self.tx_err(e))?;
        self.settle_files(&Placed::Nothing, true, replaced);
        if let Some(o) = &old {
            if !o.tombstone {
                self.live_objects.fetch_sub(1, Ordering::Relaxed);
                self.live_bytes.fetch_sub(o.size_bytes, Ordering::Relaxed);
            }
            let _ = self.access.remove(&object_key(data_id));
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

    fn factor_digests(&self) -> Result<Vec<FactorDigest>, StoreError> {
        let mut out = Vec::new();
        for item in self.factor_digests.iter() {
            let (k, v) = item.map_err(|e| self.err(e))?;
            if k.len() != 3 || v.len() != 32 {
                continue; // the "built" marker
            }
            let mut digest = [0u8; 32];
            digest.copy_from_slice(&v);
            if digest != [0u8; 32] {
                out.push(FactorDigest {
                    partition: u16::from_be_bytes([k[0], k[1]]),
                    rf: k[2],
                    digest,
                });
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

    fn record_access(&self, data_id: &str, now_ms: u64) -> bool {
        self.access.record(object_key(data_id), now_ms)
    }

    fn access(&self, data_id: &str) -> AccessStats {
        self.access.get(&object_key(data_id))
    }

    fn flush(&self) -> Result<(), StoreError> {
        // Taken before the flush: every file queued so far was replaced by
        // a write this flush makes durable.
        let superseded =
            std::mem::take(&mut *self.pending_removals.lock().expect("removal queue lock"));
        let res = self
            .db
            .flush()
            .map(|_| ())
            .map_err(|e| self.err(e))
            .and_then(|()| self.sync_new_blobs());
        if res.is_ok() {
            for r in &superseded {
                self.remove_value_file(r);
            }
        } else {
            // Not durable: their successors may yet be lost; keep them.
            let mut q = self.pending_removals.lock().expect("removal queue lock");
            let mut back = superseded;
            back.append(&mut q);
            let over = back.len().saturating_sub(MAX_PENDING_REMOVALS);
            if over > 0 {
                self.removals_dropped
                    .fetch_add(over as u64, Ordering::Relaxed);
                back.truncate(MAX_PENDING_REMOVALS);
            }
            *q = back;
        }
        res
    }
}

/// The record of a repeated write-and-flush (the group commit's flushes,
/// the store watchdog's probe): since when the one now running has been
/// running (a flush that never returns: sled after a failed write on a
/// full disk) and since when they have failed (sled 0.34 keeps a write
/// error and returns it from every later flush, also once the disk has
/// space again). Times are ms after `base` plus one; 0 means idle, or not
/// failing.
#[derive(Debug)]
pub struct FlushRecord {
    base: std::time::Instant,
    running_since: AtomicU64,
    failing_since: AtomicU64,
}

impl Default for FlushRecord {
    fn default() -> Self {
        FlushRecord {
            base: std::time::Instant::now(),
            running_since: AtomicU64::new(0),
            failing_since: AtomicU64::new(0),
        }
    }
}

impl FlushRecord {
    fn now(&self) -> u64 {
        self.base.elapsed().as_millis() as u64 + 1
    }

    /// One starts.
    pub fn started(&self) {
        self.running_since.store(self.now(), Ordering::SeqCst);
    }

    /// It ended: a success clears the failure record, a failure starts it
    /// (or keeps its first time).
    pub fn ended(&self, ok: bool) {
        self.running_since.store(0, Ordering::SeqCst);
        if ok {
            self.failing_since.store(0, Ordering::SeqCst);
        } else {
            let now = self.now();
            let _ = self
                .failing_since
                .compare_exchange(0, now, Ordering::SeqCst, Ordering::SeqCst);
        }
    }

    fn since(&self, at: &AtomicU64) -> Option<std::time::Duration> {
        let at = at.load(Ordering::SeqCst);
        (at > 0).then(|| std::time::Duration::from_millis(self.now().saturating_sub(at)))
    }

    /// How long every one has failed, since the first failure after the
    /// last success (None when the last one succeeded).
    pub fn failing_for(&self) -> Option<std::time::Duration> {
        self.since(&self.failing_since)
    }

    /// How long the one now running has been running (None when idle).
    pub fn stalled_for(&self) -> Option<std::time::Duration> {
        self.since(&self.running_since)
    }
}

/// Batches flushes across concurrent writers: every waiter that arrives
/// while a flush runs is served by the next single flush. Queue bounded.
#[derive(Clone)]
pub struct GroupCommit {
    waiters: mpsc::Sender<oneshot::Sender<Result<(), String>>>,
    flushes: Arc<AtomicU64>,
    record: Arc<FlushRecord>,
}

/// Bound on writers waiting for the next flush.
const MAX_FLUSH_WAITERS: usize = 4096;

impl GroupCommit {
    pub fn start(store: Arc<dyn ObjectStore>) -> Self {
        let (tx, mut rx) = mpsc::channel::<oneshot::Sender<Result<(), String>>>(MAX_FLUSH_WAITERS);
        let flushes = Arc::new(AtomicU64::new(0));
        let count = flushes.clone();
        let record = Arc::new(FlushRecord::default());
        let rec = record.clone();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                }
                let s = store.clone();
                rec.started();
                let res = tokio::task::spawn_blocking(move || s.flush())
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()));
                if let Err(e) = &res {
                    // A flush error is fatal for this node's durability.
                    tracing::error!(error = %e, "store flush failed");
                }
                rec.ended(res.is_ok());
                count.fetch_add(1, Ordering::Relaxed);
                for w in batch {
                    let _ = w.send(res.clone());
                }
            }
        });
        GroupCommit {
            waiters: tx,
            flushes,
            record,
        }
    }

    /// How long every flush has failed, since the first failure after the
    /// last success (None when the last flush succeeded).
    pub fn failing_for(&self) -> Option<std::time::Duration> {
        self.record.failing_for()
    }

    /// How long the flush now running has been running (None when idle).
    pub fn stalled_for(&self) -> Option<std::time::Duration> {
        self.record.stalled_for()
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
        let s = SledObjects::open(&db, &dir.path().display().to_string(), Keyring::none()).unwrap();
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
    fn list_page_is_in_id_order_across_partitions() {
        let (_d, s) = open();
        let mut ids: Vec<String> = (0..300).map(|i| format!("a/{i:03}")).collect();
        ids.extend((0..50).map(|i| format!("b/{i:02}")));
        ids.push("a".into());
        for (n, id) in ids.iter().enumerate() {
            s.apply(&meta(id, id.as_bytes(), 1000 + n as u64), id.as_bytes())
                .unwrap();
        }
        let mut tomb = meta("a/007", b"", 9_000);
        tomb.tombstone = true;
        tomb.size_bytes = 0;
        tomb.checksum = *blake3::hash(b"").as_bytes();
        s.apply(&tomb, b"").unwrap();
        ids.sort();
        let got = |prefix: &str, after: Option<&str>, limit| -> Vec<String> {
            s.list_page(prefix.as_bytes(), after.map(str::as_bytes), limit)
                .unwrap()
                .into_iter()
                .map(|m| m.data_id)
                .collect()
        };
        // Everything, in byte order, tombstones included.
        assert_eq!(got("", None, 1000), ids);
        // Pages follow on exactly.
        let mut paged = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = got("", after.as_deref(), 7);
            if page.is_empty() {
                break;
            }
            after = page.last().cloned();
            paged.extend(page);
        }
        assert_eq!(paged, ids);
        // Prefix filter, and an `after` before, inside and past the prefix.
        let b: Vec<String> = ids
            .iter()
            .filter(|i| i.starts_with("b/"))
            .cloned()
            .collect();
        assert_eq!(got("b/", None, 1000), b);
        assert_eq!(got("b/", Some("a/5"), 1000), b);
        assert_eq!(got("b/", Some("b/09"), 3), b[10..13].to_vec());
        assert!(got("b/", Some("c"), 10).is_empty());
        assert_eq!(
            got("a", None, 2),
            vec!["a".to_string(), "a/000".to_string()]
        );
        let t = s.list_page(b"a/007", None, 5).unwrap();
        assert_eq!(t.len(), 1);
        assert!(t[0].tombstone);
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
    fn a_torn_write_survives_a_reopen_and_is_never_served() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let ring = |sealed: bool| {
            if sealed {
                Keyring::new(Some(key(3)), vec![])
            } else {
                Keyring::none()
            }
        };
        for sealed in [false, true] {
            for (id, bytes) in [("small", &data[..64]), ("big", &data[..])] {
                let dir = tempfile::tempdir().unwrap();
                {
                    let s = open_at(dir.path(), ring(sealed));
                    let m = meta(id, bytes, 10);
                    assert_eq!(s.write(&m, bytes, true).unwrap(), Applied::Stored);
                    s.flush().unwrap();
                }
                // After the "power cut": metadata and digest say the whole
                // value is there, its bytes are half of it.
                let s = open_at(dir.path(), ring(sealed));
                assert_eq!(s.meta(id).unwrap().unwrap().size_bytes, bytes.len() as u64);
                assert!(matches!(s.get(id), Err(StoreError::Corrupt { .. })), "{id}");
                // A whole newer copy (repair from a replica) replaces it.
                s.apply(&meta(id, bytes, 11), bytes).unwrap();
                assert_eq!(s.get(id).unwrap().unwrap().1, bytes);
            }
        }
    }

    #[test]
    fn the_probe_record_keeps_the_first_failure_until_a_success() {
        let p = FlushRecord::default();
        assert_eq!((p.failing_for(), p.stalled_for()), (None, None));
        p.started();
        assert!(p.stalled_for().is_some(), "a running probe is timed");
        p.ended(false);
        assert_eq!(p.stalled_for(), None);
        let first = p.failing_since.load(Ordering::SeqCst);
        assert!(first > 0);
        std::thread::sleep(std::time::Duration::from_millis(5));
        p.started();
        p.ended(false);
        assert_eq!(
            p.failing_since.load(Ordering::SeqCst),
            first,
            "a later failure keeps the first one's time"
        );
        assert!(p.failing_for().unwrap() >= std::time::Duration::from_millis(5));
        p.started();
        p.ended(true);
        assert_eq!(p.failing_for(), None, "a success clears the record");
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
    fn factor_digests_keep_each_factor_apart_and_are_rebuilt_for_an_old_dir() {
        let at = |id: &str, rf: u8, ms: u64| ObjectMeta {
            replication_factor: rf,
            ..meta(id, b"x", ms)
        };
        let dir = tempfile::tempdir().unwrap();
        let before = {
            let s = open_at(dir.path(), Keyring::none());
            // Two objects in one partition at two factors: two digests.
            let (a, b) = (
                "f-a",
                (0..)
                    .map(|i| format!("f-b{i}"))
                    .find(|id| partition_of(id) == partition_of("f-a"))
                    .unwrap(),
            );
            s.apply(&at(a, 3, 10), b"x").unwrap();
            s.apply(&at(&b, 1, 10), b"x").unwrap();
            let d = s.factor_digests().unwrap();
            let rfs: Vec<u8> = d.iter().map(|d| d.rf).collect();
            assert_eq!(rfs, vec![1, 3]);
            assert!(d.iter().all(|d| d.partition == partition_of(a)));
            // The partition's digest is their XOR.
            let mut x = d[0].digest;
            xor(&mut x, &d[1].digest);
            assert_eq!(s.digests().unwrap()[partition_of(a) as usize], x);
            // Rewritten at another factor: it leaves its old class, which
            // empties (and is gone).
            s.apply(&at(&b, 3, 11), b"x").unwrap();
            let d = s.factor_digests().unwrap();
            assert_eq!(d.iter().map(|d| d.rf).collect::<Vec<_>>(), vec![3]);
            // A data dir of an earlier version: no per-factor tree.
            s.factor_digests.clear().unwrap();
            s.flush().unwrap();
            d
        };
        let s = open_at(dir.path(), Keyring::none());
        assert_eq!(
            s.factor_digests().unwrap(),
            before,
            "rebuilt from the metadata"
        );
        assert!(s.factor_digests.contains_key(FACTOR_DIGESTS_BUILT).unwrap());
    }

    /// Names of the value files on disk (`hh/name`).
    fn value_files(s: &SledObjects) -> Vec<String> {
        let mut out = Vec::new();
        for sub in std::fs::read_dir(&s.values_dir).unwrap() {
            let sub = sub.unwrap();
            for f in std::fs::read_dir(sub.path()).unwrap() {
                let f = f.unwrap();
                out.push(format!(
                    "{}/{}",
                    sub.file_name().to_string_lossy(),
                    f.file_name().to_string_lossy()
                ));
            }
        }
        out.sort();
        out
    }

    fn big(seed: u64, len: u32) -> Vec<u8> {
        (0..len).map(|j| (j as u64 * 7 + seed) as u8).collect()
    }

    #[test]
    fn large_values_overwritten_and_flushed() {
        let (_d, s) = open();
        // Small values stay in sled: no value file.
        for i in 0..20u64 {
            let data = vec![i as u8; 1024];
            s.apply(&meta(&format!("small{i}"), &data, 100 + i), &data)
                .unwrap();
        }
        s.flush().unwrap();
        assert!(value_files(&s).is_empty(), "small values need no file");
        assert_eq!(s.file_bytes(), 0);
        let len = FILE_VALUE_BYTES as u32 * 4;
        for i in 0..5u64 {
            let data = big(i, len);
            assert_eq!(
                s.apply(&meta("big", &data, 100 + i), &data).unwrap(),
                Applied::Stored
            );
            assert_eq!(s.get("big").unwrap().unwrap().1, data);
            // The superseded file stays until the flush that makes its
            // successor's entry durable.
            assert_eq!(value_files(&s).len(), if i == 0 { 1 } else { 2 });
            s.flush().unwrap();
            assert_eq!(value_files(&s).len(), 1, "after flush {i}");
            assert_eq!(s.file_bytes(), len as u64);
        }
        // A stale write's file is removed at once; nothing changes.
        let old = big(99, len);
        assert_eq!(
            s.apply(&meta("big", &old, 50), &old).unwrap(),
            Applied::Stale
        );
        assert_eq!(value_files(&s).len(), 1);
        assert_eq!(s.get("big").unwrap().unwrap().1, big(4, len));
        // A small overwrite moves the value back into sled.
        let small = b"now small".to_vec();
        s.apply(&meta("big", &small, 200), &small).unwrap();
        s.flush().unwrap();
        assert!(value_files(&s).is_empty());
        assert_eq!(s.get("big").unwrap().unwrap().1, small);
        // A tombstone and a removal take their files too.
        let data = big(7, len);
        s.apply(&meta("gone", &data, 10), &data).unwrap();
        s.apply(&meta("removed", &data, 10), &data).unwrap();
        s.flush().unwrap();
        assert_eq!(value_files(&s).len(), 2);
        let mut t = meta("gone", b"", 11);
        t.tombstone = true;
        s.apply(&t, b"").unwrap();
        assert!(s
            .remove_if("removed", meta("removed", &data, 10).version)
            .unwrap());
        s.flush().unwrap();
        assert!(value_files(&s).is_empty());
        assert_eq!(s.file_bytes(), 0);
        assert!(s.get("gone").unwrap().unwrap().0.tombstone);
        assert!(s.get("removed").unwrap().is_none());
        assert_eq!(s.removals_dropped(), 0);
    }

    #[test]
    fn the_open_sweeps_unreferenced_value_files_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let data = big(3, FILE_VALUE_BYTES as u32 + 1);
        let kept = {
            let s = open_at(dir.path(), Keyring::none());
            s.apply(&meta("kept", &data, 10), &data).unwrap();
            s.flush().unwrap();
            let kept = value_files(&s);
            assert_eq!(kept.len(), 1);
            // What a crash between a file's write and its transaction leaves.
            let stray = s
                .values_dir
                .join(format!("ab/ab{}-{:016x}", "0".repeat(30), 7));
            std::fs::write(&stray, b"never named").unwrap();
            assert_eq!(value_files(&s).len(), 2);
            kept
        };
        let s = open_at(dir.path(), Keyring::none());
        assert_eq!(value_files(&s), kept, "only the stray file is swept");
        assert_eq!(s.get("kept").unwrap().unwrap().1, data);
        assert_eq!(s.file_bytes(), data.len() as u64);
    }

    #[test]
    fn a_missing_or_damaged_value_file_is_a_bad_replica() {
        let (_d, s) = open();
        for id in ["missing", "damaged", "short"] {
            let data = big(1, FILE_VALUE_BYTES as u32 * 2);
            s.apply(&meta(id, &data, 10), &data).unwrap();
        }
        s.flush().unwrap();
        let path_of = |id: &str| {
            let r = s.files.get(object_key(id)).unwrap().unwrap();
            s.values_dir.join(FileRef::decode(&r).unwrap().name)
        };
        std::fs::remove_file(path_of("missing")).unwrap();
        let mut bytes = std::fs::read(path_of("damaged")).unwrap();
        bytes[100] ^= 0xff;
        std::fs::write(path_of("damaged"), &bytes).unwrap();
        bytes.truncate(1000);
        std::fs::write(path_of("short"), &bytes).unwrap();
        for id in ["missing", "damaged", "short"] {
            match s.get(id) {
                Err(e) => assert!(e.is_bad_replica(), "{id}: {e}"),
                Ok(v) => panic!("{id}: served {:?}", v.map(|v| v.1.len())),
            }
            assert!(s.meta(id).unwrap().is_some(), "{id}: metadata kept");
        }
    }

    #[test]
    fn file_refs_outside_the_values_dir_are_refused() {
        let with = |name: &str| {
            let mut b = 10u64.to_be_bytes().to_vec();
            b.extend_from_slice(name.as_bytes());
            b
        };
        let good = format!("ab/ab{}-{}", "0".repeat(30), "1".repeat(16));
        assert!(FileRef::decode(&with(&good)).is_some());
        for bad in [
            "../../../../etc/passwd".to_string(),
            format!("/b/ab{}-{}", "0".repeat(30), "1".repeat(16)),
            format!("cd/ab{}-{}", "0".repeat(30), "1".repeat(16)),
            format!("ab/ab{}-{}", "0".repeat(30), "../../../../../x"),
            format!("AB/AB{}-{}", "0".repeat(30), "1".repeat(16)),
            good[..51].to_string(),
        ] {
            assert_eq!(FileRef::decode(&with(&bad)), None, "{bad}");
        }
        assert_eq!(FileRef::decode(b"short"), None);
        // An entry naming a file outside values/ is never followed.
        let (_d, s) = open();
        let data = big(1, FILE_VALUE_BYTES as u32);
        s.apply(&meta("x", &data, 10), &data).unwrap();
        s.files
            .insert(object_key("x"), with("../../../../etc/passwd"))
            .unwrap();
        assert!(matches!(s.get("x"), Err(StoreError::Corrupt { .. })));
    }

    fn key(b: u8) -> plexi_util::secret::SecretKey {
        plexi_util::secret::SecretKey::from_bytes([b; 32])
    }

    fn open_at(dir: &std::path::Path, keyring: Keyring) -> SledObjects {
        // sled's flusher thread lets go of a dropped database's file lock a
        // moment later: retry the reopen, bounded.
        let mut tries = 0;
        let db = loop {
            match sled::open(dir) {
                Ok(db) => break db,
                Err(e) if tries < 100 => {
                    tries += 1;
                    eprintln!("reopen {}: {e}; retrying", dir.display());
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("reopen {}: {e}", dir.display()),
            }
        };
        SledObjects::open(&db, &dir.display().to_string(), keyring).unwrap()
    }

    /// Every file under `dir` (recursively) that contains `marker`.
    fn files_containing(dir: &std::path::Path, marker: &[u8]) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else if std::fs::read(&p)
                    .unwrap()
                    .windows(marker.len())
                    .any(|w| w == marker)
                {
                    out.push(p);
                }
            }
        }
        out
    }

    #[test]
    fn sealed_engine_keeps_no_plaintext_on_disk() {
        let marker = b"MARKER-3f9a1c77e0b2-at-rest";
        let small: Vec<u8> = marker.iter().chain(b" small").copied().collect();
        let big: Vec<u8> = marker.iter().cycle().take(200_000).copied().collect();
        for (sealed, expect_found) in [(true, false), (false, true)] {
            let dir = tempfile::tempdir().unwrap();
            let ring = if sealed {
                Keyring::new(Some(key(1)), vec![])
            } else {
                Keyring::none()
            };
            {
                let s = open_at(dir.path(), ring);
                s.apply(&meta("small", &small, 10), &small).unwrap();
                s.apply(&meta("big", &big, 10), &big).unwrap();
                s.flush().unwrap();
                assert_eq!(s.get("small").unwrap().unwrap().1, small);
                assert_eq!(s.get("big").unwrap().unwrap().1, big);
            }
            let found = files_containing(dir.path(), marker);
            assert_eq!(
                !found.is_empty(),
                expect_found,
                "sealed={sealed}: files holding the marker: {found:?}"
            );
        }
    }

    #[test]
    fn wrong_key_is_unknown_key_and_tamper_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open_at(dir.path(), Keyring::new(Some(key(1)), vec![]));
            s.apply(&meta("a", b"secret bytes", 10), b"secret bytes")
                .unwrap();
            s.flush().unwrap();
            // Flip one ciphertext byte behind the engine's back.
            let k = object_key("a");
            let mut v = s.data.get(&k).unwrap().unwrap().to_vec();
            let last = v.len() - 1;
            v[last] ^= 1;
            s.apply(&meta("b", b"other bytes!", 10), b"other bytes!")
                .unwrap();
            s.data.insert(object_key("b"), v).unwrap();
            assert!(matches!(s.get("b"), Err(StoreError::Corrupt { .. })));
            s.flush().unwrap();
        }
        let s = open_at(dir.path(), Keyring::new(Some(key(2)), vec![]));
        match s.get("a") {
            Err(e @ StoreError::UnknownKey { .. }) => {
                assert!(e.is_bad_replica());
                assert!(e.to_string().contains(&key(1).fingerprint()), "{e}");
            }
            other => panic!("expected UnknownKey, got {other:?}"),
        }
        // Metadata stays readable: the node knows what it should hold.
        assert!(s.meta("a").unwrap().is_some());
        assert_eq!(
            s.reseal("a").map_err(|e| e.is_bad_replica()),
            Err(true),
            "an unopenable value is not rewritten"
        );
    }

    #[test]
    fn plaintext_store_then_key_added_then_rotated() {
        // A value kept in sled and one kept in a value file.
        key_added_then_rotated(1000);
        key_added_then_rotated(FILE_VALUE_BYTES as u32 * 2);
    }

    fn key_added_then_rotated(len: u32) {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
        {
            let s = open_at(dir.path(), Keyring::none());
            s.apply(&meta("old", &data, 10), &data).unwrap();
            s.flush().unwrap();
            assert_eq!(s.value_kind("old").unwrap(), Some(ValueKind::Plain));
        }
        // A key is added: the plain value stays readable, new writes sealed.
        let k1 = crate::sealing::KeyId::of(&key(1));
        {
            let s = open_at(dir.path(), Keyring::new(Some(key(1)), vec![]));
            assert_eq!(s.get("old").unwrap().unwrap().1, data);
            s.apply(&meta("new", &data, 11), &data).unwrap();
            assert_eq!(s.value_kind("new").unwrap(), Some(ValueKind::Sealed(k1)));
            let digests = s.digests().unwrap();
            assert_eq!(s.reseal("old").unwrap(), Resealed::Rewritten);
            assert_eq!(s.reseal("old").unwrap(), Resealed::Unchanged);
            assert_eq!(s.value_kind("old").unwrap(), Some(ValueKind::Sealed(k1)));
            assert_eq!(s.digests().unwrap(), digests, "resealing changes no digest");
            assert_eq!(s.get("old").unwrap().unwrap().1, data);
            s.flush().unwrap();
        }
        // Rotation: key 2 current, key 1 retired; reseal moves everything.
        let k2 = crate::sealing::KeyId::of(&key(2));
        {
            let s = open_at(dir.path(), Keyring::new(Some(key(2)), vec![key(1)]));
            assert_eq!(s.get("old").unwrap().unwrap().1, data);
            let (ids, next) = s.ids_page(None, 1).unwrap();
            assert_eq!(ids.len(), 1);
            let (rest, end) = s.ids_page(next.as_deref(), 10).unwrap();
            assert_eq!(rest.len(), 1);
            assert!(end.is_none());
            for id in ids.iter().chain(&rest) {
                assert_eq!(s.reseal(id).unwrap(), Resealed::Rewritten);
                assert_eq!(s.value_kind(id).unwrap(), Some(ValueKind::Sealed(k2)));
            }
            s.flush().unwrap();
        }
        // Only the new key now: everything reads.
        let s = open_at(dir.path(), Keyring::new(Some(key(2)), vec![]));
        assert_eq!(s.get("old").unwrap().unwrap().1, data);
        assert_eq!(s.get("new").unwrap().unwrap().1, data);
    }

    /// An engine that records, for every flush, how many applies had
    /// completed when it began, and whether it has finished.
    struct Recording {
        inner: SledObjects,
        applies: AtomicU64,
        /// (applies completed when the flush began, flush finished)
        flushes: std::sync::Mutex<Vec<(u64, bool)>>,
        /// Flushes fail (a disk error) while set.
        failing: std::sync::atomic::AtomicBool,
    }

    impl Recording {
        fn new(inner: SledObjects) -> Self {
            Recording {
                inner,
                applies: AtomicU64::new(0),
                flushes: std::sync::Mutex::new(Vec::new()),
                failing: Default::default(),
            }
        }

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
        fn factor_digests(&self) -> Result<Vec<FactorDigest>, StoreError> {
            self.inner.factor_digests()
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
        fn record_access(&self, data_id: &str, now_ms: u64) -> bool {
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
            let r = if self.failing.load(Ordering::SeqCst) {
                Err(StoreError::Flush("No space left on device".into()))
            } else {
                self.inner.flush()
            };
            self.flushes.lock().unwrap()[index].1 = true;
            r
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn group_commit_batches_concurrent_flushes() {
        let (_d, inner) = open();
        let rec = Arc::new(Recording::new(inner));
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

    /// Failing flushes show as a growing `failing_for` (what the node's
    /// watchdog reads), from the first failure after a success, and a
    /// successful flush clears it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn group_commit_reports_how_long_flushes_have_failed() {
        let (_d, inner) = open();
        let rec = Arc::new(Recording::new(inner));
        let gc = GroupCommit::start(rec.clone());
        gc.flush().await.unwrap();
        assert_eq!(gc.failing_for(), None);
        rec.failing.store(true, Ordering::SeqCst);
        assert!(gc.flush().await.is_err());
        let first = gc.failing_for().expect("failing after a failed flush");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(gc.flush().await.is_err());
        let later = gc.failing_for().expect("still failing");
        assert!(
            later >= first + std::time::Duration::from_millis(50),
            "{first:?} then {later:?}: counted from the first failure"
        );
        rec.failing.store(false, Ordering::SeqCst);
        gc.flush().await.unwrap();
        assert_eq!(gc.failing_for(), None, "a successful flush clears it");
    }
}
