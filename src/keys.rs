//! Where the node's secret keys come from: the cluster key (who may join)
//! and the data key (encryption at rest), each from an environment variable
//! (64 hex), a key file named in the config, or, for the cluster key of a
//! first node, a file the node creates in its data dir (mode 0600). Logs and
//! errors name a key by its fingerprint and a file by its path, never the key.

use std::path::{Path, PathBuf};

use plexi_util::secret::SecretKey;

/// Environment variable holding the cluster key.
pub const CLUSTER_KEY_ENV: &str = "PLEXI_CLUSTER_KEY";
/// Environment variable holding the data key.
pub const DATA_KEY_ENV: &str = "PLEXI_DATA_KEY";
/// The cluster key a first node creates in its data dir.
pub const CLUSTER_KEY_FILE: &str = "cluster.key";

/// Where a key was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// An environment variable (its name).
    Env(&'static str),
    /// A key file that existed.
    File(PathBuf),
    /// A key file this start created.
    Created(PathBuf),
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Env(var) => write!(f, "environment variable {var}"),
            KeySource::File(p) => write!(f, "key file {}", p.display()),
            KeySource::Created(p) => write!(f, "new key file {}", p.display()),
        }
    }
}

/// A key that cannot be read or made.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("{source_name}: {reason}")]
    Invalid { source_name: String, reason: String },
    #[error("key file {path}: {reason}")]
    Io { path: String, reason: String },
}

/// Reads a key file: 64 hex characters, surrounding whitespace ignored.
pub fn read_key_file(path: &Path) -> Result<SecretKey, KeyFileError> {
    let text = std::fs::read_to_string(path).map_err(|e| KeyFileError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    SecretKey::from_hex(&text).map_err(|e| KeyFileError::Invalid {
        source_name: format!("key file {}", path.display()),
        reason: e.to_string(),
    })
}

/// Creates a new random key in `path` (mode 0600; fails if it exists).
pub fn create_key_file(path: &Path) -> Result<SecretKey, KeyFileError> {
    let mut bytes = [0u8; plexi_util::secret::KEY_BYTES];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    let key = SecretKey::from_bytes(bytes);
    crate::files::create_private_file(path, format!("{}\n", key.to_hex()).as_bytes()).map_err(
        |e| KeyFileError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        },
    )?;
    Ok(key)
}

/// The key from the environment variable `var` (its value `env_value`, an
/// empty value counting as unset), else from `file`; `None` if neither.
pub fn from_env_or_file(
    var: &'static str,
    env_value: Option<String>,
    file: Option<&Path>,
) -> Result<Option<(SecretKey, KeySource)>, KeyFileError> {
    if let Some(v) = env_value.filter(|v| !v.trim().is_empty()) {
        let key = SecretKey::from_hex(&v).map_err(|e| KeyFileError::Invalid {
            source_name: format!("environment variable {var}"),
            reason: e.to_string(),
        })?;
        return Ok(Some((key, KeySource::Env(var))));
    }
    match file {
        Some(path) => Ok(Some((read_key_file(path)?, KeySource::File(path.into())))),
        None => Ok(None),
    }
}

/// The cluster key for a start, looked for in order: `PLEXI_CLUSTER_KEY`
/// (its value `env_value`), the config's `node.cluster_key_file`, then an
/// existing `DATA_DIR/cluster.key`. `None` if none of them is there.
pub fn find_cluster_key(
    env_value: Option<String>,
    config_file: Option<&Path>,
    data_dir: &Path,
) -> Result<Option<(SecretKey, KeySource)>, KeyFileError> {
    if let Some(found) = from_env_or_file(CLUSTER_KEY_ENV, env_value, config_file)? {
        return Ok(Some(found));
    }
    let own = data_dir.join(CLUSTER_KEY_FILE);
    if own.exists() {
        return Ok(Some((read_key_file(&own)?, KeySource::File(own))));
    }
    Ok(None)
}

/// Why a node that joins a cluster without a cluster key cannot start.
pub fn missing_cluster_key(data_dir: &Path) -> String {
    format!(
        "joining a cluster (--bootstrap, node.bootstrap or remembered peers) needs the cluster's key, \
         and none is set: set {CLUSTER_KEY_ENV} (64 hex characters) or node.cluster_key_file to the \
         cluster's key; its first node keeps it in its DATA_DIR/{CLUSTER_KEY_FILE} (this node's would \
         be {})",
        data_dir.join(CLUSTER_KEY_FILE).display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn created_key_reads_back_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CLUSTER_KEY_FILE);
        let key = create_key_file(&path).unwrap();
        assert_eq!(read_key_file(&path).unwrap(), key);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(create_key_file(&path).is_err(), "never overwrites a key");
    }

    #[test]
    fn env_wins_and_errors_name_the_source_not_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let key = create_key_file(&path).unwrap();
        let hex = "ab".repeat(32);
        let (k, src) = from_env_or_file(DATA_KEY_ENV, Some(hex.clone()), Some(&path))
            .unwrap()
            .unwrap();
        assert_eq!(k.to_hex(), hex);
        assert_eq!(src, KeySource::Env(DATA_KEY_ENV));
        let (k, src) = from_env_or_file(DATA_KEY_ENV, Some(" ".into()), Some(&path))
            .unwrap()
            .unwrap();
        assert_eq!((k, src), (key, KeySource::File(path.clone())));
        let bad = "zz".repeat(32);
        let e = from_env_or_file(DATA_KEY_ENV, Some(bad.clone()), None).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains(DATA_KEY_ENV) && !text.contains(&bad),
            "{text}"
        );
        assert!(from_env_or_file(DATA_KEY_ENV, None, None)
            .unwrap()
            .is_none());
    }

    #[test]
    fn cluster_key_from_env_then_config_file_then_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        assert!(find_cluster_key(None, None, dir.path()).unwrap().is_none());
        let own = create_key_file(&dir.path().join(CLUSTER_KEY_FILE)).unwrap();
        let (k, src) = find_cluster_key(None, None, dir.path()).unwrap().unwrap();
        assert_eq!(k, own);
        assert!(matches!(src, KeySource::File(_)));
        let other = dir.path().join("other.key");
        let configured = create_key_file(&other).unwrap();
        let (k, _) = find_cluster_key(None, Some(&other), dir.path())
            .unwrap()
            .unwrap();
        assert_eq!(k, configured);
        let hex = "cd".repeat(32);
        let (k, src) = find_cluster_key(Some(hex.clone()), Some(&other), dir.path())
            .unwrap()
            .unwrap();
        assert_eq!((k.to_hex(), src), (hex, KeySource::Env(CLUSTER_KEY_ENV)));
        let msg = missing_cluster_key(dir.path());
        assert!(msg.contains(CLUSTER_KEY_ENV) && msg.contains("node.cluster_key_file"));
        assert!(msg.contains(CLUSTER_KEY_FILE));
    }
}
