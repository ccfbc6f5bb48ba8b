//! The replicated update state every node keeps: all operations (as
//! [`OpRecord`]s) and the cluster's maintenance mode, persisted in sled and
//! spread by push (every change goes to every alive member) and by a
//! periodic digest exchange with one random member (the `updates` service),
//! so a node that missed pushes, or restarted, converges.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use plexi_api::model::ClusterEvent;
use plexi_p2p::codec::{decode_cbor, encode_cbor};
use plexi_p2p::{CallError, P2pHandle, PeerId};
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, Notify};

use super::ops::OpRecord;
use plexi_util::clock::{rfc3339_ms, wall_ms};

pub const SERVICE: &str = "updates";
/// Operations kept; the oldest finished ones go first.
pub const MAX_OPS: usize = 256;
/// Operations per sync reply.
const MAX_OPS_PER_REPLY: usize = 64;
const SYNC_INTERVAL: Duration = Duration::from_secs(2);
const MAINTENANCE_KEY: &[u8] = b"maintenance";

/// Cluster-wide maintenance mode; the latest stamp wins.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MaintenanceState {
    /// (wall ms, node) of the change; orders changes.
    pub stamp: (u64, String),
    pub enabled: bool,
    pub reason: String,
    pub set_by: String,
    pub started_at_ms: u64,
    pub expires_at_ms: u64,
    /// The parallel update that entered it, if one did.
    pub operation_id: Option<String>,
}

impl MaintenanceState {
    /// On, and not yet past its own timeout.
    pub fn active(&self, now_ms: u64) -> bool {
        self.enabled && now_ms < self.expires_at_ms
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub enum SyncCall {
    Push {
        ops: Vec<OpRecord>,
        maintenance: MaintenanceState,
    },
    /// The caller's digests; the reply carries what differs.
    Digests {
        digests: BTreeMap<String, [u8; 32]>,
        maintenance: MaintenanceState,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SyncReply {
    /// Operations the caller lacks or holds differently.
    pub ops: Vec<OpRecord>,
    /// Ids the callee lacks or holds differently (the caller pushes them).
    pub want: Vec<String>,
    pub maintenance: MaintenanceState,
}

pub struct UpdateState {
    node_id: String,
    ops: Mutex<BTreeMap<String, OpRecord>>,
    maintenance: Mutex<MaintenanceState>,
    ops_tree: sled::Tree,
    meta_tree: sled::Tree,
    /// Woken at every change (local or merged).
    pub changed: Notify,
    pub events: broadcast::Sender<ClusterEvent>,
}

fn event(kind: &str, data: serde_json::Value) -> ClusterEvent {
    ClusterEvent {
        kind: kind.into(),
        at: rfc3339_ms(wall_ms()),
        data,
    }
}

impl UpdateState {
    pub fn open(
        node_id: String,
        ops_tree: sled::Tree,
        meta_tree: sled::Tree,
        events: broadcast::Sender<ClusterEvent>,
    ) -> Arc<Self> {
        let mut ops = BTreeMap::new();
        for (_, v) in ops_tree.iter().flatten() {
            match decode_cbor::<OpRecord>(&v) {
                Ok(r) => {
                    ops.insert(r.plan.operation_id.clone(), r);
                }
                Err(e) => tracing::error!(error = %e, "unreadable stored update operation skipped"),
            }
        }
        let maintenance = meta_tree
            .get(MAINTENANCE_KEY)
            .ok()
            .flatten()
            .and_then(|v| decode_cbor(&v).ok())
            .unwrap_or_default();
        Arc::new(UpdateState {
            node_id,
            ops: Mutex::new(ops),
            maintenance: Mutex::new(maintenance),
            ops_tree,
            meta_tree,
            changed: Notify::new(),
            events,
        })
    }

    pub fn get(&self, id: &str) -> Option<OpRecord> {
        self.ops.lock().expect("ops").get(id).cloned()
    }

    pub fn all(&self) -> Vec<OpRecord> {
        self.ops.lock().expect("ops").values().cloned().collect()
    }

    pub fn maintenance(&self) -> MaintenanceState {
        self.maintenance.lock().expect("maintenance").clone()
    }

    fn persist(&self, rec: &OpRecord) {
        let res = encode_cbor(rec)
            .map_err(|e| e.to_string())
            .and_then(|b| {
                self.ops_tree
                    .insert(rec.plan.operation_id.as_bytes(), b)
                    .map_err(|e| e.to_string())
            })
            .and_then(|_| self.ops_tree.flush().map_err(|e| e.to_string()));
        if let Err(e) = res {
            tracing::error!(operation_id = %rec.plan.operation_id, error = %e, "cannot persist update operation");
        }
    }

    fn prune(&self, ops: &mut BTreeMap<String, OpRecord>) {
        let now = wall_ms();
        while ops.len() > MAX_OPS {
            let oldest = ops
                .values()
                .filter(|r| r.is_final(now))
                .min_by_key(|r| r.plan.created_at_ms)
                .map(|r| r.plan.operation_id.clone());
            match oldest {
                Some(id) => {
                    ops.remove(&id);
                    let _ = self.ops_tree.remove(id.as_bytes());
                }
                None => break,
            }
        }
    }

    /// Merges a copy in (local change or from a peer); persists and
    /// notifies if anything changed. Returns whether it did.
    pub fn merge(&self, rec: &OpRecord) -> bool {
        let merged = {
            let mut ops = self.ops.lock().expect("ops");
            let changed = match ops.get_mut(&rec.plan.operation_id) {
                Some(mine) => mine.merge(rec),
                None => {
                    ops.insert(rec.plan.operation_id.clone(), rec.clone());
                    true
                }
            };
            if !changed {
                return false;
            }
            self.prune(&mut ops);
            ops.get(&rec.plan.operation_id).cloned()
        };
        if let Some(m) = merged {
            self.persist(&m);
            let _ = self.events.send(event(
                "update.progress",
                serde_json::json!({
                    "operation_id": m.plan.operation_id,
                    "status": m.status(wall_ms()),
                    "overall_progress": m.overall_progress(),
                }),
            ));
        }
        self.changed.notify_waiters();
        true
    }

    /// Applies `f` to operation `id` locally; returns the new record.
    pub fn update(&self, id: &str, f: impl FnOnce(&mut OpRecord)) -> Option<OpRecord> {
        let mut rec = self.get(id)?;
        f(&mut rec);
        self.merge(&rec);
        self.get(id)
    }

    pub fn merge_maintenance(&self, m: &MaintenanceState) -> bool {
        {
            let mut cur = self.maintenance.lock().expect("maintenance");
            if m.stamp <= cur.stamp {
                return false;
            }
            *cur = m.clone();
        }
        let res = encode_cbor(m)
            .map_err(|e| e.to_string())
            .and_then(|b| {
                self.meta_tree
                    .insert(MAINTENANCE_KEY, b)
                    .map_err(|e| e.to_string())
            })
            .and_then(|_| self.meta_tree.flush().map_err(|e| e.to_string()));
        if let Err(e) = res {
            tracing::error!(error = %e, "cannot persist maintenance mode");
        }
        tracing::info!(enabled = m.enabled, reason = %m.reason, by = %m.set_by, "maintenance mode changed");
        let _ = self.events.send(event(
            "maintenance",
            serde_json::json!({"enabled": m.enabled, "reason": m.reason, "set_by": m.set_by}),
        ));
        self.changed.notify_waiters();
        true
    }

    /// A new maintenance state stamped after the current one.
    pub fn next_maintenance(
        &self,
        enabled: bool,
        reason: &str,
        set_by: &str,
        timeout_s: u64,
        operation_id: Option<String>,
    ) -> MaintenanceState {
        let cur = self.maintenance();
        let now = wall_ms().max(cur.stamp.0 + 1);
        MaintenanceState {
            stamp: (now, self.node_id.clone()),
            enabled,
            reason: reason.into(),
            set_by: set_by.into(),
            started_at_ms: if enabled { now } else { cur.started_at_ms },
            expires_at_ms: if enabled { now + timeout_s * 1000 } else { now },
            operation_id,
        }
    }

    fn digests(&self) -> BTreeMap<String, [u8; 32]> {
        self.ops
            .lock()
            .expect("ops")
            .iter()
            .map(|(k, v)| (k.clone(), v.digest()))
            .collect()
    }

    /// Answers a peer's call.
    pub fn handle(&self, call: SyncCall) -> SyncReply {
        match call {
            SyncCall::Push { ops, maintenance } => {
                for r in ops.iter().take(MAX_OPS) {
                    self.merge(r);
                }
                self.merge_maintenance(&maintenance);
                SyncReply {
                    ops: vec![],
                    want: vec![],
                    maintenance: self.maintenance(),
                }
            }
            SyncCall::Digests {
                digests,
                maintenance,
            } => {
                self.merge_maintenance(&maintenance);
                let ops = self.ops.lock().expect("ops");
                let mut theirs_missing = Vec::new();
                let mut want = Vec::new();
                for (id, r) in ops.iter() {
                    match digests.get(id) {
                        Some(d) if *d == r.digest() => {}
                        Some(_) => {
                            theirs_missing.push(r.clone());
                            want.push(id.clone());
                        }
                        None => theirs_missing.push(r.clone()),
                    }
                }
                for id in digests.keys().take(MAX_OPS) {
                    if !ops.contains_key(id) {
                        want.push(id.clone());
                    }
                }
                theirs_missing.truncate(MAX_OPS_PER_REPLY);
                want.truncate(MAX_OPS_PER_REPLY);
                SyncReply {
                    ops: theirs_missing,
                    want,
                    maintenance: self.maintenance(),
                }
            }
        }
    }
}

/// Serves a peer's `updates` call.
pub async fn serve(state: &Arc<UpdateState>, body: &[u8]) -> Result<Vec<u8>, CallError> {
    let call: SyncCall = decode_cbor(body).map_err(CallError::malformed)?;
    let s = state.clone();
    let reply = tokio::task::spawn_blocking(move || s.handle(call))
        .await
        .map_err(CallError::failed)?;
    encode_cbor(&reply).map_err(CallError::failed)
}

/// Pushes operation `id` (and maintenance) to every alive member; returns
/// how many acknowledged.
pub async fn push(state: &Arc<UpdateState>, p2p: &P2pHandle, id: Option<&str>) -> usize {
    let ops: Vec<OpRecord> = id.and_then(|id| state.get(id)).into_iter().collect();
    let call = SyncCall::Push {
        ops,
        maintenance: state.maintenance(),
    };
    let Ok(body) = encode_cbor(&call) else {
        return 0;
    };
    let calls = p2p
        .alive_peers()
        .into_iter()
        .map(|peer| p2p.request(peer, SERVICE, body.clone()));
    futures::future::join_all(calls)
        .await
        .into_iter()
        .filter(|r| r.is_ok())
        .count()
}

/// One digest exchange with `peer`.
async fn sync_with(state: &Arc<UpdateState>, p2p: &P2pHandle, peer: PeerId) -> Result<(), String> {
    let call = SyncCall::Digests {
        digests: state.digests(),
        maintenance: state.maintenance(),
    };
    let body = encode_cbor(&call).map_err(|e| e.to_string())?;
    let reply = p2p
        .request(peer, SERVICE, body)
        .await
        .map_err(|e| e.to_string())?;
    let reply: SyncReply = decode_cbor(&reply).map_err(|e| e.to_string())?;
    for r in &reply.ops {
        state.merge(r);
    }
    state.merge_maintenance(&reply.maintenance);
    if !reply.want.is_empty() {
        let ops: Vec<OpRecord> = reply.want.iter().filter_map(|id| state.get(id)).collect();
        let body = encode_cbor(&SyncCall::Push {
            ops,
            maintenance: state.maintenance(),
        })
        .map_err(|e| e.to_string())?;
        p2p.request(peer, SERVICE, body)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The periodic anti-entropy loop.
pub fn spawn_sync(state: Arc<UpdateState>, p2p: P2pHandle) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SYNC_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let peer = p2p.alive_peers().choose(&mut rand::thread_rng()).copied();
            if let Some(peer) = peer {
                if let Err(e) = sync_with(&state, &p2p, peer).await {
                    tracing::debug!(%peer, error = %e, "update state sync failed");
                }
            }
        }
    });
}
