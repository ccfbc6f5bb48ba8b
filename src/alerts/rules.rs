//! Pure: which alerts should be active now, from the facts every node holds
//! alike: the membership table (each member's signed record: usage, store
//! latency, replica health; and this node's liveness judgement), the
//! replicated update operations and maintenance mode. [`derive`] takes the
//! facts and the clock and returns the desired set; ids are deterministic
//! ([`alert_id`]), so every node names the same alert the same way.

use plexi_p2p::ReplicaCounts;
use plexi_util::clock::rfc3339_ms;
use plexi_util::types::{AlertKind, MemberStatus, NodeUpdateStatus, OperationStatus};

use crate::updates::ops::OpRecord;
use crate::updates::state::MaintenanceState;

/// A node is slow when its store latency is above this many times the
/// median of the other measured nodes ...
pub const PERFORMANCE_FACTOR: f64 = 3.0;
/// ... and above this absolute floor (µs), so that fast disks differing in
/// microseconds raise nothing.
pub const PERFORMANCE_FLOOR_US: u64 = 20_000;
/// News-like alerts (an operation completed, failed or rolled back; a node
/// failed its update after the operation ended) stay active this long
/// after their fact's time, then resolve and show under `recent`.
pub const NEWS_MS: u64 = 10 * 60 * 1000;
/// A corrupt replica found keeps `corruption_found` active this long after
/// the last one was found (scrub replaces it meanwhile).
pub const CORRUPTION_MS: u64 = 60 * 60 * 1000;
/// Most alerts derived at once (1024 members times a few kinds, plus the
/// 256 kept operations, fit well below it).
pub const MAX_ALERTS: usize = 8192;

/// One member as this node's membership table holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct MemberFact {
    pub node_id: String,
    pub peer_id: String,
    /// As this node's failure detector judges it.
    pub status: MemberStatus,
    pub incarnation: u64,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    /// 0: not measured yet.
    pub store_latency_us: u64,
    pub replica_counts: ReplicaCounts,
}

/// Thresholds from the config (`distributed_storage`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Thresholds {
    pub warn_node_usage_percentage: f64,
    pub max_node_usage_percentage: f64,
}

/// Everything [`derive`] looks at.
#[derive(Clone, Debug)]
pub struct Facts {
    /// This node's peer id: it judges no liveness of its own.
    pub local_peer: String,
    pub members: Vec<MemberFact>,
    pub ops: Vec<OpRecord>,
    pub maintenance: MaintenanceState,
    pub thresholds: Thresholds,
}

/// An alert that should be active.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub alert_id: String,
    pub kind: AlertKind,
    pub subject: String,
    pub message: String,
    /// The fact's own time, where it has one (the same on every node).
    pub raised_at_ms: Option<u64>,
}

/// blake3 of kind, subject and the fact's epoch (32 hex characters).
pub fn alert_id(kind: AlertKind, subject: &str, epoch: &str) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"plexi alert v1\0");
    h.update(kind.as_str().as_bytes());
    h.update(&[0]);
    h.update(&(subject.len() as u64).to_be_bytes());
    h.update(subject.as_bytes());
    h.update(epoch.as_bytes());
    h.finalize().to_hex()[..32].to_string()
}

fn desired(
    kind: AlertKind,
    subject: &str,
    epoch: &str,
    message: String,
    raised_at_ms: Option<u64>,
) -> Desired {
    Desired {
        alert_id: alert_id(kind, subject, epoch),
        kind,
        subject: subject.to_string(),
        message,
        raised_at_ms,
    }
}

/// The alerts that should be active at `now_ms`, sorted by id, at most
/// [`MAX_ALERTS`].
pub fn derive(facts: &Facts, now_ms: u64) -> Vec<Desired> {
    let mut out = Vec::new();
    members(facts, now_ms, &mut out);
    performance(&facts.members, &mut out);
    for op in &facts.ops {
        operation(op, now_ms, &mut out);
    }
    maintenance(&facts.maintenance, now_ms, &mut out);
    out.sort_by(|a, b| a.alert_id.cmp(&b.alert_id));
    out.dedup_by(|a, b| a.alert_id == b.alert_id);
    out.truncate(MAX_ALERTS);
    out
}

fn usage_pct(m: &MemberFact) -> Option<f64> {
    (m.capacity_bytes > 0).then(|| m.used_bytes as f64 * 100.0 / m.capacity_bytes as f64)
}

fn members(facts: &Facts, now_ms: u64, out: &mut Vec<Desired>) {
    let t = facts.thresholds;
    for m in &facts.members {
        let epoch = m.incarnation.to_string();
        let subject = m.node_id.as_str();
        let local = m.peer_id == facts.local_peer;
        match m.status {
            MemberStatus::Suspect if !local => out.push(desired(
                AlertKind::MemberSuspect,
                subject,
                &epoch,
                format!(
                    "node {subject} stopped sending heartbeats and is suspected to have failed"
                ),
                None,
            )),
            MemberStatus::Dead if !local => out.push(desired(
                AlertKind::MemberDead,
                subject,
                &epoch,
                format!("node {subject} is dead: no heartbeat within the failure timeout"),
                None,
            )),
            _ => {}
        }
        // The rest are the member's own figures: stale once it is gone.
        if !matches!(m.status, MemberStatus::Alive | MemberStatus::Suspect) {
            continue;
        }
        if let Some(pct) = usage_pct(m) {
            let (kind, limit, key) = if pct > t.max_node_usage_percentage {
                (
                    AlertKind::NodeUsageHigh,
                    t.max_node_usage_percentage,
                    "max_node_usage_percentage",
                )
            } else {
                (
                    AlertKind::NodeUsageWarning,
                    t.warn_node_usage_percentage,
                    "warn_node_usage_percentage",
                )
            };
            if pct > limit {
                out.push(desired(
                    kind,
                    subject,
                    &epoch,
                    format!("node {subject} is {pct:.0}% full, above {key} ({limit}%)"),
                    None,
                ));
            }
        }
        let h = m.replica_counts;
        if h.under_replicated_objects > 0 {
            out.push(desired(
                AlertKind::UnderReplicated,
                subject,
                &epoch,
                match h.under_replicated_objects {
                    1 => format!("1 object has fewer live replicas than its replication factor (counted by node {subject})"),
                    n => format!("{n} objects have fewer live replicas than their replication factor (counted by node {subject})"),
                },
                None,
            ));
        }
        let at = h.corrupt_found_at_ms;
        if h.corrupt_replicas > 0 && at > 0 && now_ms < at.saturating_add(CORRUPTION_MS) {
            out.push(desired(
                AlertKind::CorruptionFound,
                subject,
                &format!("{epoch}:{}", h.corrupt_replicas),
                format!(
                    "node {subject} found {} corrupt replicas since it started, the last at {}; they are replaced from healthy copies",
                    h.corrupt_replicas,
                    rfc3339_ms(at)
                ),
                Some(at),
            ));
        }
    }
}

fn median(mut v: Vec<u64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let n = v.len();
    Some(if !n.is_multiple_of(2) {
        v[n / 2] as f64
    } else {
        (v[n / 2 - 1] as f64 + v[n / 2] as f64) / 2.0
    })
}

/// A node whose store latency is above [`PERFORMANCE_FACTOR`] times the
/// median of the other measured live nodes and above
/// [`PERFORMANCE_FLOOR_US`].
fn performance(members: &[MemberFact], out: &mut Vec<Desired>) {
    let measured: Vec<&MemberFact> = members
        .iter()
        .filter(|m| matches!(m.status, MemberStatus::Alive | MemberStatus::Suspect))
        .filter(|m| m.store_latency_us > 0)
        .collect();
    for m in &measured {
        let others: Vec<u64> = measured
            .iter()
            .filter(|o| o.peer_id != m.peer_id)
            .map(|o| o.store_latency_us)
            .collect();
        let Some(med) = median(others) else { continue };
        let us = m.store_latency_us;
        if us > PERFORMANCE_FLOOR_US && us as f64 > PERFORMANCE_FACTOR * med {
            let subject = m.node_id.as_str();
            out.push(desired(
                AlertKind::PerformanceDegraded,
                subject,
                &m.incarnation.to_string(),
                format!(
                    "node {subject} stores in {:.1} ms, more than {PERFORMANCE_FACTOR}x the other nodes' median of {:.1} ms",
                    us as f64 / 1000.0,
                    med / 1000.0
                ),
                None,
            ));
        }
    }
}

fn operation(op: &OpRecord, now_ms: u64, out: &mut Vec<Desired>) {
    let id = op.plan.operation_id.as_str();
    let target = &op.plan.target_version;
    let status = op.status(now_ms);
    let fresh = |at: u64| now_ms < at.saturating_add(NEWS_MS);
    if let Some(executed) = &op.executed {
        if !status.is_final() {
            out.push(desired(
                AlertKind::UpdateStarted,
                id,
                id,
                format!(
                    "update {id} to {target} is {status} ({} strategy, {} nodes)",
                    op.plan.strategy,
                    op.plan.target_nodes.len()
                ),
                Some(executed.at_ms),
            ));
        }
    }
    for n in &op.plan.target_nodes {
        let (st, error) = op.node_status(n.as_str());
        if st != NodeUpdateStatus::Failed {
            continue;
        }
        let at = op
            .failed_nodes
            .get(n)
            .map(|m| m.at_ms)
            .or_else(|| op.nodes.get(n).and_then(|p| p.completed_at_ms))
            .or_else(|| op.halted.as_ref().map(|m| m.at_ms))
            .unwrap_or(op.plan.created_at_ms);
        if status.is_final() && !fresh(at) {
            continue;
        }
        out.push(desired(
            AlertKind::UpdateNodeFailed,
            n.as_str(),
            id,
            format!(
                "node {n} failed its update to {target} in operation {id}: {}",
                error.unwrap_or_else(|| "no reason given".into())
            ),
            Some(at),
        ));
    }
    let kind = match status {
        OperationStatus::Completed => AlertKind::UpdateCompleted,
        OperationStatus::Failed => AlertKind::UpdateFailed,
        OperationStatus::RolledBack => AlertKind::UpdateRolledBack,
        _ => return,
    };
    let at = op
        .finished_at_ms()
        .or_else(|| op.rollback_started_ms())
        .unwrap_or(op.plan.created_at_ms);
    if fresh(at) {
        out.push(desired(
            kind,
            id,
            id,
            format!("update {id} to {target} is {status}"),
            Some(at),
        ));
    }
}

fn maintenance(m: &MaintenanceState, now_ms: u64, out: &mut Vec<Desired>) {
    if !m.active(now_ms) {
        return;
    }
    let reason = if m.reason.is_empty() {
        String::new()
    } else {
        format!(": {}", m.reason)
    };
    out.push(desired(
        AlertKind::MaintenanceOn,
        "cluster",
        &m.started_at_ms.to_string(),
        format!(
            "maintenance mode is on (set by {}, ends {}){reason}; no update operation starts",
            if m.set_by.is_empty() { "-" } else { &m.set_by },
            rfc3339_ms(m.expires_at_ms)
        ),
        Some(m.started_at_ms),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, status: MemberStatus) -> MemberFact {
        MemberFact {
            node_id: name.into(),
            peer_id: format!("peer-{name}"),
            status,
            incarnation: 3,
            capacity_bytes: 1000,
            used_bytes: 100,
            store_latency_us: 1000,
            replica_counts: ReplicaCounts::default(),
        }
    }

    fn facts(members: Vec<MemberFact>) -> Facts {
        Facts {
            local_peer: "peer-s1".into(),
            members,
            ops: vec![],
            maintenance: MaintenanceState::default(),
            thresholds: Thresholds {
                warn_node_usage_percentage: 75.0,
                max_node_usage_percentage: 85.0,
            },
        }
    }

    fn kinds(d: &[Desired]) -> Vec<(AlertKind, &str)> {
        let mut v: Vec<(AlertKind, &str)> =
            d.iter().map(|d| (d.kind, d.subject.as_str())).collect();
        v.sort();
        v
    }

    #[test]
    fn a_healthy_cluster_has_no_alerts() {
        let f = facts(vec![
            member("s1", MemberStatus::Alive),
            member("s2", MemberStatus::Alive),
        ]);
        assert!(derive(&f, 1).is_empty());
    }

    #[test]
    fn liveness_usage_and_replica_counts_raise_their_kinds() {
        let mut s2 = member("s2", MemberStatus::Dead);
        s2.used_bytes = 990; // stale figures of a dead node raise nothing
        let mut s3 = member("s3", MemberStatus::Suspect);
        s3.used_bytes = 800;
        let mut s4 = member("s4", MemberStatus::Alive);
        s4.used_bytes = 900;
        s4.replica_counts = ReplicaCounts {
            under_replicated_objects: 7,
            corrupt_replicas: 2,
            corrupt_found_at_ms: 500,
        };
        let gone = member("s5", MemberStatus::Left);
        let mut me = member("s1", MemberStatus::Dead);
        me.used_bytes = 0;
        let f = facts(vec![me, s2, s3, s4, gone]);
        let d = derive(&f, 1000);
        assert_eq!(
            kinds(&d),
            vec![
                (AlertKind::MemberSuspect, "s3"),
                (AlertKind::MemberDead, "s2"),
                (AlertKind::NodeUsageHigh, "s4"),
                (AlertKind::NodeUsageWarning, "s3"),
                (AlertKind::UnderReplicated, "s4"),
                (AlertKind::CorruptionFound, "s4"),
            ]
        );
        let under = d
            .iter()
            .find(|d| d.kind == AlertKind::UnderReplicated)
            .unwrap();
        assert!(under.message.starts_with("7 objects"), "{}", under.message);
        // Corruption is news for CORRUPTION_MS after the last find.
        let later = derive(&f, 500 + CORRUPTION_MS);
        assert!(!later.iter().any(|d| d.kind == AlertKind::CorruptionFound));
    }

    #[test]
    fn ids_are_deterministic_and_change_with_the_epoch() {
        let f = facts(vec![member("s2", MemberStatus::Dead)]);
        let a = derive(&f, 1);
        assert_eq!(a, derive(&f, 99), "the same facts name the same alert");
        let mut back = f.clone();
        back.members[0].incarnation = 4;
        back.members[0].status = MemberStatus::Alive;
        assert!(derive(&back, 1).is_empty());
        back.members[0].status = MemberStatus::Dead;
        assert_ne!(derive(&back, 1)[0].alert_id, a[0].alert_id);
    }

    #[test]
    fn a_slow_node_is_judged_against_the_median_of_the_others() {
        let mut ms = vec![
            member("s1", MemberStatus::Alive),
            member("s2", MemberStatus::Alive),
            member("s3", MemberStatus::Alive),
        ];
        ms[2].store_latency_us = 2_900; // 2.9x and under the floor: fine
        assert!(derive(&facts(ms.clone()), 1).is_empty());
        ms[2].store_latency_us = PERFORMANCE_FLOOR_US + 1;
        assert_eq!(
            kinds(&derive(&facts(ms.clone()), 1)),
            vec![(AlertKind::PerformanceDegraded, "s3")]
        );
        // All equally slow: nobody is degraded.
        for m in &mut ms {
            m.store_latency_us = 50_000;
        }
        assert!(derive(&facts(ms), 1).is_empty());
    }

    #[test]
    fn maintenance_is_active_until_it_ends() {
        let mut f = facts(vec![]);
        f.maintenance = MaintenanceState {
            enabled: true,
            started_at_ms: 100,
            expires_at_ms: 1000,
            ..Default::default()
        };
        let d = derive(&f, 500);
        assert_eq!(kinds(&d), vec![(AlertKind::MaintenanceOn, "cluster")]);
        assert_eq!(d[0].raised_at_ms, Some(100));
        assert!(derive(&f, 1000).is_empty(), "past its own timeout");
    }
}
