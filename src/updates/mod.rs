//! The update side of the API that exists today: publishing and listing
//! signed releases, stored as objects in the cluster's own storage. Every
//! publish and refusal is logged and recorded in the audit log
//! (`crate::audit`) with its actor.

pub mod engine;
pub mod leases;
pub mod ops;
mod plan;
pub mod release;
pub mod state;

use std::sync::Arc;

use axum::http::StatusCode;
use plexi_api::model::PutRequest;
use plexi_api::model::{
    AuditList, ClusterEvent, Maintenance, MaintenanceRequest, PlanRequest, ReleaseList,
    ReleaseView, SignedRelease, UpdateList, UpdateOperation,
};
use plexi_api::ApiError;

use crate::audit::AuditLog;
use crate::storage::{report, Storage, StorageError};
use plexi_util::clock::rfc3339_ms;
use plexi_util::types::Consistency;
use release::ReleaseError;

pub struct UpdatesApi {
    pub storage: Arc<Storage>,
    /// `cluster_updates.release_public_keys`.
    pub trusted: Vec<String>,
    pub events: tokio::sync::broadcast::Sender<ClusterEvent>,
    /// Where publishes, refusals and update actions are recorded.
    pub audit: Arc<AuditLog>,
    pub engine: Arc<engine::Engine>,
}

fn refusal(e: &ReleaseError) -> ApiError {
    let code = match e {
        ReleaseError::Untrusted(_) => "untrusted_release_key",
        ReleaseError::BadSignature => "bad_release_signature",
        ReleaseError::HashMismatch => "release_hash_mismatch",
        ReleaseError::Replay(_) => "release_replay",
        ReleaseError::Malformed(_) => "invalid_release",
    };
    let status = match e {
        ReleaseError::Replay(_) => StatusCode::CONFLICT,
        _ => StatusCode::BAD_REQUEST,
    };
    ApiError::new(status, code, e.to_string())
}

impl UpdatesApi {
    fn view(&self, signed: &SignedRelease) -> ReleaseView {
        let m = &signed.manifest;
        ReleaseView {
            version: m.version.clone(),
            blake3: m.blake3.clone(),
            size_bytes: m.size_bytes,
            breaking: m.breaking,
            min_compatible_version: m.min_compatible_version.clone(),
            notes: m.notes.clone(),
            created_at: rfc3339_ms(m.created_at_ms),
            public_key: signed.public_key.clone(),
            trusted: release::verify(signed, &self.trusted).is_ok(),
        }
    }

    async fn stored_manifest(&self, id: &str) -> Result<Option<SignedRelease>, ApiError> {
        match self.storage.get(id, Some(Consistency::Strong)).await {
            Ok(obj) => serde_json::from_slice(&obj.bytes)
                .map(Some)
                .map_err(|e| ApiError::unavailable("corrupt_manifest", format!("{id}: {e}"))),
            Err(StorageError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn check(&self, signed: &SignedRelease) -> Result<(), ApiError> {
        release::verify(signed, &self.trusted).map_err(|e| refusal(&e))?;
        let version = semver::Version::parse(&signed.manifest.version)
            .map_err(|e| refusal(&ReleaseError::Malformed(e.to_string())))?;
        let bin_id = release::binary_id(&version);
        let binary = match self.storage.get(&bin_id, Some(Consistency::Strong)).await {
            Ok(obj) => obj,
            Err(StorageError::NotFound { .. }) => {
                return Err(ApiError::bad_request(
                    "release_binary_missing",
                    format!("store the binary as {bin_id} first"),
                ))
            }
            Err(e) => return Err(e.into()),
        };
        release::check_binary(&signed.manifest, &binary.bytes).map_err(|e| refusal(&e))?;
        let existing = self
            .stored_manifest(&release::manifest_id(&version))
            .await?;
        release::check_not_replay(&signed.manifest, existing.as_ref().map(|s| &s.manifest))
            .map_err(|e| refusal(&e))
    }
}

#[async_trait::async_trait]
impl plexi_api::Updates for UpdatesApi {
    async fn releases(&self) -> Result<ReleaseList, ApiError> {
        let mut releases = Vec::new();
        for id in report::live_ids(&self.storage, "release.", ".manifest").await {
            match self.stored_manifest(&id).await {
                Ok(Some(signed)) => releases.push(self.view(&signed)),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(data_id = %id, error = %e, "unreadable release manifest skipped")
                }
            }
        }
        releases.sort_by(|a, b| {
            let (va, vb) = (
                semver::Version::parse(&a.version).ok(),
                semver::Version::parse(&b.version).ok(),
            );
            vb.cmp(&va)
        });
        Ok(ReleaseList { releases })
    }

    async fn publish_release(
        &self,
        signed: SignedRelease,
        actor: &str,
    ) -> Result<ReleaseView, ApiError> {
        let version = signed.manifest.version.clone();
        if let Err(e) = self.check(&signed).await {
            tracing::warn!(actor, %version, public_key = %signed.public_key, code = e.code, reason = %e.message, "release refused");
            let detail = serde_json::json!({
                "version": version,
                "public_key": signed.public_key,
                "code": e.code,
                "reason": e.message,
            });
            if let Err(ae) = self
                .audit
                .append(actor, "release.refused", None, detail)
                .await
            {
                tracing::error!(error = %ae, "release refusal not recorded in the audit log");
            }
            return Err(e);
        }
        let v = semver::Version::parse(&version).expect("checked");
        let body = serde_json::to_vec_pretty(&signed).expect("serializable");
        self.storage
            .put(PutRequest {
                data_id: release::manifest_id(&v),
                data_type: "application/json".into(),
                consistency: Some(Consistency::Strong),
                replication_factor: None,
                bytes: body.into(),
                actor: actor.to_string(),
            })
            .await?;
        tracing::info!(actor, %version, public_key = %signed.public_key, "release published");
        let detail = serde_json::json!({
            "version": version,
            "public_key": signed.public_key,
            "blake3": signed.manifest.blake3,
        });
        if let Err(e) = self
            .audit
            .append(actor, "release.publish", None, detail)
            .await
        {
            // The release is stored already; failing the call would mislead.
            tracing::error!(error = %e, "release publish not recorded in the audit log");
        }
        Ok(self.view(&signed))
    }

    async fn plan(&self, req: PlanRequest, actor: &str) -> Result<UpdateOperation, ApiError> {
        self.engine.api_plan(req, actor).await
    }
    async fn execute(&self, id: &str, actor: &str) -> Result<UpdateOperation, ApiError> {
        self.engine.api_execute(id, actor).await
    }
    async fn status(&self, id: &str) -> Result<UpdateOperation, ApiError> {
        self.engine.api_status(id)
    }
    async fn rollback(&self, id: &str, actor: &str) -> Result<UpdateOperation, ApiError> {
        self.engine.api_rollback(id, actor).await
    }
    async fn active(&self) -> Result<UpdateList, ApiError> {
        Ok(self.engine.api_active())
    }
    async fn history(&self, limit: usize) -> Result<UpdateList, ApiError> {
        Ok(self.engine.api_history(limit))
    }
    async fn maintenance(&self) -> Result<Maintenance, ApiError> {
        Ok(self.engine.api_maintenance())
    }
    async fn set_maintenance(
        &self,
        req: MaintenanceRequest,
        actor: &str,
    ) -> Result<Maintenance, ApiError> {
        self.engine.api_set_maintenance(req, actor).await
    }
    async fn audit(&self, limit: usize) -> Result<AuditList, ApiError> {
        let audit = self.audit.clone();
        tokio::task::spawn_blocking(move || audit.list(limit))
            .await
            .map_err(|e| ApiError::unavailable("audit_unavailable", e.to_string()))?
            .map_err(|e| ApiError::unavailable("audit_unavailable", e.to_string()))
    }
    fn events(&self) -> tokio::sync::broadcast::Receiver<ClusterEvent> {
        self.events.subscribe()
    }
    fn draining(&self) -> Option<u64> {
        self.engine
            .drain
            .draining
            .load(std::sync::atomic::Ordering::SeqCst)
            .then_some(engine::RETRY_AFTER_S)
    }
}
