//! Peer calls into this node: one dispatch from a service name to the
//! service that answers it. Every service answers with bytes or a typed
//! [`CallError`]; a service still starting says so instead of hanging.
//!
//! Who may call at all is decided before any of this, in `plexi_p2p`
//! (`guard`: members in good standing only, a rate per peer, bans for
//! peers that keep misbehaving); [`spawn_refusal_audit`] writes what it
//! refused into the audit log, rate-limited.

use std::sync::Arc;

use plexi_p2p::codec::encode_cbor;
use plexi_p2p::{CallError, PeerId};

use super::{Node, HEALTH_SERVICE};
use crate::storage::wire;
use plexi_p2p::{P2pEvent, P2pHandle};

/// Serves peers' application calls.
pub struct Rpc(pub Arc<Node>);

fn starting(service: &str) -> CallError {
    CallError::Starting {
        service: service.to_string(),
    }
}

#[async_trait::async_trait]
impl plexi_p2p::AppHandler for Rpc {
    async fn handle(
        &self,
        peer: PeerId,
        service: String,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, CallError> {
        let node = &self.0;
        match service.as_str() {
            HEALTH_SERVICE => encode_cbor(&node.local_health().await).map_err(CallError::failed),
            wire::STORE_SERVICE => match node.storage.get() {
                Some(storage) => crate::storage::serve(storage, peer, body).await,
                None => Err(starting(&service)),
            },
            crate::audit::SERVICE => match node.audit.get() {
                Some(audit) => audit.serve(peer, &body).await,
                None => Err(starting(&service)),
            },
            crate::updates::leases::SERVICE => match node.granter.get() {
                Some(g) => crate::updates::leases::serve(g, &body).await,
                None => Err(starting(&service)),
            },
            crate::updates::state::SERVICE => match node.updates.get() {
                Some(u) => crate::updates::state::serve(u, &body).await,
                None => Err(starting(&service)),
            },
            other => {
                tracing::warn!(%peer, service = other, "call for an unknown service dropped");
                Err(CallError::UnknownService {
                    service: other.to_string(),
                })
            }
        }
    }
}

/// At most this many refused peer calls are written to the audit log per
/// [`AUDIT_REFUSAL_WINDOW`] (p2p already reports each peer at most every
/// 10 s; this bounds many peers together).
const AUDIT_REFUSALS_PER_WINDOW: u32 = 60;
/// The window of [`AUDIT_REFUSALS_PER_WINDOW`].
const AUDIT_REFUSAL_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);
/// The audit action of a refused peer call (or exchange, push, gossip).
pub(crate) const REFUSED_ACTION: &str = "peer.call_refused";
/// The audit action of a connection that failed its handshake (a join
/// attempt without our cluster key).
pub(crate) const HANDSHAKE_ACTION: &str = "peer.handshake_failed";

/// Appends every refused peer call (actor: the peer id) and every failed
/// handshake (actor: `remote:<ip>`) that p2p reports to the audit log, at
/// most [`AUDIT_REFUSALS_PER_WINDOW`] a window.
pub(crate) fn spawn_refusal_audit(node: Arc<Node>, p2p: &P2pHandle) {
    let mut events = p2p.subscribe();
    tokio::spawn(async move {
        let mut window_start = std::time::Instant::now();
        let mut written = 0u32;
        loop {
            let event = match events.recv().await {
                Ok(e) => e,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::debug!(missed = n, "refusal audit lagged");
                    continue;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            // (subject, actor, action, detail) of the entry, if the event is
            // a refusal.
            let (subject, actor, action, detail) = match event {
                P2pEvent::CallRefused {
                    peer_id,
                    reason,
                    count,
                    banned,
                } => (
                    peer_id.clone(),
                    peer_id,
                    REFUSED_ACTION,
                    serde_json::json!({ "reason": reason, "count": count, "banned": banned }),
                ),
                P2pEvent::HandshakeFailed {
                    direction,
                    remote,
                    key_mismatch,
                    count,
                } => (
                    remote.clone(),
                    format!("remote:{remote}"),
                    HANDSHAKE_ACTION,
                    serde_json::json!({
                        "direction": direction,
                        "remote": remote,
                        "reason": if key_mismatch { "another_cluster_key" } else { "no_private_network" },
                        "count": count,
                    }),
                ),
                _ => continue,
            };
            if window_start.elapsed() >= AUDIT_REFUSAL_WINDOW {
                window_start = std::time::Instant::now();
                written = 0;
            }
            if written >= AUDIT_REFUSALS_PER_WINDOW {
                continue;
            }
            let Some(audit) = node.audit.get() else {
                continue;
            };
            written += 1;
            // At most one entry per peer (or remote address) per window as
            // well: the refusals in between are counted into its next entry.
            if let Err(e) = audit
                .append_limited(&subject, &actor, action, None, detail)
                .await
            {
                tracing::warn!(error = %e, action, "cannot audit a refused peer");
            }
        }
    });
}
