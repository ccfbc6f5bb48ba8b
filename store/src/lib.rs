//! plexi-store: the node's local, durable state on sled. No network I/O here.
//!
//! Today it holds the node's own metadata (the incarnation counter that makes
//! a restarted node supersede its old membership record). The object engine
//! of the storage issue lands here behind the same [`NodeStore`].

use std::path::{Path, PathBuf};

pub mod placement;
pub mod version;

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
}

/// The node's local database.
pub struct NodeStore {
    db: sled::Db,
    meta: sled::Tree,
    path: PathBuf,
}

impl NodeStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let wrap = |source| StoreError::Sled {
            path: path.display().to_string(),
            source,
        };
        let db = sled::Config::new().path(path).open().map_err(wrap)?;
        let meta = db.open_tree(META_TREE).map_err(wrap)?;
        Ok(NodeStore {
            db,
            meta,
            path: path.to_path_buf(),
        })
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
}
