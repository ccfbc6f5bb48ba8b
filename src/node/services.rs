//! The node's services, started in dependency order over the store and the
//! swarm: storage (and its repair loops), the audit log, the update lease
//! granter, the replicated update state, the alerts derived from what they
//! replicate, and the update engine; and the cluster event stream they feed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use plexi_api::model::{ClusterEvent, Liveness};
use plexi_api::InFlight;
use plexi_p2p::P2pHandle;
use prometheus_client::registry::Registry;
use tokio::sync::{broadcast, watch};

use super::{startup, Node, NodeError};
use crate::audit::AuditLog;
use crate::config::Config;
use crate::storage::{Storage, StorageMetrics};
use crate::updates::engine::{Drain, Engine, NodeChecks, UpdateMetrics};
use crate::updates::leases::Granter;
use crate::updates::ops::OpSettings;
use crate::updates::state::UpdateState;
use plexi_util::version::VERSION;

/// Bound on the cluster event stream's buffer (slow SSE readers lag).
const EVENT_BUFFER: usize = 1024;

/// What the API and the signal handling need from the started services.
pub struct Services {
    pub storage: Arc<Storage>,
    pub audit: Arc<AuditLog>,
    pub engine: Arc<Engine>,
    pub events: broadcast::Sender<ClusterEvent>,
    /// Data requests in flight; the update pipeline waits on it to drain.
    pub in_flight: InFlight,
    /// Set by the engine when the worker must hand over to the supervisor.
    pub exit: watch::Receiver<Option<i32>>,
}

/// Starts every service and registers each with `node` so peer calls reach it.
pub fn start(
    node: &Arc<Node>,
    config: &Config,
    config_path: Option<PathBuf>,
    api_bound: SocketAddr,
    p2p: &P2pHandle,
    registry: &mut Registry,
) -> Result<Services, NodeError> {
    let store = &node.store;
    let storage = Storage::new(
        config.distributed_storage.clone(),
        node.peer_id,
        p2p.clone(),
        store.clone(),
        StorageMetrics::register(registry),
    );
    node.storage.set(storage.clone()).ok().expect("set once");
    crate::storage::repair::spawn(storage.clone(), super::start_of(config));
    crate::storage::report::spawn_census_gauges(storage.clone());
    registry.register_collector(Box::new(crate::storage::gauges::StorageGauges(
        storage.clone(),
    )));

    let audit = AuditLog::open(store, node.keypair.clone(), node.name.clone(), registry)
        .map_err(startup("audit log"))?;
    node.audit.set(audit.clone()).ok().expect("set once");
    audit.spawn_sync(p2p.clone());

    audit_storage_jobs(&storage, &audit, &node.name);

    let events = broadcast::channel(EVENT_BUFFER).0;
    forward_audit_events(&audit, events.clone());

    let granter = Granter::open(store.tree("updates.leases").map_err(startup("store"))?);
    node.granter.set(granter.clone()).ok().expect("set once");
    let update_state = UpdateState::open(
        node.name.clone(),
        store.tree("updates.ops").map_err(startup("store"))?,
        store.tree("updates.meta").map_err(startup("store"))?,
        events.clone(),
    );
    node.updates
        .set(update_state.clone())
        .ok()
        .expect("set once");
    crate::updates::state::spawn_sync(update_state.clone(), p2p.clone());
    registry.register_collector(Box::new(crate::updates::engine::OperationGauges(
        update_state.clone(),
    )));

    let s = &config.distributed_storage;
    let alerts = crate::alerts::Alerts::new(
        crate::alerts::rules::Thresholds {
            warn_node_usage_percentage: s.warn_node_usage_percentage,
            max_node_usage_percentage: s.max_node_usage_percentage,
        },
        events.clone(),
        registry,
    );
    node.alerts.set(alerts.clone()).ok().expect("set once");
    crate::alerts::spawn(alerts, p2p.clone(), update_state.clone());

    let in_flight = InFlight::default();
    let (exit_tx, exit) = watch::channel(None::<i32>);
    let u = &config.cluster_updates;
    let engine = Engine::new(
        node.name.clone(),
        semver::Version::parse(VERSION).expect("build.rs checks the version"),
        node.data_dir.clone(),
        config_path,
        p2p.clone(),
        storage.clone(),
        granter,
        update_state,
        audit.clone(),
        u.release_public_keys.clone(),
        OpSettings::from(u),
        Arc::new(Drain {
            draining: Default::default(),
            in_flight: in_flight.clone(),
        }),
        exit_tx,
        Arc::new(Checks {
            node: node.clone(),
            api_address: api_bound,
        }),
        UpdateMetrics::register(registry),
    );
    engine.spawn();
    Ok(Services {
        storage,
        audit,
        engine,
        events,
        in_flight,
        exit,
    })
}

/// Appends storage job starts (with the caller) and each node's part ending
/// (with its counts) to the audit log.
fn audit_storage_jobs(storage: &Arc<Storage>, audit: &Arc<AuditLog>, node_name: &str) {
    use crate::storage::jobs::JobEvent;
    let audit = audit.clone();
    let node_actor = format!("node:{node_name}");
    storage.jobs.on_event(Box::new(move |event| {
        let audit = audit.clone();
        let (actor, action, job_id, detail) = match event {
            JobEvent::Started {
                job_id,
                kind,
                actor,
            } => (
                actor,
                format!("storage.{kind}.started"),
                job_id,
                serde_json::json!({ "kind": kind }),
            ),
            JobEvent::PartFinished {
                job_id,
                kind,
                status,
            } => (
                node_actor.clone(),
                format!("storage.{kind}.part_finished"),
                job_id,
                serde_json::json!({
                    "kind": kind,
                    "status": status.status,
                    "examined": status.examined,
                    "total": status.total,
                    "reencrypted": status.reencrypted,
                    "moved_objects": status.moved_objects,
                    "removed": status.removed,
                    "repaired": status.repaired,
                    "error": status.error,
                }),
            ),
        };
        tokio::spawn(async move {
            if let Err(e) = audit.append(&actor, &action, Some(&job_id), detail).await {
                tracing::warn!(error = %e, %job_id, "cannot audit a storage job event");
            }
        });
    }));
}

/// Bound on the engine's request to this node's own API.
const SELF_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// What the update engine asks of this node: its health checks, and the
/// version its API reports (over HTTP, to prove it serves).
struct Checks {
    node: Arc<Node>,
    api_address: SocketAddr,
}

#[async_trait::async_trait]
impl NodeChecks for Checks {
    async fn healthy(&self) -> Result<(), String> {
        let r = self.node.local_health().await;
        if r.healthy {
            return Ok(());
        }
        Err(r
            .checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| format!("{}: {}", c.name, c.detail))
            .collect::<Vec<_>>()
            .join("; "))
    }

    async fn api_version(&self) -> Result<String, String> {
        let url = format!("http://{}/health", self.api_address);
        let live: Liveness = reqwest::Client::new()
            .get(&url)
            .timeout(SELF_CHECK_TIMEOUT)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| format!("own API at {url}: {e}"))?
            .json()
            .await
            .map_err(|e| format!("own API at {url} answered: {e}"))?;
        Ok(live.version)
    }
}

/// Audit entries (local or merged from peers) go on the event stream too.
fn forward_audit_events(audit: &AuditLog, events: broadcast::Sender<ClusterEvent>) {
    let mut entries = audit.subscribe();
    tokio::spawn(async move {
        loop {
            match entries.recv().await {
                Ok(entry) => {
                    let _ = events.send(ClusterEvent {
                        kind: "audit".into(),
                        at: entry.at.clone(),
                        data: serde_json::to_value(&entry).unwrap_or_default(),
                    });
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::debug!(skipped = n, "audit events lagged")
                }
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    });
}
