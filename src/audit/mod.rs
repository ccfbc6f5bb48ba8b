//! The audit log: who did what to the cluster, kept append-only and
//! hash-chained on every node, with no coordinator.
//!
//! This module owns the `audit` sled tree and the `audit` p2p service.
//!
//! - Every node keeps its **own chain** of the entries it authored: seq 1, 2,
//!   3…, each entry's `hash` is blake3 of the canonical CBOR of every other
//!   field, and `prev_hash` is the hash of the node's previous entry (64 zeros
//!   for seq 1). An append is flushed before it returns.
//! - Every node also stores **every other node's chain** (the cluster's view).
//!   New local entries are pushed to every alive member at once; a sync task
//!   every 2 s sends our heads (last seq per chain) to one random alive member
//!   and merges the entries it lacks, then pushes back what that member lacks,
//!   so the view converges when pushes are lost.
//! - A remote entry is accepted only if it links to what we hold (next seq,
//!   `prev_hash` equal to our last hash, hash recomputes). A different entry
//!   at a seq we already hold is a fork: refused, logged, counted. Nothing is
//!   ever deleted; chains stop at 10 million entries, the tree at 4096 chains.
//!
//! Keys: `node_id` bytes, 0x00, seq as big-endian u64 (a chain is one
//! contiguous, ordered range). Values: CBOR of the `AuditEntry`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use plexi_api::model::{AuditEntry, AuditList};
use plexi_p2p::codec::{decode_cbor, encode_cbor};
use plexi_p2p::{CallError, P2pHandle, PeerId};
use plexi_store::NodeStore;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};

use plexi_util::clock::{rfc3339_ms, wall_ms};

/// The p2p service name.
pub const SERVICE: &str = "audit";

/// `prev_hash` of a chain's first entry.
pub const ZERO_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Longest chain accepted (local or remote).
const MAX_SEQ: u64 = 10_000_000;
/// Most chains (authoring nodes) the tree holds.
const MAX_CHAINS: usize = 4096;
/// Largest encoded entry accepted.
const MAX_ENTRY_BYTES: usize = 64 * 1024;
/// Bounds on one reply to `Heads` and on one `Push`.
const MAX_BATCH_ENTRIES: usize = 256;
const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// Longest node id / actor / action / operation id.
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
    Heads { heads: BTreeMap<String, u64> },
    /// Entries to merge (new local entries, or what a sync found missing).
    Push { entries: Vec<AuditEntry> },
}

#[derive(Debug, Serialize, Deserialize)]
enum AuditReply {
    Entries {
        entries: Vec<AuditEntry>,
        /// The answering node's heads, so the caller can push back.
        heads: BTreeMap<String, u64>,
        /// More were left out by the bounds; ask again.
        more: bool,
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
            "Audit entries from peers refused, by reason (gap, unlinked, bad_hash, fork, invalid, full)",
            m.rejected.clone(),
        );
        m
    }

    fn reject(&self, reason: &'static str) {
        self.rejected.get_or_create(&ReasonLabels { reason }).inc();
    }
}

/// The last entry of one chain.
#[derive(Clone, Debug, PartialEq)]
struct Head {
    seq: u64,
    hash: String,
}

/// What `AuditLog` shares with its blocking tasks.
struct Shared {
    tree: sled::Tree,
    node_id: String,
    /// Last entry per chain; the lock serialises every insert.
    heads: Mutex<BTreeMap<String, Head>>,
    /// Verified prefix per chain (`list` continues from it).
    verified: Mutex<BTreeMap<String, Head>>,
    metrics: Metrics,
}

/// The audit log of one node (see the module doc).
pub struct AuditLog {
    shared: Arc<Shared>,
    events: broadcast::Sender<AuditEntry>,
    push: OnceLock<mpsc::Sender<AuditEntry>>,
}

fn key(node_id: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(node_id.len() + 9);
    k.extend_from_slice(node_id.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn prefix(node_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(node_id.len() + 1);
    k.extend_from_slice(node_id.as_bytes());
    k.push(0);
    k
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

/// blake3 (hex) of the canonical CBOR of every field but `hash`.
pub fn entry_hash(e: &AuditEntry) -> String {
    use ciborium::Value as C;
    let body = C::Array(vec![
        C::Text("plexi-audit-1".into()),
        C::Text(e.node_id.to_string()),
        C::Integer(e.seq.into()),
        C::Text(e.at.clone()),
        C::Text(e.actor.clone()),
        C::Text(e.action.clone()),
        e.operation_id.clone().map(C::Text).unwrap_or(C::Null),
        canonical(&e.detail),
        C::Text(e.prev_hash.clone()),
    ]);
    let mut bytes = Vec::new();
    ciborium::ser::into_writer(&body, &mut bytes).expect("a CBOR value encodes into a Vec");
    blake3::hash(&bytes).to_hex().to_string()
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn valid_node_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_FIELD_BYTES && !id.contains('\0')
}

/// Checks an entry's shape (not its place in a chain); the encoded size on Ok.
fn check_shape(e: &AuditEntry) -> Result<Vec<u8>, &'static str> {
    if !valid_node_id(e.node_id.as_str())
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

/// Last entry of every chain in the tree, found by jumping from chain to
/// chain (one seek per chain, not a scan).
fn load_heads(tree: &sled::Tree) -> Result<BTreeMap<String, Head>, AuditError> {
    let mut heads = BTreeMap::new();
    let mut from: Vec<u8> = Vec::new();
    while let Some(item) = tree.range(from.clone()..).next() {
        let (k, _) = item.map_err(store_err)?;
        let Some(nul) = k.iter().position(|&b| b == 0) else {
            tracing::error!(key = ?k, "audit key without a chain separator skipped");
            from = k.to_vec();
            from.push(0);
            continue;
        };
        let chain_prefix = k[..=nul].to_vec();
        let mut next = k[..nul].to_vec();
        next.push(1);
        let last = tree.scan_prefix(&chain_prefix).next_back();
        from = next;
        let Ok(node_id) = std::str::from_utf8(&k[..nul]) else {
            tracing::error!(key = ?k, "audit chain with a non-UTF-8 name skipped");
            continue;
        };
        let Some(last) = last else { continue };
        let (lk, lv) = last.map_err(store_err)?;
        let seq = match <[u8; 8]>::try_from(&lk[nul + 1..]) {
            Ok(b) => u64::from_be_bytes(b),
            Err(_) => {
                tracing::error!(
                    chain = node_id,
                    "audit key with a malformed seq; chain skipped"
                );
                continue;
            }
        };
        let hash = match decode_cbor::<AuditEntry>(&lv) {
            Ok(e) => e.hash,
            Err(e) => {
                tracing::error!(chain = node_id, seq, error = %e, "last audit entry is undecodable");
                ZERO_HASH.to_string()
            }
        };
        heads.insert(node_id.to_string(), Head { seq, hash });
    }
    Ok(heads)
}

impl Shared {
    fn flush(&self) -> Result<(), AuditError> {
        self.tree.flush().map(|_| ()).map_err(store_err)
    }

    fn append(
        &self,
        actor: &str,
        action: &str,
        operation_id: Option<&str>,
        detail: serde_json::Value,
    ) -> Result<AuditEntry, AuditError> {
        let mut heads = self.heads.lock().expect("audit heads lock");
        let head = heads.get(&self.node_id).cloned().unwrap_or(Head {
            seq: 0,
            hash: ZERO_HASH.into(),
        });
        if head.seq >= MAX_SEQ {
            return Err(AuditError::Full(self.node_id.clone()));
        }
        if !heads.contains_key(&self.node_id) && heads.len() >= MAX_CHAINS {
            return Err(AuditError::Full(format!("the tree ({MAX_CHAINS} chains)")));
        }
        let mut entry = AuditEntry {
            node_id: self.node_id.clone().into(),
            seq: head.seq + 1,
            at: rfc3339_ms(wall_ms()),
            actor: actor.to_string(),
            action: action.to_string(),
            operation_id: operation_id.map(str::to_string),
            detail,
            prev_hash: head.hash,
            hash: String::new(),
        };
        entry.hash = entry_hash(&entry);
        let bytes = check_shape(&entry).map_err(|_| {
            AuditError::Invalid(format!(
                "fields over {MAX_FIELD_BYTES} bytes or entry over {MAX_ENTRY_BYTES} bytes"
            ))
        })?;
        self.tree
            .insert(key(entry.node_id.as_str(), entry.seq), bytes)
            .map_err(store_err)?;
        // Durable before anyone (caller or peer) sees it.
        self.flush()?;
        heads.insert(
            entry.node_id.to_string(),
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
        entries.sort_by(|a, b| a.node_id.cmp(&b.node_id).then(a.seq.cmp(&b.seq)));
        let mut accepted = Vec::new();
        let mut rejected = 0u64;
        let mut heads = self.heads.lock().expect("audit heads lock");
        for e in entries {
            let reject = |reason: &'static str| {
                self.metrics.reject(reason);
                if reason == "fork" {
                    tracing::error!(peer = from, chain = %e.node_id, seq = e.seq, hash = %e.hash, "audit fork: a different entry at a seq already held; refused");
                } else {
                    tracing::debug!(peer = from, chain = %e.node_id, seq = e.seq, reason, "audit entry refused");
                }
            };
            let bytes = match check_shape(&e) {
                Ok(b) => b,
                Err(reason) => {
                    reject(reason);
                    rejected += 1;
                    continue;
                }
            };
            if entry_hash(&e) != e.hash {
                reject("bad_hash");
                rejected += 1;
                continue;
            }
            let head = heads.get(e.node_id.as_str()).cloned();
            let (head_seq, head_hash) = head
                .as_ref()
                .map(|h| (h.seq, h.hash.as_str()))
                .unwrap_or((0, ZERO_HASH));
            if e.seq <= head_seq {
                match self.tree.get(key(e.node_id.as_str(), e.seq)) {
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
            if let Err(err) = self.tree.insert(key(e.node_id.as_str(), e.seq), bytes) {
                tracing::error!(error = %err, "audit store write failed during merge");
                rejected += 1;
                continue;
            }
            heads.insert(
                e.node_id.to_string(),
                Head {
                    seq: e.seq,
                    hash: e.hash.clone(),
                },
            );
            accepted.push(e);
        }
        if !accepted.is_empty() {
            if let Err(e) = self.flush() {
                tracing::error!(error = %e, "audit flush after merge failed");
            }
        }
        (accepted, rejected)
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

    /// Verifies every chain from seq 1 (or from its verified prefix once
    /// the tree is large); true when all link and hash correctly.
    fn verify(&self) -> Result<bool, AuditError> {
        let heads = self.heads.lock().expect("audit heads lock").clone();
        let total: u64 = heads.values().map(|h| h.seq).sum();
        let mut verified = self.verified.lock().expect("audit verified lock");
        let mut all_ok = true;
        for (chain, head) in &heads {
            let start = match verified.get(chain) {
                Some(v) if total > FULL_VERIFY_MAX && v.seq <= head.seq => v.clone(),
                _ => Head {
                    seq: 0,
                    hash: ZERO_HASH.into(),
                },
            };
            let (good, ok) = self.verify_chain(chain, start, head)?;
            verified.insert(chain.clone(), good);
            all_ok &= ok;
        }
        Ok(all_ok)
    }

    /// Walks `chain` from after `from` to `head`; returns the last good
    /// entry and whether the chain was good to its head.
    fn verify_chain(
        &self,
        chain: &str,
        from: Head,
        head: &Head,
    ) -> Result<(Head, bool), AuditError> {
        let mut good = from;
        let mut it = self.tree.range(key(chain, good.seq + 1)..);
        while good.seq < head.seq {
            let Some(item) = it.next() else {
                return Ok((good, false));
            };
            let (k, v) = item.map_err(store_err)?;
            let next = good.seq + 1;
            let expected_key = key(chain, next);
            let entry = decode_cbor::<AuditEntry>(&v).ok().filter(|e| {
                k.as_ref() == expected_key.as_slice()
                    && e.node_id == chain
                    && e.seq == next
                    && e.prev_hash == good.hash
                    && entry_hash(e) == e.hash
            });
            match entry {
                Some(e) => {
                    good = Head {
                        seq: next,
                        hash: e.hash,
                    }
                }
                None => {
                    tracing::error!(chain, seq = next, "audit chain does not verify");
                    return Ok((good, false));
                }
            }
        }
        Ok((good.clone(), good.hash == head.hash))
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
        for chain in &chains {
            for item in self.tree.scan_prefix(prefix(chain)).rev().take(limit) {
                let (_, v) = item.map_err(store_err)?;
                match decode_cbor::<AuditEntry>(&v) {
                    Ok(e) => entries.push(e),
                    Err(e) => {
                        tracing::error!(chain = %chain, error = %e, "undecodable audit entry not listed")
                    }
                }
            }
        }
        entries.sort_by(|a, b| {
            b.at.cmp(&a.at)
                .then_with(|| b.node_id.cmp(&a.node_id))
                .then(b.seq.cmp(&a.seq))
        });
        entries.truncate(limit);
        Ok(AuditList {
            entries,
            chains_verified: self.verify()?,
        })
    }
}

impl AuditLog {
    /// Opens the `audit` tree of `store` for the node named `node_id`.
    pub fn open(
        store: &NodeStore,
        node_id: String,
        registry: &mut Registry,
    ) -> Result<Arc<Self>, AuditError> {
        if !valid_node_id(&node_id) {
            return Err(AuditError::Invalid(format!("node id {node_id:?}")));
        }
        let tree = store.tree("audit").map_err(store_err)?;
        let heads = load_heads(&tree)?;
        Ok(Arc::new(AuditLog {
            shared: Arc::new(Shared {
                tree,
                node_id,
                heads: Mutex::new(heads),
                verified: Mutex::new(BTreeMap::new()),
                metrics: Metrics::register(registry),
            }),
            events: broadcast::channel(1024).0,
            push: OnceLock::new(),
        }))
    }

    /// Appends to this node's chain; durable when it returns. Pushed to
    /// every alive member in the background once `spawn_sync` ran.
    pub async fn append(
        &self,
        actor: &str,
        action: &str,
        operation_id: Option<&str>,
        detail: serde_json::Value,
    ) -> Result<AuditEntry, AuditError> {
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

    /// Newest first across every chain (by `at`, then node id), at most
    /// `limit` (1..=10 000), and whether every stored chain verifies.
    /// Blocking (sled reads): call it from a blocking task.
    pub fn list(&self, limit: usize) -> Result<AuditList, AuditError> {
        self.shared.list(limit)
    }

    /// New entries, local or merged from peers.
    pub fn subscribe(&self) -> broadcast::Receiver<AuditEntry> {
        self.events.subscribe()
    }

    async fn merge(&self, entries: Vec<AuditEntry>, from: String) -> Result<(u64, u64), String> {
        if entries.is_empty() {
            return Ok((0, 0));
        }
        let shared = self.shared.clone();
        let (accepted, rejected) =
            tokio::task::spawn_blocking(move || shared.merge(entries, &from))
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
    ) -> Result<(Vec<AuditEntry>, bool), String> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || shared.missing(&theirs))
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
            AuditCall::Heads { heads } => {
                let (entries, more) = self.missing(heads).await.map_err(CallError::failed)?;
                AuditReply::Entries {
                    entries,
                    heads: self.shared.head_seqs(),
                    more,
                }
            }
            AuditCall::Push { entries } => {
                if entries.len() > MAX_BATCH_ENTRIES {
                    tracing::warn!(%peer, n = entries.len(), "oversized audit push dropped");
                    return Err(CallError::refused(format!(
                        "at most {MAX_BATCH_ENTRIES} entries per push"
                    )));
                }
                let (accepted, rejected) = self
                    .merge(entries, peer.to_string())
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
        } = decode_cbor(&bytes).map_err(|e| e.to_string())?
        else {
            return Err("unexpected audit reply".into());
        };
        if entries.len() > MAX_BATCH_ENTRIES {
            return Err("oversized audit reply".into());
        }
        let (accepted, rejected) = self.merge(entries, peer.to_string()).await?;
        if accepted > 0 || rejected > 0 {
            tracing::debug!(%peer, accepted, rejected, "audit entries pulled");
        }
        // Push back what the peer lacks (one bounded batch per round).
        let (theirs, _) = self.missing(heads).await?;
        if !theirs.is_empty() {
            let body =
                encode_cbor(&AuditCall::Push { entries: theirs }).map_err(|e| e.to_string())?;
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
                    let body = match encode_cbor(&AuditCall::Push { entries: batch }) {
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
        let log = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SYNC_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(log) = log.upgrade() else { break };
                let peer = {
                    use rand::seq::SliceRandom;
                    p2p.alive_peers().choose(&mut rand::thread_rng()).copied()
                };
                let Some(peer) = peer else { continue };
                for _ in 0..MAX_SYNC_ROUNDS {
                    match log.sync_once(&p2p, peer).await {
                        Ok(true) => continue,
                        Ok(false) => break,
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
        let log = AuditLog::open(&store, name.into(), &mut Registry::default()).unwrap();
        (store, log)
    }

    fn chain(log: &AuditLog, node: &str) -> Vec<AuditEntry> {
        log.shared
            .tree
            .scan_prefix(prefix(node))
            .map(|i| decode_cbor(&i.unwrap().1).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn appends_link_into_a_chain() {
        let dir = tempfile::tempdir().unwrap();
        let (_s, log) = open(dir.path(), "a");
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
        assert_eq!(events.recv().await.unwrap(), e1);
        assert_eq!(chain(&log, "a"), vec![e1.clone(), e2.clone()]);
        let list = log.list(100).unwrap();
        assert!(list.chains_verified);
        assert_eq!(list.entries, vec![e2.clone(), e1.clone()]);

        // Reopened, the chain continues where it stopped.
        drop(log);
        drop(_s);
        let (_s, log) = open(dir.path(), "a");
        let e3 = log.append("admin", "x", None, json!(null)).await.unwrap();
        assert_eq!((e3.seq, e3.prev_hash.as_str()), (3, e2.hash.as_str()));
        assert!(log.list(10).unwrap().chains_verified);
    }

    #[tokio::test]
    async fn tampered_bytes_fail_verification() {
        let dir = tempfile::tempdir().unwrap();
        let (_s, log) = open(dir.path(), "a");
        for i in 0..3 {
            log.append("admin", "act", None, json!({ "i": i }))
                .await
                .unwrap();
        }
        assert!(log.list(10).unwrap().chains_verified);
        let k = key("a", 2);
        let mut e: AuditEntry = decode_cbor(&log.shared.tree.get(&k).unwrap().unwrap()).unwrap();
        e.actor = "someone-else".into();
        log.shared
            .tree
            .insert(&k, encode_cbor(&e).unwrap())
            .unwrap();
        assert!(!log.list(10).unwrap().chains_verified);

        // Raw byte damage too.
        let (_s, log) = open(dir.path(), "b");
        log.append("admin", "act", None, json!(1)).await.unwrap();
        let k = key("b", 1);
        let mut raw = log.shared.tree.get(&k).unwrap().unwrap().to_vec();
        let n = raw.len();
        raw[n - 3] ^= 0x01;
        log.shared.tree.insert(&k, raw).unwrap();
        assert!(!log.list(10).unwrap().chains_verified);
    }

    #[tokio::test]
    async fn merge_accepts_links_and_refuses_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let (_sa, a) = open(dir.path(), "a");
        let (_sb, b) = open(dir.path(), "b");
        let mut src = Vec::new();
        for i in 0..4 {
            src.push(
                a.append("admin", "act", None, json!({ "i": i }))
                    .await
                    .unwrap(),
            );
        }
        let rejected = |log: &AuditLog, reason: &'static str| {
            log.shared
                .metrics
                .rejected
                .get_or_create(&ReasonLabels { reason })
                .get()
        };

        // A gap (seq 2 before seq 1) is refused.
        assert_eq!(
            b.merge(vec![src[1].clone()], "a".into()).await.unwrap(),
            (0, 1)
        );
        assert_eq!(rejected(&b, "gap"), 1);
        // In order (even given out of order in one batch) it links.
        assert_eq!(
            b.merge(vec![src[1].clone(), src[0].clone()], "a".into())
                .await
                .unwrap(),
            (2, 0)
        );
        // Already held with the same hash: a no-op.
        assert_eq!(
            b.merge(vec![src[0].clone()], "a".into()).await.unwrap(),
            (0, 0)
        );

        // A forged hash is refused.
        let mut forged = src[2].clone();
        forged.actor = "mallory".into();
        assert_eq!(
            b.merge(vec![forged.clone()], "x".into()).await.unwrap(),
            (0, 1)
        );
        assert_eq!(rejected(&b, "bad_hash"), 1);
        // Re-hashed, it no longer links to what b holds... once b holds seq 3.
        forged.hash = entry_hash(&forged);
        assert_eq!(
            b.merge(vec![src[2].clone()], "a".into()).await.unwrap(),
            (1, 0)
        );
        // ...and a different entry at a held seq is a fork.
        assert_eq!(
            b.merge(vec![forged.clone()], "x".into()).await.unwrap(),
            (0, 1)
        );
        assert_eq!(rejected(&b, "fork"), 1);
        // A seq 4 that does not link to b's seq 3 is refused.
        let mut unlinked = src[3].clone();
        unlinked.prev_hash = forged.hash.clone();
        unlinked.hash = entry_hash(&unlinked);
        assert_eq!(b.merge(vec![unlinked], "x".into()).await.unwrap(), (0, 1));
        assert_eq!(rejected(&b, "unlinked"), 1);
        // Garbage never panics.
        let mut junk = src[3].clone();
        junk.node_id = "a\0b".into();
        junk.seq = 0;
        assert_eq!(b.merge(vec![junk], "x".into()).await.unwrap(), (0, 1));
        assert!(b.serve(PeerId::random(), b"\xff\x00garbage").await.is_err());

        assert_eq!(chain(&b, "a"), src[..3].to_vec());
        let list = b.list(100).unwrap();
        assert!(list.chains_verified);
        assert_eq!(list.entries.len(), 3);
        // b's own chain starts at 1 beside the merged one.
        let own = b.append("admin", "act", None, json!(null)).await.unwrap();
        assert_eq!((own.seq, own.prev_hash.as_str()), (1, ZERO_HASH));
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
        let ask = |heads: BTreeMap<String, u64>| encode_cbor(&AuditCall::Heads { heads }).unwrap();
        let mut rounds = 0;
        loop {
            rounds += 1;
            let reply = a
                .serve(PeerId::random(), &ask(b.shared.head_seqs()))
                .await
                .unwrap();
            let AuditReply::Entries {
                entries,
                heads,
                more,
            } = decode_cbor(&reply).unwrap()
            else {
                panic!("not entries")
            };
            assert!(entries.len() <= MAX_BATCH_ENTRIES);
            assert_eq!(heads.get("a"), Some(&300));
            b.merge(entries, "a".into()).await.unwrap();
            if !more {
                break;
            }
        }
        assert_eq!(rounds, 2);
        assert_eq!(b.shared.head_seqs().get("a"), Some(&300));
        // a lacks b's chain: pushed back.
        let (back, more) = b.missing(a.shared.head_seqs()).await.unwrap();
        assert_eq!((back.len(), more), (1, false));
        let push = encode_cbor(&AuditCall::Push { entries: back }).unwrap();
        let AuditReply::Ack { accepted, rejected } =
            decode_cbor(&a.serve(PeerId::random(), &push).await.unwrap()).unwrap()
        else {
            panic!("not ack")
        };
        assert_eq!((accepted, rejected), (1, 0));
        assert_eq!(a.list(10_000).unwrap(), b.list(10_000).unwrap());
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
        let from_b = chain(&b, "b");
        b.merge(chain(&a, "a"), "a".into()).await.unwrap();
        assert_eq!(from_b.len(), 2);
        let list = b.list(100).unwrap();
        assert!(list.chains_verified);
        all.reverse();
        assert_eq!(list.entries, all);
        assert_eq!(b.list(2).unwrap().entries, all[..2].to_vec());
        assert_eq!(b.list(0).unwrap().entries.len(), 1);
    }

    #[tokio::test]
    async fn verification_continues_from_the_verified_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let (_s, log) = open(dir.path(), "a");
        let mut all = Vec::new();
        for i in 0..5 {
            all.push(log.append("admin", "act", None, json!(i)).await.unwrap());
        }
        let head = Head {
            seq: 5,
            hash: all[4].hash.clone(),
        };
        let zero = Head {
            seq: 0,
            hash: ZERO_HASH.into(),
        };
        let at3 = Head {
            seq: 3,
            hash: all[2].hash.clone(),
        };
        assert_eq!(
            log.shared.verify_chain("a", zero.clone(), &head).unwrap(),
            (head.clone(), true)
        );
        assert_eq!(
            log.shared.verify_chain("a", at3.clone(), &head).unwrap(),
            (head.clone(), true)
        );
        // Damage after the prefix is found; the good prefix is kept.
        let mut e = all[3].clone();
        e.detail = json!("changed");
        log.shared
            .tree
            .insert(key("a", 4), encode_cbor(&e).unwrap())
            .unwrap();
        assert_eq!(
            log.shared.verify_chain("a", at3.clone(), &head).unwrap(),
            (at3, false)
        );
        // A prefix that does not match what is stored fails too.
        let wrong = Head {
            seq: 3,
            hash: all[1].hash.clone(),
        };
        assert!(!log.shared.verify_chain("a", wrong, &head).unwrap().1);
    }

    #[test]
    fn hash_ignores_json_key_order() {
        let mut e = AuditEntry {
            node_id: "a".into(),
            seq: 1,
            at: rfc3339_ms(0),
            actor: "x".into(),
            action: "y".into(),
            operation_id: None,
            detail: serde_json::from_str(r#"{"b":1,"a":{"d":2,"c":-3}}"#).unwrap(),
            prev_hash: ZERO_HASH.into(),
            hash: String::new(),
        };
        let h = entry_hash(&e);
        e.detail = serde_json::from_str(r#"{"a":{"c":-3,"d":2},"b":1}"#).unwrap();
        assert_eq!(entry_hash(&e), h);
        e.detail = json!({"a": {"c": -3, "d": 2}, "b": 2});
        assert_ne!(entry_hash(&e), h);
        assert!(is_hex64(&h));
    }
}
