//! Encryption at rest of object bytes: the [`Keyring`] (the current data key
//! and the retired ones still accepted for reads) and the stored value format.
//!
//! A stored value is one of:
//!
//! ```text
//! plain   : the object's bytes, exactly `size_bytes` long (the format of a
//!           store written without a data key, unchanged)
//! sealed  : 0x01 | key id (8) | nonce (24) | XChaCha20-Poly1305(bytes) (size + 16)
//! ```
//!
//! so the two are told apart by length alone (a sealed value is always
//! [`SEAL_OVERHEAD`] bytes longer than the object, a plain one exactly as
//! long), and the format byte is checked too. The cipher key is derived from
//! the data key with blake3 `derive_key` ([`OBJECT_KEY_CONTEXT`]); the key id
//! is the data key's fingerprint, so one data key always gives one key id.
//! The associated data binds the header, the object id and its version: a
//! ciphertext moved to another object or version fails to open. The nonce
//! is random per write (24 bytes: collisions are negligible).

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::Tag;
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use plexi_util::hlc::Version;
use plexi_util::secret::SecretKey;

pub use plexi_util::at_rest::{KeyId, FORMAT_SEALED_V1, KEY_ID_BYTES};
/// Bytes of an XChaCha20 nonce.
pub const NONCE_BYTES: usize = 24;
/// Bytes of the Poly1305 tag.
pub const TAG_BYTES: usize = 16;
/// Format byte, key id and nonce.
pub const HEADER_BYTES: usize = 1 + KEY_ID_BYTES + NONCE_BYTES;
/// How much longer a sealed value is than the object's bytes.
pub const SEAL_OVERHEAD: usize = HEADER_BYTES + TAG_BYTES;
/// blake3 `derive_key` context of the object cipher key.
pub const OBJECT_KEY_CONTEXT: &str = "plexi 2026 object data v1";
/// Bound on retired data keys a keyring holds (each costs one cipher).
pub const MAX_RETIRED_KEYS: usize = 16;

/// How a stored value is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueKind {
    Plain,
    Sealed(KeyId),
}

/// Why a stored value does not give back the object's bytes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Sealed under a key this node does not hold.
    #[error("sealed under data key {0}, which this node does not hold")]
    UnknownKey(KeyId),
    /// Neither a plain nor a sealed value of this size, or the tag fails
    /// (tampered bytes, another object's or version's ciphertext).
    #[error("the stored value is neither the plain object nor a value sealed for it")]
    Invalid,
}

struct Entry {
    id: KeyId,
    cipher: XChaCha20Poly1305,
    secret: SecretKey,
}

impl Entry {
    fn new(secret: SecretKey) -> Self {
        let key = secret.derive(OBJECT_KEY_CONTEXT);
        Entry {
            id: KeyId::of(&secret),
            cipher: XChaCha20Poly1305::new(&key.into()),
            secret,
        }
    }
}

/// The data keys of a node: the current one seals new writes; the retired
/// ones only open what they sealed. Without a current key, writes are plain.
pub struct Keyring {
    current: Option<Entry>,
    retired: Vec<Entry>,
}

impl Default for Keyring {
    fn default() -> Self {
        Keyring::none()
    }
}

impl Keyring {
    /// No data key: values are written plain (and sealed ones cannot open).
    pub fn none() -> Self {
        Keyring {
            current: None,
            retired: Vec::new(),
        }
    }

    /// `current` seals new writes; `retired` (at most [`MAX_RETIRED_KEYS`],
    /// the rest ignored with a warning) still open old values.
    pub fn new(current: Option<SecretKey>, retired: Vec<SecretKey>) -> Self {
        if retired.len() > MAX_RETIRED_KEYS {
            tracing::warn!(
                given = retired.len(),
                kept = MAX_RETIRED_KEYS,
                "too many retired data keys; the oldest ones are ignored"
            );
        }
        let current = current.map(Entry::new);
        let mut kept: Vec<Entry> = Vec::new();
        for k in retired.into_iter().take(MAX_RETIRED_KEYS) {
            let e = Entry::new(k);
            let dup =
                current.as_ref().is_some_and(|c| c.id == e.id) || kept.iter().any(|r| r.id == e.id);
            if !dup {
                kept.push(e);
            }
        }
        Keyring {
            current,
            retired: kept,
        }
    }

    /// The key id new writes are sealed under, if any.
    pub fn current_id(&self) -> Option<KeyId> {
        self.current.as_ref().map(|e| e.id)
    }

    /// The current data key (for sealing backups).
    pub fn current_key(&self) -> Option<&SecretKey> {
        self.current.as_ref().map(|e| &e.secret)
    }

    /// Every data key held, the current one first (for opening backups).
    pub fn keys(&self) -> Vec<SecretKey> {
        self.current
            .iter()
            .chain(&self.retired)
            .map(|e| e.secret.clone())
            .collect()
    }

    /// Key ids of the retired keys.
    pub fn retired_ids(&self) -> Vec<KeyId> {
        self.retired.iter().map(|e| e.id).collect()
    }

    fn entry(&self, id: KeyId) -> Option<&Entry> {
        self.current
            .iter()
            .chain(&self.retired)
            .find(|e| e.id == id)
    }

    /// The stored value for `data`: sealed under the current key, or the
    /// bytes themselves without one.
    pub fn seal(&self, data_id: &str, version: &Version, data: &[u8]) -> Vec<u8> {
        let Some(cur) = &self.current else {
            return data.to_vec();
        };
        let mut nonce = [0u8; NONCE_BYTES];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
        let mut header = [0u8; HEADER_BYTES];
        header[0] = FORMAT_SEALED_V1;
        header[1..1 + KEY_ID_BYTES].copy_from_slice(&cur.id.0);
        header[1 + KEY_ID_BYTES..].copy_from_slice(&nonce);
        let aad = associated_data(&header, data_id, version);
        // One buffer, encrypted in place: the object's bytes are copied once.
        let mut out = Vec::with_capacity(SEAL_OVERHEAD + data.len());
        out.extend_from_slice(&header);
        out.extend_from_slice(data);
        let tag = cur
            .cipher
            .encrypt_in_place_detached(XNonce::from_slice(&nonce), &aad, &mut out[HEADER_BYTES..])
            .expect("XChaCha20-Poly1305 encrypts any message that fits in memory");
        out.extend_from_slice(&tag);
        out
    }

    /// The object's bytes from its stored value (`size` from its metadata),
    /// opened in the value's own buffer. The caller still checks them
    /// against the checksum.
    pub fn open(
        &self,
        data_id: &str,
        version: &Version,
        size: u64,
        mut stored: Vec<u8>,
    ) -> Result<Vec<u8>, OpenError> {
        match kind_of(&stored, size).ok_or(OpenError::Invalid)? {
            ValueKind::Plain => Ok(stored),
            ValueKind::Sealed(id) => {
                let entry = self.entry(id).ok_or(OpenError::UnknownKey(id))?;
                let mut header = [0u8; HEADER_BYTES];
                header.copy_from_slice(&stored[..HEADER_BYTES]);
                let aad = associated_data(&header, data_id, version);
                let tag = Tag::clone_from_slice(&stored[stored.len() - TAG_BYTES..]);
                let end = stored.len() - TAG_BYTES;
                entry
                    .cipher
                    .decrypt_in_place_detached(
                        XNonce::from_slice(&header[1 + KEY_ID_BYTES..]),
                        &aad,
                        &mut stored[HEADER_BYTES..end],
                        &tag,
                    )
                    .map_err(|_| OpenError::Invalid)?;
                stored.truncate(end);
                stored.drain(..HEADER_BYTES);
                Ok(stored)
            }
        }
    }
}

/// How `stored` is kept, for an object of `size` bytes; `None` if it is
/// neither a plain nor a sealed value of that size.
pub fn kind_of(stored: &[u8], size: u64) -> Option<ValueKind> {
    kind_of_head(stored.len() as u64, stored, size)
}

/// [`kind_of`] from a stored value's length and its first bytes (at least
/// [`KIND_HEAD_BYTES`] of them, or all of a shorter value): what a value
/// kept in a file needs read of it.
pub fn kind_of_head(len: u64, head: &[u8], size: u64) -> Option<ValueKind> {
    if len == size {
        return Some(ValueKind::Plain);
    }
    if len == size.checked_add(SEAL_OVERHEAD as u64)?
        && head.len() >= KIND_HEAD_BYTES
        && head[0] == FORMAT_SEALED_V1
    {
        let mut id = [0u8; KEY_ID_BYTES];
        id.copy_from_slice(&head[1..1 + KEY_ID_BYTES]);
        return Some(ValueKind::Sealed(KeyId(id)));
    }
    None
}

/// The bytes of a stored value that tell its kind: format byte and key id.
pub const KIND_HEAD_BYTES: usize = 1 + KEY_ID_BYTES;

/// header ++ data id length (u32 BE) ++ data id ++ version.
fn associated_data(header: &[u8], data_id: &str, v: &Version) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len() + 4 + data_id.len() + 20);
    aad.extend_from_slice(header);
    aad.extend_from_slice(&(data_id.len() as u32).to_be_bytes());
    aad.extend_from_slice(data_id.as_bytes());
    aad.extend_from_slice(&v.physical_ms.to_be_bytes());
    aad.extend_from_slice(&v.logical.to_be_bytes());
    aad.extend_from_slice(&v.node.to_be_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v(ms: u64) -> Version {
        Version {
            physical_ms: ms,
            logical: 0,
            node: 7,
        }
    }

    fn key(b: u8) -> SecretKey {
        SecretKey::from_bytes([b; 32])
    }

    #[test]
    fn seal_open_round_trip_and_no_plaintext() {
        let ring = Keyring::new(Some(key(1)), vec![]);
        let data = b"a marker that must not be on disk".to_vec();
        let sealed = ring.seal("obj", &v(10), &data);
        assert_eq!(sealed.len(), data.len() + SEAL_OVERHEAD);
        assert!(!sealed.windows(8).any(|w| w == b"a marker"));
        assert_eq!(
            kind_of(&sealed, data.len() as u64),
            Some(ValueKind::Sealed(KeyId::of(&key(1))))
        );
        assert_eq!(
            ring.open("obj", &v(10), data.len() as u64, sealed.clone())
                .unwrap(),
            data
        );
        // A fresh nonce per write.
        assert_ne!(sealed, ring.seal("obj", &v(10), &data));
    }

    #[test]
    fn key_id_is_stable_and_differs_between_keys() {
        assert_eq!(KeyId::of(&key(1)), KeyId::of(&key(1)));
        assert_ne!(KeyId::of(&key(1)), KeyId::of(&key(2)));
        assert_eq!(KeyId::of(&key(1)).to_string(), key(1).fingerprint());
    }

    #[test]
    fn unknown_key_id_is_named() {
        let a = Keyring::new(Some(key(1)), vec![]);
        let b = Keyring::new(Some(key(2)), vec![]);
        let sealed = a.seal("obj", &v(1), b"bytes");
        let e = b.open("obj", &v(1), 5, sealed.clone()).unwrap_err();
        assert_eq!(e, OpenError::UnknownKey(KeyId::of(&key(1))));
        assert!(e.to_string().contains(&key(1).fingerprint()));
        // A node without any key cannot open it either.
        assert!(matches!(
            Keyring::none().open("obj", &v(1), 5, sealed.clone()),
            Err(OpenError::UnknownKey(_))
        ));
    }

    #[test]
    fn associated_data_binds_object_and_version() {
        let ring = Keyring::new(Some(key(1)), vec![]);
        let sealed = ring.seal("obj", &v(1), b"bytes");
        assert_eq!(
            ring.open("other", &v(1), 5, sealed.clone()),
            Err(OpenError::Invalid)
        );
        assert_eq!(
            ring.open("obj", &v(2), 5, sealed.clone()),
            Err(OpenError::Invalid)
        );
        let mut later = v(1);
        later.logical = 1;
        assert_eq!(
            ring.open("obj", &later, 5, sealed.clone()),
            Err(OpenError::Invalid)
        );
    }

    #[test]
    fn tampered_ciphertext_or_header_fails() {
        let ring = Keyring::new(Some(key(1)), vec![key(2)]);
        let sealed = ring.seal("obj", &v(1), b"some bytes");
        for i in [HEADER_BYTES, sealed.len() - 1, 1 + KEY_ID_BYTES + 3] {
            let mut t = sealed.clone();
            t[i] ^= 1;
            assert_eq!(
                ring.open("obj", &v(1), 10, t.clone()),
                Err(OpenError::Invalid)
            );
        }
        // A key id rewritten to another key this node holds: still refused.
        let mut t = sealed.clone();
        t[1..1 + KEY_ID_BYTES].copy_from_slice(&KeyId::of(&key(2)).0);
        assert_eq!(
            ring.open("obj", &v(1), 10, t.clone()),
            Err(OpenError::Invalid)
        );
        // Wrong length for the object: neither plain nor sealed.
        assert_eq!(
            ring.open("obj", &v(1), 10, sealed[..sealed.len() - 1].to_vec()),
            Err(OpenError::Invalid)
        );
    }

    #[test]
    fn rotation_keeps_old_values_readable() {
        let old = Keyring::new(Some(key(1)), vec![]);
        let sealed_old = old.seal("obj", &v(1), b"old");
        let new = Keyring::new(Some(key(2)), vec![key(1)]);
        assert_eq!(new.current_id(), Some(KeyId::of(&key(2))));
        assert_eq!(
            new.open("obj", &v(1), 3, sealed_old.clone()).unwrap(),
            b"old"
        );
        let sealed_new = new.seal("obj", &v(2), b"new");
        assert_eq!(
            kind_of(&sealed_new, 3),
            Some(ValueKind::Sealed(KeyId::of(&key(2))))
        );
        // Without the retired key the old value is refused by id.
        let only_new = Keyring::new(Some(key(2)), vec![]);
        assert_eq!(
            only_new.open("obj", &v(1), 3, sealed_old.clone()),
            Err(OpenError::UnknownKey(KeyId::of(&key(1))))
        );
        assert_eq!(new.keys(), vec![key(2), key(1)]);
        // Duplicates of the current key are not kept as retired.
        assert!(Keyring::new(Some(key(2)), vec![key(2)])
            .retired_ids()
            .is_empty());
    }

    #[test]
    fn without_a_key_values_are_plain_and_stay_readable() {
        let none = Keyring::none();
        assert_eq!(none.seal("obj", &v(1), b"plain"), b"plain");
        let with_key = Keyring::new(Some(key(1)), vec![]);
        assert_eq!(
            with_key.open("obj", &v(1), 5, b"plain".to_vec()).unwrap(),
            b"plain"
        );
        assert_eq!(kind_of(b"", 0), Some(ValueKind::Plain));
    }

    proptest! {
        #[test]
        fn value_format_round_trips(
            data in proptest::collection::vec(any::<u8>(), 0..2048),
            id in "[a-z0-9/._-]{1,40}",
            ms in any::<u64>(),
            logical in any::<u32>(),
            node in any::<u64>(),
            sealed in any::<bool>(),
        ) {
            let ring = if sealed { Keyring::new(Some(key(9)), vec![key(3)]) } else { Keyring::none() };
            let version = Version { physical_ms: ms, logical, node };
            let stored = ring.seal(&id, &version, &data);
            let kind = kind_of(&stored, data.len() as u64).unwrap();
            prop_assert_eq!(kind, if sealed { ValueKind::Sealed(KeyId::of(&key(9))) } else { ValueKind::Plain });
            prop_assert_eq!(ring.open(&id, &version, data.len() as u64, stored.clone()).unwrap(), data);
        }

        #[test]
        fn arbitrary_stored_bytes_never_panic(
            stored in proptest::collection::vec(any::<u8>(), 0..256),
            size in 0u64..300,
        ) {
            let ring = Keyring::new(Some(key(9)), vec![]);
            let _ = ring.open("x", &v(1), size, stored.clone());
            let _ = kind_of(&stored, size);
            let _ = kind_of(&stored, u64::MAX);
        }
    }
}
