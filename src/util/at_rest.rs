//! What the store writes on disk that the supervisor's switch also reads
//! without opening the store: the value files' directory and the header a
//! sealed value starts with (format byte and the data key's id). The store
//! (`plexi_store::sealing`, `plexi_store::objects`) re-exports these; the
//! switch uses them to link value files sealed under the data key into a
//! snapshot instead of sealing them again.

use crate::secret::SecretKey;

/// The value files' directory, in the store's own. A value file is
/// written once under a fresh name, fsynced before anything names it, and
/// never changed (removed once superseded): the supervisor's store
/// snapshot hard-links them instead of copying (`switch::LINKED_VALUES`).
pub const VALUES_DIR: &str = "values";

/// Format byte of a sealed value (version 1 of the format).
pub const FORMAT_SEALED_V1: u8 = 1;
/// Bytes of a key id.
pub const KEY_ID_BYTES: usize = 8;
/// Bytes a sealed value starts with that depend only on the data key:
/// the format byte and the key id.
pub const SEALED_PREFIX_BYTES: usize = 1 + KEY_ID_BYTES;

/// Names a data key in stored values, logs and errors: its fingerprint.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; KEY_ID_BYTES]);

impl KeyId {
    /// The key id of a data key (its fingerprint as bytes).
    pub fn of(key: &SecretKey) -> KeyId {
        let fp = key.fingerprint();
        let mut id = [0u8; KEY_ID_BYTES];
        for (i, b) in id.iter_mut().enumerate() {
            *b = u8::from_str_radix(&fp[2 * i..2 * i + 2], 16).expect("fingerprint is hex");
        }
        KeyId(id)
    }
}

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// The first bytes of every value sealed under `key`.
pub fn sealed_prefix(key: &SecretKey) -> [u8; SEALED_PREFIX_BYTES] {
    let mut prefix = [0u8; SEALED_PREFIX_BYTES];
    prefix[0] = FORMAT_SEALED_V1;
    prefix[1..].copy_from_slice(&KeyId::of(key).0);
    prefix
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_is_the_format_byte_and_the_key_id() {
        let key = SecretKey::from_bytes([3; 32]);
        let prefix = sealed_prefix(&key);
        assert_eq!(prefix[0], FORMAT_SEALED_V1);
        assert_eq!(&prefix[1..], &KeyId::of(&key).0);
        assert_ne!(prefix, sealed_prefix(&SecretKey::from_bytes([4; 32])));
    }
}
