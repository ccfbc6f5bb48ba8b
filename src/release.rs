//! Signed releases: the manifest format, ed25519 signing and verification,
//! and the release signing key file.
//!
//! A release is two objects in the cluster's own storage: the binary
//! (`release.<version>.bin`) and its signed manifest
//! (`release.<version>.manifest`, JSON). The signature covers the manifest's
//! canonical CBOR encoding. Nodes trust only the keys listed in
//! `cluster_updates.release_public_keys`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

/// Object id of a release's binary.
pub fn binary_id(version: &semver::Version) -> String {
    format!("release.{version}.bin")
}

/// Object id of a release's signed manifest.
pub fn manifest_id(version: &semver::Version) -> String {
    format!("release.{version}.manifest")
}

use plexi_api::model::{ReleaseManifest, SignedRelease};

use crate::cli::ApiArgs;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReleaseError {
    #[error("key file {path}: {message}")]
    KeyFile { path: String, message: String },
    #[error("manifest: {0}")]
    Malformed(String),
    #[error("manifest signed by {0}, which is not in cluster_updates.release_public_keys")]
    Untrusted(String),
    #[error("manifest signature does not verify")]
    BadSignature,
    #[error("binary hash or size does not match the manifest")]
    HashMismatch,
    #[error("a newer manifest for version {0} is already published (replay refused)")]
    Replay(String),
}

fn canonical(manifest: &ReleaseManifest) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(manifest, &mut out).expect("encoding to a Vec cannot fail");
    out
}

/// Writes a new signing key (32-byte seed, hex, mode 0600); returns the
/// public key, hex.
pub fn keygen(path: &Path) -> Result<String, ReleaseError> {
    let err = |message: String| ReleaseError::KeyFile {
        path: path.display().to_string(),
        message,
    };
    let mut seed = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed);
    let key = SigningKey::from_bytes(&seed);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| err(e.to_string()))?;
    writeln!(f, "{}", hex::encode(seed)).map_err(|e| err(e.to_string()))?;
    f.sync_all().map_err(|e| err(e.to_string()))?;
    Ok(hex::encode(key.verifying_key().to_bytes()))
}

pub fn load_key(path: &Path) -> Result<SigningKey, ReleaseError> {
    let err = |message: String| ReleaseError::KeyFile {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let seed: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| err("not a 64-character hex ed25519 seed".into()))?;
    Ok(SigningKey::from_bytes(&seed))
}

pub fn sign(key: &SigningKey, manifest: ReleaseManifest) -> SignedRelease {
    let signature = key.sign(&canonical(&manifest));
    SignedRelease {
        public_key: hex::encode(key.verifying_key().to_bytes()),
        signature: hex::encode(signature.to_bytes()),
        manifest,
    }
}

/// Checks the signer is trusted and the signature verifies.
pub fn verify(signed: &SignedRelease, trusted: &[String]) -> Result<(), ReleaseError> {
    if !trusted
        .iter()
        .any(|k| k.eq_ignore_ascii_case(&signed.public_key))
    {
        return Err(ReleaseError::Untrusted(signed.public_key.clone()));
    }
    let key: [u8; 32] = hex::decode(&signed.public_key)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| ReleaseError::Malformed("public_key is not 32 bytes of hex".into()))?;
    let key = VerifyingKey::from_bytes(&key)
        .map_err(|_| ReleaseError::Malformed("public_key is not an ed25519 key".into()))?;
    let sig: [u8; 64] = hex::decode(&signed.signature)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| ReleaseError::Malformed("signature is not 64 bytes of hex".into()))?;
    key.verify_strict(&canonical(&signed.manifest), &Signature::from_bytes(&sig))
        .map_err(|_| ReleaseError::BadSignature)?;
    semver::Version::parse(&signed.manifest.version)
        .map_err(|e| ReleaseError::Malformed(format!("version: {e}")))?;
    Ok(())
}

/// Checks a binary against its manifest.
pub fn check_binary(manifest: &ReleaseManifest, bytes: &[u8]) -> Result<(), ReleaseError> {
    if bytes.len() as u64 != manifest.size_bytes
        || blake3::hash(bytes).to_hex().as_str() != manifest.blake3
    {
        return Err(ReleaseError::HashMismatch);
    }
    Ok(())
}

/// Refuses a manifest not newer than the one already published for its version.
pub fn check_not_replay(
    new: &ReleaseManifest,
    existing: Option<&ReleaseManifest>,
) -> Result<(), ReleaseError> {
    match existing {
        Some(old) if old.created_at_ms >= new.created_at_ms && old != new => {
            Err(ReleaseError::Replay(new.version.clone()))
        }
        _ => Ok(()),
    }
}

#[derive(clap::Subcommand, Debug)]
pub enum ReleaseCmd {
    /// Write a new release signing key; prints its public key (hex) last.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a binary and publish it into the cluster.
    Publish {
        #[arg(long)]
        binary: PathBuf,
        #[arg(long)]
        version: String,
        #[arg(long)]
        key: PathBuf,
        /// The release breaks compatibility (updates to it need force).
        #[arg(long)]
        breaking: bool,
        /// Oldest version that can update to this one.
        #[arg(long)]
        min_compatible: Option<String>,
        #[arg(long, default_value = "")]
        notes: String,
    },
    /// Published releases and whether the answering node trusts them.
    List {
        #[arg(long)]
        json: bool,
    },
}

pub async fn command(api: &ApiArgs, cmd: ReleaseCmd) -> anyhow::Result<()> {
    match cmd {
        ReleaseCmd::Keygen { out } => {
            let public = keygen(&out)?;
            eprintln!("wrote the signing key to {} (mode 0600); add the public key below to cluster_updates.release_public_keys", out.display());
            println!("{public}");
        }
        ReleaseCmd::Publish {
            binary,
            version,
            key,
            breaking,
            min_compatible,
            notes,
        } => {
            let v = semver::Version::parse(&version)
                .with_context(|| format!("--version {version:?}"))?;
            if let Some(m) = &min_compatible {
                semver::Version::parse(m).with_context(|| format!("--min-compatible {m:?}"))?;
            }
            let key = load_key(&key)?;
            let bytes = std::fs::read(&binary)
                .with_context(|| format!("cannot read {}", binary.display()))?;
            let manifest = ReleaseManifest {
                version: v.to_string(),
                blake3: blake3::hash(&bytes).to_hex().to_string(),
                size_bytes: bytes.len() as u64,
                breaking,
                min_compatible_version: min_compatible,
                notes,
                created_at_ms: crate::storage::wall_ms(),
            };
            let signed = sign(&key, manifest);
            let _: plexi_api::model::PutResult = api
                .call(
                    reqwest::Method::PUT,
                    &crate::cli::data_path(&binary_id(&v)),
                    &[
                        ("consistency", "strong".to_string()),
                        ("data_type", "application/x-executable".to_string()),
                    ],
                    Some(bytes.into()),
                )
                .await
                .context("uploading the binary")?;
            let view: plexi_api::model::ReleaseView = api
                .post_json("/api/v1/clustering/updates/releases", &signed)
                .await
                .context("publishing the manifest")?;
            println!(
                "published {} ({} bytes, blake3 {}) signed by {}{}",
                view.version,
                view.size_bytes,
                view.blake3,
                view.public_key,
                if view.trusted {
                    ""
                } else {
                    " (NOT trusted by the answering node)"
                }
            );
        }
        ReleaseCmd::List { json } => {
            let list: plexi_api::model::ReleaseList =
                api.get("/api/v1/clustering/updates/releases").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!(
                    "{:<12} {:>12} {:<8} {:<9} {:<25} BLAKE3",
                    "VERSION", "BYTES", "TRUSTED", "BREAKING", "CREATED"
                );
                for r in list.releases {
                    println!(
                        "{:<12} {:>12} {:<8} {:<9} {:<25} {}",
                        r.version, r.size_bytes, r.trusted, r.breaking, r.created_at, r.blake3
                    );
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(bin: &[u8], at: u64) -> ReleaseManifest {
        ReleaseManifest {
            version: "1.2.3".into(),
            blake3: blake3::hash(bin).to_hex().to_string(),
            size_bytes: bin.len() as u64,
            breaking: false,
            min_compatible_version: None,
            notes: "n".into(),
            created_at_ms: at,
        }
    }

    #[test]
    fn keygen_sign_verify_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("release.key");
        let public = keygen(&path).unwrap();
        assert_eq!(public.len(), 64);
        assert!(keygen(&path).is_err(), "never overwrites a key");
        let key = load_key(&path).unwrap();
        let bin = b"binary bytes";
        let signed = sign(&key, manifest(bin, 10));
        assert_eq!(signed.public_key, public);
        verify(&signed, std::slice::from_ref(&public)).unwrap();
        check_binary(&signed.manifest, bin).unwrap();

        // Untrusted key.
        assert!(matches!(
            verify(&signed, &["00".repeat(32)]),
            Err(ReleaseError::Untrusted(_))
        ));
        // Tampered manifest.
        let mut t = signed.clone();
        t.manifest.size_bytes += 1;
        assert_eq!(
            verify(&t, std::slice::from_ref(&public)),
            Err(ReleaseError::BadSignature)
        );
        // Tampered binary.
        assert_eq!(
            check_binary(&signed.manifest, b"binary bytez"),
            Err(ReleaseError::HashMismatch)
        );
        // Replay of an older manifest for the same version.
        let newer = sign(&key, manifest(bin, 20));
        assert!(check_not_replay(&signed.manifest, Some(&newer.manifest)).is_err());
        assert!(check_not_replay(&newer.manifest, Some(&signed.manifest)).is_ok());
        assert!(check_not_replay(&newer.manifest, Some(&newer.manifest)).is_ok());
    }

    #[cfg(unix)]
    #[test]
    fn key_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        keygen(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
