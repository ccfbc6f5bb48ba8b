//! Sealed backups: the node's data keys as the worker and the supervisor
//! both resolve them ([`DataKeys::resolve`]), and files and directory trees
//! sealed under a backup key derived from the data key, with the matching
//! open functions. Used for the store snapshot taken before a switch and the
//! config copy of the update engine's backup.
//!
//! The format and the cipher are [`plexi_util::sealed_stream`]'s (kept in
//! that crate so it is compiled optimised even in debug builds); each
//! file's relative path is its authenticated name, so a sealed file cannot
//! be renamed into another's place.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use plexi_util::sealed_stream::{self, STREAM_NONCE_BYTES};
pub use plexi_util::sealed_stream::{CHUNK_BYTES, HEADER_BYTES, MAGIC};
use plexi_util::secret::SecretKey;

use crate::config::Config;
use crate::files::fsync_dir;
use crate::keys::{self, KeyFileError, DATA_KEY_ENV};

/// The engine's sealed copy of the config file in a backup directory.
pub const SEALED_CONFIG: &str = "clustering.yml.sealed";

/// The node's data keys: the current one seals new object writes and
/// backups; retired ones only open what they sealed.
#[derive(Clone, Debug, Default)]
pub struct DataKeys {
    pub current: Option<SecretKey>,
    pub retired: Vec<SecretKey>,
}

impl DataKeys {
    /// The data key from `PLEXI_DATA_KEY` or `node.data_key_file`, and the
    /// retired keys from `node.retired_data_key_files`. Errors name the
    /// variable or file, never the key.
    pub fn resolve(config: &Config) -> Result<DataKeys, KeyFileError> {
        let current = keys::from_env_or_file(
            DATA_KEY_ENV,
            std::env::var(DATA_KEY_ENV).ok(),
            config.node.data_key_file.as_deref(),
        )?;
        let mut retired = Vec::new();
        for path in &config.node.retired_data_key_files {
            retired.push(keys::read_key_file(path)?);
        }
        if let Some((key, source)) = &current {
            tracing::info!(fingerprint = %key.fingerprint(), %source, retired = retired.len(), "data key: object bytes and backups are sealed at rest");
        } else if !retired.is_empty() {
            tracing::warn!(
                retired = retired.len(),
                "retired data keys but no current one: new object writes are not sealed"
            );
        }
        Ok(DataKeys {
            current: current.map(|(k, _)| k),
            retired,
        })
    }

    /// Every key, the current one first (for opening).
    pub fn all(&self) -> Vec<SecretKey> {
        self.current.iter().chain(&self.retired).cloned().collect()
    }
}

/// Seals `plain` into `out` under `key` with a fresh random nonce, `name`
/// authenticated with it (see [`plexi_util::sealed_stream`]).
pub fn seal_stream(
    plain: &mut impl Read,
    out: &mut impl Write,
    key: &SecretKey,
    name: &str,
) -> io::Result<()> {
    let mut nonce = [0u8; STREAM_NONCE_BYTES];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
    sealed_stream::seal(plain, out, key, &nonce, name)
}

/// Opens what [`seal_stream`] wrote, with whichever of `keys` sealed it.
/// Fails (`InvalidData`, naming the key id) on another key, a tampered,
/// truncated or renamed file. Bytes are written out chunk by chunk as they
/// verify; a caller writes to a temporary name and keeps it only on `Ok`.
pub fn open_stream(
    sealed: &mut impl Read,
    out: &mut impl Write,
    keys: &[SecretKey],
    name: &str,
) -> io::Result<()> {
    sealed_stream::open(sealed, out, keys, name)
}

/// Seals the file `src` as `dst` (fsynced), `name` authenticated with it.
pub fn seal_file(src: &Path, dst: &Path, key: &SecretKey, name: &str) -> io::Result<()> {
    let mut input = io::BufReader::new(File::open(src)?);
    let mut out = io::BufWriter::new(File::create(dst)?);
    seal_stream(&mut input, &mut out, key, name)?;
    let f = out.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()
}

/// Opens the sealed file `src` into `dst` (fsynced); `dst` is removed on
/// failure.
pub fn open_file(src: &Path, dst: &Path, keys: &[SecretKey], name: &str) -> io::Result<()> {
    let res = (|| {
        let mut input = io::BufReader::new(File::open(src)?);
        let mut out = io::BufWriter::new(File::create(dst)?);
        open_stream(&mut input, &mut out, keys, name)?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()
    })();
    if res.is_err() {
        let _ = fs::remove_file(dst);
    }
    res
}

/// Seals every file of the tree `src` into the same relative paths under
/// `dst` (directories and symlinks as they are; each file's relative path
/// is its authenticated name), leaving out the top-level entry `except`.
pub fn seal_dir(src: &Path, dst: &Path, key: &SecretKey, except: Option<&str>) -> io::Result<()> {
    walk(src, dst, Path::new(""), except, &mut |from, to, rel| {
        seal_file(from, to, key, &rel_name(rel))
    })
}

/// Opens a tree [`seal_dir`] wrote into `dst`: byte-identical files;
/// the top-level entry `except` is left out.
pub fn open_dir(
    src: &Path,
    dst: &Path,
    keys: &[SecretKey],
    except: Option<&str>,
) -> io::Result<()> {
    walk(src, dst, Path::new(""), except, &mut |from, to, rel| {
        open_file(from, to, keys, &rel_name(rel))
    })
}

fn rel_name(rel: &Path) -> String {
    rel.to_string_lossy().into_owned()
}

/// Mirrors the tree `src` to `dst`, calling `file` for each regular file;
/// `except` names a top-level entry left out.
fn walk(
    src: &Path,
    dst: &Path,
    rel: &Path,
    except: Option<&str>,
    file: &mut dyn FnMut(&Path, &Path, &Path) -> io::Result<()>,
) -> io::Result<()> {
    fs::create_dir_all(dst)?;
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        if except.is_some_and(|x| entry.file_name() == x) {
            continue;
        }
        let kind = entry.file_type()?;
        let to = dst.join(entry.file_name());
        let rel: PathBuf = rel.join(entry.file_name());
        if kind.is_dir() {
            walk(&entry.path(), &to, &rel, None, file)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(entry.path())?, &to)?;
        } else {
            file(&entry.path(), &to, &rel)?;
        }
    }
    fsync_dir(dst)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SecretKey {
        SecretKey::from_bytes([b; 32])
    }

    fn seal(data: &[u8], k: &SecretKey, name: &str) -> Vec<u8> {
        let mut out = Vec::new();
        seal_stream(&mut &data[..], &mut out, k, name).unwrap();
        out
    }

    fn open(sealed: &[u8], keys: &[SecretKey], name: &str) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        open_stream(&mut &sealed[..], &mut out, keys, name).map(|_| out)
    }

    #[test]
    fn stream_round_trips_at_chunk_boundaries() {
        for len in [
            0,
            1,
            CHUNK_BYTES - 1,
            CHUNK_BYTES,
            CHUNK_BYTES + 1,
            3 * CHUNK_BYTES,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let sealed = seal(&data, &key(1), "f");
            assert_eq!(
                open(&sealed, &[key(2), key(1)], "f").unwrap(),
                data,
                "len {len}"
            );
        }
    }

    #[test]
    fn wrong_key_tamper_truncation_rename_fail() {
        let data = vec![7u8; 2 * CHUNK_BYTES + 10];
        let sealed = seal(&data, &key(1), "a/b");
        let e = open(&sealed, &[key(2)], "a/b").unwrap_err();
        assert!(e.to_string().contains(&key(1).fingerprint()), "{e}");
        assert!(open(&sealed, &[key(1)], "a/c").is_err(), "renamed");
        let mut t = sealed.clone();
        t[HEADER_BYTES + 5] ^= 1;
        assert!(open(&t, &[key(1)], "a/b").is_err(), "tampered");
        let cut = HEADER_BYTES + CHUNK_BYTES + 16;
        assert!(
            open(&sealed[..cut], &[key(1)], "a/b").is_err(),
            "truncated at a chunk boundary"
        );
        assert!(open(&sealed[..sealed.len() - 1], &[key(1)], "a/b").is_err());
        assert!(open(b"plain", &[key(1)], "a/b").is_err());
    }

    /// The engine's backup seals the config copy with `seal_file` under
    /// `SEALED_CONFIG`: no plaintext, only the key opens it, identical bytes.
    #[test]
    fn sealed_config_copy_opens_only_with_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("clustering.yml");
        let text = "node:\n  name: CONFIG-MARKER-91c2\n  data_key_file: /etc/plexi/data.key\n";
        fs::write(&cfg, text).unwrap();
        let sealed = dir.path().join(SEALED_CONFIG);
        seal_file(&cfg, &sealed, &key(3), SEALED_CONFIG).unwrap();
        let bytes = fs::read(&sealed).unwrap();
        assert!(!bytes.windows(13).any(|w| w == b"CONFIG-MARKER"));
        assert!(!bytes.windows(13).any(|w| w == b"data_key_file"));
        let out = dir.path().join("opened.yml");
        let e = open_file(&sealed, &out, &[key(4)], SEALED_CONFIG).unwrap_err();
        assert!(e.to_string().contains(&key(3).fingerprint()), "{e}");
        assert!(!out.exists(), "nothing left behind by a failed open");
        open_file(&sealed, &out, &[key(4), key(3)], SEALED_CONFIG).unwrap();
        assert_eq!(fs::read(&out).unwrap(), text.as_bytes());
    }
}
