//! How the API shows the replicated update state: an [`OpRecord`] as an
//! `UpdateOperation`, the maintenance register as `Maintenance`. Pure; the
//! clock is passed in.

use plexi_api::model::{LeaseView, Maintenance, NodeUpdateStatus, UpdateOperation};

use super::ops::{NodeProgress, OpRecord};
use super::state::MaintenanceState;
use plexi_util::clock::rfc3339_ms;

/// The operation as the API shows it.
pub fn operation(r: &OpRecord, now: u64) -> UpdateOperation {
    let node_statuses = r
        .plan
        .target_nodes
        .iter()
        .map(|n| {
            let p = r.nodes.get(n).cloned().unwrap_or_else(|| {
                NodeProgress::pending(
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
                    staged_at: p.staged_at_ms.map(rfc3339_ms),
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

pub fn maintenance(m: &MaintenanceState, now: u64) -> Maintenance {
    let active = m.active(now);
    Maintenance {
        enabled: active,
        reason: m.reason.clone(),
        set_by: m.set_by.clone(),
        started_at: active.then(|| rfc3339_ms(m.started_at_ms)),
        expires_at: active.then(|| rfc3339_ms(m.expires_at_ms)),
    }
}
