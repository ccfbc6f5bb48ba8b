//! The API's view of updates: the `plexi_api::Updates` trait over the
//! update service, and the one mapping of [`UpdateError`] to HTTP.

use axum::http::StatusCode;
use plexi_api::model::{
    AuditList, AuditVerifyReport, ClusterEvent, Maintenance, MaintenanceRequest, PlanRequest,
    ReleaseList, ReleaseView, SignedRelease, UpdateList, UpdateOperation,
};
use plexi_api::ApiError;

use crate::updates::release::ReleaseError;
use crate::updates::{UpdateError, UpdateService};

impl From<UpdateError> for ApiError {
    fn from(e: UpdateError) -> Self {
        use ReleaseError as R;
        use UpdateError as U;
        let status = match &e {
            // The data path's own status and code.
            U::Storage(s) => return s.clone().into(),
            U::NotFound { .. } => StatusCode::NOT_FOUND,
            U::NotExecutable { .. }
            | U::NotExecuted { .. }
            | U::OtherOperationRunning { .. }
            | U::NodesBusy { .. }
            | U::BreakingChanges { .. }
            | U::Release(R::Replay(_)) => StatusCode::CONFLICT,
            U::InvalidVersion { .. }
            | U::ReleaseNotPublished { .. }
            | U::UnknownNodes { .. }
            | U::NodesNotAlive { .. }
            | U::UpdateTypeMismatch { .. }
            | U::NothingToUpdate { .. }
            | U::InvalidMaintenanceTimeout { .. }
            | U::Release(R::Untrusted(_) | R::BadSignature | R::HashMismatch | R::Malformed(_))
            | U::ReleaseBinaryMissing { .. } => StatusCode::BAD_REQUEST,
            U::CorruptManifest { .. } | U::AuditUnavailable { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        ApiError::new(status, e.code(), e.to_string())
    }
}

/// The update service as the API sees it.
pub struct UpdatesApi(pub UpdateService);

#[async_trait::async_trait]
impl plexi_api::Updates for UpdatesApi {
    async fn releases(&self) -> Result<ReleaseList, ApiError> {
        Ok(self.0.releases().await)
    }
    async fn publish_release(
        &self,
        signed: SignedRelease,
        actor: &str,
    ) -> Result<ReleaseView, ApiError> {
        Ok(self.0.publish_release(signed, actor).await?)
    }
    async fn plan(&self, req: PlanRequest, actor: &str) -> Result<UpdateOperation, ApiError> {
        Ok(self.0.plan(req, actor).await?)
    }
    async fn execute(&self, id: &str, actor: &str) -> Result<UpdateOperation, ApiError> {
        Ok(self.0.execute(id, actor).await?)
    }
    async fn status(&self, id: &str) -> Result<UpdateOperation, ApiError> {
        Ok(self.0.status(id)?)
    }
    async fn rollback(&self, id: &str, actor: &str) -> Result<UpdateOperation, ApiError> {
        Ok(self.0.rollback(id, actor).await?)
    }
    async fn active(&self) -> Result<UpdateList, ApiError> {
        Ok(self.0.active())
    }
    async fn history(&self, limit: usize) -> Result<UpdateList, ApiError> {
        Ok(self.0.history(limit))
    }
    async fn maintenance(&self) -> Result<Maintenance, ApiError> {
        Ok(self.0.maintenance())
    }
    async fn set_maintenance(
        &self,
        req: MaintenanceRequest,
        actor: &str,
    ) -> Result<Maintenance, ApiError> {
        Ok(self.0.set_maintenance(req, actor).await?)
    }
    async fn audit(&self, limit: usize) -> Result<AuditList, ApiError> {
        Ok(self.0.audit_log(limit).await?)
    }
    async fn audit_verify(&self) -> Result<AuditVerifyReport, ApiError> {
        Ok(self.0.audit_verify().await?)
    }
    fn events(&self) -> tokio::sync::broadcast::Receiver<ClusterEvent> {
        self.0.events()
    }
    fn draining(&self) -> Option<u64> {
        self.0.draining()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StorageError;
    use plexi_util::types::{OperationStatus, UpdateType};

    /// Each error gets the status and code the API has always given it.
    #[test]
    fn every_error_keeps_its_status_and_code() {
        let v = |s: &str| semver::Version::parse(s).unwrap();
        let id = || "op-1".to_string();
        let cases: Vec<(UpdateError, u16, &str)> = vec![
            (
                UpdateError::NotFound { operation_id: id() },
                404,
                "not_found",
            ),
            (
                UpdateError::NotExecutable {
                    operation_id: id(),
                    status: OperationStatus::Completed,
                },
                409,
                "not_executable",
            ),
            (
                UpdateError::NotExecuted { operation_id: id() },
                409,
                "not_executed",
            ),
            (
                UpdateError::OtherOperationRunning {
                    operation_ids: vec![id()],
                },
                409,
                "operation_in_progress",
            ),
            (
                UpdateError::InvalidVersion {
                    version: "x".into(),
                    reason: "r".into(),
                },
                400,
                "invalid_version",
            ),
            (
                UpdateError::ReleaseNotPublished {
                    version: v("1.0.0"),
                },
                400,
                "release_not_published",
            ),
            (
                UpdateError::UnknownNodes {
                    nodes: vec!["a".into()],
                },
                400,
                "unknown_nodes",
            ),
            (
                UpdateError::NodesNotAlive {
                    nodes: vec!["a".into()],
                },
                400,
                "nodes_not_alive",
            ),
            (
                UpdateError::NodesBusy {
                    nodes: vec![(
                        "a".into(),
                        crate::updates::ops::Busy {
                            operation_id: id(),
                            status: OperationStatus::Running,
                        },
                    )],
                },
                409,
                "operation_in_progress",
            ),
            (
                UpdateError::UpdateTypeMismatch {
                    update_type: UpdateType::Upgrade,
                    target: v("1.0.0"),
                    misfits: vec!["a runs 1.0.0".into()],
                },
                400,
                "update_type_mismatch",
            ),
            (
                UpdateError::NothingToUpdate {
                    update_type: UpdateType::Downgrade,
                    target: v("1.0.0"),
                },
                400,
                "nothing_to_update",
            ),
            (
                UpdateError::BreakingChanges {
                    changes: vec!["release 2.0.0 is marked breaking".into()],
                },
                409,
                "breaking_changes",
            ),
            (
                UpdateError::InvalidMaintenanceTimeout {
                    seconds: 0,
                    max_seconds: 604_800,
                },
                400,
                "invalid_timeout",
            ),
            (
                ReleaseError::Untrusted("ab".into()).into(),
                400,
                "untrusted_release_key",
            ),
            (
                ReleaseError::BadSignature.into(),
                400,
                "bad_release_signature",
            ),
            (
                ReleaseError::HashMismatch.into(),
                400,
                "release_hash_mismatch",
            ),
            (
                ReleaseError::Replay("1.0.0".into()).into(),
                409,
                "release_replay",
            ),
            (
                ReleaseError::Malformed("m".into()).into(),
                400,
                "invalid_release",
            ),
            (
                UpdateError::ReleaseBinaryMissing {
                    binary_id: "release.1.0.0.bin".into(),
                },
                400,
                "release_binary_missing",
            ),
            (
                UpdateError::CorruptManifest {
                    data_id: "release.1.0.0.manifest".into(),
                    reason: "eof".into(),
                },
                503,
                "corrupt_manifest",
            ),
            (
                UpdateError::AuditUnavailable {
                    reason: "gone".into(),
                },
                503,
                "audit_unavailable",
            ),
            // Storage errors keep the storage mapping.
            (
                StorageError::NotFound {
                    data_id: "k".into(),
                }
                .into(),
                404,
                "not_found",
            ),
            (StorageError::NoReplicas.into(), 503, "no_replicas"),
        ];
        for (e, status, code) in cases {
            let message = e.to_string();
            let a = ApiError::from(e);
            assert_eq!((a.status.as_u16(), a.code), (status, code), "{message}");
            assert_eq!(a.message, message);
        }
    }

    #[test]
    fn messages_name_what_is_wrong() {
        let e = UpdateError::NodesBusy {
            nodes: vec![(
                "s2".into(),
                crate::updates::ops::Busy {
                    operation_id: "op-1".into(),
                    status: OperationStatus::Running,
                },
            )],
        };
        assert_eq!(
            ApiError::from(e).message,
            "nodes already in an unfinished operation: s2 (operation op-1, running)"
        );
        let e = UpdateError::InvalidMaintenanceTimeout {
            seconds: 0,
            max_seconds: 604_800,
        };
        assert_eq!(
            ApiError::from(e).message,
            "timeout_seconds must be 1..=604800"
        );
    }
}
