//! The per-node update engine: every node watches the replicated update
//! state and does its own part when the plan says it is its turn. There is
//! no coordinator: a node updates itself (lease → pre-check → drain →
//! backup → fetch and verify → install → restart through the supervisor →
//! post-check → release), rolls itself back when the operation rolls back,
//! and any node declares a dead lease holder failed, which halts the
//! operation.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use plexi_api::InFlight;
use plexi_p2p::{MemberStatus, P2pHandle};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use super::leases::{self, Granter};
use super::ops::{LeaseHold, Mark, NodeProgress, OpRecord, OpSettings};
use super::release;
use super::state::{self, UpdateState};
use crate::audit::AuditLog;
use crate::storage::Storage;
use crate::switch::{self, SwitchOutcome, SwitchRequest};
use plexi_util::clock::{rfc3339_ms, wall_ms};
use plexi_util::types::{Consistency, NodeId, NodeUpdateStatus, UpdatePhase, UpdateStrategy};

/// Retry-After for data requests while this node is drained.
pub const RETRY_AFTER_S: u64 = 2;
/// Bound on waiting for in-flight requests to finish when draining.
const DRAIN_WAIT: Duration = Duration::from_secs(30);
/// How often the drain looks at the in-flight count (an atomic).
const DRAIN_POLL: Duration = Duration::from_millis(10);
const TICK: Duration = Duration::from_millis(500);
/// A lease holder silent past its lease by this much is declared failed.
const HOLDER_GRACE_MS: u64 = 3_000;
/// How long a parallel operation may run before its maintenance mode has
/// arrived (it is pushed separately).
const MAINTENANCE_ARRIVAL_MS: u64 = 5_000;
/// Objects read back by the post-update check.
const POST_CHECK_SAMPLE: usize = 20;
/// Objects the pre-check examines (the census bound).
const PRE_CHECK_MAX_OBJECTS: usize = 100_000;
/// Attempts at the pre-check before the node's update fails: a peer that
/// times out once (a lost message, a slow disk) is not a reason to halt
/// the whole operation, a peer that keeps failing is. The lease is renewed
/// before each retry.
const PRE_CHECK_ATTEMPTS: usize = 3;
const PRE_CHECK_RETRY: Duration = Duration::from_secs(2);
/// Bound on the pre-check's sync with one peer; past it (or once the peer
/// is judged dead) that peer counts as no current replica. A peer killed
/// mid-sync otherwise held the check until its calls timed out (chaos
/// seed 1: 19 s).
const PRE_CHECK_SYNC_LIMIT: Duration = Duration::from_secs(30);
/// How often a pre-check sync looks whether its peer is still alive.
const PRE_CHECK_PEER_POLL: Duration = Duration::from_millis(250);
/// Waits between attempts at an update lease: from the first to the
/// last, doubling, the upper half jittered. The common denial is the
/// previous holder's release still on its way (it is sent right after that
/// node shows completed), which a first retry after 25-50 ms finds gone;
/// a slot held for a whole update is asked again at most every second.
const LEASE_RETRY_FIRST_MS: u64 = 50;
const LEASE_RETRY_MAX_MS: u64 = 1_000;
/// How often the post-update check looks at whether the restarted node has
/// rejoined, and at the supervisor's answer to its ready (each look is a
/// read of memory or of one small file).
const POST_SWITCH_POLL: Duration = Duration::from_millis(25);
/// Bound on operations whose release this node remembers prefetching.
const MAX_PREFETCHED: usize = 16;
/// A failed prefetch is tried again after this long (the node's turn
/// fetches for itself anyway).
const PREFETCH_RETRY: Duration = Duration::from_secs(10);

/// This worker's prefetch of one operation's target release (see
/// [`Engine::prefetch`]).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Prefetch {
    Running,
    /// Fetched, verified and installed by this worker.
    Installed {
        version: String,
        blake3: String,
    },
    Failed {
        at: Instant,
    },
}
/// Free space the pre-check asks for, in copies of the store: the backup's
/// snapshot, and a restore's staged copy should the update roll back (chaos
/// seed 3: a rollback's restore ran out of space on a disk the backup had
/// filled, and the node stayed on a full disk).
const BACKUP_ROOM_COPIES: u64 = 2;
/// And beyond those copies, the headroom the node keeps anyway.
const BACKUP_ROOM_SPARE_BYTES: u64 = 256 * 1024 * 1024;

/// Whether `free` bytes leave room for an update's backup and a possible
/// restore of a store of `store_bytes`.
fn room_for_backup(store_bytes: u64, free: u64) -> Result<(), String> {
    let needed = store_bytes
        .saturating_mul(BACKUP_ROOM_COPIES)
        .saturating_add(BACKUP_ROOM_SPARE_BYTES);
    if free < needed {
        return Err(format!(
            "{} MiB free, an update needs {} MiB here ({BACKUP_ROOM_COPIES} copies of the {} MiB store for its backup and a restore, and {} MiB spare)",
            free >> 20,
            needed >> 20,
            store_bytes >> 20,
            BACKUP_ROOM_SPARE_BYTES >> 20
        ));
    }
    Ok(())
}

/// Live (not deleted) objects this node holds, with their factor.
fn live_objects(s: &Storage, limit: usize) -> Result<Vec<(String, usize)>, String> {
    use plexi_store::objects::ObjectStore;
    Ok(s.engine()
        .census(limit)
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|m| !m.tombstone)
        .map(|m| (m.data_id, m.replication_factor as usize))
        .collect())
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabels {
    cause: String,
}

/// `plexi_update_operations{status}`: the update operations this node
/// keeps (at most 256, replicated to every node), by their status now;
/// computed at scrape time from the replicated state (no I/O). Success rate
/// and rollback frequency over the kept history come from it.
pub struct OperationGauges(pub Arc<UpdateState>);

impl std::fmt::Debug for OperationGauges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OperationGauges")
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: &'static str,
}

impl prometheus_client::collector::Collector for OperationGauges {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use plexi_util::types::OperationStatus;
        use prometheus_client::encoding::EncodeMetric;
        let now = wall_ms();
        let mut counts: std::collections::BTreeMap<OperationStatus, i64> =
            OperationStatus::ALL.iter().map(|s| (*s, 0)).collect();
        for rec in self.0.all() {
            *counts.entry(rec.status(now)).or_default() += 1;
        }
        let mut m = encoder.encode_descriptor(
            "plexi_update_operations",
            "Update operations this node keeps (the replicated history), by status",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (status, n) in counts {
            let labels = StatusLabels {
                status: status.as_str(),
            };
            prometheus_client::metrics::gauge::ConstGauge::new(n)
                .encode(m.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[derive(Clone)]
pub struct UpdateMetrics {
    outcomes: Family<OutcomeLabels, Counter>,
    rollbacks: Family<CauseLabels, Counter>,
    durations: Histogram,
}

impl UpdateMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let outcomes = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "plexi_update_node_updates",
            "This node's parts of update operations, by outcome (completed, failed, rolled_back)",
            outcomes.clone(),
        );
        let rollbacks = Family::<CauseLabels, Counter>::default();
        registry.register(
            "plexi_update_rollbacks",
            "Rollbacks of operations this node saw start, by cause (requested, failure)",
            rollbacks.clone(),
        );
        let durations = Histogram::new([5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0]);
        registry.register(
            "plexi_update_node_duration_seconds",
            "Seconds from lease to post-check for this node's completed updates",
            durations.clone(),
        );
        // Every series exists from the start (at 0).
        for status in [
            NodeUpdateStatus::Completed,
            NodeUpdateStatus::Failed,
            NodeUpdateStatus::RolledBack,
        ] {
            let _ = outcomes.get_or_create(&OutcomeLabels {
                outcome: status.as_str().into(),
            });
        }
        for cause in ["requested", "failure"] {
            let _ = rollbacks.get_or_create(&CauseLabels {
                cause: cause.into(),
            });
        }
        UpdateMetrics {
            outcomes,
            rollbacks,
            durations,
        }
    }

    /// Counts this node's part ending in `status`.
    fn outcome(&self, status: NodeUpdateStatus) {
        self.outcomes
            .get_or_create(&OutcomeLabels {
                outcome: status.as_str().into(),
            })
            .inc();
    }
}

/// Adds the time spent in the current phase to its total and, with
/// `next`, enters that phase.
fn close_phase(p: &mut NodeProgress, next: Option<UpdatePhase>) {
    let now = wall_ms();
    let since = p.phase_since_ms.unwrap_or(now);
    *p.phase_ms.entry(p.phase).or_default() += now.saturating_sub(since);
    p.phase_since_ms = Some(now);
    if let Some(next) = next {
        p.phase = next;
    }
}

/// Whether this node is drained, and what is still being served.
#[derive(Default)]
pub struct Drain {
    pub draining: AtomicBool,
    pub in_flight: InFlight,
}

/// The lease outlives the health-check deadline by this much, covering
/// the restart and the post-update check.
pub const LEASE_MARGIN_SECONDS: u64 = 30;

/// The longest `cluster_updates.health_check_timeout_seconds` a lease can
/// cover: granters cap every ttl at `MAX_TTL_MS` (config refuses more).
pub const MAX_HEALTH_CHECK_TIMEOUT_SECONDS: u64 =
    super::leases::rules::MAX_TTL_MS / 1000 - LEASE_MARGIN_SECONDS;

/// What the engine asks of the node it runs in; implemented by `node/`, so
/// the engine needs neither the node's health checks nor an HTTP client.
#[async_trait::async_trait]
pub trait NodeChecks: Send + Sync + 'static {
    /// The node's own health checks; `Err` names the failing ones.
    async fn healthy(&self) -> Result<(), String>;
    /// The version this node's REST API reports, asked through the API
    /// itself (so a new worker proves it serves as the target version).
    async fn api_version(&self) -> Result<String, String>;
}

pub struct Engine {
    pub node_id: NodeId,
    pub version: semver::Version,
    pub data_dir: PathBuf,
    pub config_file: Option<PathBuf>,
    pub p2p: P2pHandle,
    pub storage: Arc<Storage>,
    pub granter: Arc<Granter>,
    pub state: Arc<UpdateState>,
    pub audit: Arc<AuditLog>,
    pub trusted: Vec<String>,
    pub settings: OpSettings,
    pub drain: Arc<Drain>,
    /// Set to ask the node to exit with this code.
    pub exit: watch::Sender<Option<i32>>,
    pub checks: Arc<dyn NodeChecks>,
    pub metrics: UpdateMetrics,
    busy: AtomicBool,
    actor: String,
    /// Operation id → this worker's prefetch of its release (bounded by
    /// [`MAX_PREFETCHED`]).
    prefetched: std::sync::Mutex<std::collections::HashMap<String, Prefetch>>,
    /// Held while a release is fetched and installed (a prefetch and the
    /// node's own turn never install at once).
    installing: tokio::sync::Mutex<()>,
}

#[derive(Debug)]
struct StepError(String);

impl<E: std::fmt::Display> From<E> for StepError {
    fn from(e: E) -> Self {
        StepError(e.to_string())
    }
}

impl Engine {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        node_id: String,
        version: semver::Version,
        data_dir: PathBuf,
        config_file: Option<PathBuf>,
        p2p: P2pHandle,
        storage: Arc<Storage>,
        granter: Arc<Granter>,
        state: Arc<UpdateState>,
        audit: Arc<AuditLog>,
        trusted: Vec<String>,
        settings: OpSettings,
        drain: Arc<Drain>,
        exit: watch::Sender<Option<i32>>,
        checks: Arc<dyn NodeChecks>,
        metrics: UpdateMetrics,
    ) -> Arc<Self> {
        let actor = format!("node:{node_id}");
        Arc::new(Engine {
            node_id: node_id.into(),
            version,
            data_dir,
            config_file,
            p2p,
            storage,
            granter,
            state,
            audit,
            trusted,
            settings,
            drain,
            exit,
            checks,
            metrics,
            busy: AtomicBool::new(false),
            actor,
            prefetched: Default::default(),
            installing: tokio::sync::Mutex::new(()),
        })
    }

    pub fn metrics_rollback_requested(&self) {
        self.metrics
            .rollbacks
            .get_or_create(&CauseLabels {
                cause: "requested".into(),
            })
            .inc();
    }

    pub async fn audit(&self, action: &str, op: Option<&str>, detail: serde_json::Value) {
        self.audit_as(&self.actor.clone(), action, op, detail).await
    }

    pub async fn audit_as(
        &self,
        actor: &str,
        action: &str,
        op: Option<&str>,
        detail: serde_json::Value,
    ) {
        if let Err(e) = self.audit.append(actor, action, op, detail).await {
            tracing::error!(action, error = %e, "cannot append to the audit log");
        }
    }

    /// The detail of a `node.in_service` entry: the node, the version it
    /// serves on, how its part ended and the moment it served again
    /// (`at_ms`; the entry may be appended later).
    fn in_service_detail(&self, status: NodeUpdateStatus, at_ms: u64) -> serde_json::Value {
        serde_json::json!({
            "node_id": self.node_id,
            "version": self.version.to_string(),
            "status": status,
            "in_service_at": rfc3339_ms(at_ms),
        })
    }

    /// Publishes operation `id` to every alive member.
    pub async fn push(&self, id: &str) -> usize {
        state::push(&self.state, &self.p2p, Some(id)).await
    }

    /// Changes this node's own progress in operation `id` and spreads it.
    async fn progress(&self, id: &str, f: impl FnOnce(&mut NodeProgress)) {
        let me = self.node_id.clone();
        self.state.update(id, |r| {
            if let Some(p) = r.nodes.get_mut(&me) {
                let before = (p.phase, p.status);
                f(p);
                p.seq = p.next_seq(wall_ms());
                if matches!(
                    p.status,
                    NodeUpdateStatus::Updating | NodeUpdateStatus::RollingBack
                ) {
                    p.progress = p.phase.progress();
                }
                if (p.phase, p.status) != before {
                    tracing::info!(operation_id = %r.plan.operation_id, status = %p.status, phase = %p.phase, "update progress");
                }
            }
        });
        // Not awaited: the records merge by `seq`, so pushes arriving out of
        // order do no harm, and a step never waits on a slow or dead peer
        // to hear of a phase. The steps that need a majority to know (the
        // switch) push and count the acks themselves.
        let (state, p2p, id) = (self.state.clone(), self.p2p.clone(), id.to_string());
        tokio::spawn(async move {
            state::push(&state, &p2p, Some(&id)).await;
        });
    }

    /// Moves this node to `phase`, adding the time spent in the previous
    /// one (wall clock, so a phase that spans the restart counts whole).
    async fn enter_phase(&self, id: &str, phase: UpdatePhase) {
        self.progress(id, |p| close_phase(p, Some(phase))).await;
    }

    /// Starts the engine loop.
    pub fn spawn(self: &Arc<Self>) {
        let e = self.clone();
        tokio::spawn(async move {
            e.resume_after_restart().await;
            loop {
                tokio::select! {
                    _ = e.state.changed.notified() => {}
                    _ = tokio::time::sleep(TICK) => {}
                }
                e.tick().await;
            }
        });
        let e = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let g = e.granter.clone();
                let expired = tokio::task::spawn_blocking(move || g.expire())
                    .await
                    .unwrap_or_default();
                for x in expired {
                    tracing::warn!(slot = x.slot, holder = %x.holder, epoch = x.epoch, "update lease expired");
                    e.audit(
                        "lease.expire",
                        Some(&x.operation_id)
                            .filter(|s| !s.is_empty())
                            .map(|s| s.as_str()),
                        serde_json::json!({"slot": x.slot, "holder": x.holder, "epoch": x.epoch}),
                    )
                    .await;
                }
            }
        });
    }

    async fn tick(self: &Arc<Self>) {
        let now = wall_ms();
        for rec in self.state.all() {
            if rec.is_final(now) {
                self.leave_maintenance_if_ours(&rec).await;
                continue;
            }
            self.watch_holders(&rec, now).await;
            self.watch_maintenance(&rec, now).await;
            let me = &self.node_id;
            if !rec.plan.target_nodes.contains(me) {
                continue;
            }
            let mine = rec.nodes.get(me).cloned();
            let id = rec.plan.operation_id.clone();
            if rec.rolling_back() {
                if rec.rollback_turn(me.as_str()) {
                    self.run_exclusive(id.clone(), true);
                } else if !rec.needs_rollback(me.as_str())
                    && mine.as_ref().is_some_and(|p| {
                        matches!(
                            p.status,
                            NodeUpdateStatus::Updating
                                | NodeUpdateStatus::Failed
                                | NodeUpdateStatus::Completed
                        )
                    })
                    && !self.busy.load(Ordering::SeqCst)
                {
                    // Never switched (or already back): nothing to undo.
                    self.progress(&id, |p| {
                        p.status = NodeUpdateStatus::RolledBack;
                        p.completed_at_ms = Some(wall_ms());
                        p.lease = None;
                    })
                    .await;
                    self.metrics.outcome(NodeUpdateStatus::RolledBack);
                }
            } else if mine
                .as_ref()
                .is_some_and(|p| p.status == NodeUpdateStatus::Pending)
            {
                if rec.update_turn(me.as_str(), now)
                    && (rec.plan.strategy != UpdateStrategy::Parallel
                        || self.state.maintenance().active(now))
                {
                    self.run_exclusive(id, false);
                } else if rec.halted.is_none() {
                    self.prefetch(&rec);
                }
            } else if mine
                .as_ref()
                .is_some_and(|p| p.status == NodeUpdateStatus::Updating)
                && !self.busy.load(Ordering::SeqCst)
            {
                self.fail_orphaned(&id).await;
            }
        }
    }

    /// Our part of `id` is `updating` but nothing in this worker runs it
    /// and no switch is pending: the part was interrupted by a restart and
    /// the worker learned of it only from a peer (its own copy was never
    /// persisted: a full disk). Failed as [`Self::fail_interrupted`] does
    /// at start; left alone, the operation would wait on it for ever
    /// (chaos seed 3, a disk-full node restarted by its watchdog in its
    /// pre-check).
    async fn fail_orphaned(&self, id: &str) {
        let data_dir = self.data_dir.clone();
        let pending = tokio::task::spawn_blocking(move || switch::pending_switch(&data_dir))
            .await
            .ok()
            .flatten();
        // A switch on disk is the supervisor's to finish (post_switch, or
        // its revert after a failed post-check).
        if pending.is_some() || self.busy.load(Ordering::SeqCst) {
            return;
        }
        let Some(phase) = self
            .state
            .get(id)
            .and_then(|r| r.nodes.get(&self.node_id).map(|p| (p.status, p.phase)))
            .filter(|(status, _)| *status == NodeUpdateStatus::Updating)
            .map(|(_, phase)| phase)
        else {
            return;
        };
        tracing::warn!(operation_id = %id, ?phase, "this node's part is updating but nothing runs it (interrupted by a restart; learned from a peer)");
        self.fail(
            id,
            &format!("the node restarted during its update ({phase:?} phase) before switching"),
        )
        .await;
    }

    /// Fetches, verifies and installs the operation's target release in the
    /// background while this node waits for its turn, so that the turn
    /// only switches (only the first node fetches during its own turn).
    /// Once per operation; a failure is retried after [`PREFETCH_RETRY`].
    /// Never for an operation halted or rolling back (the caller checks).
    fn prefetch(self: &Arc<Self>, rec: &OpRecord) {
        let id = rec.plan.operation_id.clone();
        {
            let mut table = self.prefetched.lock().expect("prefetch table lock");
            match table.get(&id) {
                Some(Prefetch::Running | Prefetch::Installed { .. }) => return,
                Some(Prefetch::Failed { at }) if at.elapsed() < PREFETCH_RETRY => return,
                _ => {}
            }
            if table.len() >= MAX_PREFETCHED && !table.contains_key(&id) {
                let now = wall_ms();
                table.retain(|k, _| self.state.get(k).is_some_and(|r| !r.is_final(now)));
                if table.len() >= MAX_PREFETCHED {
                    return;
                }
            }
            table.insert(id.clone(), Prefetch::Running);
        }
        let (e, plan) = (self.clone(), rec.plan.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let res = match plan.target_version.parse::<semver::Version>() {
                Ok(v) => {
                    let _installing = e.installing.lock().await;
                    e.fetch_and_install(&v, &plan.target_blake3).await
                }
                Err(err) => Err(StepError(err.to_string())),
            };
            let staged = res.is_ok();
            let next = match res {
                Ok(()) => {
                    tracing::info!(operation_id = %id, version = %plan.target_version, elapsed_ms = started.elapsed().as_millis() as u64, "target release prefetched: fetched, verified and installed ahead of this node's turn");
                    Prefetch::Installed {
                        version: plan.target_version.clone(),
                        blake3: plan.target_blake3.clone(),
                    }
                }
                Err(err) => {
                    tracing::warn!(operation_id = %id, version = %plan.target_version, error = %err.0, "prefetch of the target release failed; the node's turn fetches it");
                    Prefetch::Failed { at: Instant::now() }
                }
            };
            e.prefetched
                .lock()
                .expect("prefetch table lock")
                .insert(id.clone(), next);
            if staged {
                e.progress(&id, |p| {
                    p.staged_at_ms.get_or_insert(wall_ms());
                })
                .await;
            }
        });
    }

    /// True when this worker's prefetch installed exactly this release.
    fn prefetched_install(&self, id: &str, version: &semver::Version, blake3: &str) -> bool {
        let table = self.prefetched.lock().expect("prefetch table lock");
        matches!(table.get(id), Some(Prefetch::Installed { version: v, blake3: b })
            if *v == version.to_string() && b == blake3)
    }

    /// Fetches and verifies a release, then installs it (the caller holds
    /// `installing`).
    async fn fetch_and_install(
        &self,
        version: &semver::Version,
        blake3: &str,
    ) -> Result<(), StepError> {
        let bytes = self.fetch_verified(version, blake3).await?;
        let data_dir = self.data_dir.clone();
        let v = version.to_string();
        tokio::task::spawn_blocking(move || switch::install_release(&data_dir, &v, &bytes))
            .await
            .map_err(|e| StepError(e.to_string()))??;
        Ok(())
    }

    fn run_exclusive(self: &Arc<Self>, id: String, rollback: bool) {
        if self.busy.swap(true, Ordering::SeqCst) {
            return;
        }
        let e = self.clone();
        tokio::spawn(async move {
            let res = if rollback {
                e.rollback_node(&id).await
            } else {
                e.update_node(&id).await
            };
            if let Err(err) = res {
                e.fail(&id, &err.0).await;
            }
            e.busy.store(false, Ordering::SeqCst);
        });
    }

    /// Records this node's failure, halts the operation, releases the lease.
    async fn fail(&self, id: &str, reason: &str) {
        tracing::error!(operation_id = id, reason, "update of this node failed");
        self.drain.draining.store(false, Ordering::SeqCst);
        let lease = self
            .state
            .get(id)
            .and_then(|r| r.nodes.get(&self.node_id).and_then(|p| p.lease.clone()));
        let was_out = self.state.get(id).is_some_and(|r| {
            r.nodes
                .get(&self.node_id)
                .is_some_and(|p| p.out_of_service_since_ms.is_some())
        });
        let me = self.node_id.clone();
        let reason_s = reason.to_string();
        self.state.update(id, |r| {
            if let Some(p) = r.nodes.get_mut(&me) {
                p.seq = p.next_seq(wall_ms());
                close_phase(p, None);
                p.status = NodeUpdateStatus::Failed;
                p.error = Some(reason_s.clone());
                p.lease = None;
                p.out_of_service_since_ms = None;
                p.completed_at_ms = Some(wall_ms());
            }
            if r.halted.is_none() {
                r.halted = Some(Mark {
                    at_ms: wall_ms(),
                    by: me.to_string(),
                    reason: format!("{me}: {reason_s}"),
                });
            }
        });
        self.push(id).await;
        self.metrics.outcome(NodeUpdateStatus::Failed);
        if self
            .state
            .get(id)
            .is_some_and(|r| r.plan.settings.auto_rollback_on_failure)
        {
            self.metrics
                .rollbacks
                .get_or_create(&CauseLabels {
                    cause: "failure".into(),
                })
                .inc();
        }
        self.audit(
            "update.node_failed",
            Some(id),
            serde_json::json!({"node_id": self.node_id, "reason": reason}),
        )
        .await;
        if was_out {
            // Serving again, on the version it runs now.
            self.audit(
                "node.in_service",
                Some(id),
                self.in_service_detail(NodeUpdateStatus::Failed, wall_ms()),
            )
            .await;
        }
        if let Some(l) = lease {
            self.release_lease(id, &l).await;
        }
    }

    async fn release_lease(&self, id: &str, l: &LeaseHold) {
        let known = self
            .state
            .get(id)
            .map(|r| r.plan.voters)
            .unwrap_or_default();
        leases::release(
            &self.p2p,
            &self.granter,
            self.node_id.as_str(),
            l.slot,
            l.epoch,
            &known,
        )
        .await;
        self.audit(
            "lease.release",
            Some(id),
            serde_json::json!({"slot": l.slot, "epoch": l.epoch, "holder": self.node_id}),
        )
        .await;
    }

    fn lease_ttl(&self, rec: &OpRecord) -> Duration {
        // Covers a restart plus the post-update check.
        Duration::from_secs(rec.plan.settings.health_check_timeout_seconds + LEASE_MARGIN_SECONDS)
    }

    /// Takes a free slot from a strict majority; waits (never proceeds)
    /// while there is no majority. Returns None if the operation stopped.
    async fn take_lease(&self, id: &str) -> Option<LeaseHold> {
        let mut warned = false;
        let mut retry = plexi_p2p::backoff::Backoff::new(LEASE_RETRY_FIRST_MS, LEASE_RETRY_MAX_MS);
        loop {
            let rec = self.state.get(id)?;
            let wanted = rec.nodes.get(&self.node_id)?.status;
            let stopped = if wanted == NodeUpdateStatus::RollingBack {
                !rec.rolling_back()
            } else {
                rec.halted.is_some() || rec.rolling_back()
            };
            if stopped {
                return None;
            }
            let epoch = wall_ms();
            let slots = rec.slots();
            let first: u32 = rand::Rng::gen_range(&mut rand::thread_rng(), 0..slots);
            for slot in (0..slots).map(|i| (first + i) % slots) {
                let want = leases::Want {
                    holder: self.node_id.as_str(),
                    slot,
                    epoch,
                    ttl: self.lease_ttl(&rec),
                    operation_id: id,
                    known: &rec.plan.voters,
                };
                match leases::acquire(&self.p2p, &self.granter, want).await {
                    Ok(hold) => {
                        self.audit(
                            "lease.grant",
                            Some(id),
                            serde_json::json!({"slot": slot, "epoch": epoch, "holder": self.node_id}),
                        )
                        .await;
                        return Some(hold);
                    }
                    Err(e) => {
                        if !warned {
                            tracing::info!(operation_id = id, error = %e, "waiting for an update lease");
                            warned = true;
                        }
                    }
                }
            }
            // Jittered, so two nodes splitting the grants do not repeat it.
            let now = wall_ms();
            retry.attempted(now, rand::Rng::gen(&mut rand::thread_rng()));
            tokio::time::sleep(Duration::from_millis(retry.wait_ms(now))).await;
        }
    }

    /// Renews the lease before a destructive step.
    async fn renew(&self, id: &str) -> Result<(), StepError> {
        let rec = self
            .state
            .get(id)
            .ok_or(StepError("operation vanished".into()))?;
        let l = rec
            .nodes
            .get(&self.node_id)
            .and_then(|p| p.lease.clone())
            .ok_or(StepError("no lease held".into()))?;
        let want = leases::Want {
            holder: self.node_id.as_str(),
            slot: l.slot,
            epoch: l.epoch,
            ttl: self.lease_ttl(&rec),
            operation_id: id,
            known: &rec.plan.voters,
        };
        let hold = leases::acquire(&self.p2p, &self.granter, want)
            .await
            .map_err(|e| StepError(format!("lease renewal failed: {e}")))?;
        self.progress(id, |p| p.lease = Some(hold)).await;
        Ok(())
    }

    fn halted(&self, id: &str) -> bool {
        self.state
            .get(id)
            .is_none_or(|r| r.halted.is_some() || r.rolling_back())
    }

    async fn update_node(self: &Arc<Self>, id: &str) -> Result<(), StepError> {
        let rec = self
            .state
            .get(id)
            .ok_or(StepError("operation vanished".into()))?;
        let plan = rec.plan.clone();
        self.progress(id, |p| {
            p.status = NodeUpdateStatus::Updating;
            p.phase = UpdatePhase::Lease;
            p.started_at_ms = Some(wall_ms());
            p.phase_since_ms = Some(wall_ms());
            p.error = None;
        })
        .await;
        let Some(hold) = self.take_lease(id).await else {
            self.progress(id, |p| {
                p.status = NodeUpdateStatus::Pending;
                p.phase = UpdatePhase::Waiting;
            })
            .await;
            return Ok(());
        };
        self.progress(id, |p| p.lease = Some(hold)).await;

        self.enter_phase(id, UpdatePhase::PreCheck).await;
        self.pre_check_with_retries(id).await?;
        if self.halted(id) {
            return Err(StepError(
                "operation halted before this node's update".into(),
            ));
        }

        self.enter_phase(id, UpdatePhase::Drain).await;
        self.renew(id).await?;
        self.start_drain(id).await;

        self.enter_phase(id, UpdatePhase::Backup).await;
        let backup_dir = if plan.settings.backup_before_update {
            Some(self.backup(id)?)
        } else {
            None
        };

        self.enter_phase(id, UpdatePhase::Fetch).await;
        let target: semver::Version = plan.target_version.parse()?;
        // A prefetch still installing finishes first.
        let installing = self.installing.lock().await;
        if self.prefetched_install(id, &target, &plan.target_blake3) {
            tracing::info!(operation_id = id, version = %target, "target release already fetched, verified and installed (prefetched)");
            self.enter_phase(id, UpdatePhase::Install).await;
        } else {
            let bytes = match self.fetch_verified(&target, &plan.target_blake3).await {
                Ok(b) => b,
                Err(e) => {
                    self.audit(
                        "release.refused",
                        Some(id),
                        serde_json::json!({"version": target.to_string(), "reason": e.0}),
                    )
                    .await;
                    return Err(e);
                }
            };
            self.enter_phase(id, UpdatePhase::Install).await;
            let data_dir = self.data_dir.clone();
            let v = target.to_string();
            tokio::task::spawn_blocking(move || switch::install_release(&data_dir, &v, &bytes))
                .await
                .map_err(|e| StepError(e.to_string()))??;
        }
        drop(installing);

        self.renew(id).await?;
        if self.halted(id) {
            return Err(StepError("operation halted before the restart".into()));
        }
        self.enter_phase(id, UpdatePhase::Restart).await;
        self.progress(id, |p| {
            p.on_target = true;
            p.rollback_available = true;
            p.staged_at_ms.get_or_insert(wall_ms());
        })
        .await;
        self.switch(SwitchRequest {
            operation_id: id.into(),
            from_version: self.version.to_string(),
            to_version: target.to_string(),
            to_blake3: plan.target_blake3.clone(),
            deadline_seconds: plan.settings.health_check_timeout_seconds,
            // A failed or crashed target may have migrated the store and
            // config: the supervisor puts the backup back (see
            // `switch::restore`); writes since are caught up from replicas.
            restore_data_on_failure: backup_dir.is_some(),
            backup_dir,
        })
        .await
    }

    async fn rollback_node(self: &Arc<Self>, id: &str) -> Result<(), StepError> {
        let rec = self
            .state
            .get(id)
            .ok_or(StepError("operation vanished".into()))?;
        let mine = rec
            .nodes
            .get(&self.node_id)
            .cloned()
            .ok_or(StepError("not a target".into()))?;
        self.progress(id, |p| {
            p.status = NodeUpdateStatus::RollingBack;
            p.phase = UpdatePhase::Lease;
            p.phase_since_ms = Some(wall_ms());
        })
        .await;
        let Some(hold) = self.take_lease(id).await else {
            return Ok(());
        };
        self.progress(id, |p| p.lease = Some(hold)).await;
        if self.version.to_string() == mine.from_version {
            // Already back (the supervisor reverted us): nothing to switch.
            self.finish(id, NodeUpdateStatus::RolledBack).await;
            return Ok(());
        }
        self.enter_phase(id, UpdatePhase::Drain).await;
        self.renew(id).await?;
        self.start_drain(id).await;
        let from = mine.from_version.clone();
        let path = switch::release_dir(&self.data_dir, &from).join("plexi");
        let p2 = path.clone();
        let hash = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
            let mut h = blake3::Hasher::new();
            h.update_reader(std::fs::File::open(&p2)?)?;
            Ok(h.finalize().to_hex().to_string())
        })
        .await
        .map_err(|e| StepError(e.to_string()))?
        .map_err(|e| StepError(format!("previous version binary {}: {e}", path.display())))?;
        self.enter_phase(id, UpdatePhase::Restart).await;
        self.switch(SwitchRequest {
            operation_id: id.into(),
            from_version: self.version.to_string(),
            to_version: from,
            to_blake3: hash,
            deadline_seconds: rec.plan.settings.health_check_timeout_seconds,
            backup_dir: None,
            restore_data_on_failure: false,
        })
        .await
    }

    /// Hands the switch to the supervisor and exits the worker.
    async fn switch(&self, req: SwitchRequest) -> Result<(), StepError> {
        if !switch::supervised() {
            return Err(StepError(
                "this worker is not running under the plexi supervisor".into(),
            ));
        }
        let id = req.operation_id.clone();
        // Make sure a majority has our latest progress before we go dark.
        let acks = self.push(&id).await;
        tracing::info!(operation_id = %id, to = %req.to_version, acks, "handing over to the supervisor for the switch");
        self.audit(
            "node.restart",
            Some(&id),
            serde_json::json!({"node_id": self.node_id, "from": req.from_version, "to": req.to_version}),
        )
        .await;
        let data_dir = self.data_dir.clone();
        tokio::task::spawn_blocking(move || switch::request_switch(&data_dir, &req))
            .await
            .map_err(|e| StepError(e.to_string()))??;
        let _ = self.exit.send(Some(switch::EXIT_SWITCH));
        // Stay busy: the process is exiting.
        std::future::pending::<()>().await;
        Ok(())
    }

    async fn start_drain(&self, id: &str) {
        self.drain.draining.store(true, Ordering::SeqCst);
        self.progress(id, |p| p.out_of_service_since_ms = Some(wall_ms()))
            .await;
        self.audit(
            "node.out_of_service",
            Some(id),
            serde_json::json!({"node_id": self.node_id}),
        )
        .await;
        let start = Instant::now();
        while self.drain.in_flight.count() > 0 && start.elapsed() < DRAIN_WAIT {
            tokio::time::sleep(DRAIN_POLL).await;
        }
    }

    /// [`Self::pre_check`], up to [`PRE_CHECK_ATTEMPTS`] times while the
    /// operation runs.
    async fn pre_check_with_retries(&self, id: &str) -> Result<(), StepError> {
        let mut attempt = 1;
        loop {
            match self.pre_check().await {
                Ok(()) => return Ok(()),
                Err(e) if attempt < PRE_CHECK_ATTEMPTS && !self.halted(id) => {
                    tracing::warn!(operation_id = id, attempt, error = %e.0, "pre-check failed; retrying");
                    tokio::time::sleep(PRE_CHECK_RETRY).await;
                    self.renew(id).await?;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The node is healthy, has disk space, and every object it holds has
    /// another live replica that is current: one this node just synced
    /// with. Syncs with the peers run at once and cost a digest comparison
    /// where replicas agree (anti-entropy examines only the partitions that
    /// differ and that one side owns). A peer that fails its sync (killed,
    /// cut off) does not fail the check by itself; it just counts for none
    /// of the objects. A peer out of service for an update (a batch-mate of
    /// a parallel update restarting) is not asked: it catches up by itself
    /// when it is back.
    async fn pre_check(&self) -> Result<(), StepError> {
        self.checks
            .healthy()
            .await
            .map_err(|e| StepError(format!("pre-check: node unhealthy: {e}")))?;
        let (storage, data_dir) = (self.storage.clone(), self.data_dir.clone());
        let room = tokio::task::spawn_blocking(move || -> Result<(), String> {
            let store = storage.store_bytes_on_disk().map_err(|e| e.to_string())?;
            let (_, free) = crate::node::health::fs_space(&data_dir).map_err(|e| e.to_string())?;
            room_for_backup(store, free)
        })
        .await
        .map_err(|e| StepError(e.to_string()))?;
        room.map_err(|e| StepError(format!("pre-check: disk: {e}")))?;
        let out = self.out_of_service();
        let peers: Vec<_> = self
            .storage
            .peers()
            .into_iter()
            .filter(|p| !out.contains(p.name.as_str()))
            .collect();
        let syncs = peers.iter().map(|peer| async move {
            let progress = crate::storage::repair::Progress::default();
            let sync = crate::storage::repair::anti_entropy_with(&self.storage, peer, &progress);
            let r = tokio::select! {
                r = tokio::time::timeout(PRE_CHECK_SYNC_LIMIT, sync) => r.unwrap_or_else(|_| {
                    Err(format!("sync did not finish within {} s", PRE_CHECK_SYNC_LIMIT.as_secs()))
                }),
                () = self.until_unreachable(&peer.peer_id) => Err("the peer went down during the sync".to_string()),
            };
            (peer, r)
        });
        let mut current = std::collections::BTreeSet::new();
        let mut failures = Vec::new();
        for (peer, r) in futures::future::join_all(syncs).await {
            match r {
                Ok(()) => {
                    current.insert(peer.peer_id.clone());
                }
                Err(e) => {
                    tracing::info!(node_id = %peer.name, error = %e, "pre-check: sync failed; the peer counts as no current replica");
                    failures.push(format!("{}: {e}", peer.name));
                }
            }
        }
        let s = self.storage.clone();
        let lonely = tokio::task::spawn_blocking(move || -> Result<Vec<String>, String> {
            let members = s.members();
            let mut lonely = Vec::new();
            for (id, rf) in live_objects(&s, PRE_CHECK_MAX_OBJECTS)? {
                let owners = s.replicas_among(&id, rf, &members);
                if !owners.iter().any(|o| current.contains(&o.peer_id)) {
                    lonely.push(id);
                    if lonely.len() >= 5 {
                        break;
                    }
                }
            }
            Ok(lonely)
        })
        .await
        .map_err(|e| StepError(e.to_string()))?
        .map_err(StepError)?;
        if !lonely.is_empty() {
            return Err(StepError(format!(
                "pre-check: objects with no other live, current replica: {}{}",
                lonely.join(", "),
                if failures.is_empty() {
                    String::new()
                } else {
                    format!(" (syncs failed: {})", failures.join("; "))
                }
            )));
        }
        Ok(())
    }

    /// Resolves once membership no longer judges `peer_id` reachable.
    async fn until_unreachable(&self, peer_id: &str) {
        loop {
            let reachable = self
                .storage
                .members()
                .iter()
                .any(|m| m.peer_id == peer_id && m.reachable());
            if !reachable {
                return;
            }
            tokio::time::sleep(PRE_CHECK_PEER_POLL).await;
        }
    }

    /// The nodes out of service (drained or restarting) for an update of
    /// an unfinished operation, as the replicated state says.
    fn out_of_service(&self) -> std::collections::BTreeSet<NodeId> {
        let now = wall_ms();
        self.state
            .all()
            .into_iter()
            .filter(|r| !r.is_final(now))
            .flat_map(|r| r.nodes.into_iter())
            .filter(|(_, p)| p.out_of_service_since_ms.is_some())
            .map(|(n, _)| n)
            .collect()
    }

    /// Writes `backups/<ms>-<op>/`: the running binary, the config copy
    /// (sealed as [`switch::sealed::SEALED_CONFIG`] under the data key when there is one)
    /// and `backup.json`.
    fn backup(&self, id: &str) -> Result<PathBuf, StepError> {
        let dir = self
            .data_dir
            .join("backups")
            .join(format!("{}-{}", wall_ms(), id));
        std::fs::create_dir_all(&dir)?;
        let installed = switch::release_dir(&self.data_dir, &self.version).join("plexi");
        if installed.is_file() {
            // Installed releases are never changed once renamed into place
            // (`switch::finish_install`): a link, not a copy of the binary.
            crate::files::link_file(&installed, &dir.join("plexi"))?;
        } else {
            std::fs::copy(std::env::current_exe()?, dir.join("plexi"))?;
        }
        // With a data key the config copy is sealed under it (the binary
        // is a public release): `switch::sealed::open_file` opens it.
        let data_key = self.storage.engine().keyring().current_key().cloned();
        if let Some(cfg) = &self.config_file {
            if cfg.is_file() {
                match &data_key {
                    Some(key) => switch::sealed::seal_file(
                        cfg,
                        &dir.join(switch::sealed::SEALED_CONFIG),
                        key,
                        switch::sealed::SEALED_CONFIG,
                    )?,
                    None => {
                        std::fs::copy(cfg, dir.join("clustering.yml"))?;
                    }
                }
            }
        }
        let meta = serde_json::json!({
            "operation_id": id,
            "version": self.version.to_string(),
            "config_file": self.config_file.as_ref().map(|p| p.display().to_string()),
            "at_ms": wall_ms(),
            "data": "store/ is snapshotted by the supervisor while the worker is stopped",
            "sealed_under_data_key": data_key.as_ref().map(|k| k.fingerprint()),
        });
        std::fs::write(dir.join("backup.json"), serde_json::to_vec_pretty(&meta)?)?;
        Ok(dir)
    }

    async fn fetch_verified(
        &self,
        version: &semver::Version,
        expected_blake3: &str,
    ) -> Result<Vec<u8>, StepError> {
        let manifest = self
            .storage
            .get(&release::manifest_id(version), Some(Consistency::Eventual))
            .await
            .map_err(|e| StepError(format!("fetch manifest: {}", e)))?;
        let signed: plexi_api::model::SignedRelease = serde_json::from_slice(&manifest.bytes)
            .map_err(|e| StepError(format!("manifest: {e}")))?;
        release::verify(&signed, &self.trusted).map_err(|e| StepError(format!("refused: {e}")))?;
        if signed.manifest.blake3 != expected_blake3 {
            return Err(StepError(
                "refused: the published manifest differs from the planned release".into(),
            ));
        }
        let bin = self
            .storage
            .get(&release::binary_id(version), Some(Consistency::Eventual))
            .await
            .map_err(|e| StepError(format!("fetch binary: {}", e)))?;
        release::check_binary(&signed.manifest, &bin.bytes)
            .map_err(|e| StepError(format!("refused: {e}")))?;
        Ok(bin.bytes.to_vec())
    }

    /// Marks this node's part done and releases the lease.
    async fn finish(&self, id: &str, status: NodeUpdateStatus) {
        let lease = self
            .state
            .get(id)
            .and_then(|r| r.nodes.get(&self.node_id).and_then(|p| p.lease.clone()));
        let rolled = status == NodeUpdateStatus::RolledBack;
        let in_service_ms = wall_ms();
        self.progress(id, |p| {
            close_phase(p, Some(UpdatePhase::Done));
            p.status = status;
            p.progress = 100.0;
            p.completed_at_ms = Some(wall_ms());
            p.out_of_service_since_ms = None;
            p.lease = None;
            if rolled {
                p.on_target = false;
            }
        })
        .await;
        self.metrics.outcome(status);
        if let Some(rec) = self.state.get(id) {
            if let Some(p) = rec.nodes.get(&self.node_id) {
                if let (Some(a), Some(b)) = (p.started_at_ms, p.completed_at_ms) {
                    if status == NodeUpdateStatus::Completed {
                        self.metrics
                            .durations
                            .observe(b.saturating_sub(a) as f64 / 1000.0);
                    }
                }
            }
        }
        // The next node starts on seeing this one completed and asks for
        // the lease at once: release it without waiting on the audit entry.
        // The entry may be appended after the release (a restarted worker's
        // audit log waits for its catch-up first), so it names the moment
        // the node was in service (`in_service_at`, before the release).
        let in_service = self.audit(
            "node.in_service",
            Some(id),
            self.in_service_detail(status, in_service_ms),
        );
        let release = async {
            if let Some(l) = lease {
                self.release_lease(id, &l).await;
            }
        };
        tokio::join!(in_service, release);
    }

    /// At start: finish a switch this worker is the target of (post-check,
    /// then ready), or report a switch the supervisor undid, or fail an
    /// update of this node that a crash interrupted before its switch.
    async fn resume_after_restart(self: &Arc<Self>) {
        if let Some(pending) = switch::pending_switch(&self.data_dir) {
            if pending.to_version == self.version.to_string() {
                self.busy.store(true, Ordering::SeqCst);
                let e = self.clone();
                tokio::spawn(async move {
                    e.post_switch(pending).await;
                    e.busy.store(false, Ordering::SeqCst);
                });
            }
            return;
        }
        self.report_switch_result().await;
        self.fail_interrupted().await;
    }

    /// This node's part of an unfinished operation still says `updating`,
    /// but this worker just started and has no switch to finish: the worker
    /// that was doing it died between taking its lease and handing over to
    /// the supervisor (chaos: a kill during the pre-check). Nobody would
    /// ever move it on (the engine starts a node's part only from
    /// `pending`, and the dead-holder watch needs the node dead), so the
    /// operation hung. It is this node's failure: the operation halts, and
    /// rolls back when configured.
    async fn fail_interrupted(&self) {
        let now = wall_ms();
        for rec in self.state.all() {
            if rec.is_final(now) || rec.rolling_back() {
                continue;
            }
            let Some(p) = rec.nodes.get(&self.node_id) else {
                continue;
            };
            if p.status != NodeUpdateStatus::Updating {
                continue;
            }
            let phase = p.phase;
            let id = rec.plan.operation_id.clone();
            tracing::warn!(operation_id = %id, ?phase, "this node's update was interrupted by a restart before its switch");
            self.fail(
                &id,
                &format!("the node restarted during its update ({phase:?} phase) before switching"),
            )
            .await;
        }
    }

    async fn report_switch_result(&self) {
        let data_dir = self.data_dir.clone();
        let Some(result) =
            tokio::task::spawn_blocking(move || switch::take_switch_result(&data_dir))
                .await
                .ok()
                .flatten()
        else {
            return;
        };
        let id = result.operation_id.clone();
        if self.state.get(&id).is_none() {
            return;
        }
        if result.outcome == SwitchOutcome::RolledBack {
            let reason = result
                .reason
                .clone()
                .unwrap_or_else(|| "the new version failed".into());
            // Back on the version the supervisor returned to.
            let on_target = self
                .state
                .get(&id)
                .is_some_and(|r| r.plan.target_version == self.version.to_string());
            self.progress(&id, |p| p.on_target = on_target).await;
            self.audit(
                "update.auto_revert",
                Some(&id),
                serde_json::json!({"node_id": self.node_id, "from": result.to_version, "to": result.from_version, "reason": reason}),
            )
            .await;
            self.fail(
                &id,
                &format!(
                    "{} did not come up, returned to {}: {reason}",
                    result.to_version, result.from_version
                ),
            )
            .await;
        }
    }

    async fn post_switch(self: &Arc<Self>, req: SwitchRequest) {
        let id = req.operation_id.clone();
        let started = Instant::now();
        let deadline = Duration::from_secs(req.deadline_seconds.saturating_sub(1).max(1));
        // Wait for the replicated state to know this operation (it is in
        // our own sled, so normally at once).
        let Some(rec) = self.state.get(&id) else {
            tracing::error!(operation_id = %id, "switch for an unknown operation; not declaring ready");
            return;
        };
        let rolling_back = rec
            .nodes
            .get(&self.node_id)
            .is_some_and(|p| p.status == NodeUpdateStatus::RollingBack);
        self.enter_phase(&id, UpdatePhase::PostCheck).await;
        let check = async {
            self.wait_rejoined(deadline.saturating_sub(started.elapsed()))
                .await?;
            // The lease was held across the restart; renew it (retrying:
            // connections to every granter may still be coming up).
            loop {
                match self.renew(&id).await {
                    Ok(()) => break,
                    Err(e) if started.elapsed() + Duration::from_secs(2) < deadline => {
                        tracing::debug!(error = %e.0, "lease renewal after restart; retrying");
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    Err(e) => return Err(e),
                }
            }
            self.post_check().await
        };
        match tokio::time::timeout(deadline, check).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(operation_id = %id, error = %e.0, "post-update check failed; not declaring ready");
                self.progress(&id, |p| p.error = Some(format!("post-check: {}", e.0)))
                    .await;
                return;
            }
            Err(_) => {
                tracing::error!(operation_id = %id, "post-update check timed out; not declaring ready");
                return;
            }
        }
        let data_dir = self.data_dir.clone();
        let v = self.version.to_string();
        if let Err(e) =
            tokio::task::spawn_blocking(move || switch::write_ready(&data_dir, &v)).await
        {
            tracing::error!(error = %e, "cannot write ready");
            return;
        }
        // The supervisor confirms the switch once it saw ready.
        let mut result = None;
        while started.elapsed() < deadline + Duration::from_secs(10) {
            let data_dir = self.data_dir.clone();
            result = tokio::task::spawn_blocking(move || switch::take_switch_result(&data_dir))
                .await
                .ok()
                .flatten();
            if result.is_some() {
                break;
            }
            tokio::time::sleep(POST_SWITCH_POLL).await;
        }
        match result {
            Some(r) if r.outcome == SwitchOutcome::Switched => {
                let status = if rolling_back {
                    NodeUpdateStatus::RolledBack
                } else {
                    NodeUpdateStatus::Completed
                };
                self.finish(&id, status).await;
            }
            other => {
                tracing::error!(operation_id = %id, result = ?other, "the supervisor did not confirm the switch");
            }
        }
    }

    /// Rejoined: a majority of members alive, caught up, healthy.
    async fn wait_rejoined(&self, budget: Duration) -> Result<(), StepError> {
        let start = Instant::now();
        loop {
            let members = self.p2p.members();
            let voters = members
                .iter()
                .filter(|m| m.status != MemberStatus::Left)
                .count();
            let alive = members
                .iter()
                .filter(|m| m.status == MemberStatus::Alive)
                .count();
            let joined =
                alive >= super::leases::rules::majority(voters) && self.storage.caught_up();
            // The health check writes and flushes the store: run it only
            // once the cheap conditions hold, not on every poll.
            let healthy = if joined {
                self.checks.healthy().await
            } else {
                Err("not asked before a majority is alive and the node caught up".to_string())
            };
            if joined && healthy.is_ok() {
                break;
            }
            if start.elapsed() > budget {
                return Err(StepError(format!(
                    "not rejoined in time ({alive} of {voters} members alive, caught up: {}, health: {:?})",
                    self.storage.caught_up(),
                    healthy
                )));
            }
            tokio::time::sleep(POST_SWITCH_POLL).await;
        }
        Ok(())
    }

    /// Reports the target version through its API, objects readable.
    async fn post_check(&self) -> Result<(), StepError> {
        // The API answers, as this version.
        let reported = self.checks.api_version().await.map_err(StepError)?;
        if reported != self.version.to_string() {
            return Err(StepError(format!("API reports version {reported}")));
        }
        // Objects this node holds read back through the data path.
        let s = self.storage.clone();
        let sample = tokio::task::spawn_blocking(move || live_objects(&s, POST_CHECK_SAMPLE))
            .await
            .map_err(|e| StepError(e.to_string()))?
            .map_err(StepError)?;
        for (id, _) in sample {
            self.storage
                .get(&id, Some(Consistency::Eventual))
                .await
                .map_err(|e| StepError(format!("object {id} unreadable: {}", e)))?;
        }
        Ok(())
    }

    /// Any node: a target whose lease ran out while its node is dead is
    /// declared failed, which halts the operation.
    async fn watch_holders(&self, rec: &OpRecord, now: u64) {
        let members = self.p2p.members();
        let dead = |name: &str| {
            members
                .iter()
                .any(|m| m.record.state.name == name && m.status == MemberStatus::Dead)
        };
        for (node, p) in &rec.nodes {
            if rec.failed_nodes.contains_key(node) {
                continue;
            }
            let busy = matches!(
                p.status,
                NodeUpdateStatus::Updating | NodeUpdateStatus::RollingBack
            );
            let expired = p
                .lease
                .as_ref()
                .is_some_and(|l| now > l.valid_until_ms + HOLDER_GRACE_MS);
            if busy && expired && dead(node.as_str()) {
                let reason = format!("{node} died holding its update lease (phase {})", p.phase);
                tracing::warn!(operation_id = %rec.plan.operation_id, node_id = %node, "lease holder is dead; marking it failed");
                let me = self.node_id.clone();
                let node_c = node.clone();
                let reason_c = reason.clone();
                self.state.update(&rec.plan.operation_id, |r| {
                    r.failed_nodes.insert(
                        node_c.clone(),
                        Mark {
                            at_ms: now,
                            by: me.to_string(),
                            reason: reason_c.clone(),
                        },
                    );
                    if r.halted.is_none() {
                        r.halted = Some(Mark {
                            at_ms: now,
                            by: me.to_string(),
                            reason: reason_c.clone(),
                        });
                    }
                });
                self.push(&rec.plan.operation_id).await;
                self.audit(
                    "update.node_failed",
                    Some(&rec.plan.operation_id),
                    serde_json::json!({"node_id": node, "reason": reason}),
                )
                .await;
            }
        }
    }

    async fn watch_maintenance(&self, rec: &OpRecord, now: u64) {
        if rec.plan.strategy != UpdateStrategy::Parallel
            || rec.executed.is_none()
            || rec.halted.is_some()
        {
            return;
        }
        if rec.rolling_back() {
            return;
        }
        let m = self.state.maintenance();
        // Maintenance travels separately from the operation: give it time
        // to arrive before calling its absence an end.
        let executed_at = rec.executed.as_ref().map(|e| e.at_ms).unwrap_or(now);
        // Left because this operation finished (seen final elsewhere first).
        let finished_elsewhere =
            !m.enabled && m.operation_id.as_deref() == Some(rec.plan.operation_id.as_str());
        if !m.active(now) && !finished_elsewhere && now > executed_at + MAINTENANCE_ARRIVAL_MS {
            let reason = "maintenance mode ended before the parallel update finished".to_string();
            let me = self.node_id.clone();
            self.state.update(&rec.plan.operation_id, |r| {
                if r.halted.is_none() {
                    r.halted = Some(Mark {
                        at_ms: now,
                        by: me.to_string(),
                        reason,
                    });
                }
            });
            self.push(&rec.plan.operation_id).await;
        }
    }

    /// Maintenance entered for an operation is left once it is final, on
    /// every path (the first node to see it final does it).
    async fn leave_maintenance_if_ours(&self, rec: &OpRecord) {
        let m = self.state.maintenance();
        if m.enabled && m.operation_id.as_deref() == Some(rec.plan.operation_id.as_str()) {
            let next = self.state.next_maintenance(
                false,
                &format!("operation {} finished", rec.plan.operation_id),
                &self.actor,
                0,
                Some(rec.plan.operation_id.clone()),
            );
            if self.state.merge_maintenance(&next) {
                state::push(&self.state, &self.p2p, None).await;
                self.audit(
                    "maintenance.off",
                    Some(&rec.plan.operation_id),
                    serde_json::json!({"reason": next.reason}),
                )
                .await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_needs_room_for_a_backup_and_a_restore() {
        let mib = 1 << 20;
        assert!(room_for_backup(100 * mib, 456 * mib).is_ok());
        let e = room_for_backup(100 * mib, 455 * mib).unwrap_err();
        assert!(e.contains("needs 456 MiB"), "{e}");
        assert!(
            room_for_backup(u64::MAX, u64::MAX - 1).is_err(),
            "no overflow"
        );
    }
}
