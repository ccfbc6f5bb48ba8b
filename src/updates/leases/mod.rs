//! Update lease slots over request-response: every member grants (the
//! `lease` service, backed by the pure [`rules::LeaseTable`] and
//! persisted in sled), and a node that wants a slot asks every member and
//! holds it only while a strict majority granted (`Acquisition`).
//!
//! A granter persists a grant before answering; after a restart it treats
//! every persisted grant as live for its full time to live again, so a
//! restarted granter never hands a slot to a second holder.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use plexi_p2p::codec::{decode_cbor, encode_cbor};
pub mod rules;

use plexi_p2p::{CallError, MemberStatus, P2pHandle, PeerId};
use rules::{Acquisition, Decision, LeaseTable, Outcome, SlotId};
use serde::{Deserialize, Serialize};

use plexi_util::clock::wall_ms;

pub const SERVICE: &str = "lease";
/// Slots live in one cluster-wide namespace, so two operations never add up
/// to more nodes out of service than one of them allows.
const NAMESPACE: &str = "updates";
/// Subtracted from the holder's view of its lease (clock rate drift, delays).
const DRIFT_MARGIN_MS: u64 = 2_000;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum LeaseCall {
    Acquire {
        slot: u32,
        holder: String,
        epoch: u64,
        ttl_ms: u64,
        operation_id: String,
    },
    Release {
        slot: u32,
        holder: String,
        epoch: u64,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum LeaseReply {
    Granted,
    Denied {
        holder: String,
        epoch: u64,
        remaining_ms: u64,
    },
    Released(bool),
}

#[derive(Debug, Serialize, Deserialize)]
struct Persisted {
    holder: String,
    epoch: u64,
    ttl_ms: u64,
    operation_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("slot {slot} is held by {holder}")]
    Held { slot: u32, holder: String },
    #[error("no majority of the {members} members answered (granted by {granted})")]
    NoMajority { members: usize, granted: usize },
}

/// An expired grant, reported for the audit log.
pub struct Expired {
    pub slot: u32,
    pub holder: String,
    pub epoch: u64,
    pub operation_id: String,
}

/// This node's side as a granter.
pub struct Granter {
    table: Mutex<LeaseTable>,
    operations: Mutex<BTreeMap<u32, String>>,
    tree: sled::Tree,
    base: Instant,
}

impl Granter {
    pub fn open(tree: sled::Tree) -> Arc<Self> {
        let g = Granter {
            table: Mutex::new(LeaseTable::default()),
            operations: Mutex::new(BTreeMap::new()),
            tree,
            base: Instant::now(),
        };
        let now = g.now_ms();
        for (k, v) in g.tree.iter().flatten() {
            let (Ok(slot), Ok(p)) = (
                <[u8; 4]>::try_from(k.as_ref()).map(u32::from_be_bytes),
                decode_cbor::<Persisted>(&v),
            ) else {
                continue;
            };
            // Live again for a whole ttl: we cannot know how long we were down.
            g.table.lock().expect("lease table").acquire(
                &slot_id(slot),
                &p.holder,
                p.epoch,
                p.ttl_ms,
                now,
            );
            g.operations
                .lock()
                .expect("lease ops")
                .insert(slot, p.operation_id);
            tracing::info!(
                slot,
                holder = %p.holder,
                epoch = p.epoch,
                "persisted lease grant restored for its full ttl"
            );
        }
        Arc::new(g)
    }

    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    fn persist(&self, slot: u32, p: Option<&Persisted>) {
        let key = slot.to_be_bytes();
        let res = match p {
            Some(p) => self
                .tree
                .insert(key, encode_cbor(p).unwrap_or_default())
                .map(|_| ()),
            None => self.tree.remove(key).map(|_| ()),
        };
        if let Err(e) = res.and_then(|_| self.tree.flush().map(|_| ())) {
            tracing::error!(slot, error = %e, "cannot persist lease grant");
        }
    }

    /// Answers one call (blocking: sled flush).
    pub fn handle(&self, call: LeaseCall) -> LeaseReply {
        let now = self.now_ms();
        match call {
            LeaseCall::Acquire {
                slot,
                holder,
                epoch,
                ttl_ms,
                operation_id,
            } => {
                let mut t = self.table.lock().expect("lease table");
                let renewal = t
                    .holder(&slot_id(slot), now)
                    .is_some_and(|g| g.holder == holder && g.epoch == epoch);
                match t.acquire(&slot_id(slot), &holder, epoch, ttl_ms, now) {
                    Decision::Granted { .. } => {
                        if !renewal {
                            self.persist(
                                slot,
                                Some(&Persisted {
                                    holder: holder.clone(),
                                    epoch,
                                    ttl_ms,
                                    operation_id: operation_id.clone(),
                                }),
                            );
                            self.operations
                                .lock()
                                .expect("lease ops")
                                .insert(slot, operation_id);
                        }
                        LeaseReply::Granted
                    }
                    Decision::Denied {
                        holder,
                        epoch,
                        remaining_ms,
                    } => LeaseReply::Denied {
                        holder,
                        epoch,
                        remaining_ms,
                    },
                }
            }
            LeaseCall::Release {
                slot,
                holder,
                epoch,
            } => {
                let ok =
                    self.table
                        .lock()
                        .expect("lease table")
                        .release(&slot_id(slot), &holder, epoch);
                if ok {
                    self.persist(slot, None);
                }
                LeaseReply::Released(ok)
            }
        }
    }

    /// Drops expired grants and returns them.
    pub fn expire(&self) -> Vec<Expired> {
        let now = self.now_ms();
        let gone = self.table.lock().expect("lease table").expire(now);
        gone.into_iter()
            .map(|(s, g)| {
                self.persist(s.index, None);
                let operation_id = self
                    .operations
                    .lock()
                    .expect("lease ops")
                    .remove(&s.index)
                    .unwrap_or_default();
                Expired {
                    slot: s.index,
                    holder: g.holder,
                    epoch: g.epoch,
                    operation_id,
                }
            })
            .collect()
    }
}

fn slot_id(index: u32) -> SlotId {
    SlotId {
        operation: NAMESPACE.into(),
        index,
    }
}

/// Serves a peer's lease call.
pub async fn serve(granter: &Arc<Granter>, body: &[u8]) -> Result<Vec<u8>, CallError> {
    let call: LeaseCall = decode_cbor(body).map_err(CallError::malformed)?;
    let g = granter.clone();
    let reply = tokio::task::spawn_blocking(move || g.handle(call))
        .await
        .map_err(CallError::failed)?;
    encode_cbor(&reply).map_err(CallError::failed)
}

/// The members whose majority a lease needs: every member not `left`, and
/// every member the operation's plan knew (so a node that just restarted
/// and knows nobody yet cannot make a majority of itself).
fn voters(p2p: &P2pHandle, known: &[String]) -> Vec<String> {
    let mut v: std::collections::BTreeSet<String> = p2p
        .members()
        .into_iter()
        .filter(|m| m.status != MemberStatus::Left)
        .map(|m| m.record.state.peer_id.clone())
        .collect();
    let left: std::collections::BTreeSet<String> = p2p
        .members()
        .into_iter()
        .filter(|m| m.status == MemberStatus::Left)
        .map(|m| m.record.state.peer_id.clone())
        .collect();
    v.extend(known.iter().filter(|p| !left.contains(*p)).cloned());
    v.into_iter().collect()
}

async fn ask(
    p2p: &P2pHandle,
    granter: &Arc<Granter>,
    peer: &str,
    call: LeaseCall,
) -> Option<LeaseReply> {
    if peer == p2p.local_peer_id().to_string() {
        let g = granter.clone();
        return tokio::task::spawn_blocking(move || g.handle(call))
            .await
            .ok();
    }
    let id: PeerId = peer.parse().ok()?;
    let body = encode_cbor(&call).ok()?;
    let reply = p2p.request(id, SERVICE, body).await.ok()?;
    decode_cbor(&reply).ok()
}

/// What a holder asks for.
pub struct Want<'a> {
    pub holder: &'a str,
    pub slot: u32,
    /// The same epoch renews.
    pub epoch: u64,
    pub ttl: Duration,
    pub operation_id: &'a str,
    /// Peer ids the majority counts besides the current members.
    pub known: &'a [String],
}

/// Acquires (or renews, with the same epoch) `slot` from a strict majority.
/// On failure, grants obtained are released again.
pub async fn acquire(
    p2p: &P2pHandle,
    granter: &Arc<Granter>,
    want: Want<'_>,
) -> Result<super::ops::LeaseHold, LeaseError> {
    let Want {
        holder,
        slot,
        epoch,
        ttl,
        operation_id,
        known,
    } = want;
    let members = voters(p2p, known);
    let sent_wall = wall_ms();
    let ttl_ms = ttl.as_millis() as u64;
    let mut acq = Acquisition::new(members.clone(), 0, ttl_ms, DRIFT_MARGIN_MS);
    let mut calls = futures::stream::FuturesUnordered::new();
    for m in &members {
        let call = LeaseCall::Acquire {
            slot,
            holder: holder.into(),
            epoch,
            ttl_ms,
            operation_id: operation_id.into(),
        };
        let m = m.clone();
        calls.push(async move { (m.clone(), ask(p2p, granter, &m, call).await) });
    }
    let mut denied_by = None;
    use futures::StreamExt;
    // Stop early only when held. A lost round waits for every answer (each
    // bounded by the request timeout): a request dropped here may still be
    // granted there, and that grant would block the slot for its whole ttl.
    while let Some((m, reply)) = calls.next().await {
        match reply {
            Some(LeaseReply::Granted) => acq.answer(&m, true),
            Some(LeaseReply::Denied { holder, .. }) => {
                denied_by = Some(holder);
                acq.answer(&m, false)
            }
            _ => acq.no_answer(&m),
        }
        if matches!(acq.outcome(), Outcome::Held { .. }) {
            break;
        }
    }
    match acq.outcome() {
        Outcome::Held { valid_until_ms } => Ok(super::ops::LeaseHold {
            slot,
            epoch,
            valid_until_ms: sent_wall + valid_until_ms,
        }),
        _ => {
            let granted = acq.granted_by().count();
            let to_release = acq.to_release();
            drop(calls);
            release_from(p2p, granter, &to_release, holder, slot, epoch).await;
            Err(match denied_by {
                Some(h) => LeaseError::Held { slot, holder: h },
                None => LeaseError::NoMajority {
                    members: members.len(),
                    granted,
                },
            })
        }
    }
}

/// Attempts at releasing where a member did not answer (then its grant
/// expires by itself).
const RELEASE_ATTEMPTS: usize = 3;
const RELEASE_RETRY_DELAY: Duration = Duration::from_millis(500);

/// Releases at `peers`, retrying those that did not answer.
async fn release_from(
    p2p: &P2pHandle,
    granter: &Arc<Granter>,
    peers: &[String],
    holder: &str,
    slot: u32,
    epoch: u64,
) {
    let mut pending: Vec<String> = peers.to_vec();
    for attempt in 0..RELEASE_ATTEMPTS {
        if pending.is_empty() {
            return;
        }
        if attempt > 0 {
            tokio::time::sleep(RELEASE_RETRY_DELAY).await;
        }
        let calls = pending.iter().map(|m| async move {
            let call = LeaseCall::Release {
                slot,
                holder: holder.into(),
                epoch,
            };
            (m.clone(), ask(p2p, granter, m, call).await.is_some())
        });
        pending = futures::future::join_all(calls)
            .await
            .into_iter()
            .filter(|(_, answered)| !answered)
            .map(|(m, _)| m)
            .collect();
    }
    if !pending.is_empty() {
        tracing::info!(slot, epoch, peers = ?pending, "lease release unanswered; those grants expire by themselves");
    }
}

/// Releases `slot` at every member (unanswered grants expire).
pub async fn release(
    p2p: &P2pHandle,
    granter: &Arc<Granter>,
    holder: &str,
    slot: u32,
    epoch: u64,
    known: &[String],
) {
    let members = voters(p2p, known);
    release_from(p2p, granter, &members, holder, slot, epoch).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restarted_granter_keeps_its_grants() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let g = Granter::open(db.open_tree("leases").unwrap());
        let acquire = |g: &Granter, holder: &str, epoch| {
            g.handle(LeaseCall::Acquire {
                slot: 0,
                holder: holder.into(),
                epoch,
                ttl_ms: 60_000,
                operation_id: "op".into(),
            })
        };
        assert!(matches!(acquire(&g, "a", 1), LeaseReply::Granted));
        assert!(matches!(acquire(&g, "b", 2), LeaseReply::Denied { .. }));
        drop(g);
        let g = Granter::open(db.open_tree("leases").unwrap());
        assert!(matches!(acquire(&g, "b", 2), LeaseReply::Denied { .. }));
        assert!(
            matches!(acquire(&g, "a", 1), LeaseReply::Granted),
            "renewal"
        );
        assert!(matches!(
            g.handle(LeaseCall::Release {
                slot: 0,
                holder: "a".into(),
                epoch: 1
            }),
            LeaseReply::Released(true)
        ));
        drop(g);
        let g = Granter::open(db.open_tree("leases").unwrap());
        assert!(matches!(acquire(&g, "b", 2), LeaseReply::Granted));
    }
}
