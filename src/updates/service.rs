//! What the API asks of updates, on any node: publishing and listing signed
//! releases (objects in the cluster's own storage); planning, executing,
//! rolling back and listing operations, over the replicated state
//! ([`super::state`]) that every node's engine acts on; maintenance mode;
//! the audit log. Every change and every refused release is logged and
//! recorded in the audit log with its actor. Errors are [`UpdateError`]s;
//! nothing here knows HTTP.

use std::collections::BTreeMap;
use std::sync::Arc;

use plexi_api::model::{
    AuditList, AuditVerifyReport, ClusterEvent, Maintenance, MaintenanceRequest, PlanRequest,
    PutRequest, ReleaseList, ReleaseView, SignedRelease, UpdateList, UpdateOperation,
};
use plexi_util::clock::{rfc3339_ms, wall_ms};
use plexi_util::types::{Consistency, NodeId, OperationStatus, UpdateStrategy};
use tokio::sync::broadcast;

use super::engine::{self, Engine};
use super::error::UpdateError;
use super::ops::{self, Busy, Mark, OpRecord, PlanMember, ReleaseInfo};
use super::release::{self, ReleaseError};
use super::state;
use super::view;
use crate::storage::{report, StorageError};

/// Longest maintenance mode an operator may ask for (7 days, as
/// `maintenance_mode_timeout_seconds`).
pub use plexi_util::limits::MAX_MAINTENANCE_SECONDS;

pub struct UpdateService {
    /// This node's engine: its storage, trusted keys, audit log, replicated
    /// update state and settings are the service's too.
    engine: Arc<Engine>,
    /// The node's event stream (updates, audit, membership...).
    events: broadcast::Sender<ClusterEvent>,
}

impl UpdateService {
    pub fn new(engine: Arc<Engine>, events: broadcast::Sender<ClusterEvent>) -> Self {
        UpdateService { engine, events }
    }

    // Releases.

    fn release_view(&self, signed: &SignedRelease) -> ReleaseView {
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
            trusted: release::verify(signed, &self.engine.trusted).is_ok(),
        }
    }

    /// The manifest stored as `id`, if there is one.
    async fn stored_manifest(&self, id: &str) -> Result<Option<SignedRelease>, UpdateError> {
        match self.engine.storage.get(id, Some(Consistency::Strong)).await {
            Ok(obj) => serde_json::from_slice(&obj.bytes).map(Some).map_err(|e| {
                UpdateError::CorruptManifest {
                    data_id: id.to_string(),
                    reason: e.to_string(),
                }
            }),
            Err(StorageError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether `signed` may be published: a trusted signer, a valid
    /// signature, the stored binary it describes, and not older than the
    /// manifest already published for its version.
    async fn check(&self, signed: &SignedRelease) -> Result<(), UpdateError> {
        release::verify(signed, &self.engine.trusted)?;
        let version = semver::Version::parse(&signed.manifest.version)
            .map_err(|e| ReleaseError::Malformed(e.to_string()))?;
        let bin_id = release::binary_id(&version);
        let binary = match self
            .engine
            .storage
            .get(&bin_id, Some(Consistency::Strong))
            .await
        {
            Ok(obj) => obj,
            Err(StorageError::NotFound { .. }) => {
                return Err(UpdateError::ReleaseBinaryMissing { binary_id: bin_id })
            }
            Err(e) => return Err(e.into()),
        };
        release::check_binary(&signed.manifest, &binary.bytes)?;
        let existing = self
            .stored_manifest(&release::manifest_id(&version))
            .await?;
        release::check_not_replay(&signed.manifest, existing.as_ref().map(|s| &s.manifest))?;
        Ok(())
    }

    /// Published releases, newest version first (unreadable manifests are
    /// logged and left out).
    pub async fn releases(&self) -> ReleaseList {
        let mut releases = Vec::new();
        for id in report::live_ids(&self.engine.storage, "release.", ".manifest").await {
            match self.stored_manifest(&id).await {
                Ok(Some(signed)) => releases.push(self.release_view(&signed)),
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
        ReleaseList { releases }
    }

    /// Checks and stores a signed manifest; a refusal is audit-logged with
    /// its code and reason.
    pub async fn publish_release(
        &self,
        signed: SignedRelease,
        actor: &str,
    ) -> Result<ReleaseView, UpdateError> {
        let version = signed.manifest.version.clone();
        if let Err(e) = self.check(&signed).await {
            tracing::warn!(actor, %version, public_key = %signed.public_key, code = e.code(), reason = %e, "release refused");
            let detail = serde_json::json!({
                "version": version,
                "public_key": signed.public_key,
                "code": e.code(),
                "reason": e.to_string(),
            });
            if let Err(ae) = self
                .engine
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
        self.engine
            .storage
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
            .engine
            .audit
            .append(actor, "release.publish", None, detail)
            .await
        {
            // The release is stored already; failing the call would mislead.
            tracing::error!(error = %e, "release publish not recorded in the audit log");
        }
        Ok(self.release_view(&signed))
    }

    /// Trusted, published releases (their manifests verify), as planning
    /// needs them.
    async fn trusted_releases(&self) -> Vec<ReleaseInfo> {
        let storage = &self.engine.storage;
        let mut out = Vec::new();
        for id in report::live_ids(storage, "release.", ".manifest").await {
            let Ok(obj) = storage.get(&id, Some(Consistency::Eventual)).await else {
                continue;
            };
            let Ok(signed) = serde_json::from_slice::<SignedRelease>(&obj.bytes) else {
                continue;
            };
            if release::verify(&signed, &self.engine.trusted).is_err() {
                continue;
            }
            let m = &signed.manifest;
            let Ok(version) = semver::Version::parse(&m.version) else {
                continue;
            };
            out.push(ReleaseInfo {
                version,
                blake3: m.blake3.clone(),
                breaking: m.breaking,
                min_compatible_version: m
                    .min_compatible_version
                    .as_deref()
                    .and_then(|v| semver::Version::parse(v).ok()),
            });
        }
        out
    }

    // Operations.

    fn find(&self, id: &str) -> Result<OpRecord, UpdateError> {
        self.engine.state.get(id).ok_or_else(|| not_found(id))
    }

    /// Validates the request against the cluster (see [`ops::make_plan`])
    /// and stores the operation, `planned`, on every node.
    pub async fn plan(
        &self,
        req: PlanRequest,
        actor: &str,
    ) -> Result<UpdateOperation, UpdateError> {
        let e = &self.engine;
        let releases = self.trusted_releases().await;
        let members: Vec<PlanMember> = e
            .p2p
            .members()
            .into_iter()
            .map(|m| PlanMember {
                name: m.record.state.name.clone().into(),
                peer_id: m.record.state.peer_id.clone(),
                version: m.record.state.version.clone(),
                status: m.status,
            })
            .collect();
        let now = wall_ms();
        let all = e.state.all();
        let busy: BTreeMap<NodeId, Busy> = all
            .iter()
            .filter(|r| r.executed.is_some() && !r.is_final(now))
            .flat_map(|r| {
                let busy = Busy {
                    operation_id: r.plan.operation_id.clone(),
                    status: r.status(now),
                };
                r.plan
                    .target_nodes
                    .iter()
                    .map(move |n| (n.clone(), busy.clone()))
            })
            .collect();
        let measured = all
            .iter()
            .filter(|r| r.status(now) == OperationStatus::Completed)
            .max_by_key(|r| r.plan.created_at_ms)
            .and_then(|r| r.measured_node_seconds());
        let plan = ops::make_plan(ops::PlanInput {
            operation_id: uuid::Uuid::new_v4().to_string(),
            target_version: &req.target_version,
            update_type: req.update_type,
            strategy: req.strategy,
            target_nodes: &req.target_nodes,
            force: req.force,
            actor,
            now_ms: now,
            releases: &releases,
            members: &members,
            settings: e.settings.clone(),
            measured_node_seconds: measured,
            busy: &busy,
        })?;
        let rec = OpRecord::new(plan);
        let id = rec.plan.operation_id.clone();
        e.state.merge(&rec);
        e.push(&id).await;
        e.audit_as(
            actor,
            "update.plan",
            Some(&id),
            serde_json::json!({
                "target_version": rec.plan.target_version,
                "update_type": rec.plan.update_type,
                "strategy": rec.plan.strategy,
                "target_nodes": rec.plan.target_nodes,
                "force": rec.plan.force,
                "breaking_changes": rec.plan.breaking_changes,
            }),
        )
        .await;
        Ok(view::operation(&rec, now))
    }

    /// Starts a planned operation (a running one is answered as it is);
    /// a parallel one enters maintenance mode first.
    pub async fn execute(&self, id: &str, actor: &str) -> Result<UpdateOperation, UpdateError> {
        let e = &self.engine;
        let rec = self.find(id)?;
        let now = wall_ms();
        match rec.status(now) {
            OperationStatus::Planned => {}
            OperationStatus::Running => return Ok(view::operation(&rec, now)),
            status => {
                return Err(UpdateError::NotExecutable {
                    operation_id: id.to_string(),
                    status,
                })
            }
        }
        let others: Vec<String> = e
            .state
            .all()
            .iter()
            .filter(|r| r.plan.operation_id != id && r.executed.is_some() && !r.is_final(now))
            .map(|r| r.plan.operation_id.clone())
            .collect();
        if !others.is_empty() {
            return Err(UpdateError::OtherOperationRunning {
                operation_ids: others,
            });
        }
        if rec.plan.strategy == UpdateStrategy::Parallel {
            let m = e.state.next_maintenance(
                true,
                &format!("parallel update {id}"),
                actor,
                rec.plan.settings.maintenance_mode_timeout_seconds,
                Some(id.to_string()),
            );
            e.state.merge_maintenance(&m);
            state::push(&e.state, &e.p2p, None).await;
            e.audit_as(
                actor,
                "maintenance.on",
                Some(id),
                serde_json::json!({"reason": m.reason, "expires_at": rfc3339_ms(m.expires_at_ms)}),
            )
            .await;
        }
        let actor_s = actor.to_string();
        let rec = e
            .state
            .update(id, |r| {
                if r.executed.is_none() {
                    r.executed = Some(Mark {
                        at_ms: now,
                        by: actor_s,
                        reason: String::new(),
                    });
                }
            })
            .ok_or_else(|| not_found(id))?;
        e.push(id).await;
        e.audit_as(actor, "update.execute", Some(id), serde_json::json!({}))
            .await;
        Ok(view::operation(&rec, now))
    }

    pub fn status(&self, id: &str) -> Result<UpdateOperation, UpdateError> {
        Ok(view::operation(&self.find(id)?, wall_ms()))
    }

    /// Marks an executed operation for rollback; repeating it is harmless.
    pub async fn rollback(&self, id: &str, actor: &str) -> Result<UpdateOperation, UpdateError> {
        let e = &self.engine;
        let rec = self.find(id)?;
        let now = wall_ms();
        if rec.executed.is_none() {
            return Err(UpdateError::NotExecuted {
                operation_id: id.to_string(),
            });
        }
        if rec.rollback.is_some() {
            return Ok(view::operation(&rec, now)); // repeating is harmless
        }
        let actor_s = actor.to_string();
        let rec = e
            .state
            .update(id, |r| {
                r.rollback = Some(Mark {
                    at_ms: now,
                    by: actor_s,
                    reason: "requested".into(),
                })
            })
            .ok_or_else(|| not_found(id))?;
        e.push(id).await;
        e.metrics_rollback_requested();
        e.audit_as(actor, "update.rollback", Some(id), serde_json::json!({}))
            .await;
        Ok(view::operation(&rec, now))
    }

    /// Operations not final yet, newest first.
    pub fn active(&self) -> UpdateList {
        let now = wall_ms();
        let mut operations: Vec<UpdateOperation> = self
            .engine
            .state
            .all()
            .iter()
            .filter(|r| !r.is_final(now))
            .map(|r| view::operation(r, now))
            .collect();
        operations.sort_by(|a, b| b.created_at.cmp(&a.created_at));
        UpdateList { operations }
    }

    /// The newest `limit` operations, newest first.
    pub fn history(&self, limit: usize) -> UpdateList {
        let now = wall_ms();
        let mut all = self.engine.state.all();
        all.sort_by_key(|r| std::cmp::Reverse(r.plan.created_at_ms));
        UpdateList {
            operations: all
                .iter()
                .take(limit)
                .map(|r| view::operation(r, now))
                .collect(),
        }
    }

    // Maintenance mode, the audit log, events.

    pub fn maintenance(&self) -> Maintenance {
        view::maintenance(&self.engine.state.maintenance(), wall_ms())
    }

    /// Enters or leaves maintenance mode, cluster-wide.
    pub async fn set_maintenance(
        &self,
        req: MaintenanceRequest,
        actor: &str,
    ) -> Result<Maintenance, UpdateError> {
        let e = &self.engine;
        let timeout = req
            .timeout_seconds
            .unwrap_or(e.settings.maintenance_mode_timeout_seconds);
        if req.enabled && !(1..=MAX_MAINTENANCE_SECONDS).contains(&timeout) {
            return Err(UpdateError::InvalidMaintenanceTimeout {
                seconds: timeout,
                max_seconds: MAX_MAINTENANCE_SECONDS,
            });
        }
        let reason = req.reason.unwrap_or_else(|| "operator".into());
        let m = e
            .state
            .next_maintenance(req.enabled, &reason, actor, timeout, None);
        e.state.merge_maintenance(&m);
        state::push(&e.state, &e.p2p, None).await;
        let action = if req.enabled {
            "maintenance.on"
        } else {
            "maintenance.off"
        };
        e.audit_as(
            actor,
            action,
            None,
            serde_json::json!({"reason": reason, "timeout_seconds": timeout}),
        )
        .await;
        Ok(view::maintenance(&m, wall_ms()))
    }

    /// The newest `limit` audit entries of every chain, and whether every
    /// chain verifies.
    pub async fn audit_log(&self, limit: usize) -> Result<AuditList, UpdateError> {
        let unavailable = |e: &dyn std::fmt::Display| UpdateError::AuditUnavailable {
            reason: e.to_string(),
        };
        let audit = self.engine.audit.clone();
        tokio::task::spawn_blocking(move || audit.list(limit))
            .await
            .map_err(|e| unavailable(&e))?
            .map_err(|e| unavailable(&e))
    }

    /// Every audit chain this node holds, checked from seq 1.
    pub async fn audit_verify(&self) -> Result<AuditVerifyReport, UpdateError> {
        let unavailable = |e: &dyn std::fmt::Display| UpdateError::AuditUnavailable {
            reason: e.to_string(),
        };
        let audit = self.engine.audit.clone();
        tokio::task::spawn_blocking(move || audit.verify())
            .await
            .map_err(|e| unavailable(&e))?
            .map_err(|e| unavailable(&e))
    }

    pub fn events(&self) -> broadcast::Receiver<ClusterEvent> {
        self.events.subscribe()
    }

    /// While this node is drained for its update: the Retry-After seconds
    /// for data requests.
    pub fn draining(&self) -> Option<u64> {
        self.engine
            .drain
            .draining
            .load(std::sync::atomic::Ordering::SeqCst)
            .then_some(engine::RETRY_AFTER_S)
    }
}

fn not_found(operation_id: &str) -> UpdateError {
    UpdateError::NotFound {
        operation_id: operation_id.to_string(),
    }
}
