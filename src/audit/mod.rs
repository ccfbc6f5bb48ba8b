//! The audit log: who did what to the cluster, kept append-only, hash-
//! chained and signed on every node, with no coordinator.
//!
//! This module owns the `audit`, `audit.signed_heads` and `audit.legacy`
//! sled trees and the `audit` p2p service; [`chain`] holds the rules of one
//! chain (hash, signature, the verifier).
//!
//! - Every node keeps its **own chain** of the entries it authored, keyed by
//!   its **peer id**: seq 1, 2, 3…, each entry's `hash` is blake3 of the
//!   canonical CBOR of every other field, `prev_hash` is the hash of the
//!   node's previous entry (64 zeros for seq 1), and `signature` is the
//!   node's libp2p ed25519 signature over (peer id, seq, hash). An append is
//!   flushed before it returns.
//! - Every node also stores **every other node's chain**. New local entries
//!   are pushed to every alive member at once; a sync task every 2 s sends
//!   our heads (last seq per chain) to one random alive member and merges
//!   the entries it lacks, then pushes back what that member lacks.
//! - A remote entry is accepted only if its signature verifies under the
//!   key of the peer id whose chain it is in, and it links to what we hold
//!   (next seq, `prev_hash` equal to our last hash, hash recomputes). A
//!   different entry at a seq we already hold is a fork: refused, logged,
//!   counted. Nothing is ever deleted; chains stop at 10 million entries,
//!   the tree at 4096 chains.
//! - **Signed heads**: since every entry's signature covers (peer id, seq,
//!   hash), the last entry of a chain is its owner's signed head. Each node
//!   keeps the highest signed head it has seen per chain apart from the
//!   chain (`audit.signed_heads`) and the sync spreads them (each side sends
//!   the heads the other holds lower), so a copy that lost its last entries
//!   (truncated) fails verification against it.
//! - **Legacy entries** (written before chains were signed: keyed by node
//!   name, no peer id, no signature) are moved at open, once, into
//!   `audit.legacy`: listed as before, verified for their hash links, and
//!   reported by `verify` as `legacy_unsigned`. They are not replicated.
//!
//! Keys: chain bytes (a peer id), 0x00, seq as big-endian u64. Values: CBOR
//! of the `AuditEntry`.

pub mod chain;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use plexi_api::model::{
    AuditChainReport, AuditChainStatus, AuditEntry, AuditList, AuditVerifyReport,
};
use plexi_p2p::codec::{decode_cbor, encode_cbor};
use plexi_p2p::{CallError, Keypair, P2pHandle, PeerId};
use plexi_store::NodeStore;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};

use plexi_util::clock::{rfc3339_ms, wall_ms};

use chain::{check_chain, key, prefix, sign_head, Head, SignedHead};
pub use chain::{entry_hash, ZERO_HASH};

/// The p2p service name.
pub const SERVICE: &str = "audit";
/// The tree of chains (signed, keyed by peer id).
const TREE: &str = "audit";
/// The highest signed head seen per chain: chain -> CBOR `SignedHead`.
const SIGNED_HEADS_TREE: &str = "audit.signed_heads";
/// Chains written before signing (keyed by node name), moved here at open.
const LEGACY_TREE: &str = "audit.legacy";
/// API token names this node has audited: name -> role and a fingerprint
/// of the token's hash (so a rotation is noticed; never the token).
const TOKENS_TREE: &str = "audit.tokens";
/// Length of a hex ed25519 signature.
const SIGNATURE_HEX_LEN: usize = 128;
/// Longest chain accepted (local or remote).
const MAX_SEQ: u64 = 10_000_000;
/// Most chains (authoring nodes) the tree holds.
const MAX_CHAINS: usize = 4096;
/// Largest encoded entry accepted.
const MAX_ENTRY_BYTES: usize = 64 * 1024;
/// Bounds on one reply to `Heads` and on one `Push` (entries; signed heads
/// are bounded by [`MAX_CHAINS`]).
const MAX_BATCH_ENTRIES: usize = 256;
const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// Longest node id / peer id / actor / action / operation id.
const MAX_FIELD_BYTES: usize = 256;
/// While the tree holds at most this many entries, `list` re-verifies every
/// chain from seq 1; past it, only what was not verified before.
const FULL_VERIFY_MAX: u64 = 20_000;
/// How often the sync task pulls from a random alive member.
const SYNC_INTERVAL: Duration = Duration::from_secs(2);
/// Pull rounds in a row while the peer has more for us.
const MAX_SYNC_ROUNDS: usize = 16;
/// Concurrent pushes after an append.
const PUSH_CONCURRENCY: usize = 8;
/// Local entries waiting to be pushed (dropped past it; sync delivers them).
const PUSH_QUEUE: usize = 1024;
/// [`AuditLog::append_limited`]: at most one entry per (action, subject)
/// per window; the ones in between are counted into the next entry.
const LIMITED_WINDOW: Duration = Duration::from_secs(60);
/// (action, subject) pairs tracked by `append_limited`; past it, new
/// subjects share one overflow subject (`*`).
const MAX_LIMITED_SUBJECTS: usize = 4096;
/// After start, appends wait (at most this long) for a first sync with a
/// peer, so a node whose store was restored from a snapshot (an update
/// rolled back) takes back the later entries of its own chain that peers
/// hold before it appends, instead of forking its chain.
const CATCHUP_MAX_WAIT: Duration = Duration::from_secs(3);
/// Retry period of the sync until that first sync succeeded.
const CATCHUP_RETRY: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit store: {0}")]
    Store(String),
    #[error("invalid audit entry: {0}")]
    Invalid(String),
    #[error("audit chain of {0} is full ({MAX_SEQ} entries)")]
    Full(String),
    #[error("audit task failed: {0}")]
    Task(String),
}

fn store_err<E: std::fmt::Display>(e: E) -> AuditError {
    AuditError::Store(e.to_string())
}

/// Messages of the `audit` service.
#[derive(Debug, Serialize, Deserialize)]
enum AuditCall {
    /// The caller's last seq per chain; the answer is what it lacks.
    Heads {
        heads: BTreeMap<String, u64>,
        /// The seq of the caller's highest signed head per chain.
        #[serde(default)]
        signed: BTreeMap<String, u64>,
    },
    /// Entries to merge (new local entries, or what a sync found missing).
    Push {
        entries: Vec<AuditEntry>,
        /// Signed heads the receiver holds lower (or not at all).
        #[serde(default)]
        signed_heads: Vec<SignedHead>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
enum AuditReply {
    Entries {
        entries: Vec<AuditEntry>,
        /// The answering node's heads, so the caller can push back.
        heads: BTreeMap<String, u64>,
        /// More were left out by the bounds; ask again.
        more: bool,
        /// Signed heads the caller holds lower (or not at all).
        #[serde(default)]
        signed_heads: Vec<SignedHead>,
        /// The answering node's signed head seqs, so the caller can push back.
        #[serde(default)]
        signed: BTreeMap<String, u64>,
    },
    Ack {
        accepted: u64,
        rejected: u64,
    },
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Default)]
struct Metrics {
    entries: Counter,
    rejected: Family<ReasonLabels, Counter>,
}

impl Metrics {
    fn register(registry: &mut Registry) -> Self {
        let m = Metrics::default();
        registry.register(
            "plexi_audit_entries",
            "Audit entries appended by this node",
            m.entries.clone(),
        );
        registry.register(
            "plexi_audit_rejected_entries",
            "Audit entries from peers refused, by reason (gap, unlinked, bad_hash, bad_signature, unsigned, fork, invalid, full)",
            m.rejected.clone(),
        );
        m
    }

    fn reject(&self, reason: &'static str) {
        self.rejected.get_or_create(&ReasonLabels { reason }).inc();
    }
}

/// What `AuditLog` shares with its blocking tasks.
struct Shared {
    tree: sled::Tree,
    /// Highest signed head seen per chain (see the module doc).
    signed_heads: sled::Tree,
    /// Chains from before signing, read-only.
    legacy: sled::Tree,
    /// Token names audited (see [`AuditLog::record_tokens`]).
    tokens: sled::Tree,
    /// This node's libp2p key: signs its entries.
    keypair: Keypair,
    /// This node's chain: its peer id.
    chain_id: String,
    /// This node's name, shown in its entries.
    node_name: String,
    /// Last entry per chain; the lock serialises every insert.
    heads: Mutex<BTreeMap<String, Head>>,
    /// Verified prefix per chain (`list` continues from it).
    verified: Mutex<BTreeMap<String, Head>>,
    metrics: Metrics,
}

/// The audit log of one node (see the module doc).
pub struct AuditLog {
    shared: Arc<Shared>,
    /// `append_limited` windows: (action, subject) -> (window start, entries
    /// suppressed in it).
    limited: Mutex<std::collections::HashMap<(String, String), (std::time::Instant, u64)>>,
    events: broadcast::Sender<AuditEntry>,
    push: OnceLock<mpsc::Sender<AuditEntry>>,
    /// False from `spawn_sync` until the first sync with a peer (or
    /// [`CATCHUP_MAX_WAIT`]); appends wait for it.
    caught_up: tokio::sync::watch::Sender<bool>,
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn valid_name(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_FIELD_BYTES && !id.contains('\0')
}

/// Checks a signed entry's shape (not its place in a chain or its
/// signature); the encoded bytes on Ok.
fn check_shape(e: &AuditEntry) -> Result<Vec<u8>, &'static str> {
    let Some(peer) = e.peer_id.as_deref() else {
        return Err("unsigned");
    };
    if e.signature.is_none() {
        return Err("unsigned");
    }
    if !valid_name(e.node_id.as_str())
        || !valid_name(peer)
        || peer.parse::<PeerId>().is_err()
        || e.signature
            .as_ref()
            .is_some_and(|s| s.len() != SIGNATURE_HEX_LEN)
        || e.actor.len() > MAX_FIELD_BYTES
        || e.action.len() > MAX_FIELD_BYTES
        || e.at.len() > 64
        || e.operation_id
            .as_ref()
            .is_some_and(|o| o.len() > MAX_FIELD_BYTES)
        || !is_hex64(&e.prev_hash)
        || !is_hex64(&e.hash)
    {
        return Err("invalid");
    }
    if e.seq == 0 || e.seq > MAX_SEQ {
        return Err("full");
    }
    let bytes = encode_cbor(e).map_err(|_| "invalid")?;
    if bytes.len() > MAX_ENTRY_BYTES {
        return Err("invalid");
    }
    Ok(bytes)
}

/// The checks an entry from a peer passes on its own, before its place in
/// a chain is looked at: shape, hash, and a signature by the chain's owner.
/// The encoded entry and its signed head on Ok; the refusal reason else.
fn check_standalone(e: &AuditEntry) -> Result<(Vec<u8>, SignedHead), &'static str> {
    let bytes = check_shape(e)?;
    if entry_hash(e) != e.hash {
        return Err("bad_hash");
    }
    // Only the chain's owner can have signed it.
    let head = SignedHead::of(e)
        .filter(SignedHead::verifies)
        .ok_or("bad_signature")?;
    Ok((bytes, head))
}

/// What a peer's `audit` body goes through before anything is stored: the
/// decoders of the call and of the reply, and for every entry and signed
/// head inside, the shape check, the hash and the signature check. Returns
/// how many entries would pass those checks (a chain link is checked only
/// against a stored chain). The fuzz target's entry; never panics.
pub fn check_peer_body(body: &[u8]) -> usize {
    let (entries, heads) = match decode_cbor::<AuditCall>(body) {
        Ok(AuditCall::Push {
            entries,
            signed_heads,
        }) => (entries, signed_heads),
        Ok(AuditCall::Heads { .. }) => (Vec::new(), Vec::new()),
        Err(_) => match decode_cbor::<AuditReply>(body) {
            Ok(AuditReply::Entries {
                entries,
                signed_heads,
                ..
            }) => (entries, signed_heads),
            _ => (Vec::new(), Vec::new()),
        },
    };
    for h in &heads {
        let _ = h.verifies();
    }
    entries
        .iter()
        .filter(|e| check_standalone(e).is_ok())
        .count()
}

/// Every chain in `tree`, found by jumping from chain to chain (one seek
/// per chain, not a scan). Keys without a separator or a UTF-8 chain name
/// are logged and skipped.
fn chain_names(tree: &sled::Tree) -> Result<Vec<String>, AuditError> {
    let mut out = Vec::new();
    let mut from: Vec<u8> = Vec::new();
    while let Some(item) = tree.range(from.clone()..).next() {
        let (k, _) = item.map_err(store_err)?;
        let Some(nul) = k.iter().position(|&b| b == 0) else {
            tracing::error!(key = ?k, "audit key without a chain separator skipped");
            from = k.to_vec();
            from.push(0);
            continue;
        };
        from = k[..nul].to_vec();
        from.push(1);
        match std::str::from_utf8(&k[..nul]) {
            Ok(name) => out.push(name.to_string()),
            Err(_) => tracing::error!(key = ?k, "audit chain with a non-UTF-8 name skipped"),
        }
    }
    Ok(out)
}

/// Last entry of every chain in the tree.
fn load_heads(tree: &sled::Tree) -> Result<BTreeMap<String, Head>, AuditError> {
    let mut heads = BTreeMap::new();
    for chain in chain_names(tree)? {
        let Some(last) = tree.scan_prefix(prefix(&chain)).next_back() else {
            continue;
        };
        let (lk, lv) = last.map_err(store_err)?;
        let Some(seq) = chain::key_seq(&chain, &lk) else {
            tracing::error!(chain, "audit key with a malformed seq; chain skipped");
            continue;
        };
        let hash = match decode_cbor::<AuditEntry>(&lv) {
            Ok(e) => e.hash,
            Err(e) => {
                tracing::error!(chain, seq, error = %e, "last audit entry is undecodable");
                ZERO_HASH.to_string()
            }
        };
        heads.insert(chain, Head { seq, hash });
    }
    Ok(heads)
}

/// Moves every chain not keyed by a peer id (written before chains were
/// signed) from `tree` into `legacy`, once; returns how many entries moved.
fn migrate_legacy(tree: &sled::Tree, legacy: &sled::Tree) -> Result<u64, AuditError> {
    let mut moved = 0u64;
    for chain in chain_names(tree)? {
        if chain.parse::<PeerId>().is_ok() {
            continue;
        }
        for item in tree.scan_prefix(prefix(&chain)) {
            let (k, v) = item.map_err(store_err)?;
            legacy.insert(&k, v).map_err(store_err)?;
            moved += 1;
        }
        legacy.flush().map_err(store_err)?;
        for item in tree.scan_prefix(prefix(&chain)).keys() {
            tree.remove(item.map_err(store_err)?).map_err(store_err)?;
        }
    }
    if moved > 0 {
        tree.flush().map_err(store_err)?;
    }
    Ok(moved)
}

impl Shared {
    fn flush(&self) -> Result<(), AuditError> {
        self.tree.flush().map(|_| ()).map_err(store_err)?;
        self.signed_heads.flush().map(|_| ()).map_err(store_err)
    }

    fn signed_head(&self, chain: &str) -> Option<SignedHead> {
        match self.signed_heads.get(chain.as_bytes()) {
            Ok(Some(v)) => decode_cbor(&v).ok(),
            Ok(None) => None,
            Err(e) => {
                tracing::error!(chain, error = %e, "signed head unreadable");
                None
            }
        }
    }

    /// Keeps `h` as the chain's highest signed head if it verifies and is
    /// higher than the one held; true when kept.
    fn raise_signed_head(&self, h: &SignedHead) -> bool {
        if !h.verifies() {
            self.metrics.reject("bad_signature");
            return false;
        }
        if self
            .signed_head(&h.peer_id)
            .is_some_and(|old| old.seq >= h.seq)
        {
            return false;
        }
        let known = self.heads.lock().expect("audit heads lock").len();
        if self.signed_head(&h.peer_id).is_none() && known >= MAX_CHAINS {
            self.metrics.reject("full");
            return false;
        }
        match encode_cbor(h) {
            Ok(bytes) => match self.signed_heads.insert(h.peer_id.as_bytes(), bytes) {
                Ok(_) => true,
                Err(e) => {
                    tracing::error!(error = %e, "signed head not stored");
                    false
                }
            },
            Err(_) => false,
        }
    }

    fn signed_seqs(&self) -> BTreeMap<String, u64> {
        self.signed_heads
            .iter()
            .filter_map(|i| i.ok())
            .filter_map(|(k, v)| {
                let h: SignedHead = decode_cbor(&v).ok()?;
                Some((String::from_utf8(k.to_vec()).ok()?, h.seq))
            })
            .take(MAX_CHAINS)
            .collect()
    }

    /// Our signed heads that are higher than `theirs` (bounded).
    fn signed_missing(&self, theirs: &BTreeMap<String, u64>) -> Vec<SignedHead> {
        self.signed_heads
            .iter()
            .filter_map(|i| i.ok())
            .filter_map(|(_, v)| decode_cbor::<SignedHead>(&v).ok())
            .filter(|h| theirs.get(&h.peer_id).is_none_or(|&s| s < h.seq))
            .take(MAX_CHAINS)
            .collect()
    }

    /// Signed heads from a peer; returns how many raised ours.
    fn merge_signed_heads(&self, heads: Vec<SignedHead>, from: &str) -> u64 {
        let mut raised = 0;
        for h in heads.into_iter().take(MAX_CHAINS) {
            if self.raise_signed_head(&h) {
                raised += 1;
                if h.peer_id == self.chain_id {
                    let held = self.head_seqs().get(&self.chain_id).copied().unwrap_or(0);
                    if held < h.seq {
                        tracing::error!(peer = from, held, signed = h.seq, "our own audit chain is behind a head we signed: it was truncated here (the sync restores what links)");
                    }
                }
            }
        }
        if raised > 0 {
            if let Err(e) = self.flush() {
                tracing::error!(error = %e, "audit flush after signed heads failed");
            }
        }
        raised
    }

    fn append(
        &self,
        actor: &str,
        action: &str,
        operation_id: Option<&str>,
        detail: serde_json::Value,
    ) -> Result<AuditEntry, AuditError> {
        let mut heads = self.heads.lock().expect("audit heads lock");
        let head = heads.get(&self.chain_id).cloned().unwrap_or(Head::zero());
        if head.seq >= MAX_SEQ {
            return Err(AuditError::Full(self.node_name.clone()));
        }
        if !heads.contains_key(&self.chain_id) && heads.len() >= MAX_CHAINS {
            return Err(AuditError::Full(format!("the tree ({MAX_CHAINS} chains)")));
        }
        let mut entry = AuditEntry {
            node_id: self.node_name.clone().into(),
            peer_id: Some(self.chain_id.clone()),
            seq: head.seq + 1,
            at: rfc3339_ms(wall_ms()),
            actor: actor.to_string(),
            action: action.to_string(),
            operation_id: operation_id.map(str::to_string),
            detail,
            prev_hash: head.hash,
            hash: String::new(),
            signature: None,
        };
        entry.hash = entry_hash(&entry);
        entry.signature = Some(sign_head(
            &self.keypair,
            &self.chain_id,
            entry.seq,
            &entry.hash,
        )?);
        let bytes = check_shape(&entry).map_err(|_| {
            AuditError::Invalid(format!(
                "fields over {MAX_FIELD_BYTES} bytes or entry over {MAX_ENTRY_BYTES} bytes"
            ))
        })?;
        self.tree
            .insert(key(&self.chain_id, entry.seq), bytes)
            .map_err(store_err)?;
        if let Some(h) = SignedHead::of(&entry) {
            self.signed_heads
                .insert(
                    self.chain_id.as_bytes(),
                    encode_cbor(&h).map_err(store_err)?,
                )
                .map_err(store_err)?;
        }
        // Durable before anyone (caller or peer) sees it.
        self.flush()?;
        heads.insert(
            self.chain_id.clone(),
            Head {
                seq: entry.seq,
                hash: entry.hash.clone(),
            },
        );
        self.metrics.entries.inc();
        Ok(entry)
    }

    /// Merges remote entries; returns the ones stored (in order) and how
    /// many were refused. Duplicates are neither.
    fn merge(&self, mut entries: Vec<AuditEntry>, from: &str) -> (Vec<AuditEntry>, u64) {
        entries.sort_by(|a, b| a.peer_id.cmp(&b.peer_id).then(a.seq.cmp(&b.seq)));
        let mut accepted = Vec::new();
        let mut rejected = 0u64;
        let mut heads = self.heads.lock().expect("audit heads lock");
        for e in entries {
            let chain = e.peer_id.clone().unwrap_or_default();
            let reject = |reason: &'static str| {
                self.metrics.reject(reason);
                if reason == "fork" {
                    tracing::error!(peer = from, chain = %chain, node = %e.node_id, seq = e.seq, hash = %e.hash, "audit fork: a different entry at a seq already held; refused");
                } else {
                    tracing::debug!(peer = from, chain = %chain, seq = e.seq, reason, "audit entry refused");
                }
            };
            let (bytes, head_sig) = match check_standalone(&e) {
                Ok(checked) => checked,
                Err(reason) => {
                    reject(reason);
                    rejected += 1;
                    continue;
                }
            };
            let head = heads.get(&chain).cloned();
            let (head_seq, head_hash) = head
                .as_ref()
                .map(|h| (h.seq, h.hash.as_str()))
                .unwrap_or((0, ZERO_HASH));
            if e.seq <= head_seq {
                match self.tree.get(key(&chain, e.seq)) {
                    Ok(Some(v)) => match decode_cbor::<AuditEntry>(&v) {
                        Ok(held) if held.hash == e.hash => {} // already held
                        _ => {
                            reject("fork");
                            rejected += 1;
                        }
                    },
                    Ok(None) => {
                        reject("gap");
                        rejected += 1;
                    }
                    Err(err) => {
                        tracing::error!(error = %err, "audit store read failed during merge");
                        rejected += 1;
                    }
                }
                continue;
            }
            if e.seq > head_seq + 1 {
                reject("gap");
                rejected += 1;
                continue;
            }
            if e.prev_hash != head_hash {
                reject("unlinked");
                rejected += 1;
                continue;
            }
            if head.is_none() && heads.len() >= MAX_CHAINS {
                reject("full");
                rejected += 1;
                continue;
            }
            if let Err(err) = self.tree.insert(key(&chain, e.seq), bytes) {
                tracing::error!(error = %err, "audit store write failed during merge");
                rejected += 1;
                continue;
            }
            heads.insert(
                chain.clone(),
                Head {
                    seq: e.seq,
                    hash: e.hash.clone(),
                },
            );
            accepted.push((e, head_sig));
        }
        drop(heads);
        for (_, h) in &accepted {
            self.raise_signed_head(h);
        }
        if !accepted.is_empty() {
            if let Err(e) = self.flush() {
                tracing::error!(error = %e, "audit flush after merge failed");
            }
        }
        (accepted.into_iter().map(|(e, _)| e).collect(), rejected)
    }

    fn head_seqs(&self) -> BTreeMap<String, u64> {
        self.heads
            .lock()
            .expect("audit heads lock")
            .iter()
            .map(|(k, h)| (k.clone(), h.seq))
            .collect()
    }

    /// What a node with `theirs` heads lacks, within the batch bounds;
    /// `true` when some were left out.
    fn missing(
        &self,
        theirs: &BTreeMap<String, u64>,
    ) -> Result<(Vec<AuditEntry>, bool), AuditError> {
        let ours = self.head_seqs();
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for (chain, last) in ours {
            let have = theirs.get(&chain).copied().unwrap_or(0);
            if have >= last {
                continue;
            }
            for item in self.tree.range(key(&chain, have + 1)..=key(&chain, last)) {
                let (_, v) = item.map_err(store_err)?;
                if out.len() >= MAX_BATCH_ENTRIES || bytes + v.len() > MAX_BATCH_BYTES {
                    return Ok((out, true));
                }
                match decode_cbor::<AuditEntry>(&v) {
                    Ok(e) => {
                        bytes += v.len();
                        out.push(e);
                    }
                    Err(e) => {
                        // Nothing after it would link anyway.
                        tracing::error!(chain = %chain, error = %e, "undecodable audit entry not sent");
                        break;
                    }
                }
            }
        }
        Ok((out, false))
    }

    /// Checks every chain (signed ones from seq 1, or from their verified
    /// prefix when `incremental` and the tree is large) and every legacy
    /// chain, one report per chain.
    fn check_all(&self, incremental: bool) -> Result<Vec<AuditChainReport>, AuditError> {
        let heads = self.heads.lock().expect("audit heads lock").clone();
        let total: u64 = heads.values().map(|h| h.seq).sum();
        let mut chains: Vec<String> = heads.keys().cloned().collect();
        for name in self
            .signed_heads
            .iter()
            .keys()
            .filter_map(|k| String::from_utf8(k.ok()?.to_vec()).ok())
        {
            if !heads.contains_key(&name) {
                chains.push(name); // a signed head without a chain: truncated
            }
        }
        let mut verified = self.verified.lock().expect("audit verified lock");
        let mut out = Vec::new();
        for chain in &chains {
            let start = match verified.get(chain) {
                Some(v) if incremental && total > FULL_VERIFY_MAX => v.clone(),
                _ => Head::zero(),
            };
            let signed = self.signed_head(chain);
            let check = check_chain(&self.tree, chain, start, signed.as_ref(), false)?;
            if let Some(p) = &check.problem {
                tracing::error!(chain, seq = p.seq, fault = ?p.fault, "audit chain does not verify");
            }
            verified.insert(chain.clone(), check.good.clone());
            out.push(report(chain, check, signed.map(|h| h.seq)));
        }
        for chain in chain_names(&self.legacy)? {
            let check = check_chain(&self.legacy, &chain, Head::zero(), None, true)?;
            out.push(report(&chain, check, None));
        }
        Ok(out)
    }

    fn list(&self, limit: usize) -> Result<AuditList, AuditError> {
        let limit = limit.clamp(1, 10_000);
        let chains: Vec<String> = self
            .heads
            .lock()
            .expect("audit heads lock")
            .keys()
            .cloned()
            .collect();
        let mut entries = Vec::new();
        let mut take = |tree: &sled::Tree, chain: &str| -> Result<(), AuditError> {
            for item in tree.scan_prefix(prefix(chain)).rev().take(limit) {
                let (_, v) = item.map_err(store_err)?;
                match decode_cbor::<AuditEntry>(&v) {
                    Ok(e) => entries.push(e),
                    Err(e) => {
                        tracing::error!(chain = %chain, error = %e, "undecodable audit entry not listed")
                    }
                }
            }
            Ok(())
        };
        for chain in &chains {
            take(&self.tree, chain)?;
        }
        for chain in chain_names(&self.legacy)? {
            take(&self.legacy, &chain)?;
        }
        entries.sort_by(|a, b| {
            b.at.cmp(&a.at)
                .then_with(|| b.node_id.cmp(&a.node_id))
                .then(b.seq.cmp(&a.seq))
        });
        entries.truncate(limit);
        let chains_verified = self
            .check_all(true)?
            .iter()
            .all(|c| c.status != AuditChainStatus::Failed);
        Ok(AuditList {
            entries,
            chains_verified,
        })
    }
}

fn report(chain: &str, check: chain::ChainCheck, signed_head_seq: Option<u64>) -> AuditChainReport {
    AuditChainReport {
        chain: chain.to_string(),
        node_id: check.node_name.map(Into::into),
        status: check.status,
        entries: check.entries,
        head_seq: check.head_seq,
        signed_head_seq,
        problem: check.problem,
    }
}

impl AuditLog {
    /// Opens the audit trees of `store` for the node whose libp2p key is
    /// `keypair` (its chain is its peer id) and whose name is `node_name`.
    /// Moves legacy (unsigned) chains aside first, once.
    pub fn open(
        store: &NodeStore,
        keypair: Keypair,
        node_name: String,
        registry: &mut Registry,
    ) -> Result<Arc<Self>, AuditError> {
        if !valid_name(&node_name) {
            return Err(AuditError::Invalid(format!("node name {node_name:?}")));
        }
        let tree = store.tree(TREE).map_err(store_err)?;
        let legacy = store.tree(LEGACY_TREE).map_err(store_err)?;
        let moved = migrate_legacy(&tree, &legacy)?;
        if moved > 0 {
            tracing::warn!(entries = moved, tree = LEGACY_TREE, "unsigned audit entries from before signed chains moved aside: still listed, verified as legacy_unsigned, not replicated");
        }
        let heads = load_heads(&tree)?;
        let chain_id = keypair.public().to_peer_id().to_string();
        let shared = Shared {
            tree,
            signed_heads: store.tree(SIGNED_HEADS_TREE).map_err(store_err)?,
            legacy,
            tokens: store.tree(TOKENS_TREE).map_err(store_err)?,
            keypair,
            chain_id,
            node_name,
            heads: Mutex::new(heads),
            verified: Mutex::new(BTreeMap::new()),
            metrics: Metrics::register(registry),
        };
        let held = shared
            .head_seqs()
            .get(&shared.chain_id)
            .copied()
            .unwrap_or(0);
        if let Some(h) = shared
            .signed_head(&shared.chain_id)
            .filter(|h| h.seq > held)
        {
            tracing::error!(
                held,
                signed = h.seq,
                "our own audit chain ends before the last head we signed: it was truncated"
            );
        }
        Ok(Arc::new(AuditLog {
            shared: Arc::new(shared),
            limited: Mutex::default(),
            events: broadcast::channel(1024).0,
            push: OnceLock::new(),
            caught_up: tokio::sync::watch::channel(true).0,
        }))
    }

    /// Appends `token.added` for every token name this node has not seen
    /// in its config before, and `token.changed` for a name whose role or
    /// token changed (a rotation): name and role only, never the token or
    /// its hash. `tokens`: (name, role, the token's blake3 hash).
    pub async fn record_tokens(
        &self,
        actor: &str,
        tokens: Vec<(String, &'static str, [u8; 32])>,
    ) -> Result<u64, AuditError> {
        let tree = &self.shared.tokens;
        let mut appended = 0;
        for (name, role, hash) in tokens {
            let seen = format!("{role}:{}", &blake3::hash(&hash).to_hex()[..16]);
            let before = tree.get(name.as_bytes()).map_err(store_err)?;
            let action = match &before {
                None => "token.added",
                Some(v) if v.as_ref() == seen.as_bytes() => continue,
                Some(_) => "token.changed",
            };
            let detail = serde_json::json!({ "name": name, "role": role });
            self.append(actor, action, None, detail).await?;
            tree.insert(name.as_bytes(), seen.as_bytes())
                .map_err(store_err)?;
            tree.flush().map_err(store_err)?;
            appended += 1;
        }
        Ok(appended)
    }

    /// This node's chain: its peer id.
    pub fn chain_id(&self) -> &str {
        &self.shared.chain_id
    }

    /// Appends to this node's chain, signed; durable when it returns.
    /// Pushed to every alive member in the background once `spawn_sync` ran.
    pub async fn append(
        &self,
        actor: &str,
        action: &str,
        operation_id: Option<&str>,
        detail: serde_json::Value,
    ) -> Result<AuditEntry, AuditError> {
        let mut caught_up = self.caught_up.subscribe();
        if !*caught_up.borrow() {
            let _ = tokio::time::timeout(CATCHUP_MAX_WAIT, caught_up.wait_for(|c| *c)).await;
        }
        let shared = self.shared.clone();
        let (actor, action, op) = (
            actor.to_string(),
            action.to_string(),
            operation_id.map(str::to_string),
        );
        let entry = tokio::task::spawn_blocking(move || {
            shared.append(&actor, &action, op.as_deref(), detail)
        })
        .await
        .map_err(|e| AuditError::Task(e.to_string()))??;
        tracing::info!(seq = entry.seq, actor = %entry.actor, action = %entry.action, "audit entry appended");
        let _ = self.events.send(entry.clone());
        if let Some(push) = self.push.get() {
            if push.try_send(entry.clone()).is_err() {
                tracing::debug!(
                    seq = entry.seq,
                    "audit push queue full; sync will deliver it"
                );
            }
        }
        Ok(entry)
    }

    /// [`Self::append`] for high-volume actions (refused peer calls, join
    /// attempts): at most one entry per (`action`, `subject`) per
    /// [`LIMITED_WINDOW`]. The ones in between are not written but counted,
    /// and the next entry for that pair carries the count as
    /// `suppressed_before` in its detail. None when this one was counted.
    pub async fn append_limited(
        &self,
        subject: &str,
        actor: &str,
        action: &str,
        operation_id: Option<&str>,
        detail: serde_json::Value,
    ) -> Result<Option<AuditEntry>, AuditError> {
        let suppressed = {
            let now = std::time::Instant::now();
            let mut windows = self.limited.lock().expect("audit limiter lock");
            let mut k = (action.to_string(), subject.to_string());
            if !windows.contains_key(&k) && windows.len() >= MAX_LIMITED_SUBJECTS {
                windows.retain(|_, (since, _)| now.duration_since(*since) < LIMITED_WINDOW);
                if windows.len() >= MAX_LIMITED_SUBJECTS {
                    k.1 = "*".into();
                }
            }
            match windows.get_mut(&k) {
                Some((since, n)) if now.duration_since(*since) < LIMITED_WINDOW => {
                    *n += 1;
                    return Ok(None);
                }
                Some((since, n)) => {
                    *since = now;
                    std::mem::take(n)
                }
                None => {
                    windows.insert(k, (now, 0));
                    0
                }
            }
        };
        let detail = match (detail, suppressed) {
            (d, 0) => d,
            (serde_json::Value::Object(mut m), n) => {
                m.insert("suppressed_before".into(), n.into());
                serde_json::Value::Object(m)
            }
            (d, n) => serde_json::json!({ "detail": d, "suppressed_before": n }),
        };
        self.append(actor, action, operation_id, detail)
            .await
            .map(Some)
    }

    /// Newest first across every chain (by `at`, then node id), at most
    /// `limit` (1..=10 000), and whether every stored chain verifies.
    /// Blocking (sled reads): call it from a blocking task.
    pub fn list(&self, limit: usize) -> Result<AuditList, AuditError> {
        self.shared.list(limit)
    }

    /// Checks every chain this node holds from seq 1: hash, link, seq
    /// continuity, signature, signer = chain owner, and the end against
    /// the highest signed head seen. Blocking: call it from a blocking task.
    pub fn verify(&self) -> Result<AuditVerifyReport, AuditError> {
        let chains = self.shared.check_all(false)?;
        Ok(AuditVerifyReport {
            node_id: self.shared.node_name.clone().into(),
            ok: chains.iter().all(|c| c.status != AuditChainStatus::Failed),
            chains,
        })
    }

    /// New entries, local or merged from peers.
    pub fn subscribe(&self) -> broadcast::Receiver<AuditEntry> {
        self.events.subscribe()
    }

    async fn merge(
        &self,
        entries: Vec<AuditEntry>,
        signed_heads: Vec<SignedHead>,
        from: String,
    ) -> Result<(u64, u64), String> {
        if entries.is_empty() && signed_heads.is_empty() {
            return Ok((0, 0));
        }
        let shared = self.shared.clone();
        let (accepted, rejected) = tokio::task::spawn_blocking(move || {
            // Entries first, so heads they raise are not reported truncated.
            let merged = shared.merge(entries, &from);
            shared.merge_signed_heads(signed_heads, &from);
            merged
        })
        .await
        .map_err(|e| e.to_string())?;
        for e in &accepted {
            let _ = self.events.send(e.clone());
        }
        Ok((accepted.len() as u64, rejected))
    }

    async fn missing(
        &self,
        theirs: BTreeMap<String, u64>,
        their_signed: BTreeMap<String, u64>,
    ) -> Result<(Vec<AuditEntry>, bool, Vec<SignedHead>), String> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let (entries, more) = shared.missing(&theirs)?;
            Ok::<_, AuditError>((entries, more, shared.signed_missing(&their_signed)))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
    }

    /// Serves a peer's `audit` call.
    pub async fn serve(&self, peer: PeerId, body: &[u8]) -> Result<Vec<u8>, CallError> {
        let call: AuditCall = decode_cbor(body).map_err(|e| {
            tracing::warn!(%peer, error = %e, "malformed audit call dropped");
            CallError::malformed(e)
        })?;
        let reply = match call {
            AuditCall::Heads { heads, signed } => {
                if heads.len() > MAX_CHAINS || signed.len() > MAX_CHAINS {
                    tracing::warn!(%peer, "oversized audit heads dropped");
                    return Err(CallError::refused(format!("at most {MAX_CHAINS} chains")));
                }
                let (entries, more, signed_heads) = self
                    .missing(heads, signed)
                    .await
                    .map_err(CallError::failed)?;
                AuditReply::Entries {
                    entries,
                    heads: self.shared.head_seqs(),
                    more,
                    signed_heads,
                    signed: self.shared.signed_seqs(),
                }
            }
            AuditCall::Push {
                entries,
                signed_heads,
            } => {
                if entries.len() > MAX_BATCH_ENTRIES || signed_heads.len() > MAX_CHAINS {
                    tracing::warn!(%peer, n = entries.len(), "oversized audit push dropped");
                    return Err(CallError::refused(format!(
                        "at most {MAX_BATCH_ENTRIES} entries and {MAX_CHAINS} signed heads per push"
                    )));
                }
                let (accepted, rejected) = self
                    .merge(entries, signed_heads, peer.to_string())
                    .await
                    .map_err(CallError::failed)?;
                AuditReply::Ack { accepted, rejected }
            }
        };
        encode_cbor(&reply).map_err(CallError::failed)
    }

    /// One pull (and push back) with `peer`; false when it had nothing
    /// more for us.
    async fn sync_once(&self, p2p: &P2pHandle, peer: PeerId) -> Result<bool, String> {
        let call = encode_cbor(&AuditCall::Heads {
            heads: self.shared.head_seqs(),
            signed: self.shared.signed_seqs(),
        })
        .map_err(|e| e.to_string())?;
        let bytes = p2p
            .request(peer, SERVICE, call)
            .await
            .map_err(|e| e.to_string())?;
        let AuditReply::Entries {
            entries,
            heads,
            more,
            signed_heads,
            signed,
        } = decode_cbor(&bytes).map_err(|e| e.to_string())?
        else {
            return Err("unexpected audit reply".into());
        };
        if entries.len() > MAX_BATCH_ENTRIES
            || signed_heads.len() > MAX_CHAINS
            || heads.len() > MAX_CHAINS
            || signed.len() > MAX_CHAINS
        {
            return Err("oversized audit reply".into());
        }
        let (accepted, rejected) = self.merge(entries, signed_heads, peer.to_string()).await?;
        if accepted > 0 || rejected > 0 {
            tracing::debug!(%peer, accepted, rejected, "audit entries pulled");
        }
        // Push back what the peer lacks (one bounded batch per round).
        let (theirs, _, their_heads) = self.missing(heads, signed).await?;
        if !theirs.is_empty() || !their_heads.is_empty() {
            let body = encode_cbor(&AuditCall::Push {
                entries: theirs,
                signed_heads: their_heads,
            })
            .map_err(|e| e.to_string())?;
            p2p.request(peer, SERVICE, body)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(more && accepted > 0)
    }
    /// Starts the background tasks: pushing local entries to every alive
    /// member, and the periodic pull from one random alive member.
    pub fn spawn_sync(self: &Arc<Self>, p2p: P2pHandle) {
        let (tx, mut rx) = mpsc::channel::<AuditEntry>(PUSH_QUEUE);
        if self.push.set(tx).is_err() {
            tracing::warn!("audit sync already started");
            return;
        }
        // Pushes go out in batches, in order, so peers see them linked.
        {
            let p2p = p2p.clone();
            tokio::spawn(async move {
                while let Some(first) = rx.recv().await {
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH_ENTRIES {
                        match rx.try_recv() {
                            Ok(e) => batch.push(e),
                            Err(_) => break,
                        }
                    }
                    let body = match encode_cbor(&AuditCall::Push {
                        entries: batch,
                        signed_heads: Vec::new(),
                    }) {
                        Ok(b) => b,
                        Err(e) => {
                            tracing::error!(error = %e, "audit push not encodable");
                            continue;
                        }
                    };
                    let peers = p2p.alive_peers();
                    futures::stream::iter(peers)
                        .for_each_concurrent(PUSH_CONCURRENCY, |peer| {
                            let (p2p, body) = (p2p.clone(), body.clone());
                            async move {
                                if let Err(e) = p2p.request(peer, SERVICE, body).await {
                                    tracing::debug!(%peer, error = %e, "audit push failed; sync will deliver it");
                                }
                            }
                        })
                        .await;
                }
            });
        }
        self.caught_up.send_replace(false);
        let started = tokio::time::Instant::now();
        let log = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SYNC_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let catching_up = log.upgrade().is_some_and(|l| !*l.caught_up.borrow());
                if catching_up {
                    tokio::time::sleep(CATCHUP_RETRY).await;
                } else {
                    tick.tick().await;
                }
                let Some(log) = log.upgrade() else { break };
                if catching_up && started.elapsed() >= CATCHUP_MAX_WAIT {
                    log.caught_up.send_replace(true);
                }
                let peer = {
                    use rand::seq::SliceRandom;
                    p2p.alive_peers().choose(&mut rand::thread_rng()).copied()
                };
                let Some(peer) = peer else { continue };
                for _ in 0..MAX_SYNC_ROUNDS {
                    match log.sync_once(&p2p, peer).await {
                        Ok(true) => continue,
                        Ok(false) => {
                            log.caught_up.send_replace(true);
                            break;
                        }
                        Err(e) => {
                            tracing::debug!(%peer, error = %e, "audit sync failed");
                            break;
                        }
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn open(dir: &std::path::Path, name: &str) -> (Arc<NodeStore>, Arc<AuditLog>) {
        let store = Arc::new(NodeStore::open(&dir.join(name)).unwrap());
        let keypair =
            plexi_p2p::identity::load_or_create(&dir.join(format!("{name}.key"))).unwrap();
        let log = AuditLog::open(&store, keypair, name.into(), &mut Registry::default()).unwrap();
        (store, log)
    }

    fn chain(log: &AuditLog, chain: &str) -> Vec<AuditEntry> {
        log.shared
            .tree
            .scan_prefix(prefix(chain))
            .map(|i| decode_cbor(&i.unwrap().1).unwrap())
            .collect()
    }

    fn rejected(log: &AuditLog, reason: &'static str) -> u64 {
        log.shared
            .metrics
            .rejected
            .get_or_create(&ReasonLabels { reason })
            .get()
    }

    #[tokio::test]
    async fn peer_bodies_pass_the_checks_only_when_signed_and_intact() {
        let dir = tempfile::tempdir().unwrap();
        let (_s, log) = open(dir.path(), "a");
        let e = log.append("admin", "x", None, json!({})).await.unwrap();
        let push = |entries: Vec<AuditEntry>| {
            encode_cbor(&AuditCall::Push {
                entries,
                signed_heads: Vec::new(),
            })
            .unwrap()
        };
        assert_eq!(check_peer_body(&push(vec![e.clone()])), 1);
        let mut forged = e.clone();
        forged.action = "y".into();
        assert_eq!(check_peer_body(&push(vec![forged.clone()])), 0);
        forged.hash = entry_hash(&forged);
        assert_eq!(
            check_peer_body(&push(vec![forged])),
            0,
            "re-hashed, not re-signed"
        );
        assert_eq!(check_peer_body(b"\xff\x00garbage"), 0);
    }

    #[tokio::test]
    async fn appends_link_into_a_signed_chain() {
        let dir = tempfile::tempdir().unwrap();
        let (_s, log) = open(dir.path(), "a");
        let id = log.chain_id().to_string();
        let mut events = log.subscribe();
        let e1 = log
            .append(
                "admin",
                "release.publish",
                None,
                json!({"version": "1.0.0"}),
            )
            .await
            .unwrap();
        let e2 = log
            .append(
                "admin",
                "maintenance.on",
                Some("op-1"),
                json!({"b": 1, "a": [1.5, null]}),
            )
            .await
            .unwrap();
        assert_eq!((e1.seq, e2.seq), (1, 2));
        assert_eq!(e1.prev_hash, ZERO_HASH);
        assert_eq!(e2.prev_hash, e1.hash);
        assert_eq!(entry_hash(&e2), e2.hash);
        assert_eq!(e2.peer_id.as_deref(), Some(id.as_str()));
        assert_eq!(e2.node_id.as_str(), "a");
        assert!(SignedHead::of(&e2).unwrap().verifies());
        assert_eq!(events.recv().await.unwrap(), e1);
        assert_eq!(chain(&log, &id), vec![e1.clone(), e2.clone()]);
        let list = log.list(100).unwrap();
        assert!(list.chains_verified);
        assert_eq!(list.entries, vec![e2.clone(), e1.clone()]);
        assert_eq!(log.shared.signed_head(&id).unwrap().seq, 2);

        // Reopened, the chain continues where it stopped.
        drop(log);
        drop(_s);
        let (_s, log) = open(dir.path(), "a");
        let e3 = log.append("admin", "x", None, json!(null)).await.unwrap();
        assert_eq!((e3.seq, e3.prev_hash.as_str()), (3, e2.hash.as_str()));
        let report = log.verify().unwrap();
        assert!(report.ok, "{report:?}");
        assert_eq!(report.chains.len(), 1);
        assert_eq!(report.chains[0].status, AuditChainStatus::Ok);
        assert_eq!(report.chains[0].head_seq, 3);
        assert_eq!(report.chains[0].signed_head_seq, Some(3));
    }

    #[tokio::test]
    async fn tampering_and_truncation_fail_verification() {
        use plexi_api::model::AuditFault;
        let dir = tempfile::tempdir().unwrap();
        let (_s, log) = open(dir.path(), "a");
        let id = log.chain_id().to_string();
        for i in 0..4 {
            log.append("admin", "act", None, json!({ "i": i }))
                .await
                .unwrap();
        }
        assert!(log.list(10).unwrap().chains_verified);
        let k = key(&id, 2);
        let good = log.shared.tree.get(&k).unwrap().unwrap();
        // One byte of the actor's name (a signature byte would be a
        // bad_signature).
        let mut raw = good.to_vec();
        let at = raw.windows(5).position(|w| w == b"admin").unwrap();
        raw[at] = b'e';
        log.shared.tree.insert(&k, raw).unwrap();
        assert!(!log.list(10).unwrap().chains_verified);
        let report = log.verify().unwrap();
        assert!(!report.ok);
        let p = report.chains[0].problem.clone().unwrap();
        assert_eq!((p.seq, p.fault), (2, AuditFault::Modified));
        log.shared.tree.insert(&k, good).unwrap();
        assert!(log.verify().unwrap().ok);
        // The last entry dropped: caught against the signed head.
        log.shared.tree.remove(key(&id, 4)).unwrap();
        let p = log.verify().unwrap().chains[0].problem.clone().unwrap();
        assert_eq!((p.seq, p.fault), (4, AuditFault::Truncated));
    }

    #[tokio::test]
    async fn merge_accepts_signed_links_and_refuses_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let (_sa, a) = open(dir.path(), "a");
        let (_sb, b) = open(dir.path(), "b");
        let (_sm, mallory) = open(dir.path(), "m");
        let ida = a.chain_id().to_string();
        let mut src = Vec::new();
        for i in 0..4 {
            src.push(
                a.append("admin", "act", None, json!({ "i": i }))
                    .await
                    .unwrap(),
            );
        }
        let merge = |log: &Arc<AuditLog>, entries: Vec<AuditEntry>| {
            let log = log.clone();
            async move { log.merge(entries, vec![], "x".into()).await.unwrap() }
        };

        // A gap (seq 2 before seq 1) is refused.
        assert_eq!(merge(&b, vec![src[1].clone()]).await, (0, 1));
        assert_eq!(rejected(&b, "gap"), 1);
        // In order (even given out of order in one batch) it links.
        assert_eq!(
            merge(&b, vec![src[1].clone(), src[0].clone()]).await,
            (2, 0)
        );
        // Already held with the same hash: a no-op.
        assert_eq!(merge(&b, vec![src[0].clone()]).await, (0, 0));

        // A changed entry is refused (hash), and re-hashed it is refused
        // (signature): only a's key can sign into a's chain.
        let mut forged = src[2].clone();
        forged.actor = "mallory".into();
        assert_eq!(merge(&b, vec![forged.clone()]).await, (0, 1));
        assert_eq!(rejected(&b, "bad_hash"), 1);
        forged.hash = entry_hash(&forged);
        assert_eq!(merge(&b, vec![forged.clone()]).await, (0, 1));
        assert_eq!(rejected(&b, "bad_signature"), 1);
        // Signed by mallory's key but claiming a's chain: refused.
        forged.signature = Some(sign_head(&mallory.shared.keypair, &ida, 3, &forged.hash).unwrap());
        assert_eq!(merge(&b, vec![forged.clone()]).await, (0, 1));
        assert_eq!(rejected(&b, "bad_signature"), 2);
        // Unsigned (a legacy entry): refused.
        let mut unsigned = src[2].clone();
        unsigned.signature = None;
        assert_eq!(merge(&b, vec![unsigned]).await, (0, 1));
        assert_eq!(rejected(&b, "unsigned"), 1);
        // Mallory's own entries go in mallory's chain, whatever name they show.
        let mut m1 = mallory
            .append("admin", "act", None, json!(1))
            .await
            .unwrap();
        assert_eq!(merge(&b, vec![m1.clone()]).await, (1, 0));
        m1.node_id = "a".to_string().into();
        assert_eq!(merge(&b, vec![m1]).await, (0, 1));

        assert_eq!(merge(&b, vec![src[2].clone()]).await, (1, 0));
        // A seq 4 that does not link to b's seq 3 is refused even signed.
        let mut unlinked = src[3].clone();
        unlinked.prev_hash = src[0].hash.clone();
        unlinked.hash = entry_hash(&unlinked);
        unlinked.signature = Some(sign_head(&a.shared.keypair, &ida, 4, &unlinked.hash).unwrap());
        assert_eq!(merge(&b, vec![unlinked.clone()]).await, (0, 1));
        assert_eq!(rejected(&b, "unlinked"), 1);
        // A different signed entry at a held seq is a fork.
        let mut fork = unlinked.clone();
        fork.seq = 3;
        fork.prev_hash = src[1].hash.clone();
        fork.hash = entry_hash(&fork);
        fork.signature = Some(sign_head(&a.shared.keypair, &ida, 3, &fork.hash).unwrap());
        assert_eq!(merge(&b, vec![fork]).await, (0, 1));
        assert_eq!(rejected(&b, "fork"), 1);
        // Garbage never panics.
        let mut junk = src[3].clone();
        junk.peer_id = Some("a\0b".into());
        junk.seq = 0;
        assert_eq!(merge(&b, vec![junk]).await, (0, 1));
        assert!(b.serve(PeerId::random(), b"\xff\x00garbage").await.is_err());

        assert_eq!(chain(&b, &ida), src[..3].to_vec());
        let report = b.verify().unwrap();
        assert!(report.ok, "{report:?}");
        assert_eq!(report.chains.len(), 2);
        // b's own chain starts at 1 beside the merged ones.
        let own = b.append("admin", "act", None, json!(null)).await.unwrap();
        assert_eq!((own.seq, own.prev_hash.as_str()), (1, ZERO_HASH));
    }

    #[tokio::test]
    async fn signed_heads_spread_and_catch_a_truncated_copy() {
        use plexi_api::model::AuditFault;
        let dir = tempfile::tempdir().unwrap();
        let (_sa, a) = open(dir.path(), "a");
        let (_sb, b) = open(dir.path(), "b");
        let ida = a.chain_id().to_string();
        let mut src = Vec::new();
        for i in 0..3 {
            src.push(a.append("admin", "act", None, json!(i)).await.unwrap());
        }
        // b got only the first two entries, then a's signed head at seq 3.
        b.merge(src[..2].to_vec(), vec![], "a".into())
            .await
            .unwrap();
        let heads = a.shared.signed_missing(&b.shared.signed_seqs());
        assert_eq!(heads.len(), 1);
        assert_eq!(heads[0].seq, 3);
        // A forged head is ignored.
        let mut forged = heads[0].clone();
        forged.seq = 99;
        b.merge(vec![], vec![forged], "x".into()).await.unwrap();
        assert_eq!(b.shared.signed_seqs().get(&ida), Some(&2));
        b.merge(vec![], heads, "a".into()).await.unwrap();
        assert_eq!(b.shared.signed_seqs().get(&ida), Some(&3));
        let c = b.verify().unwrap();
        let ch = c.chains.iter().find(|c| c.chain == ida).unwrap();
        assert_eq!(ch.problem.as_ref().unwrap().fault, AuditFault::Truncated);
        // The sync brings the entry and the chain verifies again.
        b.merge(vec![src[2].clone()], vec![], "a".into())
            .await
            .unwrap();
        assert!(b.verify().unwrap().ok);
        // Nothing more to send either way.
        assert!(a.shared.signed_missing(&b.shared.signed_seqs()).is_empty());
    }

    #[tokio::test]
    async fn legacy_chains_move_aside_and_stay_listed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(NodeStore::open(&dir.path().join("old")).unwrap());
        // What the previous version wrote: keyed by name, unsigned.
        let tree = store.tree(TREE).unwrap();
        chain::write_legacy_chain(&tree, "old", 2);
        let keypair = Keypair::generate_ed25519();
        let log = AuditLog::open(&store, keypair, "old".into(), &mut Registry::default()).unwrap();
        assert_eq!(chain_names(&log.shared.tree).unwrap(), Vec::<String>::new());
        log.append("admin", "y", None, json!(null)).await.unwrap();
        let list = log.list(10).unwrap();
        assert_eq!(list.entries.len(), 3);
        assert!(list.chains_verified);
        let report = log.verify().unwrap();
        assert!(report.ok);
        let legacy = report.chains.iter().find(|c| c.chain == "old").unwrap();
        assert_eq!(legacy.status, AuditChainStatus::LegacyUnsigned);
        assert_eq!(legacy.entries, 2);
    }

    #[tokio::test]
    async fn heads_exchange_is_bounded_and_converges() {
        let dir = tempfile::tempdir().unwrap();
        let (_sa, a) = open(dir.path(), "a");
        let (_sb, b) = open(dir.path(), "b");
        for i in 0..300 {
            a.append("admin", "act", None, json!(i)).await.unwrap();
        }
        b.append("admin", "act", None, json!("b")).await.unwrap();
        let ida = a.chain_id().to_string();
        let ask = |heads: BTreeMap<String, u64>, signed: BTreeMap<String, u64>| {
            encode_cbor(&AuditCall::Heads { heads, signed }).unwrap()
        };
        let mut rounds = 0;
        loop {
            rounds += 1;
            let reply = a
                .serve(
                    PeerId::random(),
                    &ask(b.shared.head_seqs(), b.shared.signed_seqs()),
                )
                .await
                .unwrap();
            let AuditReply::Entries {
                entries,
                heads,
                more,
                signed_heads,
                ..
            } = decode_cbor(&reply).unwrap()
            else {
                panic!("not entries")
            };
            assert!(entries.len() <= MAX_BATCH_ENTRIES);
            assert_eq!(heads.get(&ida), Some(&300));
            b.merge(entries, signed_heads, "a".into()).await.unwrap();
            if !more {
                break;
            }
        }
        assert_eq!(rounds, 2);
        assert_eq!(b.shared.head_seqs().get(&ida), Some(&300));
        // a lacks b's chain: pushed back.
        let (back, more, heads) = b
            .missing(a.shared.head_seqs(), a.shared.signed_seqs())
            .await
            .unwrap();
        assert_eq!((back.len(), more, heads.len()), (1, false, 1));
        let push = encode_cbor(&AuditCall::Push {
            entries: back,
            signed_heads: heads,
        })
        .unwrap();
        let AuditReply::Ack { accepted, rejected } =
            decode_cbor(&a.serve(PeerId::random(), &push).await.unwrap()).unwrap()
        else {
            panic!("not ack")
        };
        assert_eq!((accepted, rejected), (1, 0));
        assert_eq!(a.list(10_000).unwrap(), b.list(10_000).unwrap());
        assert_eq!(a.shared.signed_seqs(), b.shared.signed_seqs());
    }

    #[tokio::test]
    async fn token_names_are_audited_once_and_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let (_s, log) = open(dir.path(), "a");
        let h = |t: &str| *blake3::hash(t.as_bytes()).as_bytes();
        let set = vec![
            ("ops".to_string(), "admin", h("tok-1")),
            ("ci".to_string(), "read", h("tok-2")),
        ];
        assert_eq!(log.record_tokens("node:a", set.clone()).await.unwrap(), 2);
        assert_eq!(log.record_tokens("node:a", set).await.unwrap(), 0);
        let rotated = vec![
            ("ops".to_string(), "admin", h("tok-3")),
            ("ci".to_string(), "read", h("tok-2")),
        ];
        assert_eq!(log.record_tokens("node:a", rotated).await.unwrap(), 1);
        let list = log.list(10).unwrap();
        let actions: Vec<&str> = list.entries.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(actions.iter().filter(|a| **a == "token.added").count(), 2);
        assert_eq!(list.entries[0].action, "token.changed");
        assert_eq!(
            list.entries[0].detail,
            json!({"name": "ops", "role": "admin"})
        );
        let text = serde_json::to_string(&list).unwrap();
        for t in ["tok-1", "tok-3"] {
            assert!(!text.contains(t));
            assert!(!text.contains(blake3::hash(t.as_bytes()).to_hex().as_str()));
        }
    }

    #[tokio::test]
    async fn limited_appends_write_one_entry_per_window_and_count_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let (_s, log) = open(dir.path(), "a");
        let call = |subject: &'static str| {
            let log = log.clone();
            async move {
                log.append_limited(
                    subject,
                    "node:a",
                    "peer.refused",
                    None,
                    json!({"peer": subject}),
                )
                .await
                .unwrap()
            }
        };
        assert!(call("p1").await.is_some());
        for _ in 0..5 {
            assert!(call("p1").await.is_none());
        }
        assert!(call("p2").await.is_some());
        // The window passed: the next entry carries the count.
        {
            let mut w = log.limited.lock().unwrap();
            let e = w.get_mut(&("peer.refused".into(), "p1".into())).unwrap();
            e.0 = e.0.checked_sub(LIMITED_WINDOW).unwrap();
        }
        let e = call("p1").await.unwrap();
        assert_eq!(e.detail, json!({"peer": "p1", "suppressed_before": 5}));
        assert_eq!(log.list(100).unwrap().entries.len(), 3);
    }

    #[tokio::test]
    async fn list_is_newest_first_and_limited() {
        let dir = tempfile::tempdir().unwrap();
        let (_sa, a) = open(dir.path(), "a");
        let (_sb, b) = open(dir.path(), "b");
        let mut all = Vec::new();
        for i in 0..5 {
            let log = if i % 2 == 0 { &a } else { &b };
            all.push(log.append("admin", "act", None, json!(i)).await.unwrap());
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        let from_b = chain(&b, b.chain_id());
        b.merge(chain(&a, a.chain_id()), vec![], "a".into())
            .await
            .unwrap();
        assert_eq!(from_b.len(), 2);
        let list = b.list(100).unwrap();
        assert!(list.chains_verified);
        all.reverse();
        assert_eq!(list.entries, all);
        assert_eq!(b.list(2).unwrap().entries, all[..2].to_vec());
        assert_eq!(b.list(0).unwrap().entries.len(), 1);
    }
}
