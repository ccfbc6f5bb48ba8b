//! The JSON shapes the API serves. Plain data, no libp2p or sled types; the
//! binary maps its internal state into these.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A cluster member as one node sees it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct NodeView {
    /// The node's unique name.
    pub node_id: String,
    pub peer_id: String,
    /// alive | suspect | dead | left
    pub status: String,
    pub version: String,
    pub region: String,
    pub zone: String,
    /// libp2p listen addresses.
    pub addresses: Vec<String>,
    /// REST API address (`host:port`).
    pub api_address: String,
    /// Bumped at every restart of the node.
    pub incarnation: u64,
    /// When this node last saw the member's heartbeat advance (RFC 3339).
    pub last_heartbeat: String,
    /// Milliseconds since the member's heartbeat last advanced.
    pub last_heartbeat_age_ms: u64,
    pub total_capacity_gb: f64,
    pub used_capacity_gb: f64,
    pub object_count: u64,
    /// What the member reports about its own health.
    pub is_healthy: bool,
    /// Whether this is the node that answered.
    pub is_local: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct NodeList {
    pub nodes: Vec<NodeView>,
}

/// One named check of a node's health.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct HealthCheck {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// A node's health, answered by the node itself when it is reachable.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct HealthReport {
    pub node_id: String,
    pub peer_id: String,
    pub version: String,
    /// Membership status as seen by the answering node.
    pub status: String,
    pub healthy: bool,
    pub checks: Vec<HealthCheck>,
    pub uptime_seconds: u64,
    /// RFC 3339 time at which the checks ran.
    pub checked_at: String,
    /// `local`: the answering node is the node; `peer`: asked over the
    /// cluster network; `membership`: the node could not be reached and
    /// this is what membership knows.
    pub source: String,
}

/// `GET /health`: liveness of the answering node.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Liveness {
    pub status: String,
    pub node_id: String,
    pub version: String,
}
