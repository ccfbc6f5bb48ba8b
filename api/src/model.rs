//! The JSON shapes the API serves. Plain data, no libp2p or sled types; the
//! binary maps its internal state into these.

use plexi_util::types::{
    AlertKind, AlertSeverity, AlertState, Consistency, GeoLocation, HealthSource, JobKind,
    JobStatus, LivenessStatus, MemberStatus, NodeId, OperationStatus, ReplicaHealth,
    StorageStrategy, UpdatePhase, UpdateStrategy, UpdateType,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `GET /whoami`: the caller's token.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct WhoAmI {
    /// The token's name (`admin`, `read` or a configured name).
    pub name: String,
    pub role: crate::auth::Role,
}

/// A cluster member as one node sees it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct NodeView {
    /// The node's unique name.
    pub node_id: NodeId,
    pub peer_id: String,
    pub status: MemberStatus,
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
    /// Where the node stands (`node.location`), when it has one.
    #[serde(default)]
    pub location: Option<GeoLocation>,
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
    pub node_id: NodeId,
    pub peer_id: String,
    pub version: String,
    /// Membership status as seen by the answering node.
    pub status: MemberStatus,
    pub healthy: bool,
    pub checks: Vec<HealthCheck>,
    pub uptime_seconds: u64,
    /// RFC 3339 time at which the checks ran.
    pub checked_at: String,
    pub source: HealthSource,
}

/// `GET /health`: liveness of the answering node.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Liveness {
    pub status: LivenessStatus,
    pub node_id: NodeId,
    pub version: String,
}

/// `PUT .../data/{data_id}` answer.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct PutResult {
    pub data_id: String,
    pub data_type: String,
    pub size_bytes: u64,
    /// blake3 of the bytes, hex.
    pub checksum: String,
    /// Hybrid-logical-clock version `physical_ms.logical.node`.
    pub version: String,
    pub consistency_level: Consistency,
    pub replication_factor: u32,
    /// The nodes that own a replica (placement order).
    pub replicas: Vec<String>,
    /// Replicas that acknowledged a durable write before the answer.
    pub acknowledged_by: Vec<String>,
    /// Fewer than `replication_factor` replicas could take the write; repair
    /// will add the missing ones.
    pub under_replicated: bool,
}

/// Where one replica of an object is.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct ReplicaInfo {
    pub node_id: NodeId,
    pub peer_id: String,
    /// Membership status of the node (alive, suspect, dead, left).
    pub status: MemberStatus,
    /// Whether the node answered and holds a copy.
    pub has_copy: bool,
    pub version: Option<String>,
    /// Holds the newest version any replica has.
    pub is_current: bool,
    pub is_healthy: bool,
}

/// `GET .../data/{data_id}/info`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct DataInfo {
    pub data_id: String,
    pub data_type: String,
    pub size_bytes: u64,
    pub checksum: String,
    pub version: String,
    pub consistency_level: Consistency,
    pub replication_factor: u32,
    pub partition: u16,
    pub created_at: String,
    pub last_accessed: Option<String>,
    pub access_count: u64,
    pub live_replicas: u32,
    pub under_replicated: bool,
    pub replicas: Vec<ReplicaInfo>,
}

/// `GET /clustering/storage/data?prefix=&after=&limit=`: one page of the
/// live objects, in byte order of their ids.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct ObjectList {
    pub objects: Vec<ObjectSummary>,
    /// Pass as `after` for the next page; `None` at the end of the listing.
    pub next_after: Option<String>,
    /// False when some object could be held only by unreachable nodes, so
    /// the page may miss it; `unreachable_nodes` names them.
    pub complete: bool,
    /// Members (not left) that did not answer: not alive or suspect, or
    /// their listing call failed.
    pub unreachable_nodes: Vec<String>,
}

/// One listed object, as its newest version stands on the answering nodes.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct ObjectSummary {
    pub data_id: String,
    pub data_type: String,
    pub size_bytes: u64,
    /// blake3 of the bytes, hex.
    pub checksum: String,
    /// As `GET .../data/{data_id}/info` shows it.
    pub version: String,
    pub replication_factor: u32,
    /// Current copies (of the newest version) on the nodes that answered.
    pub replicas_found: u32,
    pub replica_health: ReplicaHealth,
}

/// An object as read: metadata and bytes.
#[derive(Clone, Debug)]
pub struct DataObject {
    pub data_type: String,
    pub checksum: String,
    pub version: String,
    pub bytes: Vec<u8>,
}

/// `GET /clustering/storage/overview`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct StorageOverview {
    pub total_nodes: u32,
    pub healthy_nodes: u32,
    pub total_capacity_gb: f64,
    pub used_capacity_gb: f64,
    pub available_capacity_gb: f64,
    pub usage_percentage: f64,
    /// Logical objects (not replicas), tombstones excluded.
    pub total_data_objects: u64,
    /// The cluster's default replication factor.
    pub replication_factor: u32,
    pub storage_strategy: StorageStrategy,
    pub consistency_level: Consistency,
    pub total_replicas: u64,
    pub under_replicated_objects: u64,
    /// Nodes that did not answer the census (their replicas are not counted).
    pub unreachable_nodes: Vec<String>,
}

/// One node in `GET /clustering/storage/nodes`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct StorageNode {
    pub node_id: NodeId,
    pub peer_id: String,
    pub status: MemberStatus,
    pub region: String,
    pub zone: String,
    pub total_capacity_gb: f64,
    pub used_capacity_gb: f64,
    pub available_capacity_gb: f64,
    pub usage_percentage: f64,
    pub object_count: u64,
    /// 0-100 from the store write+flush latency the node measures on
    /// itself and gossips (50 until measured); the same on every node.
    pub performance_score: f64,
    /// 0-100 from the node's unplanned restarts (crashes; graceful stops and
    /// update restarts do not count); the same on every node and across
    /// restarts.
    pub reliability_score: f64,
    /// The store latency behind `performance_score`; null until measured.
    pub store_latency_ms: Option<f64>,
    /// Starts of the node after a run that did not stop cleanly, as the
    /// node persists and gossips it.
    pub unplanned_restarts: u64,
    /// Latency of store reads from the answering node to this one (EWMA;
    /// measured by the answering node, null for itself or when not yet
    /// measured).
    pub read_latency_ms: Option<f64>,
    /// Latency of store writes from the answering node to this one.
    pub write_latency_ms: Option<f64>,
    pub is_healthy: bool,
    pub last_heartbeat: String,
    /// Whether placement gives it new replicas (not above max usage).
    pub accepts_new_replicas: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct StorageNodes {
    pub nodes: Vec<StorageNode>,
}

/// Objects and bytes held (replicas).
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Holding {
    pub objects: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct NodeHolding {
    pub node_id: NodeId,
    pub region: String,
    pub zone: String,
    pub objects: u64,
    pub bytes: u64,
}

/// `GET /clustering/storage/distribution`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Distribution {
    pub nodes: Vec<NodeHolding>,
    pub regions: std::collections::BTreeMap<String, Holding>,
    pub zones: std::collections::BTreeMap<String, Holding>,
    /// Number of objects by how many current replicas they have.
    pub replica_histogram: std::collections::BTreeMap<String, u64>,
    pub total_objects: u64,
    pub under_replicated_objects: u64,
    /// Mean current replicas per object.
    pub average_replication_factor: f64,
    /// Current replicas over target replicas, 0-1.
    pub replication_efficiency: f64,
    pub unreachable_nodes: Vec<String>,
}

/// A background storage job (rebalance, cleanup).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Job {
    pub job_id: String,
    pub kind: JobKind,
    pub status: JobStatus,
    pub progress_percentage: f64,
    pub started_at: String,
    pub completed_at: Option<String>,
    pub moved_objects: u64,
    pub moved_bytes: u64,
    pub removed_replicas: u64,
    pub repaired_replicas: u64,
    /// Local entries examined and to examine, summed over the nodes (the
    /// done/total of a re-encryption).
    #[serde(default)]
    pub examined_objects: u64,
    #[serde(default)]
    pub total_objects: u64,
    /// Values rewritten under the current data key (re-encryption).
    #[serde(default)]
    pub reencrypted_objects: u64,
    /// The per-node parts of the job.
    pub nodes: Vec<JobPart>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct JobPart {
    pub node_id: NodeId,
    pub status: JobStatus,
    pub progress_percentage: f64,
}

/// What a release manifest says; signed by the release key.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ReleaseManifest {
    pub version: String,
    /// blake3 of the binary, hex.
    pub blake3: String,
    pub size_bytes: u64,
    pub breaking: bool,
    pub min_compatible_version: Option<String>,
    pub notes: String,
    /// Unix milliseconds when signed (a manifest older than the published
    /// one for the same version is refused as a replay).
    pub created_at_ms: u64,
}

/// A manifest with its signer and signature, as published.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct SignedRelease {
    pub manifest: ReleaseManifest,
    /// ed25519 public key of the signer, hex.
    pub public_key: String,
    /// ed25519 signature over the manifest's CBOR encoding, hex.
    pub signature: String,
}

/// A published release as listed.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct ReleaseView {
    pub version: String,
    pub blake3: String,
    pub size_bytes: u64,
    pub breaking: bool,
    pub min_compatible_version: Option<String>,
    pub notes: String,
    pub created_at: String,
    pub public_key: String,
    /// Signed by a key in this node's `release_public_keys` and the signature verifies.
    pub trusted: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct ReleaseList {
    pub releases: Vec<ReleaseView>,
}

/// `POST /clustering/updates/plan`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PlanRequest {
    pub target_version: String,
    /// Default `upgrade`.
    #[serde(default = "default_update_type")]
    pub update_type: UpdateType,
    /// Default `rolling`.
    #[serde(default = "default_strategy")]
    pub strategy: UpdateStrategy,
    /// Node names; empty means every live member.
    #[serde(default)]
    pub target_nodes: Vec<NodeId>,
    #[serde(default)]
    pub force: bool,
}

fn default_update_type() -> UpdateType {
    UpdateType::Upgrade
}

fn default_strategy() -> UpdateStrategy {
    UpdateStrategy::Rolling
}

/// One node's part of an update operation.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct NodeUpdateStatus {
    pub node_id: NodeId,
    // Inline: the enum shares this struct's name, so it cannot be a
    // component of its own in the OpenAPI document.
    #[schema(inline)]
    pub status: plexi_util::types::NodeUpdateStatus,
    /// The phase the node is in (or ended in).
    pub current_phase: UpdatePhase,
    pub progress_percentage: f64,
    pub from_version: String,
    pub to_version: String,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    pub error_message: Option<String>,
    pub rollback_available: bool,
    /// When the target release was fetched, verified and installed on this
    /// node; null until then. Nodes fetch it in the background as soon as
    /// the operation is planned, so executing once every node is staged
    /// spends no fetch during the roll.
    pub staged_at: Option<String>,
    /// Seconds spent in each finished phase.
    pub phase_seconds: std::collections::BTreeMap<UpdatePhase, f64>,
}

/// A lease slot as gossiped by its holder.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct LeaseView {
    pub slot: u32,
    pub holder: NodeId,
    pub epoch: u64,
    pub operation_id: String,
    /// Milliseconds the holder still counts on, from its own clock.
    pub remaining_ms: u64,
}

/// An update operation as it stands (status, plan and progress).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct UpdateOperation {
    pub operation_id: String,
    pub status: OperationStatus,
    pub target_version: String,
    pub update_type: UpdateType,
    pub strategy: UpdateStrategy,
    pub target_nodes: Vec<NodeId>,
    /// Nodes in the order they update; a batch updates together.
    pub batches: Vec<Vec<NodeId>>,
    /// What the operation is doing, in words for people: `planned`,
    /// `batch 2 of 3: drain, fetch`, `rollback`, `completed`... A
    /// description, not a value to match on: that is `status`.
    pub current_phase: String,
    pub overall_progress: f64,
    pub estimated_completion: Option<String>,
    pub breaking_changes: Vec<String>,
    pub warnings: Vec<String>,
    pub node_statuses: std::collections::BTreeMap<NodeId, NodeUpdateStatus>,
    pub force: bool,
    pub created_at: String,
    pub created_by: String,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    /// Why the operation halted, once it did.
    pub halted_reason: Option<String>,
    /// Lease slots held for this operation right now.
    pub leases: Vec<LeaseView>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct UpdateList {
    pub operations: Vec<UpdateOperation>,
}

/// Cluster-wide maintenance mode.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Maintenance {
    pub enabled: bool,
    pub reason: String,
    pub set_by: String,
    pub started_at: Option<String>,
    /// Maintenance ends by itself at this time.
    pub expires_at: Option<String>,
}

/// `POST /clustering/maintenance`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceRequest {
    pub enabled: bool,
    #[serde(default)]
    pub reason: Option<String>,
    /// Defaults to `maintenance_mode_timeout_seconds`.
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
}

/// One audit record. Each node keeps its own hash chain, keyed by its peer
/// id; `hash` covers every other field but `signature`, `prev_hash` links
/// to the node's previous record, and `signature` is the node's libp2p
/// (ed25519) signature over (peer id, seq, hash), so each entry is also a
/// signed head of its chain.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct AuditEntry {
    /// The name of the node that recorded it (for display; the chain is
    /// `peer_id`'s).
    pub node_id: NodeId,
    /// The recording node's peer id: the chain this entry belongs to and
    /// the key its signature verifies under. Absent on legacy entries
    /// written before chains were signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_id: Option<String>,
    /// Position in that node's chain, from 1.
    pub seq: u64,
    pub at: String,
    /// Token name of the caller, or `node:<name>` for the cluster's own acts.
    pub actor: String,
    /// e.g. update.plan, update.execute, update.rollback, release.publish,
    /// release.refused, maintenance.on, maintenance.off, lease.grant,
    /// lease.release, lease.expire, node.out_of_service, node.in_service
    pub action: String,
    pub operation_id: Option<String>,
    pub detail: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
    /// ed25519 signature (hex) by `peer_id`'s key; absent on legacy entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct AuditList {
    /// Newest first.
    pub entries: Vec<AuditEntry>,
    /// Every chain this node holds links, hashes and verifies its
    /// signatures correctly (legacy unsigned chains: links and hashes).
    pub chains_verified: bool,
}

/// What is wrong with a chain, at its first bad entry.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuditFault {
    /// The entry's bytes changed: it does not decode, or its hash does not
    /// recompute.
    Modified,
    /// The entry sits at another seq than its own, or links to an entry
    /// other than its predecessor.
    Reordered,
    /// Entries are missing in the middle of the chain (a gap in the seqs).
    Dropped,
    /// The chain ends before the highest head its owner signed.
    Truncated,
    /// The signature is missing or does not verify under the chain
    /// owner's key.
    BadSignature,
    /// The entry names another peer than the chain it is stored in.
    WrongSigner,
    /// The entry at the seq of the owner's highest signed head is not the
    /// one the owner signed (the chain was rewritten from there).
    Diverged,
}

/// The verdict on one chain.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuditChainStatus {
    /// Every entry hashes, links and verifies; no signed head beyond it.
    Ok,
    /// See `fault`.
    Failed,
    /// Written before chains were signed: its hashes link, but nothing
    /// proves who wrote it.
    LegacyUnsigned,
}

/// The first bad entry of a chain.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct AuditProblem {
    /// Seq of the first bad (or first missing) entry.
    pub seq: u64,
    pub fault: AuditFault,
    pub message: String,
}

/// One chain as the answering node holds it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct AuditChainReport {
    /// The chain's key: the owner's peer id (or, for a legacy chain, the
    /// node name it was keyed by).
    pub chain: String,
    /// The owner's node name, as its entries give it.
    pub node_id: Option<NodeId>,
    pub status: AuditChainStatus,
    /// Entries held.
    pub entries: u64,
    /// Seq of the last entry held.
    pub head_seq: u64,
    /// Highest head the owner signed that this node has seen.
    pub signed_head_seq: Option<u64>,
    pub problem: Option<AuditProblem>,
}

/// `GET /clustering/audit/verify`: every chain the answering node holds.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct AuditVerifyReport {
    /// The node that checked.
    pub node_id: NodeId,
    /// No chain failed.
    pub ok: bool,
    pub chains: Vec<AuditChainReport>,
}

/// One event on the server-sent event stream.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct ClusterEvent {
    /// e.g. update.progress, update.status, maintenance, audit, member
    pub kind: String,
    pub at: String,
    pub data: serde_json::Value,
}

/// A validated write.
#[derive(Clone, Debug)]
pub struct PutRequest {
    pub data_id: String,
    pub data_type: String,
    pub consistency: Option<Consistency>,
    pub replication_factor: Option<u32>,
    pub bytes: bytes::Bytes,
    /// Token name of the caller (for the audit trail).
    pub actor: String,
}

/// One alert, the same on every node (same `alert_id` for the same fact).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Alert {
    /// Deterministic: a hash of kind, subject and the fact's epoch (a
    /// member's incarnation, an operation id, when maintenance began).
    pub alert_id: String,
    pub kind: AlertKind,
    pub severity: AlertSeverity,
    pub state: AlertState,
    /// What it is about: a node_id, an operation id, or `cluster`.
    pub subject: String,
    /// A sentence for people.
    pub message: String,
    /// RFC 3339: from the fact's own timestamp where it has one, else when
    /// this node first saw the condition.
    pub raised_at: String,
    /// RFC 3339, once resolved.
    pub resolved_at: Option<String>,
}

/// `GET /clustering/alerts`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct AlertList {
    /// Active alerts, newest raised first.
    pub active: Vec<Alert>,
    /// Resolved alerts, newest resolved first, at most `limit`.
    pub recent: Vec<Alert>,
}

/// `GET /events/ticket`: opens `GET /events?ticket=...` on this node without
/// an Authorization header (a browser's EventSource cannot send one).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct EventTicket {
    pub ticket: String,
    /// RFC 3339; a stream opened before then stays open after it.
    pub expires_at: String,
}

/// The data of a `member` event: a member's status changed as the
/// answering node sees it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct MemberEvent {
    pub node_id: NodeId,
    pub peer_id: String,
    pub status: MemberStatus,
}
