//! What can go wrong in the update service, as it says it. The API layer
//! (`crate::node::api::updates`) gives each variant its HTTP status, in one
//! place; nothing here knows HTTP.

use plexi_util::types::{NodeId, OperationStatus, UpdateType};

use super::ops::Busy;
use super::release::ReleaseError;
use crate::storage::StorageError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdateError {
    // An operation and what it can do now.
    #[error("no update operation {operation_id}")]
    NotFound { operation_id: String },
    /// Only a planned operation starts (a running one: nothing to do).
    #[error("operation {operation_id} is {status}")]
    NotExecutable {
        operation_id: String,
        status: OperationStatus,
    },
    #[error("operation {operation_id} was never executed; nothing to roll back")]
    NotExecuted { operation_id: String },
    /// One operation runs at a time.
    #[error("another update operation is running: {}", .operation_ids.join(", "))]
    OtherOperationRunning { operation_ids: Vec<String> },

    // A plan the cluster cannot take.
    #[error("target_version {version:?}: {reason}")]
    InvalidVersion { version: String, reason: String },
    #[error("no trusted published release {version}; publish it first")]
    ReleaseNotPublished { version: semver::Version },
    #[error("unknown target nodes: {}", names(.nodes))]
    UnknownNodes { nodes: Vec<NodeId> },
    #[error("target nodes are not alive and cannot be updated: {}", names(.nodes))]
    NodesNotAlive { nodes: Vec<NodeId> },
    /// Targets that are in another operation that is not final.
    #[error("nodes already in an unfinished operation: {}", busy(.nodes))]
    NodesBusy { nodes: Vec<(NodeId, Busy)> },
    /// Explicit targets the update type does not fit (an upgrade to a
    /// version a node already runs or passed...), one text per node.
    #[error("{update_type} to {target} does not fit: {}", .misfits.join("; "))]
    UpdateTypeMismatch {
        update_type: UpdateType,
        target: semver::Version,
        misfits: Vec<String>,
    },
    #[error("no node fits a {update_type} to {target}")]
    NothingToUpdate {
        update_type: UpdateType,
        target: semver::Version,
    },
    /// Breaking changes and no `force`; each change names its node or the
    /// release.
    #[error("breaking changes (repeat with force to accept): {}", .changes.join("; "))]
    BreakingChanges { changes: Vec<String> },

    // Maintenance mode.
    #[error("timeout_seconds must be 1..={max_seconds}")]
    InvalidMaintenanceTimeout { seconds: u64, max_seconds: u64 },

    // Releases.
    /// A manifest refused: signer, signature, binary or replay.
    #[error(transparent)]
    Release(#[from] ReleaseError),
    #[error("store the binary as {binary_id} first")]
    ReleaseBinaryMissing { binary_id: String },
    /// A stored manifest does not parse.
    #[error("{data_id}: {reason}")]
    CorruptManifest { data_id: String, reason: String },

    // What the service stands on.
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{reason}")]
    AuditUnavailable { reason: String },
}

fn names(nodes: &[NodeId]) -> String {
    let names: Vec<&str> = nodes.iter().map(NodeId::as_str).collect();
    names.join(", ")
}

fn busy(nodes: &[(NodeId, Busy)]) -> String {
    let busy: Vec<String> = nodes.iter().map(|(n, b)| format!("{n} ({b})")).collect();
    busy.join(", ")
}

impl UpdateError {
    /// A stable snake_case name for what went wrong: the API's error code,
    /// and the `code` a `release.refused` audit entry records. (For
    /// `Storage`, the API answers with the storage error's own code.)
    pub fn code(&self) -> &'static str {
        use ReleaseError as R;
        use UpdateError as U;
        match self {
            U::NotFound { .. } => "not_found",
            U::NotExecutable { .. } => "not_executable",
            U::NotExecuted { .. } => "not_executed",
            U::OtherOperationRunning { .. } | U::NodesBusy { .. } => "operation_in_progress",
            U::InvalidVersion { .. } => "invalid_version",
            U::ReleaseNotPublished { .. } => "release_not_published",
            U::UnknownNodes { .. } => "unknown_nodes",
            U::NodesNotAlive { .. } => "nodes_not_alive",
            U::UpdateTypeMismatch { .. } => "update_type_mismatch",
            U::NothingToUpdate { .. } => "nothing_to_update",
            U::BreakingChanges { .. } => "breaking_changes",
            U::InvalidMaintenanceTimeout { .. } => "invalid_timeout",
            U::Release(R::Untrusted(_)) => "untrusted_release_key",
            U::Release(R::BadSignature) => "bad_release_signature",
            U::Release(R::HashMismatch) => "release_hash_mismatch",
            U::Release(R::Replay(_)) => "release_replay",
            U::Release(R::Malformed(_)) => "invalid_release",
            U::ReleaseBinaryMissing { .. } => "release_binary_missing",
            U::CorruptManifest { .. } => "corrupt_manifest",
            U::Storage(_) => "storage_error",
            U::AuditUnavailable { .. } => "audit_unavailable",
        }
    }
}
