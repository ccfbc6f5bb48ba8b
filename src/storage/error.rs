//! What can go wrong in the data path, as the storage service says it. The
//! API layer (`crate::node::api::storage`) maps each variant to an HTTP
//! status and error code, in one place; nothing here knows HTTP.

use plexi_util::types::Consistency;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    #[error("replication_factor {got} is out of range: must be between 1 and {max}")]
    InvalidReplicationFactor { got: u32, max: u32 },
    #[error("the body exceeds the limit of {limit_bytes} bytes")]
    TooLarge { limit_bytes: usize },
    #[error("no object {data_id:?}")]
    NotFound { data_id: String },
    #[error(
        "a strong write needs all {rf} replicas; only {reachable} placement node(s) are reachable"
    )]
    InsufficientReplicas { rf: usize, reachable: usize },
    #[error("no placement node is reachable")]
    NoReplicas,
    #[error("the node is stopping")]
    ShuttingDown,
    #[error("{acked} of {needed} required replica(s) acknowledged; failed: {failed}")]
    ReplicaWriteFailed {
        acked: usize,
        needed: usize,
        failed: String,
    },
    #[error("a {consistency} operation needs {majority} of {rf} replicas to answer; {answered} answered")]
    NoQuorum {
        consistency: Consistency,
        majority: usize,
        rf: usize,
        answered: usize,
    },
    #[error(
        "the newest version is on {holding} of {rf} replicas and could not be written back to a majority ({majority}); retry"
    )]
    WriteBackFailed {
        majority: usize,
        rf: usize,
        holding: usize,
    },
    #[error("an existing version {newest} is more than a minute ahead of this node's clock; a strong write here would not outrank it (fix the clocks)")]
    ClockBehind { newest: String },
    #[error("no replica holding the newest version could serve it")]
    ReadFailed,
    #[error("this node started moments ago and is still learning the cluster; strong operations wait for that")]
    LearningCluster,
    #[error("no job {job_id:?} on any reachable node")]
    NoSuchJob { job_id: String },
}

impl StorageError {
    /// A short word for metrics and logs.
    pub fn outcome(&self) -> &'static str {
        match self {
            StorageError::NotFound { .. } => "not_found",
            _ => "error",
        }
    }
}
