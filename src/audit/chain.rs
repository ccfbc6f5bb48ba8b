//! One audit chain's rules: the sled keys, the canonical hash of an entry,
//! its signature, signed heads, and the verifier that walks a chain in a
//! sled tree and names its first bad entry (`plexi audit verify`).
//!
//! - `hash` = blake3 of the canonical CBOR of every field but `hash` and
//!   `signature` (tag `plexi-audit-2`; legacy entries used `plexi-audit-1`
//!   without the peer id).
//! - `signature` = the chain owner's ed25519 signature (its libp2p key)
//!   over the CBOR of (`plexi-audit-sig-1`, peer id, seq, hash). So every
//!   entry is also a **signed head**: proof that the owner's chain reached
//!   that seq with that hash, checkable without the entry's body.
//! - A chain is keyed by the owner's peer id, and an entry counts only if
//!   its signature verifies under the key that peer id embeds: nobody can
//!   write into another's chain.

use std::collections::BTreeMap;

use plexi_api::model::{AuditChainStatus, AuditEntry, AuditFault, AuditProblem};
use plexi_p2p::codec::decode_cbor;
use plexi_p2p::{Keypair, PeerId};
use serde::{Deserialize, Serialize};

use super::{store_err, AuditError};

/// `prev_hash` of a chain's first entry.
pub const ZERO_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The sled key of entry `seq` of `chain`: chain bytes, 0x00, seq (u64 BE),
/// so a chain is one contiguous, ordered range.
pub fn key(chain: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(chain.len() + 9);
    k.extend_from_slice(chain.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub fn prefix(chain: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(chain.len() + 1);
    k.extend_from_slice(chain.as_bytes());
    k.push(0);
    k
}

/// The seq of a key of `chain` (None when the key is not one of its).
pub fn key_seq(chain: &str, k: &[u8]) -> Option<u64> {
    let rest = k.strip_prefix(prefix(chain).as_slice())?;
    Some(u64::from_be_bytes(<[u8; 8]>::try_from(rest).ok()?))
}

/// JSON as CBOR with object keys sorted, so the same detail always encodes
/// to the same bytes whatever map order serde_json was built with.
fn canonical(v: &serde_json::Value) -> ciborium::Value {
    use ciborium::Value as C;
    match v {
        serde_json::Value::Null => C::Null,
        serde_json::Value::Bool(b) => C::Bool(*b),
        serde_json::Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                C::Integer(u.into())
            } else if let Some(i) = n.as_i64() {
                C::Integer(i.into())
            } else {
                C::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        serde_json::Value::String(s) => C::Text(s.clone()),
        serde_json::Value::Array(a) => C::Array(a.iter().map(canonical).collect()),
        serde_json::Value::Object(m) => {
            let sorted: BTreeMap<&String, &serde_json::Value> = m.iter().collect();
            C::Map(
                sorted
                    .into_iter()
                    .map(|(k, v)| (C::Text(k.clone()), canonical(v)))
                    .collect(),
            )
        }
    }
}

fn cbor_bytes(v: &ciborium::Value) -> Vec<u8> {
    let mut bytes = Vec::new();
    ciborium::ser::into_writer(v, &mut bytes).expect("a CBOR value encodes into a Vec");
    bytes
}

/// blake3 (hex) of the canonical CBOR of every field but `hash` and
/// `signature`. Entries without a peer id hash as legacy (v1) entries did.
pub fn entry_hash(e: &AuditEntry) -> String {
    use ciborium::Value as C;
    let mut fields = match &e.peer_id {
        Some(peer) => vec![C::Text("plexi-audit-2".into()), C::Text(peer.clone())],
        None => vec![C::Text("plexi-audit-1".into())],
    };
    fields.extend([
        C::Text(e.node_id.to_string()),
        C::Integer(e.seq.into()),
        C::Text(e.at.clone()),
        C::Text(e.actor.clone()),
        C::Text(e.action.clone()),
        e.operation_id.clone().map(C::Text).unwrap_or(C::Null),
        canonical(&e.detail),
        C::Text(e.prev_hash.clone()),
    ]);
    blake3::hash(&cbor_bytes(&C::Array(fields)))
        .to_hex()
        .to_string()
}

/// What a chain owner signs: its peer id, a seq and the hash there.
fn head_message(peer: &str, seq: u64, hash: &str) -> Vec<u8> {
    use ciborium::Value as C;
    cbor_bytes(&C::Array(vec![
        C::Text("plexi-audit-sig-1".into()),
        C::Text(peer.into()),
        C::Integer(seq.into()),
        C::Text(hash.into()),
    ]))
}

/// Signs (peer, seq, hash) with `key`; hex.
pub fn sign_head(key: &Keypair, peer: &str, seq: u64, hash: &str) -> Result<String, AuditError> {
    key.sign(&head_message(peer, seq, hash))
        .map(hex::encode)
        .map_err(|e| AuditError::Invalid(format!("cannot sign: {e}")))
}

/// Whether `signature` (hex) is `peer`'s over (peer, seq, hash).
pub fn head_signed_by(peer: &str, seq: u64, hash: &str, signature: &str) -> bool {
    let (Ok(id), Ok(sig)) = (peer.parse::<PeerId>(), hex::decode(signature)) else {
        return false;
    };
    plexi_p2p::identity::verify_signed_by(&id, &head_message(peer, seq, hash), &sig)
}

/// A chain's head as its owner signed it: spread with the sync so a copy
/// that lost its last entries (truncated) is caught against it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedHead {
    pub peer_id: String,
    pub seq: u64,
    pub hash: String,
    pub signature: String,
}

impl SignedHead {
    pub fn of(e: &AuditEntry) -> Option<SignedHead> {
        Some(SignedHead {
            peer_id: e.peer_id.clone()?,
            seq: e.seq,
            hash: e.hash.clone(),
            signature: e.signature.clone()?,
        })
    }

    pub fn verifies(&self) -> bool {
        head_signed_by(&self.peer_id, self.seq, &self.hash, &self.signature)
    }
}

/// The last good entry of a chain walk.
#[derive(Clone, Debug, PartialEq)]
pub struct Head {
    pub seq: u64,
    pub hash: String,
}

impl Head {
    pub fn zero() -> Head {
        Head {
            seq: 0,
            hash: ZERO_HASH.into(),
        }
    }
}

/// What walking one chain found.
#[derive(Clone, Debug, PartialEq)]
pub struct ChainCheck {
    /// The last entry that verified (the walk's start if none did).
    pub good: Head,
    /// Entries held (keys under the chain's prefix).
    pub entries: u64,
    /// Seq of the last key held.
    pub head_seq: u64,
    /// Node name from the first entry that decoded.
    pub node_name: Option<String>,
    pub status: AuditChainStatus,
    pub problem: Option<AuditProblem>,
}

fn problem(seq: u64, fault: AuditFault, message: String) -> Option<AuditProblem> {
    Some(AuditProblem {
        seq,
        fault,
        message,
    })
}

/// Why entry `e`, stored under key seq `at` of `chain` right after `prev`,
/// is not the next good entry of that chain (None: it is).
fn entry_fault(
    chain: &str,
    signed: bool,
    at: u64,
    prev: &Head,
    e: &AuditEntry,
) -> Option<(AuditFault, String)> {
    if e.seq != at {
        return Some((
            AuditFault::Reordered,
            format!("holds the entry of seq {} at seq {at}", e.seq),
        ));
    }
    if entry_hash(e) != e.hash {
        return Some((
            AuditFault::Modified,
            "its hash does not recompute: the entry was changed".into(),
        ));
    }
    if signed {
        if e.peer_id.as_deref() != Some(chain) {
            return Some((
                AuditFault::WrongSigner,
                format!(
                    "names peer {} in the chain of {chain}",
                    e.peer_id.as_deref().unwrap_or("(none)")
                ),
            ));
        }
        let ok = e
            .signature
            .as_deref()
            .is_some_and(|s| head_signed_by(chain, e.seq, &e.hash, s));
        if !ok {
            return Some((
                AuditFault::BadSignature,
                format!("the signature does not verify under {chain}'s key"),
            ));
        }
    } else if e.node_id.as_str() != chain {
        return Some((
            AuditFault::WrongSigner,
            format!("names node {} in the legacy chain of {chain}", e.node_id),
        ));
    }
    if e.prev_hash != prev.hash {
        return Some((
            AuditFault::Reordered,
            format!(
                "does not link to the entry before it (seq {}): moved or replaced",
                prev.seq
            ),
        ));
    }
    None
}

/// Walks `chain` in `tree` from after `from` to its last key, checking
/// key continuity, decoding, hash, link, signer and signature (legacy
/// chains: no signature), then the chain's end against the highest head
/// its owner signed. Stops at the first bad entry.
pub fn check_chain(
    tree: &sled::Tree,
    chain: &str,
    from: Head,
    signed_head: Option<&SignedHead>,
    legacy: bool,
) -> Result<ChainCheck, AuditError> {
    let mut check = ChainCheck {
        good: from.clone(),
        entries: from.seq,
        head_seq: from.seq,
        node_name: None,
        status: AuditChainStatus::Ok,
        problem: None,
    };
    let range = key(chain, from.seq + 1)..=key(chain, u64::MAX);
    for item in tree.range(range) {
        let (k, v) = item.map_err(store_err)?;
        let Some(at) = key_seq(chain, &k) else {
            continue;
        };
        check.entries += 1;
        check.head_seq = at;
        if check.problem.is_some() {
            continue; // keep counting
        }
        let expected = check.good.seq + 1;
        if at != expected {
            check.problem = problem(
                expected,
                AuditFault::Dropped,
                format!(
                    "seqs {expected}..{} are missing: the next entry held is seq {at}",
                    at - 1
                ),
            );
            continue;
        }
        let entry = match decode_cbor::<AuditEntry>(&v) {
            Ok(e) => e,
            Err(e) => {
                check.problem = problem(
                    at,
                    AuditFault::Modified,
                    format!("its bytes do not decode ({e}): the entry was changed"),
                );
                continue;
            }
        };
        if check.node_name.is_none() {
            check.node_name = Some(entry.node_id.to_string());
        }
        match entry_fault(chain, !legacy, at, &check.good, &entry) {
            Some((fault, message)) => check.problem = problem(at, fault, message),
            None => {
                check.good = Head {
                    seq: at,
                    hash: entry.hash,
                }
            }
        }
    }
    if check.problem.is_none() {
        if let Some(h) = signed_head {
            check.problem = signed_head_fault(tree, chain, &check, h)?;
        }
    }
    check.status = match (&check.problem, legacy) {
        (Some(_), _) => AuditChainStatus::Failed,
        (None, true) => AuditChainStatus::LegacyUnsigned,
        (None, false) => AuditChainStatus::Ok,
    };
    Ok(check)
}

/// The chain's end against the highest head its owner signed.
fn signed_head_fault(
    tree: &sled::Tree,
    chain: &str,
    check: &ChainCheck,
    h: &SignedHead,
) -> Result<Option<AuditProblem>, AuditError> {
    if h.peer_id != chain || !h.verifies() {
        // Never stored unverified; a stored one that fails was altered.
        return Ok(problem(
            h.seq,
            AuditFault::BadSignature,
            "the stored signed head does not verify under the owner's key".into(),
        ));
    }
    if h.seq > check.good.seq {
        return Ok(problem(
            check.good.seq + 1,
            AuditFault::Truncated,
            format!(
                "ends at seq {} but its owner signed a head at seq {}: entries {}..{} were dropped",
                check.good.seq,
                h.seq,
                check.good.seq + 1,
                h.seq
            ),
        ));
    }
    let held = tree
        .get(key(chain, h.seq))
        .map_err(store_err)?
        .and_then(|v| decode_cbor::<AuditEntry>(&v).ok());
    if held.as_ref().map(|e| e.hash.as_str()) != Some(h.hash.as_str()) {
        return Ok(problem(
            h.seq,
            AuditFault::Diverged,
            "is not the entry its owner signed as its head: the chain was rewritten".into(),
        ));
    }
    Ok(None)
}

/// Writes an unsigned chain `name` of `n` linked entries into `tree`, as
/// versions before signed chains did (tests of the legacy path).
#[cfg(test)]
pub(crate) fn write_legacy_chain(tree: &sled::Tree, name: &str, n: u64) {
    let mut prev = ZERO_HASH.to_string();
    for seq in 1..=n {
        let mut e = AuditEntry {
            node_id: name.to_string().into(),
            peer_id: None,
            seq,
            at: plexi_util::clock::rfc3339_ms(seq),
            actor: "admin".into(),
            action: "x".into(),
            operation_id: None,
            detail: serde_json::Value::Null,
            prev_hash: prev.clone(),
            hash: String::new(),
            signature: None,
        };
        e.hash = entry_hash(&e);
        prev = e.hash.clone();
        tree.insert(key(name, seq), plexi_p2p::codec::encode_cbor(&e).unwrap())
            .unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexi_api::model::AuditEntry;
    use plexi_p2p::codec::encode_cbor;
    use serde_json::json;

    struct Fixture {
        _dir: tempfile::TempDir,
        tree: sled::Tree,
        key: Keypair,
        chain: String,
        entries: Vec<AuditEntry>,
    }

    fn signed_entry(key: &Keypair, seq: u64, prev: &str) -> AuditEntry {
        let peer = key.public().to_peer_id().to_string();
        let mut e = AuditEntry {
            node_id: "s1".to_string().into(),
            peer_id: Some(peer.clone()),
            seq,
            at: plexi_util::clock::rfc3339_ms(seq),
            actor: "admin".into(),
            action: "maintenance.on".into(),
            operation_id: None,
            detail: json!({ "n": seq }),
            prev_hash: prev.into(),
            hash: String::new(),
            signature: None,
        };
        e.hash = entry_hash(&e);
        e.signature = Some(sign_head(key, &peer, seq, &e.hash).unwrap());
        e
    }

    /// A chain of 5 good signed entries in a fresh sled tree.
    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path().join("db")).unwrap();
        let tree = db.open_tree("audit").unwrap();
        let key = Keypair::generate_ed25519();
        let chain = key.public().to_peer_id().to_string();
        let mut entries = Vec::new();
        let mut prev = ZERO_HASH.to_string();
        for seq in 1..=5 {
            let e = signed_entry(&key, seq, &prev);
            prev = e.hash.clone();
            tree.insert(self::key(&chain, seq), encode_cbor(&e).unwrap())
                .unwrap();
            entries.push(e);
        }
        Fixture {
            _dir: dir,
            tree,
            key,
            chain,
            entries,
        }
    }

    impl Fixture {
        fn check(&self, head: Option<&SignedHead>) -> ChainCheck {
            check_chain(&self.tree, &self.chain, Head::zero(), head, false).unwrap()
        }
        fn put(&self, seq: u64, e: &AuditEntry) {
            self.tree
                .insert(key(&self.chain, seq), encode_cbor(e).unwrap())
                .unwrap();
        }
        fn head(&self, seq: usize) -> SignedHead {
            SignedHead::of(&self.entries[seq - 1]).unwrap()
        }
    }

    fn fault(c: &ChainCheck) -> (u64, AuditFault) {
        let p = c.problem.as_ref().expect("a problem");
        (p.seq, p.fault)
    }

    #[test]
    fn a_good_chain_verifies_with_its_signed_head() {
        let f = fixture();
        let c = f.check(Some(&f.head(5)));
        assert_eq!(c.problem, None);
        assert_eq!(c.status, AuditChainStatus::Ok);
        assert_eq!((c.entries, c.head_seq, c.good.seq), (5, 5, 5));
        assert_eq!(c.node_name.as_deref(), Some("s1"));
        // From a verified prefix too.
        let from = Head {
            seq: 3,
            hash: f.entries[2].hash.clone(),
        };
        let c = check_chain(&f.tree, &f.chain, from, Some(&f.head(4)), false).unwrap();
        assert_eq!((c.problem, c.good.seq), (None, 5));
    }

    #[test]
    fn a_modified_entry_is_named() {
        let f = fixture();
        let mut e = f.entries[2].clone();
        e.actor = "mallory".into();
        f.put(3, &e);
        assert_eq!(fault(&f.check(None)), (3, AuditFault::Modified));
        // Raw byte damage that breaks the encoding, too.
        let mut raw = encode_cbor(&f.entries[1]).unwrap();
        raw.truncate(raw.len() - 2);
        f.tree.insert(key(&f.chain, 2), raw).unwrap();
        let c = f.check(None);
        assert_eq!(fault(&c), (2, AuditFault::Modified));
        assert_eq!((c.entries, c.good.seq), (5, 1));
        assert_eq!(c.status, AuditChainStatus::Failed);
    }

    #[test]
    fn reordered_entries_are_named() {
        let f = fixture();
        f.put(2, &f.entries[2]);
        f.put(3, &f.entries[1]);
        assert_eq!(fault(&f.check(None)), (2, AuditFault::Reordered));
        // Renumbered to fit its new place and re-hashed: the signature no
        // longer verifies (only the owner could sign it).
        let f = fixture();
        let mut e = f.entries[3].clone();
        e.seq = 3;
        e.prev_hash = f.entries[1].hash.clone();
        e.hash = entry_hash(&e);
        f.put(3, &e);
        assert_eq!(fault(&f.check(None)), (3, AuditFault::BadSignature));
    }

    #[test]
    fn a_dropped_entry_is_named() {
        let f = fixture();
        f.tree.remove(key(&f.chain, 3)).unwrap();
        let c = f.check(None);
        assert_eq!(fault(&c), (3, AuditFault::Dropped));
        assert_eq!(c.entries, 4);
    }

    #[test]
    fn a_truncated_chain_is_caught_against_its_signed_head() {
        let f = fixture();
        f.tree.remove(key(&f.chain, 5)).unwrap();
        f.tree.remove(key(&f.chain, 4)).unwrap();
        // On its own the shorter chain looks fine...
        assert_eq!(f.check(None).problem, None);
        // ...but not against the head its owner signed at seq 5.
        let c = f.check(Some(&f.head(5)));
        assert_eq!(fault(&c), (4, AuditFault::Truncated));
        assert!(c.problem.unwrap().message.contains("seq 5"));
        // Truncated and then extended with other entries: diverged.
        let other = signed_entry(&f.key, 4, &f.entries[2].hash);
        f.put(4, &other);
        let mut five = signed_entry(&f.key, 5, &other.hash);
        five.detail = json!("rewritten");
        five.hash = entry_hash(&five);
        five.signature = Some(sign_head(&f.key, &f.chain, 5, &five.hash).unwrap());
        f.put(5, &five);
        assert_eq!(f.check(None).problem, None);
        assert_eq!(fault(&f.check(Some(&f.head(5)))), (5, AuditFault::Diverged));
        // A forged signed head never counts.
        let mut forged = f.head(5);
        forged.seq = 9;
        assert_eq!(fault(&f.check(Some(&forged))).1, AuditFault::BadSignature);
    }

    #[test]
    fn a_forged_signer_is_named() {
        let f = fixture();
        let mallory = Keypair::generate_ed25519();
        // Mallory's own valid entry planted in s1's chain.
        let planted = signed_entry(&mallory, 3, &f.entries[1].hash);
        f.put(3, &planted);
        assert_eq!(fault(&f.check(None)), (3, AuditFault::WrongSigner));
        // Claiming s1's peer id, signed with Mallory's key.
        let mut claimed = f.entries[2].clone();
        claimed.actor = "mallory".into();
        claimed.hash = entry_hash(&claimed);
        claimed.signature = Some(sign_head(&mallory, &f.chain, 3, &claimed.hash).unwrap());
        f.put(3, &claimed);
        assert_eq!(fault(&f.check(None)), (3, AuditFault::BadSignature));
        // No signature at all.
        let mut unsigned = f.entries[2].clone();
        unsigned.signature = None;
        f.put(3, &unsigned);
        assert_eq!(fault(&f.check(None)), (3, AuditFault::BadSignature));
    }

    #[test]
    fn legacy_chains_verify_their_hash_links() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path().join("db")).unwrap();
        let tree = db.open_tree("audit.legacy").unwrap();
        write_legacy_chain(&tree, "old", 3);
        let c = check_chain(&tree, "old", Head::zero(), None, true).unwrap();
        assert_eq!(
            (c.status, c.problem, c.entries),
            (AuditChainStatus::LegacyUnsigned, None, 3)
        );
        // The same entries read as signed ones fail (no signature).
        let c = check_chain(&tree, "old", Head::zero(), None, false).unwrap();
        assert_eq!(fault(&c), (1, AuditFault::WrongSigner));
    }

    #[test]
    fn hash_ignores_json_key_order() {
        let key = Keypair::generate_ed25519();
        let mut e = signed_entry(&key, 1, ZERO_HASH);
        e.detail = serde_json::from_str(r#"{"b":1,"a":{"d":2,"c":-3}}"#).unwrap();
        let h = entry_hash(&e);
        e.detail = serde_json::from_str(r#"{"a":{"c":-3,"d":2},"b":1}"#).unwrap();
        assert_eq!(entry_hash(&e), h);
        e.detail = json!({"a": {"c": -3, "d": 2}, "b": 2});
        assert_ne!(entry_hash(&e), h);
        // The peer id is covered, and the signature is not.
        let mut other = e.clone();
        other.peer_id = Some(PeerId::random().to_string());
        assert_ne!(entry_hash(&other), entry_hash(&e));
        other = e.clone();
        other.signature = None;
        assert_eq!(entry_hash(&other), entry_hash(&e));
    }
}
