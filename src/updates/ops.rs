//! Update operations as replicated facts: the plan (immutable), and marks
//! that only grow (executed, halted, rollback requested, node marked failed),
//! plus each node's own progress (written only by that node, ordered by its
//! sequence number). Merging two copies is commutative, associative and
//! idempotent, so copies spread by push and anti-entropy converge.
//!
//! Pure: planning, merging, the derived statuses, whose turn it is and the
//! estimated completion. Clock and inputs are passed in.

use std::collections::{BTreeMap, BTreeSet};

use plexi_util::types::{
    MemberStatus, NodeId, NodeUpdateStatus, OperationStatus, UpdatePhase, UpdateStrategy,
    UpdateType,
};
use serde::{Deserialize, Serialize};

use super::error::UpdateError;

/// The `cluster_updates` settings every node applies alike, one field per
/// config key under the key's name (built by `From<&ClusterUpdates>` in
/// `crate::config`). Snapshotted into the plan: an operation runs with the
/// settings of the node that planned it.
///
/// In sled and on the wire the fields keep the names earlier builds wrote
/// (`max_concurrent`, `rolling_delay_s`, ...), so nodes of either build read
/// each other's operations, as they must during a rolling update to this
/// build. The config key names are accepted too, so a later build can write
/// them once no earlier build is left.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct OpSettings {
    /// Batch size of a parallel update.
    #[serde(rename = "max_concurrent", alias = "max_concurrent_updates")]
    pub max_concurrent_updates: u32,
    /// Pause between the batches of a rolling (and, after the soak, canary) update.
    #[serde(rename = "rolling_delay_s", alias = "rolling_update_delay_seconds")]
    pub rolling_update_delay_seconds: u64,
    /// A node must pass its post-update check within this; the lease TTL
    /// and the supervisor's deadline derive from it.
    #[serde(rename = "health_timeout_s", alias = "health_check_timeout_seconds")]
    pub health_check_timeout_seconds: u64,
    /// A rollback must finish within this, else the operation fails.
    #[serde(rename = "rollback_timeout_s", alias = "rollback_timeout_seconds")]
    pub rollback_timeout_seconds: u64,
    /// How long a canary update watches its first node before the rest.
    #[serde(rename = "canary_soak_s", alias = "canary_soak_seconds")]
    pub canary_soak_seconds: u64,
    /// Maintenance mode (entered by a parallel update) ends by itself after this.
    #[serde(
        rename = "maintenance_timeout_s",
        alias = "maintenance_mode_timeout_seconds"
    )]
    pub maintenance_mode_timeout_seconds: u64,
    #[serde(rename = "auto_rollback", alias = "auto_rollback_on_failure")]
    pub auto_rollback_on_failure: bool,
    #[serde(rename = "backup", alias = "backup_before_update")]
    pub backup_before_update: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Plan {
    pub operation_id: String,
    pub target_version: String,
    pub target_blake3: String,
    pub update_type: UpdateType,
    pub strategy: UpdateStrategy,
    pub target_nodes: Vec<NodeId>,
    pub batches: Vec<Vec<NodeId>>,
    /// Each target's version when planned.
    pub from_versions: BTreeMap<NodeId, String>,
    pub breaking_changes: Vec<String>,
    pub warnings: Vec<String>,
    pub force: bool,
    pub created_at_ms: u64,
    pub created_by: String,
    pub settings: OpSettings,
    /// Expected seconds for one node (from earlier operations, or a default).
    pub estimated_node_seconds: f64,
    /// Peer ids of every member when planned: lease majorities count them.
    #[serde(default)]
    pub voters: Vec<String>,
}

/// A fact with who recorded it and when; merging keeps the earliest.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Mark {
    pub at_ms: u64,
    pub by: String,
    pub reason: String,
}

fn merge_mark(a: &mut Option<Mark>, b: &Option<Mark>) -> bool {
    match (a.as_ref(), b) {
        (_, None) => false,
        (None, Some(m)) => {
            *a = Some(m.clone());
            true
        }
        (Some(x), Some(m)) => {
            if (m.at_ms, &m.by, &m.reason) < (x.at_ms, &x.by, &x.reason) {
                *a = Some(m.clone());
                true
            } else {
                false
            }
        }
    }
}

/// A lease slot a node holds, as it reports it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeaseHold {
    pub slot: u32,
    pub epoch: u64,
    /// Wall clock ms until which the holder counts on it.
    pub valid_until_ms: u64,
}

/// One node's own account of its part.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NodeProgress {
    /// Set at every change by the node to [`NodeProgress::next_seq`]; the
    /// higher wins ([`NodeProgress::supersedes`]).
    pub seq: u64,
    pub status: NodeUpdateStatus,
    pub phase: UpdatePhase,
    /// Percent; while busy, the progress of `phase`.
    pub progress: f64,
    pub from_version: String,
    pub to_version: String,
    pub started_at_ms: Option<u64>,
    pub completed_at_ms: Option<u64>,
    pub error: Option<String>,
    /// Milliseconds spent per finished phase.
    pub phase_ms: BTreeMap<UpdatePhase, u64>,
    pub rollback_available: bool,
    /// The node runs (or may run: it was switching) the target version.
    pub on_target: bool,
    pub lease: Option<LeaseHold>,
    /// Out of service (drained or restarting) since this wall-clock ms.
    pub out_of_service_since_ms: Option<u64>,
    /// When the current phase began (wall-clock ms).
    #[serde(default)]
    pub phase_since_ms: Option<u64>,
    /// When the target release was fetched, verified and installed here
    /// (wall-clock ms): by the prefetch, ahead of the node's turn, or by the
    /// turn's own fetch. An operator who executes once every node is staged
    /// spends no fetch in the roll.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staged_at_ms: Option<u64>,
}

fn cbor_bytes(v: &impl Serialize) -> Vec<u8> {
    let mut bytes = Vec::new();
    ciborium::ser::into_writer(v, &mut bytes).expect("encoding to a Vec cannot fail");
    bytes
}

impl NodeProgress {
    /// The `seq` of this node's next change at wall-clock `now_ms`: above
    /// the last one it knows, and never below the clock. A node's own copy
    /// can go back: the supervisor restores the store snapshot taken at the
    /// switch after the failed target version had pushed more changes (its
    /// post-check phase, its error). Counting on from the restored `seq`
    /// reused those numbers with other content, peers kept theirs, and the
    /// copies never converged (tests/restore.rs, the health-check variant,
    /// failed on CI so). The clock puts a change made after the restore
    /// above everything written before it.
    pub fn next_seq(&self, now_ms: u64) -> u64 {
        (self.seq + 1).max(now_ms)
    }

    /// Whether this copy replaces `other` in a merge: the higher `seq`; at
    /// equal `seq` with different content (which [`Self::next_seq`] keeps
    /// from happening, short of a clock stepped back), the greater CBOR
    /// encoding, so every node still picks the same copy.
    pub fn supersedes(&self, other: &NodeProgress) -> bool {
        match self.seq.cmp(&other.seq) {
            std::cmp::Ordering::Greater => true,
            std::cmp::Ordering::Less => false,
            std::cmp::Ordering::Equal => self != other && cbor_bytes(self) > cbor_bytes(other),
        }
    }

    pub fn pending(from: &str, to: &str) -> Self {
        NodeProgress {
            seq: 0,
            status: NodeUpdateStatus::Pending,
            phase: UpdatePhase::Waiting,
            progress: 0.0,
            from_version: from.into(),
            to_version: to.into(),
            started_at_ms: None,
            completed_at_ms: None,
            error: None,
            phase_ms: BTreeMap::new(),
            rollback_available: false,
            on_target: false,
            lease: None,
            out_of_service_since_ms: None,
            phase_since_ms: None,
            staged_at_ms: None,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct OpRecord {
    pub plan: Plan,
    pub executed: Option<Mark>,
    pub halted: Option<Mark>,
    pub rollback: Option<Mark>,
    /// Nodes others declared failed (their lease holder died).
    pub failed_nodes: BTreeMap<NodeId, Mark>,
    pub nodes: BTreeMap<NodeId, NodeProgress>,
}

impl OpRecord {
    pub fn new(plan: Plan) -> Self {
        let nodes = plan
            .target_nodes
            .iter()
            .map(|n| {
                let from = plan.from_versions.get(n).cloned().unwrap_or_default();
                (
                    n.clone(),
                    NodeProgress::pending(&from, &plan.target_version),
                )
            })
            .collect();
        OpRecord {
            plan,
            executed: None,
            halted: None,
            rollback: None,
            failed_nodes: BTreeMap::new(),
            nodes,
        }
    }

    /// Merges another copy in; returns whether anything changed.
    pub fn merge(&mut self, other: &OpRecord) -> bool {
        if other.plan.operation_id != self.plan.operation_id {
            return false;
        }
        let mut changed = merge_mark(&mut self.executed, &other.executed);
        changed |= merge_mark(&mut self.halted, &other.halted);
        changed |= merge_mark(&mut self.rollback, &other.rollback);
        for (n, m) in &other.failed_nodes {
            let mut mine = self.failed_nodes.get(n).cloned();
            if merge_mark(&mut mine, &Some(m.clone())) {
                self.failed_nodes.insert(n.clone(), mine.expect("merged"));
                changed = true;
            }
        }
        for (n, p) in &other.nodes {
            if !self.plan.target_nodes.contains(n) {
                continue;
            }
            match self.nodes.get(n) {
                Some(mine) if !p.supersedes(mine) => {}
                _ => {
                    self.nodes.insert(n.clone(), p.clone());
                    changed = true;
                }
            }
        }
        changed
    }

    /// A digest of the replicated content, for anti-entropy.
    pub fn digest(&self) -> [u8; 32] {
        *blake3::hash(&cbor_bytes(self)).as_bytes()
    }

    /// Every target finished its update.
    pub fn all_completed(&self) -> bool {
        self.batch_completed(&self.plan.target_nodes)
    }

    /// Every node of `nodes` finished its update.
    fn batch_completed(&self, nodes: &[NodeId]) -> bool {
        nodes.iter().all(|n| {
            self.nodes
                .get(n)
                .is_some_and(|p| p.status == NodeUpdateStatus::Completed)
        })
    }

    /// Rolling back: asked for, or halted (with auto-rollback) before every
    /// node completed. A halt that arrives after completion changes nothing.
    pub fn rolling_back(&self) -> bool {
        self.rollback.is_some()
            || (self.halted.is_some()
                && self.plan.settings.auto_rollback_on_failure
                && !self.all_completed())
    }

    /// Whether `node` must still be returned to its previous version.
    pub fn needs_rollback(&self, node: &str) -> bool {
        self.nodes
            .get(node)
            .map(|p| p.on_target && p.status != NodeUpdateStatus::RolledBack)
            .unwrap_or(false)
    }

    /// When the rollback started (the earlier of request and halt).
    pub fn rollback_started_ms(&self) -> Option<u64> {
        let r = self.rollback.as_ref().map(|m| m.at_ms);
        let h = self
            .halted
            .as_ref()
            .filter(|_| self.plan.settings.auto_rollback_on_failure)
            .map(|m| m.at_ms);
        match (r, h) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The operation's status at `now_ms`.
    pub fn status(&self, now_ms: u64) -> OperationStatus {
        if self.rolling_back() {
            if !self
                .plan
                .target_nodes
                .iter()
                .any(|n| self.needs_rollback(n.as_str()))
            {
                return OperationStatus::RolledBack;
            }
            let started = self.rollback_started_ms().unwrap_or(now_ms);
            if now_ms > started + self.plan.settings.rollback_timeout_seconds * 1000 {
                return OperationStatus::Failed;
            }
            return OperationStatus::RollingBack;
        }
        if self.executed.is_some() && self.all_completed() {
            return OperationStatus::Completed;
        }
        if self.halted.is_some() {
            return OperationStatus::Failed;
        }
        if self.executed.is_none() {
            return OperationStatus::Planned;
        }
        OperationStatus::Running
    }

    pub fn is_final(&self, now_ms: u64) -> bool {
        self.status(now_ms).is_final()
    }

    /// A node's status as shown: its own account, unless others declared it
    /// failed while it was still pending or updating.
    pub fn node_status(&self, node: &str) -> (NodeUpdateStatus, Option<String>) {
        let own = self.nodes.get(node);
        let status = own.map_or(NodeUpdateStatus::Pending, |p| p.status);
        let error = own.and_then(|p| p.error.clone());
        if let Some(m) = self.failed_nodes.get(node) {
            if matches!(
                status,
                NodeUpdateStatus::Pending | NodeUpdateStatus::Updating
            ) {
                return (NodeUpdateStatus::Failed, Some(m.reason.clone()));
            }
        }
        (status, error)
    }

    fn batch_of(&self, node: &str) -> Option<usize> {
        self.plan
            .batches
            .iter()
            .position(|b| b.iter().any(|n| n == node))
    }

    /// Whether `node` may start updating at `now_ms`: every earlier batch is
    /// completed and the strategy's pause after the previous batch passed.
    pub fn update_turn(&self, node: &str, now_ms: u64) -> bool {
        if self.executed.is_none() || self.halted.is_some() || self.rolling_back() {
            return false;
        }
        let Some(b) = self.batch_of(node) else {
            return false;
        };
        if b == 0 {
            return true;
        }
        if !self.plan.batches[..b]
            .iter()
            .all(|earlier| self.batch_completed(earlier))
        {
            return false;
        }
        let last_done = self.plan.batches[b - 1]
            .iter()
            .filter_map(|n| self.nodes.get(n)?.completed_at_ms)
            .max()
            .unwrap_or(0);
        now_ms >= last_done + self.pause_before_seconds(b) * 1000
    }

    /// The strategy's pause between the end of batch `b - 1` and batch `b`.
    fn pause_before_seconds(&self, b: usize) -> u64 {
        let s = &self.plan.settings;
        match self.plan.strategy {
            UpdateStrategy::Parallel => 0,
            UpdateStrategy::Canary if b == 1 => s.canary_soak_seconds,
            UpdateStrategy::Canary | UpdateStrategy::Rolling => s.rolling_update_delay_seconds,
        }
    }

    /// Whether `node` may roll back now: rollback runs in reverse update
    /// order, a batch together, so every later batch must be done.
    pub fn rollback_turn(&self, node: &str) -> bool {
        if !self.rolling_back() || !self.needs_rollback(node) {
            return false;
        }
        let Some(b) = self.batch_of(node) else {
            return false;
        };
        self.plan.batches[b + 1..]
            .iter()
            .flatten()
            .all(|n| !self.needs_rollback(n.as_str()))
    }

    /// Slots this operation's strategy allows at once.
    pub fn slots(&self) -> u32 {
        match self.plan.strategy {
            UpdateStrategy::Parallel => self.plan.settings.max_concurrent_updates.max(1),
            UpdateStrategy::Rolling | UpdateStrategy::Canary => 1,
        }
    }

    /// Measured seconds per node so far (completed nodes), if any.
    pub fn measured_node_seconds(&self) -> Option<f64> {
        let d: Vec<f64> = self
            .nodes
            .values()
            .filter(|p| p.status == NodeUpdateStatus::Completed)
            .filter_map(|p| {
                Some(p.completed_at_ms?.saturating_sub(p.started_at_ms?) as f64 / 1000.0)
            })
            .collect();
        (!d.is_empty()).then(|| d.iter().sum::<f64>() / d.len() as f64)
    }

    /// Estimated wall-clock ms when the operation completes.
    pub fn estimated_completion_ms(&self, now_ms: u64) -> Option<u64> {
        if self.is_final(now_ms) {
            return self.finished_at_ms();
        }
        let per_node = self
            .measured_node_seconds()
            .unwrap_or(self.plan.estimated_node_seconds);
        let mut total = 0.0;
        for (i, batch) in self.plan.batches.iter().enumerate() {
            if self.batch_completed(batch) {
                continue;
            }
            // The remaining part of the slowest node of the batch.
            let remaining = batch
                .iter()
                .map(|n| {
                    let p = self.nodes.get(n);
                    let frac = p.map(|p| p.progress / 100.0).unwrap_or(0.0);
                    per_node * (1.0 - frac)
                })
                .fold(0.0, f64::max);
            let started = batch.iter().any(|n| {
                self.nodes
                    .get(n)
                    .is_some_and(|p| p.status != NodeUpdateStatus::Pending)
            });
            if i > 0 && !started {
                total += self.pause_before_seconds(i) as f64;
            }
            total += remaining;
        }
        Some(now_ms + (total * 1000.0) as u64)
    }

    pub fn finished_at_ms(&self) -> Option<u64> {
        let times = self
            .nodes
            .values()
            .filter_map(|p| p.completed_at_ms)
            .chain(self.halted.as_ref().map(|m| m.at_ms));
        times.max()
    }

    pub fn overall_progress(&self) -> f64 {
        let n = self.plan.target_nodes.len().max(1) as f64;
        let sum: f64 = self
            .plan
            .target_nodes
            .iter()
            .map(|t| self.nodes.get(t).map(|p| p.progress).unwrap_or(0.0))
            .sum();
        (sum / n * 10.0).round() / 10.0
    }

    /// What the operation is doing, in words for people (the API's
    /// `current_phase`): the status, or while running the first unfinished
    /// batch and the phases its nodes are in ("batch 2 of 3: drain").
    pub fn current_phase(&self, now_ms: u64) -> String {
        match self.status(now_ms) {
            OperationStatus::RollingBack => "rollback".into(),
            OperationStatus::Running => {
                // Alphabetical, as a set of names.
                let active: BTreeSet<&str> = self
                    .nodes
                    .values()
                    .filter(|p| p.status == NodeUpdateStatus::Updating)
                    .map(|p| p.phase.as_str())
                    .collect();
                if let Some(b) = self
                    .plan
                    .batches
                    .iter()
                    .position(|b| !self.batch_completed(b))
                {
                    if active.is_empty() {
                        return format!("batch {} of {}: waiting", b + 1, self.plan.batches.len());
                    }
                    let phases: Vec<&str> = active.into_iter().collect();
                    return format!(
                        "batch {} of {}: {}",
                        b + 1,
                        self.plan.batches.len(),
                        phases.join(", ")
                    );
                }
                OperationStatus::Running.to_string()
            }
            other => other.to_string(),
        }
    }
}

/// A published release as planning needs it.
#[derive(Clone, Debug)]
pub struct ReleaseInfo {
    pub version: semver::Version,
    pub blake3: String,
    pub breaking: bool,
    pub min_compatible_version: Option<semver::Version>,
}

/// A member as planning needs it.
#[derive(Clone, Debug)]
pub struct PlanMember {
    pub name: NodeId,
    pub peer_id: String,
    pub version: String,
    pub status: MemberStatus,
}

/// The unfinished operation a node is taken by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Busy {
    pub operation_id: String,
    pub status: OperationStatus,
}

impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "operation {}, {}", self.operation_id, self.status)
    }
}

pub struct PlanInput<'a> {
    pub operation_id: String,
    pub target_version: &'a str,
    pub update_type: UpdateType,
    pub strategy: UpdateStrategy,
    pub target_nodes: &'a [NodeId],
    pub force: bool,
    pub actor: &'a str,
    pub now_ms: u64,
    pub releases: &'a [ReleaseInfo],
    pub members: &'a [PlanMember],
    pub settings: OpSettings,
    /// Per-node seconds measured by earlier operations, if any.
    pub measured_node_seconds: Option<f64>,
    /// Nodes busy in another operation that is not final.
    pub busy: &'a BTreeMap<NodeId, Busy>,
}

/// Which part of the version changed incompatibly from `from` to `to`, if
/// one did. Semver: the leftmost non-zero part is the breaking one, so below
/// 1.0 a minor change breaks (0.1 -> 0.2) and below 0.1 a patch change does
/// (0.0.1 -> 0.0.2). Either direction counts.
fn incompatible_change(from: &semver::Version, to: &semver::Version) -> Option<&'static str> {
    if from.major != to.major {
        Some("major")
    } else if from.major == 0 && from.minor != to.minor {
        Some("minor")
    } else if from.major == 0 && from.minor == 0 && from.patch != to.patch {
        Some("patch")
    } else {
        None
    }
}

/// Validates a plan request and lays out the operation.
pub fn make_plan(i: PlanInput<'_>) -> Result<Plan, UpdateError> {
    let target =
        semver::Version::parse(i.target_version).map_err(|e| UpdateError::InvalidVersion {
            version: i.target_version.to_string(),
            reason: e.to_string(),
        })?;
    let release = i
        .releases
        .iter()
        .find(|r| r.version == target)
        .ok_or_else(|| UpdateError::ReleaseNotPublished {
            version: target.clone(),
        })?;

    let mut warnings = Vec::new();
    let explicit = !i.target_nodes.is_empty();
    let mut targets: Vec<&PlanMember> = Vec::new();
    if explicit {
        let mut unknown = Vec::new();
        let mut seen = BTreeSet::new();
        for n in i.target_nodes {
            if !seen.insert(n) {
                continue;
            }
            match i
                .members
                .iter()
                .find(|m| &m.name == n && m.status != MemberStatus::Left)
            {
                Some(m) => targets.push(m),
                None => unknown.push(n.clone()),
            }
        }
        if !unknown.is_empty() {
            return Err(UpdateError::UnknownNodes { nodes: unknown });
        }
    } else {
        targets = i
            .members
            .iter()
            .filter(|m| m.status != MemberStatus::Left)
            .collect();
    }
    let down: Vec<NodeId> = targets
        .iter()
        .filter(|m| m.status == MemberStatus::Dead)
        .map(|m| m.name.clone())
        .collect();
    if !down.is_empty() {
        return Err(UpdateError::NodesNotAlive { nodes: down });
    }
    let busy: Vec<(NodeId, Busy)> = targets
        .iter()
        .filter_map(|m| Some((m.name.clone(), i.busy.get(&m.name)?.clone())))
        .collect();
    if !busy.is_empty() {
        return Err(UpdateError::NodesBusy { nodes: busy });
    }

    // update_type must fit each target.
    let mut misfit = Vec::new();
    let mut fitting = Vec::new();
    for m in &targets {
        let Ok(v) = semver::Version::parse(&m.version) else {
            misfit.push(format!(
                "{} runs an unparseable version {:?}",
                m.name, m.version
            ));
            continue;
        };
        let fits = match i.update_type {
            UpdateType::Upgrade => target > v,
            UpdateType::Downgrade => target < v,
            UpdateType::Reinstall => target == v,
        };
        if fits {
            fitting.push((*m, v));
        } else {
            misfit.push(format!("{} runs {v}", m.name));
        }
    }
    if explicit && !misfit.is_empty() {
        return Err(UpdateError::UpdateTypeMismatch {
            update_type: i.update_type,
            target,
            misfits: misfit,
        });
    }
    if !explicit && !misfit.is_empty() {
        warnings.push(format!(
            "skipped (a {} to {target} does not fit): {}",
            i.update_type,
            misfit.join("; ")
        ));
    }
    if fitting.is_empty() {
        return Err(UpdateError::NothingToUpdate {
            update_type: i.update_type,
            target,
        });
    }

    // Breaking changes.
    let mut breaking = Vec::new();
    if release.breaking {
        breaking.push(format!("release {target} is marked breaking"));
    }
    for (m, v) in &fitting {
        if let Some(part) = incompatible_change(v, &target) {
            breaking.push(format!("{}: {part} version change {v} -> {target}", m.name));
        }
        if let Some(min) = &release.min_compatible_version {
            if v < min {
                breaking.push(format!(
                    "{}: runs {v}, below the release's min_compatible_version {min}",
                    m.name
                ));
            }
        }
    }
    if !breaking.is_empty() && !i.force {
        return Err(UpdateError::BreakingChanges { changes: breaking });
    }
    if !breaking.is_empty() {
        warnings.push("breaking changes accepted with force".into());
    }

    let suspect: Vec<&str> = fitting
        .iter()
        .filter(|(m, _)| m.status == MemberStatus::Suspect)
        .map(|(m, _)| m.name.as_str())
        .collect();
    if !suspect.is_empty() {
        warnings.push(format!("suspect target nodes: {}", suspect.join(", ")));
    }
    let live = i
        .members
        .iter()
        .filter(|m| m.status == MemberStatus::Alive)
        .count();
    if live < 3 {
        warnings.push(format!(
            "only {live} alive members: a node out of service leaves little redundancy"
        ));
    }

    let mut names: Vec<NodeId> = fitting.iter().map(|(m, _)| m.name.clone()).collect();
    names.sort();
    let s = &i.settings;
    let batches: Vec<Vec<NodeId>> = match i.strategy {
        UpdateStrategy::Parallel => {
            warnings.push(format!(
                "parallel: up to {} nodes out of service at once, inside maintenance mode (ends by itself after {} s)",
                s.max_concurrent_updates, s.maintenance_mode_timeout_seconds
            ));
            names
                .chunks(s.max_concurrent_updates.max(1) as usize)
                .map(|c| c.to_vec())
                .collect()
        }
        UpdateStrategy::Rolling | UpdateStrategy::Canary => {
            names.iter().map(|n| vec![n.clone()]).collect()
        }
    };
    if i.strategy == UpdateStrategy::Canary && names.len() < 2 {
        warnings.push("canary with a single target is a plain update of that node".into());
    }
    let estimated_node_seconds = i
        .measured_node_seconds
        .unwrap_or(10.0 + s.health_check_timeout_seconds as f64 / 4.0);
    let from_versions = fitting
        .iter()
        .map(|(m, v)| (m.name.clone(), v.to_string()))
        .collect();
    Ok(Plan {
        operation_id: i.operation_id,
        target_version: target.to_string(),
        target_blake3: release.blake3.clone(),
        update_type: i.update_type,
        strategy: i.strategy,
        target_nodes: names,
        batches,
        from_versions,
        breaking_changes: breaking,
        warnings,
        force: i.force,
        created_at_ms: i.now_ms,
        created_by: i.actor.into(),
        settings: i.settings,
        estimated_node_seconds,
        voters: i
            .members
            .iter()
            .filter(|m| m.status != MemberStatus::Left)
            .map(|m| m.peer_id.clone())
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexi_util::types::{UpdateStrategy as St, UpdateType as Ty};
    use proptest::prelude::*;

    fn settings() -> OpSettings {
        OpSettings {
            max_concurrent_updates: 2,
            rolling_update_delay_seconds: 5,
            health_check_timeout_seconds: 20,
            rollback_timeout_seconds: 60,
            canary_soak_seconds: 30,
            maintenance_mode_timeout_seconds: 600,
            auto_rollback_on_failure: true,
            backup_before_update: true,
        }
    }

    fn members(v: &str, n: usize) -> Vec<PlanMember> {
        (0..n)
            .map(|i| PlanMember {
                name: format!("n{i}").into(),
                peer_id: format!("p{i}"),
                version: v.into(),
                status: MemberStatus::Alive,
            })
            .collect()
    }

    fn release(v: &str, breaking: bool, min: Option<&str>) -> ReleaseInfo {
        ReleaseInfo {
            version: v.parse().unwrap(),
            blake3: "ab".into(),
            breaking,
            min_compatible_version: min.map(|m| m.parse().unwrap()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn input<'a>(
        target: &'a str,
        kind: UpdateType,
        strategy: UpdateStrategy,
        nodes: &'a [NodeId],
        force: bool,
        releases: &'a [ReleaseInfo],
        members: &'a [PlanMember],
        busy: &'a BTreeMap<NodeId, Busy>,
    ) -> PlanInput<'a> {
        PlanInput {
            operation_id: "op".into(),
            target_version: target,
            update_type: kind,
            strategy,
            target_nodes: nodes,
            force,
            actor: "admin",
            now_ms: 1000,
            releases,
            members,
            settings: settings(),
            measured_node_seconds: None,
            busy,
        }
    }

    #[test]
    fn plans_validate_type_nodes_and_breaking() {
        let rel = [
            release("1.1.0", false, None),
            release("2.0.0", false, None),
            release("1.2.0", true, None),
            release("1.3.0", false, Some("1.1.0")),
        ];
        let ms = members("1.0.0", 4);
        let none = BTreeMap::new();
        let all: Vec<NodeId> = vec![];
        let p = make_plan(input(
            "1.1.0",
            Ty::Upgrade,
            St::Rolling,
            &all,
            false,
            &rel,
            &ms,
            &none,
        ))
        .unwrap();
        assert_eq!(p.batches.len(), 4);
        assert!(p.batches.iter().all(|b| b.len() == 1));
        let p = make_plan(input(
            "1.1.0",
            Ty::Upgrade,
            St::Parallel,
            &all,
            false,
            &rel,
            &ms,
            &none,
        ))
        .unwrap();
        assert_eq!(p.batches, vec![vec!["n0", "n1"], vec!["n2", "n3"]]);
        // Unpublished, wrong direction, unknown node.
        let e = make_plan(input(
            "1.9.0",
            Ty::Upgrade,
            St::Rolling,
            &all,
            false,
            &rel,
            &ms,
            &none,
        ))
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "no trusted published release 1.9.0; publish it first"
        );
        let e = make_plan(input(
            "1.1.0",
            Ty::Downgrade,
            St::Rolling,
            &all,
            false,
            &rel,
            &ms,
            &none,
        ))
        .unwrap_err();
        assert!(matches!(e, UpdateError::NothingToUpdate { .. }), "{e:?}");
        let ghost: Vec<NodeId> = vec!["ghost".into(), "n1".into()];
        let e = make_plan(input(
            "1.1.0",
            Ty::Upgrade,
            St::Rolling,
            &ghost,
            false,
            &rel,
            &ms,
            &none,
        ))
        .unwrap_err();
        assert_eq!(
            e,
            UpdateError::UnknownNodes {
                nodes: vec!["ghost".into()]
            }
        );
        assert_eq!(e.to_string(), "unknown target nodes: ghost");
        // Breaking: major bump, flag, min_compatible; force accepts.
        for v in ["2.0.0", "1.2.0", "1.3.0"] {
            let e = make_plan(input(
                v,
                Ty::Upgrade,
                St::Rolling,
                &all,
                false,
                &rel,
                &ms,
                &none,
            ))
            .unwrap_err();
            assert!(
                matches!(e, UpdateError::BreakingChanges { .. }),
                "{v}: {e:?}"
            );
            let p = make_plan(input(
                v,
                Ty::Upgrade,
                St::Rolling,
                &all,
                true,
                &rel,
                &ms,
                &none,
            ))
            .unwrap();
            assert!(!p.breaking_changes.is_empty());
        }
        // Busy nodes.
        let x = Busy {
            operation_id: "x".into(),
            status: OperationStatus::Running,
        };
        let busy: BTreeMap<NodeId, Busy> = [("n2".into(), x)].into();
        let e = make_plan(input(
            "1.1.0",
            Ty::Upgrade,
            St::Rolling,
            &all,
            false,
            &rel,
            &ms,
            &busy,
        ))
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "nodes already in an unfinished operation: n2 (operation x, running)"
        );
    }

    #[test]
    fn zero_major_minor_and_zero_minor_patch_changes_are_breaking() {
        // Under semver, below 1.0 the minor is the breaking part, and below
        // 0.1 the patch is.
        let none = BTreeMap::new();
        let all: Vec<NodeId> = vec![];
        for (from, to, kind) in [
            ("0.1.0", "0.2.0", Ty::Upgrade),
            ("0.2.0", "0.1.0", Ty::Downgrade),
            ("0.0.1", "0.0.2", Ty::Upgrade),
            ("0.9.3", "1.0.0", Ty::Upgrade),
        ] {
            let rel = [release(to, false, None)];
            let ms = members(from, 3);
            let e =
                make_plan(input(to, kind, St::Rolling, &all, false, &rel, &ms, &none)).unwrap_err();
            let UpdateError::BreakingChanges { changes } = &e else {
                panic!("{from} -> {to}: {e:?}");
            };
            assert!(
                changes
                    .iter()
                    .all(|c| c.contains(&format!("{from} -> {to}"))),
                "{changes:?}"
            );
            let p = make_plan(input(to, kind, St::Rolling, &all, true, &rel, &ms, &none)).unwrap();
            assert_eq!(p.breaking_changes.len(), 3, "{from} -> {to}");
        }
        // Compatible changes stay plain updates.
        for (from, to, kind) in [
            ("0.1.0", "0.1.1", Ty::Upgrade),
            ("0.1.3", "0.1.0", Ty::Downgrade),
            ("1.2.0", "1.3.0", Ty::Upgrade),
            ("0.0.1", "0.0.1", Ty::Reinstall),
        ] {
            let rel = [release(to, false, None)];
            let ms = members(from, 3);
            let p = make_plan(input(to, kind, St::Rolling, &all, false, &rel, &ms, &none))
                .unwrap_or_else(|e| panic!("{from} -> {to}: {e:?}"));
            assert!(p.breaking_changes.is_empty(), "{from} -> {to}");
        }
    }

    #[test]
    fn a_node_whose_clock_went_back_during_its_part_does_not_panic_the_estimate() {
        let mut r = record(UpdateStrategy::Rolling, 3);
        let node = r.nodes.keys().next().unwrap().clone();
        set(
            &mut r,
            node.as_str(),
            NodeUpdateStatus::Completed,
            true,
            Some(0),
        );
        // Started "later" than it completed: its clock was set back (skew).
        r.nodes.get_mut(&node).unwrap().started_at_ms = Some(5_000);
        assert_eq!(r.measured_node_seconds(), Some(0.0));
        let _ = r.estimated_completion_ms(1_000);
    }

    /// The CI failure of tests/restore.rs (health-check variant): the
    /// failed target pushed changes after the supervisor's snapshot, the
    /// store was restored, and the old version's next changes must still
    /// reach every copy, so the operation ends `rolled_back` everywhere.
    #[test]
    fn changes_after_a_restored_store_supersede_what_the_restore_lost() {
        let mut r = record(UpdateStrategy::Rolling, 3);
        r.halted = Some(Mark {
            at_ms: 1,
            by: "n0".into(),
            reason: String::new(),
        });
        let n0 = |r: &mut OpRecord| r.nodes.get_mut("n0").unwrap().clone();
        let mut p = n0(&mut r);
        // At the switch: the snapshot holds this.
        p.seq = p.next_seq(1_000);
        p.status = NodeUpdateStatus::Updating;
        p.phase = UpdatePhase::Restart;
        p.on_target = true;
        let snapshot = p.clone();
        // The target version, running: its post-check phase and error,
        // pushed to the peers, lost on this node by the restore.
        for t in [2_000, 11_000] {
            p.seq = p.next_seq(t);
            p.phase = UpdatePhase::PostCheck;
            p.error = Some("post-check: not rejoined in time".into());
        }
        let lost = p;
        // The old version, back on the restored store: on_target cleared,
        // then failed (two changes, as many as the lost ones).
        let mut mine = snapshot;
        for t in [12_500, 12_501] {
            mine.seq = mine.next_seq(t);
            mine.on_target = false;
        }
        mine.status = NodeUpdateStatus::Failed;
        assert!(mine.supersedes(&lost) && !lost.supersedes(&mine));
        let with = |p: &NodeProgress| {
            let mut c = r.clone();
            c.nodes.insert("n0".into(), p.clone());
            c
        };
        let (mut peer, mut local) = (with(&lost), with(&mine));
        peer.merge(&with(&mine));
        local.merge(&with(&lost));
        assert_eq!(peer, local);
        assert_eq!(peer.status(13_000), OperationStatus::RolledBack);
        // Counting on from the restored seq (the old `seq + 1`) tied with
        // the lost copy: the tie still resolves to one copy on both sides.
        let mut tied = mine.clone();
        tied.seq = lost.seq;
        assert_ne!(tied.supersedes(&lost), lost.supersedes(&tied));
        assert!(!tied.supersedes(&tied.clone()));
    }

    fn record(strategy: UpdateStrategy, n: usize) -> OpRecord {
        let rel = [release("1.1.0", false, None)];
        let ms = members("1.0.0", n);
        let none = BTreeMap::new();
        let all: Vec<NodeId> = vec![];
        OpRecord::new(
            make_plan(input(
                "1.1.0",
                Ty::Upgrade,
                strategy,
                &all,
                false,
                &rel,
                &ms,
                &none,
            ))
            .unwrap(),
        )
    }

    fn set(
        r: &mut OpRecord,
        node: &str,
        status: NodeUpdateStatus,
        on_target: bool,
        done_at: Option<u64>,
    ) {
        let p = r.nodes.get_mut(node).unwrap();
        p.seq += 1;
        p.status = status;
        p.on_target = on_target;
        p.completed_at_ms = done_at;
        p.started_at_ms = Some(0);
        p.progress = if status == NodeUpdateStatus::Completed {
            100.0
        } else {
            50.0
        };
    }

    #[test]
    fn turns_follow_batches_and_pauses() {
        let mut r = record(St::Rolling, 3);
        assert!(!r.update_turn("n0", 0), "not executed yet");
        r.executed = Some(Mark {
            at_ms: 0,
            by: "x".into(),
            reason: String::new(),
        });
        assert!(r.update_turn("n0", 0));
        assert!(!r.update_turn("n1", 0));
        set(
            &mut r,
            "n0",
            NodeUpdateStatus::Completed,
            true,
            Some(10_000),
        );
        assert!(!r.update_turn("n1", 14_999), "rolling delay");
        assert!(r.update_turn("n1", 15_000));
        assert!(!r.update_turn("n2", 15_000));
        assert_eq!(r.status(0), OperationStatus::Running);
        set(
            &mut r,
            "n1",
            NodeUpdateStatus::Completed,
            true,
            Some(20_000),
        );
        set(
            &mut r,
            "n2",
            NodeUpdateStatus::Completed,
            true,
            Some(30_000),
        );
        assert_eq!(r.status(0), OperationStatus::Completed);
        // A halt that arrives after completion changes nothing.
        r.halted = Some(Mark {
            at_ms: 40_000,
            by: "n1".into(),
            reason: "late".into(),
        });
        assert_eq!(r.status(50_000), OperationStatus::Completed);
        assert!(!r.rolling_back());

        let mut c = record(St::Canary, 3);
        c.executed = Some(Mark {
            at_ms: 0,
            by: "x".into(),
            reason: String::new(),
        });
        set(&mut c, "n0", NodeUpdateStatus::Completed, true, Some(0));
        assert!(!c.update_turn("n1", 29_999), "canary soak");
        assert!(c.update_turn("n1", 30_000));

        let mut p = record(St::Parallel, 4);
        p.executed = Some(Mark {
            at_ms: 0,
            by: "x".into(),
            reason: String::new(),
        });
        assert!(p.update_turn("n0", 0) && p.update_turn("n1", 0));
        assert!(!p.update_turn("n2", 0));
        assert_eq!(p.slots(), 2);
    }

    #[test]
    fn rollback_runs_in_reverse_and_halts_updates() {
        let mut r = record(St::Rolling, 3);
        r.executed = Some(Mark {
            at_ms: 0,
            by: "x".into(),
            reason: String::new(),
        });
        set(&mut r, "n0", NodeUpdateStatus::Completed, true, Some(1));
        set(&mut r, "n1", NodeUpdateStatus::Failed, true, None);
        r.halted = Some(Mark {
            at_ms: 5,
            by: "n1".into(),
            reason: "post-check failed".into(),
        });
        assert_eq!(r.status(10), OperationStatus::RollingBack);
        assert!(!r.update_turn("n2", u64::MAX));
        assert!(!r.rollback_turn("n0"), "n1 rolls back first");
        assert!(r.rollback_turn("n1"));
        set(&mut r, "n1", NodeUpdateStatus::RolledBack, false, None);
        assert!(r.rollback_turn("n0"));
        set(&mut r, "n0", NodeUpdateStatus::RolledBack, false, None);
        assert_eq!(r.status(10), OperationStatus::RolledBack);
        // A rollback that does not finish in time fails.
        let mut t = record(St::Rolling, 2);
        t.executed = r.executed.clone();
        set(&mut t, "n0", NodeUpdateStatus::Completed, true, Some(1));
        t.rollback = Some(Mark {
            at_ms: 100,
            by: "a".into(),
            reason: String::new(),
        });
        assert_eq!(t.status(100 + 60_000), OperationStatus::RollingBack);
        assert_eq!(t.status(100 + 60_001), OperationStatus::Failed);
    }

    #[test]
    fn nodes_marked_failed_by_others_show_failed() {
        let mut r = record(St::Rolling, 2);
        set(&mut r, "n0", NodeUpdateStatus::Updating, false, None);
        r.failed_nodes.insert(
            "n0".into(),
            Mark {
                at_ms: 1,
                by: "n1".into(),
                reason: "lease expired".into(),
            },
        );
        assert_eq!(r.node_status("n0").0, NodeUpdateStatus::Failed);
    }

    #[test]
    fn estimated_completion_uses_measured_durations() {
        let mut r = record(St::Rolling, 3);
        r.executed = Some(Mark {
            at_ms: 0,
            by: "x".into(),
            reason: String::new(),
        });
        let before = r.estimated_completion_ms(0).unwrap();
        // 15 s per node default + 2 x 5 s delays.
        assert_eq!(before, (3.0 * 15.0 * 1000.0) as u64 + 10_000);
        let p = r.nodes.get_mut("n0").unwrap();
        p.status = NodeUpdateStatus::Completed;
        p.progress = 100.0;
        p.started_at_ms = Some(0);
        p.completed_at_ms = Some(40_000);
        p.seq = 1;
        assert_eq!(
            r.estimated_completion_ms(40_000).unwrap(),
            40_000 + 2 * 40_000 + 2 * 5_000
        );
    }

    #[test]
    fn progress_written_with_names_as_text_decodes_alike() {
        // Progress as builds that kept statuses and phases as strings wrote
        // it (sled, peers): the same names, so it decodes and encodes back.
        let old = serde_json::json!({
            "seq": 3, "status": "updating", "phase": "fetch", "progress": 45.0,
            "from_version": "0.1.0", "to_version": "0.1.1",
            "started_at_ms": 1, "completed_at_ms": null, "error": null,
            "phase_ms": {"backup": 2, "drain": 1, "lease": 5, "pre_check": 7},
            "rollback_available": false, "on_target": false, "lease": null,
            "out_of_service_since_ms": 4, "phase_since_ms": 9,
        });
        let p: NodeProgress = ciborium::de::from_reader(cbor(&old).as_slice()).unwrap();
        assert_eq!(
            (p.status, p.phase),
            (NodeUpdateStatus::Updating, UpdatePhase::Fetch)
        );
        assert_eq!(p.phase_ms[&UpdatePhase::PreCheck], 7);
        assert_eq!(serde_json::to_value(&p).unwrap(), old);
    }

    /// `OpSettings` as builds before the rename defined it.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct OldOpSettings {
        max_concurrent: u32,
        rolling_delay_s: u64,
        health_timeout_s: u64,
        rollback_timeout_s: u64,
        canary_soak_s: u64,
        maintenance_timeout_s: u64,
        auto_rollback: bool,
        backup: bool,
    }

    fn cbor<T: Serialize>(v: &T) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::ser::into_writer(v, &mut out).unwrap();
        out
    }

    #[test]
    fn settings_read_and_write_what_earlier_builds_do() {
        let old = OldOpSettings {
            max_concurrent: 2,
            rolling_delay_s: 5,
            health_timeout_s: 20,
            rollback_timeout_s: 60,
            canary_soak_s: 30,
            maintenance_timeout_s: 600,
            auto_rollback: true,
            backup: true,
        };
        // Records earlier builds wrote (sled, peers) decode...
        let ours: OpSettings = ciborium::de::from_reader(cbor(&old).as_slice()).unwrap();
        assert_eq!(ours, settings());
        // ...and earlier builds decode ours, byte for byte the same.
        assert_eq!(cbor(&ours), cbor(&old));
        let theirs: OldOpSettings = ciborium::de::from_reader(cbor(&ours).as_slice()).unwrap();
        assert_eq!(theirs, old);
        // The config key names are accepted too.
        let by_key = serde_json::json!({
            "max_concurrent_updates": 2, "rolling_update_delay_seconds": 5,
            "health_check_timeout_seconds": 20, "rollback_timeout_seconds": 60,
            "canary_soak_seconds": 30, "maintenance_mode_timeout_seconds": 600,
            "auto_rollback_on_failure": true, "backup_before_update": true,
        });
        let ours: OpSettings = ciborium::de::from_reader(cbor(&by_key).as_slice()).unwrap();
        assert_eq!(ours, settings());
    }

    fn arb_progress() -> impl Strategy<Value = NodeProgress> {
        (
            0u64..5,
            prop::sample::select(vec![
                NodeUpdateStatus::Pending,
                NodeUpdateStatus::Updating,
                NodeUpdateStatus::Completed,
                NodeUpdateStatus::Failed,
                NodeUpdateStatus::RolledBack,
            ]),
            any::<bool>(),
        )
            .prop_map(|(seq, st, on)| {
                let mut p = NodeProgress::pending("1.0.0", "1.1.0");
                p.seq = seq;
                p.status = st;
                p.on_target = on;
                p
            })
    }

    fn arb_mark() -> impl Strategy<Value = Option<Mark>> {
        prop::option::of(
            (0u64..10, prop::sample::select(vec!["a", "b"])).prop_map(|(at, by)| Mark {
                at_ms: at,
                by: by.into(),
                reason: String::new(),
            }),
        )
    }

    fn arb_record() -> impl Strategy<Value = OpRecord> {
        (
            arb_mark(),
            arb_mark(),
            arb_mark(),
            prop::collection::vec(arb_progress(), 3),
        )
            .prop_map(|(e, h, r, ps)| {
                let mut rec = record(St::Rolling, 3);
                rec.executed = e;
                rec.halted = h;
                rec.rollback = r;
                for (i, p) in ps.into_iter().enumerate() {
                    // Same seq, different content included: a node whose
                    // store was restored wrote so before `next_seq`, and
                    // the merge must converge on it all the same.
                    let mut p = p;
                    if p.seq == 0 {
                        p = NodeProgress::pending("1.0.0", "1.1.0");
                    }
                    p.error = Some(format!("{}", p.seq));
                    rec.nodes.insert(format!("n{i}").into(), p);
                }
                rec
            })
    }

    proptest! {
        /// The record as peers exchange it (CBOR) decodes to itself.
        #[test]
        fn record_cbor_round_trip(a in arb_record()) {
            let bytes = plexi_p2p::codec::encode_cbor(&a).unwrap();
            let back: OpRecord = plexi_p2p::codec::decode_cbor(&bytes).unwrap();
            prop_assert_eq!(back, a);
        }

        #[test]
        fn merge_is_commutative_and_idempotent(a in arb_record(), b in arb_record(), c in arb_record()) {
            let mut ab = a.clone();
            ab.merge(&b);
            let mut ba = b.clone();
            ba.merge(&a);
            prop_assert_eq!(&ab, &ba);
            let mut abb = ab.clone();
            prop_assert!(!abb.merge(&b));
            prop_assert_eq!(&abb, &ab);
            let mut ab_c = ab.clone();
            ab_c.merge(&c);
            let mut bc = b.clone();
            bc.merge(&c);
            let mut a_bc = a.clone();
            a_bc.merge(&bc);
            prop_assert_eq!(ab_c, a_bc);
        }
    }
}
