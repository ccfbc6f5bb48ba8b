//! plexi-store: the node's local, durable state on sled, and the pure rules
//! of where data lives. No network I/O here.
//!
//! - [`NodeStore`]: the database; node metadata (incarnation) and, through
//!   [`objects`], the object engine. A store that fails to open is moved aside
//!   (quarantined) and a fresh one is opened, to be refilled from replicas.
//! - [`placement`]: partitions and replica sets (pure).
//! - [`version`]: hybrid logical clock versions (pure).

use std::path::{Path, PathBuf};

pub mod objects;
pub mod placement;
pub mod version;

use std::sync::Arc;

const META_TREE: &str = "meta";
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
}

/// The node's local database.
pub struct NodeStore {
    db: sled::Db,
    meta: sled::Tree,
    objects: Arc<objects::SledObjects>,
    path: PathBuf,
    quarantined: Option<PathBuf>,
}

impl NodeStore {
    /// Opens the store; if it cannot be opened, moves it aside to
    /// `<path>.quarantine-<unix-ms>` and opens a fresh one (the caller then
    /// refills it from replicas). Fails only if the fresh one fails too.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        match Self::open_exact(path) {
            Ok(s) => Ok(s),
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
                let mut s = Self::open_exact(path)?;
                s.quarantined = Some(aside);
                Ok(s)
            }
            Err(e) => Err(e),
        }
    }

    fn open_exact(path: &Path) -> Result<Self, StoreError> {
        let wrap = |source| StoreError::Sled {
            path: path.display().to_string(),
            source,
        };
        let db = sled::Config::new().path(path).open().map_err(wrap)?;
        let meta = db.open_tree(META_TREE).map_err(wrap)?;
        let objects = Arc::new(objects::SledObjects::open(
            &db,
            &path.display().to_string(),
        )?);
        Ok(NodeStore {
            db,
            meta,
            objects,
            path: path.to_path_buf(),
            quarantined: None,
        })
    }

    /// The object engine.
    pub fn objects(&self) -> Arc<objects::SledObjects> {
        self.objects.clone()
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

    /// Bytes the database occupies on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.db.size_on_disk().map_err(|e| self.err(e))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
