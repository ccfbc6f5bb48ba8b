//! `plexi release keygen|publish|list`: the release signing key file, and
//! publishing a signed binary into the cluster's own storage through any
//! node's API. Signing and verification themselves live in
//! `crate::updates::release`, beside the checks every node runs.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use ed25519_dalek::SigningKey;
use plexi_api::model::{PutResult, ReleaseList, ReleaseManifest, ReleaseView, SignedRelease};

use super::client::{data_path, ApiArgs};
use super::table::{Left, Right, Table};
use crate::updates::release::{binary_id, sign};

/// Writes a new signing key (32-byte seed, hex, mode 0600); returns the
/// public key, hex.
pub fn keygen(path: &Path) -> anyhow::Result<String> {
    let err = |message: String| anyhow::anyhow!("key file {}: {message}", path.display());
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

pub fn load_key(path: &Path) -> anyhow::Result<SigningKey> {
    let err = |message: String| anyhow::anyhow!("key file {}: {message}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let seed: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| err("not a 64-character hex ed25519 seed".into()))?;
    Ok(SigningKey::from_bytes(&seed))
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
            Ok(())
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
                created_at_ms: plexi_util::clock::wall_ms(),
            };
            publish(api, &v, bytes, sign(&key, manifest)).await
        }
        ReleaseCmd::List { json } => list(api, json).await,
    }
}

/// Uploads the binary (strong consistency), then posts its signed manifest.
async fn publish(
    api: &ApiArgs,
    v: &semver::Version,
    bytes: Vec<u8>,
    signed: SignedRelease,
) -> anyhow::Result<()> {
    let _: PutResult = api
        .call(
            reqwest::Method::PUT,
            &data_path(&binary_id(v)),
            &[
                ("consistency", "strong".to_string()),
                ("data_type", "application/x-executable".to_string()),
            ],
            Some(bytes.into()),
        )
        .await
        .context("uploading the binary")?;
    let view: ReleaseView = api
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
    Ok(())
}

async fn list(api: &ApiArgs, json: bool) -> anyhow::Result<()> {
    let list: ReleaseList = api.get("/api/v1/clustering/updates/releases").await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    let mut t = Table::new(&[
        ("VERSION", Left),
        ("BYTES", Right),
        ("TRUSTED", Left),
        ("BREAKING", Left),
        ("CREATED", Left),
        ("BLAKE3", Left),
    ]);
    for r in list.releases {
        t.row([
            r.version,
            r.size_bytes.to_string(),
            r.trusted.to_string(),
            r.breaking.to_string(),
            r.created_at.to_string(),
            r.blake3,
        ]);
    }
    t.print();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_writes_a_loadable_key_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("release.key");
        let public = keygen(&path).unwrap();
        assert_eq!(public.len(), 64);
        assert!(keygen(&path).is_err(), "never overwrites a key");
        let key = load_key(&path).unwrap();
        assert_eq!(hex::encode(key.verifying_key().to_bytes()), public);
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
