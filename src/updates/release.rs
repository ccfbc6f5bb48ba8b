//! Signed releases: the manifest format, ed25519 signing and verification,
//! and the release signing key file.
//!
//! A release is two objects in the cluster's own storage: the binary
//! (`release.<version>.bin`) and its signed manifest
//! (`release.<version>.manifest`, JSON). The signature covers the manifest's
//! canonical CBOR encoding. Nodes trust only the keys listed in
//! `cluster_updates.release_public_keys`.

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

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ReleaseError {
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
    fn sign_verify_and_refusals() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let public = hex::encode(key.verifying_key().to_bytes());
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
}
