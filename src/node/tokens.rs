//! Resolves the API tokens a node accepts: `PLEXI_ADMIN_TOKEN` and
//! `PLEXI_READ_TOKEN` from the environment, named tokens (blake3 hashes) from
//! `node.tokens`, and, when no admin token is configured, a generated one in
//! `DATA_DIR/admin.token` (mode 0600). The token itself is never logged.
//! At start, a token name not seen before (or whose role or token changed)
//! is audited, by name and role only.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use plexi_api::{Role, TokenEntry, TokenSet};

use crate::audit::AuditLog;
use crate::config::{Config, TokenRole};

pub const ADMIN_TOKEN_FILE: &str = "admin.token";

#[derive(Debug, thiserror::Error)]
#[error("admin token file {path}: {message}")]
pub struct TokenError {
    pub path: String,
    pub message: String,
}

/// The token set, and the path of a generated admin token if one is in use.
pub fn resolve(
    config: &Config,
    data_dir: &Path,
    env_admin: Option<String>,
    env_read: Option<String>,
) -> Result<(TokenSet, Option<PathBuf>), TokenError> {
    let mut entries = Vec::new();
    for t in &config.node.tokens {
        entries.push(TokenEntry {
            name: t.name.clone(),
            role: match t.role {
                TokenRole::Admin => Role::Admin,
                TokenRole::Read => Role::Read,
            },
            hash: blake3::Hash::from_hex(&t.blake3).expect("validated by Config::validate"),
        });
    }
    for (name, role, value) in [
        ("env-admin", Role::Admin, env_admin),
        ("env-read", Role::Read, env_read),
    ] {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            entries.push(TokenEntry {
                name: name.into(),
                role,
                hash: blake3::hash(v.as_bytes()),
            });
        }
    }
    let mut generated = None;
    if !entries.iter().any(|e| e.role == Role::Admin) {
        let path = data_dir.join(ADMIN_TOKEN_FILE);
        let token = load_or_create(&path)?;
        entries.push(TokenEntry {
            name: "generated-admin".into(),
            role: Role::Admin,
            hash: blake3::hash(token.as_bytes()),
        });
        generated = Some(path);
    }
    Ok((TokenSet::new(entries), generated))
}

/// Audits, in the background, the token names new to this node (see
/// `AuditLog::record_tokens`).
pub fn spawn_audit(audit: Arc<AuditLog>, tokens: &TokenSet, node_name: &str) {
    let list: Vec<(String, &'static str, [u8; 32])> = tokens
        .entries()
        .iter()
        .map(|e| (e.name.clone(), e.role.as_str(), *e.hash.as_bytes()))
        .collect();
    let actor = format!("node:{node_name}");
    tokio::spawn(async move {
        match audit.record_tokens(&actor, list).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(tokens = n, "new or changed API tokens audited"),
            Err(e) => tracing::error!(error = %e, "API token configuration not audited"),
        }
    });
}

fn load_or_create(path: &Path) -> Result<String, TokenError> {
    let err = |message: String| TokenError {
        path: path.display().to_string(),
        message,
    };
    if path.exists() {
        let token = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let token = token.trim().to_string();
        if token.len() < 16 {
            return Err(err(
                "holds fewer than 16 characters; delete it to generate a new one".into(),
            ));
        }
        return Ok(token);
    }
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    let token = hex::encode(bytes);
    crate::files::create_private_file(path, format!("{token}\n").as_bytes())
        .map_err(|e| err(e.to_string()))?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_admin_token_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let (set, path) =
            resolve(&Config::default(), dir.path(), None, Some("r".repeat(20))).unwrap();
        let path = path.unwrap();
        let token = std::fs::read_to_string(&path).unwrap();
        assert_eq!(set.identify(token.trim()).unwrap().role, Role::Admin);
        assert_eq!(set.identify(&"r".repeat(20)).unwrap().role, Role::Read);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let (again, _) = resolve(&Config::default(), dir.path(), None, None).unwrap();
        assert!(again.identify(token.trim()).is_some());
    }

    #[test]
    fn env_admin_means_no_generated_file() {
        let dir = tempfile::tempdir().unwrap();
        let (set, path) =
            resolve(&Config::default(), dir.path(), Some("a".repeat(20)), None).unwrap();
        assert!(path.is_none());
        assert!(!dir.path().join(ADMIN_TOKEN_FILE).exists());
        assert_eq!(set.identify(&"a".repeat(20)).unwrap().name, "env-admin");
    }
}
