//! The sealed stream format of backups (the store snapshot, the config
//! copy): XChaCha20-Poly1305 in the STREAM construction, in bounded chunks,
//! under a key derived from the data key. Pure transforms of a reader into a
//! writer; the caller brings the nonce and the files. It lives here, not in
//! `src/switch/`, so that its cipher code is compiled optimised in debug
//! builds too (see the workspace `Cargo.toml`).
//!
//! ```text
//! magic "PLXSEAL" | format 1 | key id (8) | stream nonce (19)
//! then chunks: STREAM-BE32 of CHUNK_BYTES of plaintext each (+16 tag),
//! the last one shorter (possibly only its tag)
//! ```
//!
//! Every chunk authenticates the header and the caller's `name` as
//! associated data: a stream cannot be given another name, truncated at a
//! chunk boundary, reordered or re-keyed without failing to open. The key id
//! is the data key's fingerprint.

use std::io::{self, Read, Write};

use chacha20poly1305::aead::stream::{DecryptorBE32, EncryptorBE32};
use chacha20poly1305::aead::{KeyInit, Payload};
use chacha20poly1305::XChaCha20Poly1305;

use crate::secret::SecretKey;

/// Starts every sealed stream.
pub const MAGIC: &[u8; 7] = b"PLXSEAL";
/// Format byte of a sealed stream.
pub const FORMAT_V1: u8 = 1;
/// Bytes of a key id (the key's fingerprint).
pub const KEY_ID_BYTES: usize = crate::at_rest::KEY_ID_BYTES;
/// STREAM nonce bytes: the 24-byte XChaCha nonce less the 5-byte counter.
pub const STREAM_NONCE_BYTES: usize = 19;
/// Bytes of a sealed stream's header.
pub const HEADER_BYTES: usize = MAGIC.len() + 1 + KEY_ID_BYTES + STREAM_NONCE_BYTES;
/// Plaintext bytes per chunk: a seal or open holds one chunk in memory.
pub const CHUNK_BYTES: usize = 64 * 1024;
/// Poly1305 tag per chunk.
pub const TAG_BYTES: usize = 16;
/// blake3 `derive_key` context of the backup key.
pub const BACKUP_KEY_CONTEXT: &str = "plexi 2026 backup v1";

/// The key id of `key`: its fingerprint as bytes.
pub fn key_id(key: &SecretKey) -> [u8; KEY_ID_BYTES] {
    crate::at_rest::KeyId::of(key).0
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn cipher(key: &SecretKey) -> XChaCha20Poly1305 {
    XChaCha20Poly1305::new(&key.derive(BACKUP_KEY_CONTEXT).into())
}

fn aad(header: &[u8], name: &str) -> Vec<u8> {
    let mut a = Vec::with_capacity(header.len() + 4 + name.len());
    a.extend_from_slice(header);
    a.extend_from_slice(&(name.len() as u32).to_be_bytes());
    a.extend_from_slice(name.as_bytes());
    a
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Seals `plain` into `out` under `key` and `nonce` (random, fresh for
/// every stream), `name` authenticated with it. Not generic over the
/// reader and writer on purpose: generic code is compiled in the crate that
/// instantiates it, and the binary crate's debug build ran the cipher
/// unoptimised: a node's store snapshot took 14.8 s in a debug rolling
/// upgrade of a 3-node testnet. Here it is compiled once, optimised (see
/// the workspace's dev profile): 0.13-0.43 s.
pub fn seal(
    plain: &mut dyn Read,
    out: &mut dyn Write,
    key: &SecretKey,
    nonce: &[u8; STREAM_NONCE_BYTES],
    name: &str,
) -> io::Result<()> {
    let mut header = Vec::with_capacity(HEADER_BYTES);
    header.extend_from_slice(MAGIC);
    header.push(FORMAT_V1);
    header.extend_from_slice(&key_id(key));
    header.extend_from_slice(nonce);
    out.write_all(&header)?;
    let aad = aad(&header, name);
    let mut enc = EncryptorBE32::from_aead(cipher(key), nonce.as_ref().into());
    let mut buf = vec![0u8; CHUNK_BYTES];
    let fail = |_| invalid(format!("{name}: sealing failed"));
    loop {
        let n = read_full(plain, &mut buf)?;
        let payload = Payload {
            msg: &buf[..n],
            aad: &aad,
        };
        if n == CHUNK_BYTES {
            out.write_all(&enc.encrypt_next(payload).map_err(fail)?)?;
        } else {
            out.write_all(&enc.encrypt_last(payload).map_err(fail)?)?;
            return Ok(());
        }
    }
}

/// Opens what [`seal`] wrote, with whichever of `keys` sealed it. Fails
/// (`InvalidData`, naming the key id, never the key) on another key or a
/// tampered, truncated or renamed stream. Bytes are written out chunk by
/// chunk as they verify.
pub fn open(
    sealed: &mut dyn Read,
    out: &mut dyn Write,
    keys: &[SecretKey],
    name: &str,
) -> io::Result<()> {
    let mut header = [0u8; HEADER_BYTES];
    if read_full(sealed, &mut header)? != HEADER_BYTES
        || &header[..MAGIC.len()] != MAGIC
        || header[MAGIC.len()] != FORMAT_V1
    {
        return Err(invalid(format!("{name}: not a sealed backup file")));
    }
    let id = &header[MAGIC.len() + 1..MAGIC.len() + 1 + KEY_ID_BYTES];
    let key = keys.iter().find(|k| key_id(k) == id).ok_or_else(|| {
        invalid(format!(
            "{name}: sealed under data key {}, which this node does not hold",
            hex(id)
        ))
    })?;
    let nonce = &header[MAGIC.len() + 1 + KEY_ID_BYTES..];
    let aad = aad(&header, name);
    let mut dec = DecryptorBE32::from_aead(cipher(key), nonce.into());
    let mut buf = vec![0u8; CHUNK_BYTES + TAG_BYTES];
    let fail = |_| {
        invalid(format!(
            "{name}: sealed bytes fail to open (tampered or truncated)"
        ))
    };
    loop {
        let n = read_full(sealed, &mut buf)?;
        let payload = Payload {
            msg: &buf[..n],
            aad: &aad,
        };
        if n == buf.len() {
            out.write_all(&dec.decrypt_next(payload).map_err(fail)?)?;
        } else {
            out.write_all(&dec.decrypt_last(payload).map_err(fail)?)?;
            return Ok(());
        }
    }
}
