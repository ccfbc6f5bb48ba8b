//! The update operations' API on any node: plan, execute, status,
//! rollback, active, history and maintenance mode, over the replicated
//! state ([`super::state`]) that the engines act on.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use plexi_api::model::{
    LeaseView, Maintenance, MaintenanceRequest, NodeUpdateStatus, PlanRequest, UpdateList,
    UpdateOperation,
};
use plexi_api::ApiError;
use plexi_util::types::{NodeId, OperationStatus, UpdateStrategy};

use super::engine::Engine;
use super::ops::{self, Mark, OpRecord, PlanMember, ReleaseInfo};
use super::release;
use super::state;
use plexi_util::clock::{rfc3339_ms, wall_ms};

fn plan_error(e: ops::PlanError) -> ApiError {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    ApiError::new(status, e.code, e.message)
}

/// The operation as the API shows it.
pub fn view(r: &OpRecord, now: u64) -> UpdateOperation {
    let node_statuses = r
        .plan
        .target_nodes
        .iter()
        .map(|n| {
            let p = r.nodes.get(n).cloned().unwrap_or_else(|| {
                ops::NodeProgress::pending(
                    r.plan
                        .from_versions
                        .get(n)
                        .map(|s| s.as_str())
                        .unwrap_or(""),
                    &r.plan.target_version,
                )
            });
            let (status, error) = r.node_status(n.as_str());
            (
                n.clone(),
                NodeUpdateStatus {
                    node_id: n.clone(),
                    status,
                    current_phase: p.phase,
                    progress_percentage: p.progress,
                    from_version: p.from_version.clone(),
                    to_version: p.to_version.clone(),
                    started_at: p.started_at_ms.map(rfc3339_ms),
                    completed_at: p.completed_at_ms.map(rfc3339_ms),
                    error_message: error,
                    rollback_available: p.rollback_available,
                    phase_seconds: p
                        .phase_ms
                        .iter()
                        .map(|(phase, ms)| (*phase, *ms as f64 / 1000.0))
                        .collect(),
                },
            )
        })
        .collect();
    let leases = r
        .nodes
        .iter()
        .filter_map(|(n, p)| {
            let l = p.lease.as_ref()?;
            (l.valid_until_ms > now).then(|| LeaseView {
                slot: l.slot,
                holder: n.clone(),
                epoch: l.epoch,
                operation_id: r.plan.operation_id.clone(),
                remaining_ms: l.valid_until_ms - now,
            })
        })
        .collect();
    let status = r.status(now);
    UpdateOperation {
        operation_id: r.plan.operation_id.clone(),
        status,
        target_version: r.plan.target_version.clone(),
        update_type: r.plan.update_type,
        strategy: r.plan.strategy,
        target_nodes: r.plan.target_nodes.clone(),
        batches: r.plan.batches.clone(),
        current_phase: r.current_phase(now),
        overall_progress: r.overall_progress(),
        estimated_completion: r.estimated_completion_ms(now).map(rfc3339_ms),
        breaking_changes: r.plan.breaking_changes.clone(),
        warnings: r.plan.warnings.clone(),
        node_statuses,
        force: r.plan.force,
        created_at: rfc3339_ms(r.plan.created_at_ms),
        created_by: r.plan.created_by.clone(),
        started_at: r.executed.as_ref().map(|m| rfc3339_ms(m.at_ms)),
        completed_at: if r.is_final(now) {
            r.finished_at_ms().map(rfc3339_ms)
        } else {
            None
        },
        halted_reason: r.halted.as_ref().map(|m| m.reason.clone()),
        leases,
    }
}

fn maintenance_view(m: &state::MaintenanceState, now: u64) -> Maintenance {
    let active = m.active(now);
    Maintenance {
        enabled: active,
        reason: m.reason.clone(),
        set_by: m.set_by.clone(),
        started_at: active.then(|| rfc3339_ms(m.started_at_ms)),
        expires_at: active.then(|| rfc3339_ms(m.expires_at_ms)),
    }
}

impl Engine {
    fn find(&self, id: &str) -> Result<OpRecord, ApiError> {
        self.state
            .get(id)
            .ok_or_else(|| ApiError::not_found(format!("no update operation {id}")))
    }

    /// Trusted, published releases (their manifests verify).
    async fn trusted_releases(&self) -> Vec<ReleaseInfo> {
        let mut out = Vec::new();
        for id in crate::storage::report::live_ids(&self.storage, "release.", ".manifest").await {
            let Ok(obj) = self
                .storage
                .get(&id, Some(plexi_util::types::Consistency::Eventual))
                .await
            else {
                continue;
            };
            let Ok(signed) = serde_json::from_slice::<plexi_api::model::SignedRelease>(&obj.bytes)
            else {
                continue;
            };
            if release::verify(&signed, &self.trusted).is_err() {
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

    pub async fn api_plan(
        &self,
        req: PlanRequest,
        actor: &str,
    ) -> Result<UpdateOperation, ApiError> {
        let releases = self.trusted_releases().await;
        let members: Vec<PlanMember> = self
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
        let all = self.state.all();
        let busy: BTreeMap<NodeId, String> = all
            .iter()
            .filter(|r| r.executed.is_some() && !r.is_final(now))
            .flat_map(|r| {
                let what = format!("operation {}, {}", r.plan.operation_id, r.status(now));
                r.plan
                    .target_nodes
                    .iter()
                    .map(move |n| (n.clone(), what.clone()))
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
            settings: self.settings.clone(),
            measured_node_seconds: measured,
            busy: &busy,
        })
        .map_err(plan_error)?;
        let rec = OpRecord::new(plan);
        let id = rec.plan.operation_id.clone();
        self.state.merge(&rec);
        self.push(&id).await;
        self.audit_as(
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
        Ok(view(&rec, now))
    }

    pub async fn api_execute(&self, id: &str, actor: &str) -> Result<UpdateOperation, ApiError> {
        let rec = self.find(id)?;
        let now = wall_ms();
        match rec.status(now) {
            OperationStatus::Planned => {}
            OperationStatus::Running => return Ok(view(&rec, now)),
            other => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "not_executable",
                    format!("operation {id} is {other}"),
                ))
            }
        }
        let busy: Vec<String> = self
            .state
            .all()
            .iter()
            .filter(|r| r.plan.operation_id != id && r.executed.is_some() && !r.is_final(now))
            .map(|r| r.plan.operation_id.clone())
            .collect();
        if !busy.is_empty() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "operation_in_progress",
                format!("another update operation is running: {}", busy.join(", ")),
            ));
        }
        if rec.plan.strategy == UpdateStrategy::Parallel {
            let m = self.state.next_maintenance(
                true,
                &format!("parallel update {id}"),
                actor,
                rec.plan.settings.maintenance_timeout_s,
                Some(id.to_string()),
            );
            self.state.merge_maintenance(&m);
            state::push(&self.state, &self.p2p, None).await;
            self.audit_as(
                actor,
                "maintenance.on",
                Some(id),
                serde_json::json!({"reason": m.reason, "expires_at": rfc3339_ms(m.expires_at_ms)}),
            )
            .await;
        }
        let actor_s = actor.to_string();
        let rec = self
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
            .ok_or_else(|| ApiError::not_found(format!("no update operation {id}")))?;
        self.push(id).await;
        self.audit_as(actor, "update.execute", Some(id), serde_json::json!({}))
            .await;
        Ok(view(&rec, now))
    }

    pub fn api_status(&self, id: &str) -> Result<UpdateOperation, ApiError> {
        Ok(view(&self.find(id)?, wall_ms()))
    }

    pub async fn api_rollback(&self, id: &str, actor: &str) -> Result<UpdateOperation, ApiError> {
        let rec = self.find(id)?;
        let now = wall_ms();
        if rec.executed.is_none() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "not_executed",
                format!("operation {id} was never executed; nothing to roll back"),
            ));
        }
        if rec.rollback.is_some() {
            return Ok(view(&rec, now)); // repeating is harmless
        }
        let actor_s = actor.to_string();
        let rec = self
            .state
            .update(id, |r| {
                r.rollback = Some(Mark {
                    at_ms: now,
                    by: actor_s,
                    reason: "requested".into(),
                })
            })
            .ok_or_else(|| ApiError::not_found(format!("no update operation {id}")))?;
        self.push(id).await;
        self.metrics_rollback_requested();
        self.audit_as(actor, "update.rollback", Some(id), serde_json::json!({}))
            .await;
        Ok(view(&rec, now))
    }

    pub fn api_active(&self) -> UpdateList {
        let now = wall_ms();
        let mut operations: Vec<UpdateOperation> = self
            .state
            .all()
            .iter()
            .filter(|r| !r.is_final(now))
            .map(|r| view(r, now))
            .collect();
        operations.sort_by(|a, b| b.created_at.cmp(&a.created_at));
        UpdateList { operations }
    }

    pub fn api_history(&self, limit: usize) -> UpdateList {
        let now = wall_ms();
        let mut all = self.state.all();
        all.sort_by_key(|r| std::cmp::Reverse(r.plan.created_at_ms));
        UpdateList {
            operations: all.iter().take(limit).map(|r| view(r, now)).collect(),
        }
    }

    pub fn api_maintenance(&self) -> Maintenance {
        maintenance_view(&self.state.maintenance(), wall_ms())
    }

    pub async fn api_set_maintenance(
        &self,
        req: MaintenanceRequest,
        actor: &str,
    ) -> Result<Maintenance, ApiError> {
        let timeout = req
            .timeout_seconds
            .unwrap_or(self.settings.maintenance_timeout_s);
        if req.enabled && !(1..=7 * 86_400).contains(&timeout) {
            return Err(ApiError::bad_request(
                "invalid_timeout",
                "timeout_seconds must be 1..=604800",
            ));
        }
        let reason = req.reason.unwrap_or_else(|| "operator".into());
        let m = self
            .state
            .next_maintenance(req.enabled, &reason, actor, timeout, None);
        self.state.merge_maintenance(&m);
        state::push(&self.state, &self.p2p, None).await;
        let action = if req.enabled {
            "maintenance.on"
        } else {
            "maintenance.off"
        };
        self.audit_as(
            actor,
            action,
            None,
            serde_json::json!({"reason": reason, "timeout_seconds": timeout}),
        )
        .await;
        Ok(maintenance_view(&m, wall_ms()))
    }
}
