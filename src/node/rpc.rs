//! Peer calls into this node: one dispatch from a service name to the
//! service that answers it. Every service answers with bytes or a typed
//! [`CallError`]; a service still starting says so instead of hanging.

use std::sync::Arc;

use plexi_p2p::codec::encode_cbor;
use plexi_p2p::{CallError, PeerId};

use super::{Node, HEALTH_SERVICE};
use crate::storage::wire;

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
                Some(storage) => crate::storage::serve(storage, peer, &body).await,
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
