//! The API's view of the node itself: members, any member's health
//! (asked of that member over the `health` service when it is not us), and
//! the cluster's alerts.

use std::sync::Arc;

use plexi_api::model::{AlertList, HealthCheck, HealthReport, NodeView};
use plexi_api::{ApiError, Cluster};
use plexi_p2p::codec::decode_cbor;
use plexi_p2p::{MemberStatus, PeerId};
use plexi_util::clock::rfc3339;
use plexi_util::types::HealthSource;
use plexi_util::version::VERSION;

use crate::node::{node_view, Node, HEALTH_SERVICE};

/// The API's view of the node.
pub struct NodeApi(pub Arc<Node>);

impl std::ops::Deref for NodeApi {
    type Target = Arc<Node>;
    fn deref(&self) -> &Arc<Node> {
        &self.0
    }
}

#[async_trait::async_trait]
impl Cluster for NodeApi {
    async fn alerts(&self, limit: usize) -> Result<AlertList, ApiError> {
        match self.alerts.get() {
            Some(a) => Ok(a.list(limit)),
            None => Err(ApiError::unavailable(
                "starting",
                "this node is still starting; retry shortly",
            )),
        }
    }

    fn local_node_id(&self) -> String {
        self.name.clone()
    }

    fn version(&self) -> String {
        VERSION.into()
    }

    fn nodes(&self) -> Vec<NodeView> {
        let local = self.peer_id.to_string();
        let mut nodes: Vec<NodeView> = self
            .p2p()
            .members()
            .iter()
            .map(|m| node_view(m, &local))
            .collect();
        nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id).then(a.peer_id.cmp(&b.peer_id)));
        nodes
    }

    async fn node_health(&self, node_id: &str) -> Result<HealthReport, ApiError> {
        let member = self.find(node_id).ok_or_else(|| {
            ApiError::not_found(format!("no node named {node_id:?} is known to this node"))
        })?;
        let state = &member.record.state;
        if state.peer_id == self.peer_id.to_string() {
            return Ok(self.local_health().await);
        }
        let unreachable = |detail: String| HealthReport {
            node_id: state.name.clone().into(),
            peer_id: state.peer_id.clone(),
            version: state.version.clone(),
            status: member.status,
            healthy: false,
            checks: vec![HealthCheck {
                name: "reachable".into(),
                ok: false,
                detail,
            }],
            uptime_seconds: 0,
            checked_at: rfc3339(plexi_util::clock::wall_time()),
            source: HealthSource::Membership,
        };
        if matches!(member.status, MemberStatus::Dead | MemberStatus::Left) {
            return Ok(unreachable(format!(
                "node is {}: no heartbeat for {:.1} s",
                member.status.as_str(),
                member.silent_ms as f64 / 1000.0
            )));
        }
        let peer: PeerId = state
            .peer_id
            .parse()
            .map_err(|_| ApiError::not_found("member has an invalid peer id"))?;
        match self.p2p().request(peer, HEALTH_SERVICE, Vec::new()).await {
            Ok(bytes) => match decode_cbor::<HealthReport>(&bytes) {
                Ok(mut report) => {
                    report.status = member.status;
                    report.source = HealthSource::Peer;
                    Ok(report)
                }
                Err(e) => Ok(unreachable(format!(
                    "node answered with an undecodable report: {e}"
                ))),
            },
            Err(e) => Ok(unreachable(format!("node did not answer: {e}"))),
        }
    }
}
