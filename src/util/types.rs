//! The shared vocabulary: one type per concept, used alike by the config
//! file, the state machines, the wire between nodes and the REST API. Every
//! enum serializes as its `snake_case` name, which is also what `as_str`,
//! `Display` and `FromStr` use, so a status is never a bare string anywhere.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An unknown name for one of the vocabulary types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownName {
    /// The type's name in the vocabulary, e.g. `consistency level`.
    pub what: &'static str,
    pub got: String,
    pub expected: &'static [&'static str],
}

impl fmt::Display for UnknownName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not a {}: expected one of {}",
            self.got,
            self.what,
            self.expected.join(", ")
        )
    }
}

impl std::error::Error for UnknownName {}

/// Declares a vocabulary enum: serde `snake_case`, `as_str`, `ALL`,
/// `NAMES`, `Display` and `FromStr`, all from the one list of names.
macro_rules! vocabulary {
    (
        $(#[$meta:meta])*
        $name:ident ($what:literal) {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// Every value's name, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            /// The `snake_case` name, as on the wire and in the API.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownName;
            fn from_str(s: &str) -> Result<Self, UnknownName> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownName {
                        what: $what,
                        got: s.to_string(),
                        expected: $name::NAMES,
                    }),
                }
            }
        }
    };
}

vocabulary! {
    /// When a write is acknowledged and what a read must see (SPEC.md,
    /// "Semantics that must hold").
    Consistency ("consistency level") {
        /// Acknowledged after every replica stored it durably; reads ask a
        /// majority of the object's replicas and return the newest.
        Strong = "strong",
        /// Acknowledged after one durable replica; the rest follow.
        Eventual = "eventual",
        /// Acknowledged once the coordinator accepted it.
        Weak = "weak",
    }
}

vocabulary! {
    /// How placement weighs nodes (`distributed_storage.storage_strategy`).
    StorageStrategy ("storage strategy") {
        /// Weights from capacity; nodes above max usage take nothing new.
        LoadBalanced = "load_balanced",
        /// Weights from measured latency buckets.
        PerformanceOptimized = "performance_optimized",
        /// Weights from reliability (failure history) buckets.
        RedundancyFocused = "redundancy_focused",
        /// Spread across regions first, then zones.
        Geographic = "geographic",
    }
}

vocabulary! {
    /// A member's liveness as one node judges it. Ordered from liveliest.
    MemberStatus ("member status") {
        Alive = "alive",
        Suspect = "suspect",
        Dead = "dead",
        /// Left on purpose; final for that incarnation.
        Left = "left",
    }
}

vocabulary! {
    /// How an update operation walks its targets.
    UpdateStrategy ("update strategy") {
        /// One node at a time, `rolling_update_delay_seconds` apart.
        Rolling = "rolling",
        /// Batches of `max_concurrent_updates`, inside maintenance mode.
        Parallel = "parallel",
        /// One node, `canary_soak_seconds` of watching, then rolling.
        Canary = "canary",
    }
}

vocabulary! {
    /// What an update does to the version.
    UpdateType ("update type") {
        Upgrade = "upgrade",
        Downgrade = "downgrade",
        Reinstall = "reinstall",
    }
}

vocabulary! {
    /// An update operation's status, derived from its replicated facts.
    OperationStatus ("operation status") {
        Planned = "planned",
        Running = "running",
        Completed = "completed",
        Failed = "failed",
        RollingBack = "rolling_back",
        RolledBack = "rolled_back",
        Cancelled = "cancelled",
    }
}

impl OperationStatus {
    /// Nothing more happens to an operation in a final status.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            OperationStatus::Completed
                | OperationStatus::Failed
                | OperationStatus::RolledBack
                | OperationStatus::Cancelled
        )
    }
}

vocabulary! {
    /// One node's status within an update operation.
    NodeUpdateStatus ("node update status") {
        Pending = "pending",
        Updating = "updating",
        Completed = "completed",
        Failed = "failed",
        RollingBack = "rolling_back",
        RolledBack = "rolled_back",
    }
}

vocabulary! {
    /// The phases of one node's update, in order.
    UpdatePhase ("update phase") {
        Waiting = "waiting",
        Lease = "lease",
        PreCheck = "pre_check",
        Drain = "drain",
        Backup = "backup",
        Fetch = "fetch",
        Install = "install",
        Restart = "restart",
        PostCheck = "post_check",
        Done = "done",
    }
}

impl UpdatePhase {
    /// The node's progress (percent) once it reached this phase.
    pub fn progress(self) -> f64 {
        match self {
            UpdatePhase::Waiting => 0.0,
            UpdatePhase::Lease => 5.0,
            UpdatePhase::PreCheck => 10.0,
            UpdatePhase::Drain => 20.0,
            UpdatePhase::Backup => 30.0,
            UpdatePhase::Fetch => 45.0,
            UpdatePhase::Install => 60.0,
            UpdatePhase::Restart => 70.0,
            UpdatePhase::PostCheck => 85.0,
            UpdatePhase::Done => 100.0,
        }
    }
}

vocabulary! {
    /// A cluster-wide storage job (`POST /clustering/storage/{kind}`).
    JobKind ("job kind") {
        /// Moves data onto the owners current placement names.
        Rebalance = "rebalance",
        /// Drops copies no owner needs, purges old tombstones, scrubs.
        Cleanup = "cleanup",
        /// Rewrites every local value not sealed under the current data key.
        Reencrypt = "reencrypt",
    }
}

vocabulary! {
    /// A storage job's status (one node's part, or the whole job).
    JobStatus ("job status") {
        Running = "running",
        Completed = "completed",
        Failed = "failed",
    }
}

vocabulary! {
    /// How well an object's current version is replicated, as a listing
    /// finds it on the members that answered. A listed object always has
    /// at least one current copy (else it could not be listed).
    ReplicaHealth ("replica health") {
        /// At least `replication_factor` current copies.
        Healthy = "healthy",
        /// Fewer current copies than its `replication_factor` (a replica is
        /// down, stale or missing; repair will catch up).
        UnderReplicated = "under_replicated",
    }
}

vocabulary! {
    /// Where a health report comes from.
    HealthSource ("health source") {
        /// The answering node is the node.
        Local = "local",
        /// Asked of the node over the cluster network.
        Peer = "peer",
        /// The node could not be reached; this is what membership knows.
        Membership = "membership",
    }
}

vocabulary! {
    /// What `GET /health` says when the node answers at all.
    LivenessStatus ("liveness status") {
        Ok = "ok",
    }
}

vocabulary! {
    /// How urgent an alert is.
    AlertSeverity ("alert severity") {
        Critical = "critical",
        Warning = "warning",
        Info = "info",
    }
}

vocabulary! {
    /// Where an alert is in its lifecycle.
    AlertState ("alert state") {
        /// Raised and still true.
        Active = "active",
        /// No longer true (or its bounded time as news has passed).
        Resolved = "resolved",
    }
}

vocabulary! {
    /// What an alert is about; each kind has one severity ([`AlertKind::severity`]).
    AlertKind ("alert kind") {
        /// A member missed its heartbeats (this node's failure detector).
        MemberSuspect = "member_suspect",
        /// A member is judged dead; resolved when it is alive again.
        MemberDead = "member_dead",
        /// A node above `distributed_storage.max_node_usage_percentage`.
        NodeUsageHigh = "node_usage_high",
        /// A node above `distributed_storage.warn_node_usage_percentage`.
        NodeUsageWarning = "node_usage_warning",
        /// Objects with fewer live replicas than their replication factor.
        UnderReplicated = "under_replicated",
        /// A node whose store latency is well above the cluster median.
        PerformanceDegraded = "performance_degraded",
        /// Scrub or a read found a corrupt local replica on a node.
        CorruptionFound = "corruption_found",
        /// An update operation is running.
        UpdateStarted = "update_started",
        /// A node failed its part of an update operation.
        UpdateNodeFailed = "update_node_failed",
        UpdateCompleted = "update_completed",
        UpdateFailed = "update_failed",
        UpdateRolledBack = "update_rolled_back",
        /// The cluster is in maintenance mode.
        MaintenanceOn = "maintenance_on",
    }
}

impl AlertKind {
    /// The one severity of this kind.
    pub fn severity(self) -> AlertSeverity {
        use AlertKind::*;
        match self {
            MemberDead | NodeUsageHigh | CorruptionFound | UpdateNodeFailed | UpdateFailed => {
                AlertSeverity::Critical
            }
            MemberSuspect | NodeUsageWarning | UnderReplicated | PerformanceDegraded
            | UpdateRolledBack | MaintenanceOn => AlertSeverity::Warning,
            UpdateStarted | UpdateCompleted => AlertSeverity::Info,
        }
    }
}

/// A node's name in the cluster (`node.name`, or derived from its peer id):
/// 1-64 characters of `[A-Za-z0-9._-]`. The key of every per-node map.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct NodeId(pub String);

impl NodeId {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True for 1-64 characters of letters, digits, `.`, `_` or `-`.
    pub fn is_valid(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= crate::limits::MAX_NAME_CHARS
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for NodeId {
    fn from(s: String) -> Self {
        NodeId(s)
    }
}

impl From<&str> for NodeId {
    fn from(s: &str) -> Self {
        NodeId(s.to_string())
    }
}

impl std::borrow::Borrow<str> for NodeId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for NodeId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for NodeId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for NodeId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// serde, `as_str`, `Display` and `FromStr` agree for every value.
    fn agree<T>(all: &[T])
    where
        T: Copy + fmt::Display + FromStr<Err = UnknownName> + Serialize + PartialEq + fmt::Debug,
        T: for<'de> Deserialize<'de>,
    {
        for v in all {
            let text = v.to_string();
            assert_eq!(serde_json::to_string(v).unwrap(), format!("\"{text}\""));
            assert_eq!(
                serde_json::from_str::<T>(&format!("\"{text}\"")).unwrap(),
                *v
            );
            assert_eq!(text.parse::<T>().unwrap(), *v);
        }
        assert!("Nope".parse::<T>().is_err());
    }

    #[test]
    fn every_name_round_trips() {
        agree(Consistency::ALL);
        agree(StorageStrategy::ALL);
        agree(MemberStatus::ALL);
        agree(UpdateStrategy::ALL);
        agree(UpdateType::ALL);
        agree(OperationStatus::ALL);
        agree(NodeUpdateStatus::ALL);
        agree(UpdatePhase::ALL);
        agree(JobKind::ALL);
        agree(JobStatus::ALL);
        agree(ReplicaHealth::ALL);
        agree(HealthSource::ALL);
        agree(LivenessStatus::ALL);
        agree(AlertSeverity::ALL);
        agree(AlertState::ALL);
        agree(AlertKind::ALL);
    }

    #[test]
    fn phases_progress_in_order_and_liveliest_status_sorts_first() {
        let p: Vec<f64> = UpdatePhase::ALL.iter().map(|p| p.progress()).collect();
        assert!(p.windows(2).all(|w| w[0] < w[1]), "{p:?}");
        assert!(MemberStatus::Alive < MemberStatus::Suspect);
        assert!(MemberStatus::Dead < MemberStatus::Left);
    }

    #[test]
    fn unknown_names_say_what_was_expected() {
        let e = "fast".parse::<Consistency>().unwrap_err().to_string();
        assert_eq!(
            e,
            "\"fast\" is not a consistency level: expected one of strong, eventual, weak"
        );
    }

    #[test]
    fn node_ids_are_transparent_strings() {
        let id = NodeId::from("node-1");
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"node-1\"");
        assert!(NodeId::is_valid("node-1.a_b"));
        assert!(!NodeId::is_valid("") && !NodeId::is_valid("a b"));
    }
}

/// Where a node stands on the map (`node.location`): degrees, latitude
/// -90..=90, longitude -180..=180. Gossiped in the node's record and shown
/// by the panel's geographic view.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct GeoLocation {
    pub lat: f64,
    pub lon: f64,
}

impl GeoLocation {
    /// Whether both coordinates are finite and in range.
    pub fn is_valid(&self) -> bool {
        (-90.0..=90.0).contains(&self.lat) && (-180.0..=180.0).contains(&self.lon)
    }
}
