//! 32-byte secret keys (the cluster key, the data key): parsed from 64 hex
//! characters, named in logs only by their fingerprint, never printed.
//!
//! `Debug` and `Display` show the fingerprint, so a key that slips into a
//! log line or an error message still does not leak.

/// Length of every secret key, in bytes.
pub const KEY_BYTES: usize = 32;
/// Length of a key written as hex.
pub const KEY_HEX_CHARS: usize = 2 * KEY_BYTES;

/// A 32-byte secret.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey([u8; KEY_BYTES]);

/// Why a text is not a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("a key is {KEY_HEX_CHARS} hex characters, got {0} characters")]
    Length(usize),
    #[error("a key is {KEY_HEX_CHARS} hex characters; found a character that is not hex")]
    NotHex,
}

impl SecretKey {
    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> Self {
        SecretKey(bytes)
    }

    /// Parses 64 hex characters (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        if text.len() != KEY_HEX_CHARS {
            return Err(KeyError::Length(text.chars().count()));
        }
        let mut out = [0u8; KEY_BYTES];
        for (i, pair) in text.as_bytes().chunks(2).enumerate() {
            let hi = hex_val(pair[0]).ok_or(KeyError::NotHex)?;
            let lo = hex_val(pair[1]).ok_or(KeyError::NotHex)?;
            out[i] = (hi << 4) | lo;
        }
        Ok(SecretKey(out))
    }

    /// The key as 64 lowercase hex characters: only for writing a key file.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn bytes(&self) -> &[u8; KEY_BYTES] {
        &self.0
    }

    /// A subkey for one purpose (blake3 `derive_key`, the context naming the
    /// purpose): keys for different uses never coincide.
    pub fn derive(&self, context: &str) -> [u8; KEY_BYTES] {
        blake3::derive_key(context, &self.0)
    }

    /// 16 hex characters that name the key in logs and messages; one-way.
    pub fn fingerprint(&self) -> String {
        let d = self.derive("plexi 2026 key fingerprint v1");
        d[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey(fingerprint {})", self.fingerprint())
    }
}

impl std::fmt::Display for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "key {}", self.fingerprint())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_no_leak() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";
        let k = SecretKey::from_hex(&format!(" {hex}\n")).unwrap();
        assert_eq!(k.to_hex(), hex.to_lowercase());
        let shown = format!("{k} {k:?}");
        assert!(!shown.contains("00112233"), "{shown}");
        assert!(shown.contains(&k.fingerprint()));
        assert_eq!(k.fingerprint().len(), 16);
    }

    #[test]
    fn refuses_bad_text() {
        assert_eq!(SecretKey::from_hex("abc"), Err(KeyError::Length(3)));
        assert_eq!(SecretKey::from_hex(&"g".repeat(64)), Err(KeyError::NotHex));
        // Multi-byte characters: counted as characters, never sliced.
        assert!(SecretKey::from_hex(&"é".repeat(32)).is_err());
    }

    #[test]
    fn derived_keys_differ_by_context() {
        let k = SecretKey::from_bytes([7; 32]);
        assert_ne!(k.derive("a"), k.derive("b"));
        assert_ne!(k.derive("a"), *k.bytes());
    }
}
