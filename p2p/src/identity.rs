//! The node's persistent libp2p identity: an ed25519 keypair in the data dir
//! (protobuf encoding, mode 0600), created on first start.

use std::io::Write;
use std::path::Path;

use libp2p::identity::{Keypair, PublicKey};
use libp2p::PeerId;

use crate::P2pError;

/// Loads the keypair at `path`, or creates and stores a new one.
pub fn load_or_create(path: &Path) -> Result<Keypair, P2pError> {
    let err = |message: String| P2pError::Identity {
        path: path.display().to_string(),
        message,
    };
    if path.exists() {
        let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        return Keypair::from_protobuf_encoding(&bytes)
            .map_err(|e| err(format!("not a keypair: {e}")));
    }
    let key = Keypair::generate_ed25519();
    let bytes = key.to_protobuf_encoding().map_err(|e| err(e.to_string()))?;
    let tmp = path.with_extension("tmp");
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp).map_err(|e| err(e.to_string()))?;
        f.write_all(&bytes).map_err(|e| err(e.to_string()))?;
        f.sync_all().map_err(|e| err(e.to_string()))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))?;
    Ok(key)
}

/// Multihash code of an identity hash: an ed25519 peer id embeds its
/// public key (36 bytes of protobuf) instead of hashing it.
const IDENTITY_MULTIHASH: u64 = 0x00;

/// Whether `signature` over `msg` verifies under the public key that `peer`
/// embeds (ed25519 peer ids do). False for a peer id that does not embed
/// its key, so nothing signed can be pinned on a peer id without its key.
pub fn verify_signed_by(peer: &PeerId, msg: &[u8], signature: &[u8]) -> bool {
    let hash = peer.as_ref();
    if hash.code() != IDENTITY_MULTIHASH {
        return false;
    }
    match PublicKey::try_decode_protobuf(hash.digest()) {
        Ok(key) => PeerId::from_public_key(&key) == *peer && key.verify(msg, signature),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_survives_reload() {
        let dir = std::env::temp_dir().join(format!("plexi-id-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("identity.key");
        let _ = std::fs::remove_file(&path);
        let a = load_or_create(&path).unwrap();
        let b = load_or_create(&path).unwrap();
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn signatures_verify_only_under_the_signer() {
        let a = Keypair::generate_ed25519();
        let b = Keypair::generate_ed25519();
        let sig = a.sign(b"msg").unwrap();
        let pa = a.public().to_peer_id();
        assert!(verify_signed_by(&pa, b"msg", &sig));
        assert!(!verify_signed_by(&pa, b"other", &sig));
        assert!(!verify_signed_by(&b.public().to_peer_id(), b"msg", &sig));
        assert!(!verify_signed_by(&PeerId::random(), b"msg", &sig));
        assert!(!verify_signed_by(&pa, b"msg", b"short"));
    }
}
