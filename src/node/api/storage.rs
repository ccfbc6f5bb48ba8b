//! The API's view of storage: the `plexi_api::Storage` trait over the
//! storage service, and the one mapping of [`StorageError`] to HTTP.
//! (Cluster-wide jobs are audited by the job machinery's event hook, see
//! `node/services.rs`.)

use std::sync::Arc;

use axum::http::StatusCode;
use plexi_api::model::{
    DataInfo, DataObject, Distribution, Job, ObjectList, PutRequest, PutResult, StorageNodes,
    StorageOverview,
};
use plexi_api::ApiError;
use plexi_util::types::{Consistency, JobKind};

use crate::storage::{jobs, listing, report, Storage, StorageError};

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        let (status, code) = match &e {
            StorageError::InvalidReplicationFactor { .. } => {
                (StatusCode::BAD_REQUEST, "invalid_replication_factor")
            }
            StorageError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            StorageError::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
            StorageError::InsufficientReplicas { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "insufficient_replicas")
            }
            StorageError::NoReplicas => (StatusCode::SERVICE_UNAVAILABLE, "no_replicas"),
            StorageError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            StorageError::ReplicaWriteFailed { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "replica_write_failed")
            }
            StorageError::NoQuorum { .. } => (StatusCode::SERVICE_UNAVAILABLE, "no_quorum"),
            StorageError::ReadFailed => (StatusCode::SERVICE_UNAVAILABLE, "read_failed"),
            StorageError::WriteBackFailed { .. } => (StatusCode::SERVICE_UNAVAILABLE, "no_quorum"),
            StorageError::ClockBehind { .. } => (StatusCode::SERVICE_UNAVAILABLE, "clock_behind"),
            StorageError::LearningCluster => (StatusCode::SERVICE_UNAVAILABLE, "learning_cluster"),
            StorageError::NoSuchJob { .. } => (StatusCode::NOT_FOUND, "not_found"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

/// The storage service as the API sees it.
pub struct StorageApi(pub Arc<Storage>);

#[async_trait::async_trait]
impl plexi_api::Storage for StorageApi {
    fn max_object_bytes(&self) -> usize {
        self.0.config.max_object_bytes()
    }
    fn max_replication_factor(&self) -> u32 {
        self.0.config.max_replication_factor
    }
    async fn put(&self, req: PutRequest) -> Result<PutResult, ApiError> {
        Ok(self.0.put(req).await?)
    }
    async fn get(
        &self,
        data_id: &str,
        consistency: Option<Consistency>,
    ) -> Result<DataObject, ApiError> {
        Ok(self.0.get(data_id, consistency).await?)
    }
    async fn delete(
        &self,
        data_id: &str,
        consistency: Option<Consistency>,
    ) -> Result<(), ApiError> {
        Ok(self.0.delete(data_id, consistency).await?)
    }
    async fn info(&self, data_id: &str) -> Result<DataInfo, ApiError> {
        Ok(self.0.info(data_id).await?)
    }
    async fn list(
        &self,
        prefix: &str,
        after: Option<String>,
        limit: u32,
    ) -> Result<ObjectList, ApiError> {
        Ok(listing::list(&self.0, prefix, after, limit).await)
    }
    async fn overview(&self) -> Result<StorageOverview, ApiError> {
        Ok(report::overview(&self.0).await?)
    }
    async fn nodes(&self) -> Result<StorageNodes, ApiError> {
        Ok(report::nodes(&self.0))
    }
    async fn distribution(&self) -> Result<Distribution, ApiError> {
        Ok(report::distribution(&self.0).await?)
    }
    async fn start_job(&self, kind: JobKind, actor: &str) -> Result<Job, ApiError> {
        Ok(jobs::start_cluster_job(&self.0, kind, actor).await?)
    }
    async fn job(&self, job_id: &str) -> Result<Job, ApiError> {
        Ok(jobs::job_status(&self.0, job_id).await?)
    }
}
