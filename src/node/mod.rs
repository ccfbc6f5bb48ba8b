//! `plexi node`: wires one node together. Opens the data dir (identity,
//! store, tokens), starts the p2p swarm and the REST API, keeps the node's own
//! record current, answers peers' application calls, and leaves the cluster
//! gracefully on SIGTERM/SIGINT.
//!
//! Data dir layout: `identity.key` (libp2p keypair), `store/` (sled),
//! `admin.token` (when generated), `node.json` (runtime addresses, rewritten
//! at every start).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use plexi_api::model::{HealthCheck, HealthReport, NodeView};
use plexi_api::{ApiMetrics, ApiState};
use plexi_p2p::codec::encode_cbor;
use plexi_p2p::{
    LocalInfo, MemberStatus, MemberView, Multiaddr, P2pConfig, P2pEvent, P2pHandle, PeerId, Timings,
};
use plexi_store::NodeStore;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::sync::watch;

mod api;
mod health;
mod tokens;

use crate::config::{Config, ConfigError, Overrides};
use crate::storage::{wire, Storage, StorageMetrics};
use api::{NodeApi, StorageApi};
use health::{disk_check, fs_space, GIB};

use plexi_util::version::{BUILD_FAULT, VERSION};

/// Bound on remembered peer addresses (`peers.json`).
const MAX_KNOWN_PEERS: usize = 64;

/// Addresses remembered by [`Node::remember_peers`] at the last run.
fn known_peers(data_dir: &Path) -> Vec<Multiaddr> {
    let Ok(text) = std::fs::read_to_string(data_dir.join("peers.json")) else {
        return vec![];
    };
    let addrs: Vec<String> = serde_json::from_str(&text).unwrap_or_default();
    addrs
        .iter()
        .take(MAX_KNOWN_PEERS)
        .filter_map(|a| a.parse().ok())
        .collect()
}

/// The application service name for health calls between nodes.
pub(crate) const HEALTH_SERVICE: &str = "health";
/// Bound on graceful HTTP shutdown.
const HTTP_DRAIN: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("configuration error: {0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Startup(String),
}

fn startup<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> NodeError + '_ {
    move |e| NodeError::Startup(format!("{what}: {e}"))
}

/// One running node: what the API and peers ask about.
pub struct Node {
    name: String,
    peer_id: PeerId,
    region: String,
    zone: String,
    store: Arc<NodeStore>,
    data_dir: PathBuf,
    started: Instant,
    p2p: OnceLock<P2pHandle>,
    storage: OnceLock<Arc<Storage>>,
    audit: OnceLock<Arc<crate::audit::AuditLog>>,
    granter: OnceLock<Arc<crate::updates::leases::Granter>>,
    updates: OnceLock<Arc<crate::updates::state::UpdateState>>,
    /// EWMA of the local store probe, µs.
    store_latency_us: std::sync::atomic::AtomicU64,
    /// What `peers.json` holds now.
    known_peers: std::sync::Mutex<Vec<String>>,
}

impl Node {
    fn p2p(&self) -> &P2pHandle {
        self.p2p
            .get()
            .expect("p2p is started before the API and peers are served")
    }

    /// Runs the local checks (blocking I/O goes to the blocking pool).
    async fn local_health(self: &Arc<Self>) -> HealthReport {
        let node = self.clone();
        let (store_check, disk) = tokio::task::spawn_blocking(move || {
            let store = match node.store.probe() {
                Ok(d) => {
                    // EWMA of the probe, gossiped for placement.
                    let us = d.as_micros().min(u64::MAX as u128) as u64;
                    let old = node
                        .store_latency_us
                        .load(std::sync::atomic::Ordering::Relaxed);
                    let new = if old == 0 { us } else { (old * 4 + us) / 5 };
                    node.store_latency_us
                        .store(new, std::sync::atomic::Ordering::Relaxed);
                    HealthCheck {
                        name: "store".into(),
                        ok: true,
                        detail: format!("write+flush in {:.1} ms", d.as_secs_f64() * 1000.0),
                    }
                }
                Err(e) => HealthCheck {
                    name: "store".into(),
                    ok: false,
                    detail: e.to_string(),
                },
            };
            (store, disk_check(&node.data_dir))
        })
        .await
        .unwrap_or_else(|e| {
            let failed = |name: &str| HealthCheck {
                name: name.into(),
                ok: false,
                detail: format!("check panicked: {e}"),
            };
            (failed("store"), failed("disk_space"))
        });

        let members = self.p2p().members();
        let others: Vec<&MemberView> = members
            .iter()
            .filter(|m| m.record.state.peer_id != self.peer_id.to_string())
            .collect();
        let alive = others
            .iter()
            .filter(|m| m.status == MemberStatus::Alive)
            .count();
        let expected = others
            .iter()
            .filter(|m| {
                matches!(
                    m.status,
                    MemberStatus::Alive | MemberStatus::Suspect | MemberStatus::Dead
                )
            })
            .count();
        let peers = HealthCheck {
            name: "peers".into(),
            // A lone node is healthy; a member that sees none of its peers is not.
            ok: expected == 0 || alive > 0,
            detail: format!("{alive} of {expected} other members alive"),
        };
        let mut checks = vec![store_check, disk, peers];
        if BUILD_FAULT == "unhealthy" {
            checks.push(HealthCheck {
                name: "build".into(),
                ok: false,
                detail: "this build fails its health check (PLEXI_BUILD_FAULT=unhealthy)".into(),
            });
        }
        HealthReport {
            node_id: self.name.clone(),
            peer_id: self.peer_id.to_string(),
            version: VERSION.into(),
            status: MemberStatus::Alive.as_str().into(),
            healthy: checks.iter().all(|c| c.ok),
            checks,
            uptime_seconds: self.started.elapsed().as_secs(),
            checked_at: rfc3339(SystemTime::now()),
            source: "local".into(),
        }
    }

    /// The listen addresses our own record advertises.
    /// Remembers where the other members listen (`DATA_DIR/peers.json`),
    /// so a restarted node rejoins even when started without --bootstrap.
    fn remember_peers(&self) {
        let me = self.peer_id.to_string();
        let mut addrs: Vec<String> = self
            .p2p()
            .members()
            .into_iter()
            .filter(|m| m.record.state.peer_id != me && m.status != MemberStatus::Left)
            .filter(|m| m.status == MemberStatus::Alive)
            .flat_map(|m| {
                let peer = m.record.state.peer_id.clone();
                m.record
                    .state
                    .listen_addresses
                    .into_iter()
                    .map(move |a| format!("{a}/p2p/{peer}"))
            })
            .collect();
        addrs.sort();
        addrs.truncate(MAX_KNOWN_PEERS);
        if addrs.is_empty() {
            return;
        }
        {
            // Rewritten only when the list changed.
            let mut last = self.known_peers.lock().expect("known peers");
            if *last == addrs {
                return;
            }
            *last = addrs.clone();
        }
        let path = self.data_dir.join("peers.json");
        let tmp = self.data_dir.join("peers.json.tmp");
        let text = serde_json::to_string_pretty(&addrs).expect("serializable");
        if std::fs::write(&tmp, text)
            .and_then(|_| std::fs::rename(&tmp, &path))
            .is_err()
        {
            tracing::debug!(path = %path.display(), "cannot write known peers");
        }
    }

    fn own_listen_addresses(&self) -> Vec<String> {
        self.p2p()
            .member(&self.peer_id)
            .map(|m| m.record.state.listen_addresses)
            .unwrap_or_default()
    }

    /// Finds a member by name or peer id. With several records under one
    /// name (a node rebuilt with a new identity), the liveliest wins.
    fn find(&self, node_id: &str) -> Option<MemberView> {
        self.p2p()
            .members()
            .into_iter()
            .filter(|m| m.record.state.name == node_id || m.record.state.peer_id == node_id)
            .min_by_key(|m| (m.status, m.silent_ms))
    }
}

use plexi_util::clock::rfc3339;

fn gb(bytes: u64) -> f64 {
    (bytes as f64 / GIB * 1000.0).round() / 1000.0
}

pub(crate) fn node_view(m: &MemberView, local: &str) -> NodeView {
    let s = &m.record.state;
    let seen = SystemTime::now()
        .checked_sub(Duration::from_millis(m.silent_ms))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    NodeView {
        node_id: s.name.clone(),
        peer_id: s.peer_id.clone(),
        status: m.status.as_str().into(),
        version: s.version.clone(),
        region: s.region.clone(),
        zone: s.zone.clone(),
        addresses: s.listen_addresses.clone(),
        api_address: s.api_address.clone(),
        incarnation: s.incarnation,
        last_heartbeat: rfc3339(seen),
        last_heartbeat_age_ms: m.silent_ms,
        total_capacity_gb: gb(s.capacity_bytes),
        used_capacity_gb: gb(s.used_bytes),
        object_count: s.object_count,
        is_healthy: s.healthy && m.status == MemberStatus::Alive,
        is_local: s.peer_id == local,
    }
}

/// Serves peers' application calls.
struct Rpc(Arc<Node>);

#[async_trait::async_trait]
impl plexi_p2p::AppHandler for Rpc {
    async fn handle(
        &self,
        peer: PeerId,
        service: String,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, String> {
        match service.as_str() {
            HEALTH_SERVICE => encode_cbor(&self.0.local_health().await).map_err(|e| e.to_string()),
            wire::STORE_SERVICE => match self.0.storage.get() {
                Some(storage) => crate::storage::serve(storage, peer, &body).await,
                None => Err("storage is starting".into()),
            },
            crate::audit::SERVICE => match self.0.audit.get() {
                Some(audit) => audit.serve(peer, &body).await,
                None => Err("audit log is starting".into()),
            },
            crate::updates::leases::SERVICE => match self.0.granter.get() {
                Some(g) => crate::updates::leases::serve(g, &body).await,
                None => Err("lease granter is starting".into()),
            },
            crate::updates::state::SERVICE => match self.0.updates.get() {
                Some(u) => crate::updates::state::serve(u, &body).await,
                None => Err("update state is starting".into()),
            },
            other => {
                tracing::warn!(%peer, service = other, "call for an unknown service dropped");
                Err(format!("unknown service {other:?}"))
            }
        }
    }
}

/// Written to `DATA_DIR/node.json` once the node serves; read by the testnet
/// scripts and the process tests.
#[derive(Serialize)]
struct RuntimeInfo<'a> {
    node_id: &'a str,
    peer_id: String,
    pid: u32,
    version: &'a str,
    api_address: String,
    p2p_addresses: Vec<String>,
}

/// The address other nodes and clients should use for our API.
fn advertised_api(bound: SocketAddr, listen: &[String]) -> String {
    if !bound.ip().is_unspecified() {
        return bound.to_string();
    }
    let ip = listen
        .iter()
        .filter_map(|a| a.parse::<Multiaddr>().ok())
        .find_map(|a| {
            a.iter().find_map(|p| match p {
                plexi_p2p::multiaddr::Protocol::Ip4(ip) if !ip.is_loopback() => Some(ip),
                _ => None,
            })
        })
        .map(|ip| ip.to_string())
        .unwrap_or_else(|| "127.0.0.1".into());
    format!("{ip}:{}", bound.port())
}

fn default_name(peer: &PeerId) -> String {
    let s = peer.to_string();
    format!("node-{}", &s[s.len().saturating_sub(8)..])
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

/// Runs the worker until SIGTERM/SIGINT (exit code 0) or until the update
/// engine hands over to the supervisor (its exit code).
pub async fn run(config_path: Option<PathBuf>, overrides: Overrides) -> Result<i32, NodeError> {
    if BUILD_FAULT == "exit-at-start" {
        return Err(NodeError::Startup(
            "this build exits at start (PLEXI_BUILD_FAULT=exit-at-start)".into(),
        ));
    }
    let (config, config_file) = Config::load(config_path.as_deref(), &overrides)?;
    let n = &config.node;
    let data_dir = n.data_dir.clone();
    create_private_dir(&data_dir).map_err(startup(&format!("data dir {}", data_dir.display())))?;

    let keypair = plexi_p2p::identity::load_or_create(&data_dir.join("identity.key"))
        .map_err(startup("identity"))?;
    let peer_id = keypair.public().to_peer_id();
    let store = Arc::new(NodeStore::open(&data_dir.join("store")).map_err(startup("store"))?);
    let incarnation = store.next_incarnation().map_err(startup("store"))?;
    let name = n.name.clone().unwrap_or_else(|| default_name(&peer_id));

    let (tokens, generated) = tokens::resolve(
        &config,
        &data_dir,
        std::env::var("PLEXI_ADMIN_TOKEN").ok(),
        std::env::var("PLEXI_READ_TOKEN").ok(),
    )
    .map_err(startup("tokens"))?;
    if let Some(path) = &generated {
        tracing::info!(path = %path.display(), "no admin token configured; using the generated one in this file");
    }

    let capacity_bytes = match n.capacity_gb {
        Some(gb) => (gb * GIB) as u64,
        None => fs_space(&data_dir).map(|(_, avail)| avail).unwrap_or(0),
    };

    let api_addr: SocketAddr = n.api.parse().expect("validated");
    let listener = tokio::net::TcpListener::bind(api_addr)
        .await
        .map_err(startup(&format!("API address {api_addr}")))?;
    let api_bound = listener.local_addr().map_err(startup("API address"))?;

    let mut registry = Registry::default();
    let api_metrics = ApiMetrics::register(&mut registry);
    let uptime = Gauge::<i64>::default();
    registry.register(
        "plexi_node_incarnation",
        "The node's current incarnation",
        {
            let g = Gauge::<i64>::default();
            g.set(incarnation as i64);
            g
        },
    );
    registry.register(
        "plexi_node_uptime_seconds",
        "Seconds since the node started",
        uptime.clone(),
    );
    let storage_metrics = StorageMetrics::register(&mut registry);

    let node = Arc::new(Node {
        name: name.clone(),
        peer_id,
        region: n.region.clone(),
        zone: n.zone.clone(),
        store: store.clone(),
        data_dir: data_dir.clone(),
        started: Instant::now(),
        p2p: OnceLock::new(),
        storage: OnceLock::new(),
        audit: OnceLock::new(),
        granter: OnceLock::new(),
        updates: OnceLock::new(),
        store_latency_us: std::sync::atomic::AtomicU64::new(0),
        known_peers: std::sync::Mutex::new(Vec::new()),
    });

    // Failure history for reliability: this start is unplanned unless the
    // last run marked a clean stop (see the end of this function).
    let restarts = crate::storage::restarts::Restarts::open(&store).map_err(startup("store"))?;
    let unplanned_restarts = restarts
        .record_start(store.quarantined().is_some())
        .map_err(startup("store"))?;

    let first_info = LocalInfo {
        name: name.clone(),
        version: VERSION.into(),
        region: node.region.clone(),
        zone: node.zone.clone(),
        capacity_bytes,
        used_bytes: 0,
        object_count: 0,
        store_latency_us: 0,
        unplanned_restarts,
        healthy: true,
        api_address: api_bound.to_string(),
    };
    let (info_tx, info_rx) = watch::channel(first_info.clone());

    let m = &config.membership;
    let p2p_config = P2pConfig {
        keypair,
        listen: vec![n.listen.parse().expect("validated")],
        bootstrap: n
            .bootstrap
            .iter()
            .map(|b| b.parse().expect("validated"))
            .chain(known_peers(&data_dir))
            .collect(),
        incarnation,
        timings: Timings {
            suspect_after_ms: m.suspect_after_ms,
            dead_after_ms: m.dead_after_ms,
            forget_after_ms: m.forget_after_seconds * 1000,
        },
        heartbeat_interval: Duration::from_millis(m.heartbeat_interval_ms),
        exchange_interval: Duration::from_millis(m.exchange_interval_ms),
        request_timeout: Duration::from_millis(m.request_timeout_ms),
    };
    let (p2p, _swarm_task) = plexi_p2p::spawn(
        p2p_config,
        info_rx,
        Arc::new(Rpc(node.clone())),
        &mut registry,
    )
    .await
    .map_err(startup("p2p"))?;
    node.p2p.set(p2p.clone()).ok().expect("set once");
    let storage = Storage::new(
        config.distributed_storage.clone(),
        peer_id,
        p2p.clone(),
        store.clone(),
        storage_metrics,
    );
    node.storage.set(storage.clone()).ok().expect("set once");
    crate::storage::repair::spawn(storage.clone());
    let audit = crate::audit::AuditLog::open(&store, name.clone(), &mut registry)
        .map_err(startup("audit log"))?;
    node.audit.set(audit.clone()).ok().expect("set once");
    audit.spawn_sync(p2p.clone());
    if let Some(aside) = store.quarantined() {
        tracing::error!(quarantine = %aside.display(), "the store was quarantined at start; anti-entropy refills it from replicas");
    }

    tracing::info!(
        node_id = %name,
        %peer_id,
        version = VERSION,
        incarnation,
        unplanned_restarts,
        config = %config_file,
        data_dir = %data_dir.display(),
        api = %api_bound,
        "node starting"
    );

    // Persist incarnation bumps; log membership changes (done in p2p).
    {
        let mut events = p2p.subscribe();
        let store = store.clone();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(P2pEvent::IncarnationBumped(inc)) => {
                        let store = store.clone();
                        let res =
                            tokio::task::spawn_blocking(move || store.raise_incarnation(inc)).await;
                        if !matches!(res, Ok(Ok(_))) {
                            tracing::error!(incarnation = inc, "failed to persist incarnation");
                        }
                    }
                    Ok(P2pEvent::MemberStatus { .. }) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        });
    }

    // Keep the node's own record current: usage, health, advertised API.
    {
        let node = node.clone();
        let interval = Duration::from_secs_f64(
            config
                .distributed_storage
                .health_check_interval_seconds
                .min(10.0),
        );
        let uptime = uptime.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tick.tick().await;
                let report = node.local_health().await;
                let (objects, used) = node
                    .storage
                    .get()
                    .map(|s| plexi_store::objects::ObjectStore::counts(s.engine().as_ref()))
                    .unwrap_or((0, 0));
                let listen = node.own_listen_addresses();
                let info = LocalInfo {
                    api_address: advertised_api(api_bound, &listen),
                    used_bytes: used,
                    object_count: objects,
                    store_latency_us: node
                        .store_latency_us
                        .load(std::sync::atomic::Ordering::Relaxed),
                    healthy: report.healthy,
                    ..first_info.clone()
                };
                info_tx.send_if_modified(|cur| {
                    let changed = *cur != info;
                    *cur = info;
                    changed
                });
                uptime.set(node.started.elapsed().as_secs() as i64);
                node.remember_peers();
            }
        });
    }

    // Write node.json once the swarm reports its listen addresses.
    {
        let node = node.clone();
        let data_dir = data_dir.clone();
        tokio::spawn(async move {
            for _ in 0..100 {
                let listen = node.own_listen_addresses();
                if !listen.is_empty() {
                    let info = RuntimeInfo {
                        node_id: &node.name,
                        peer_id: node.peer_id.to_string(),
                        pid: std::process::id(),
                        version: VERSION,
                        api_address: advertised_api(api_bound, &listen),
                        p2p_addresses: listen,
                    };
                    let path = data_dir.join("node.json");
                    let tmp = data_dir.join("node.json.tmp");
                    let text = serde_json::to_string_pretty(&info).expect("serializable");
                    if std::fs::write(&tmp, text)
                        .and_then(|_| std::fs::rename(&tmp, &path))
                        .is_err()
                    {
                        tracing::warn!(path = %path.display(), "cannot write runtime info");
                    }
                    // Ready for the supervisor, unless a switch to this
                    // version is pending: then the update engine says so
                    // after its post-update check.
                    let pending = crate::switch::pending_switch(&data_dir).map(|s| s.to_version);
                    if pending.as_deref() != Some(VERSION) {
                        if let Err(e) = crate::switch::write_ready(&data_dir, VERSION) {
                            tracing::warn!(error = %e, "cannot write releases/ready.json");
                        }
                    }
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tracing::warn!("no listen address after 5 s; node.json not written");
        });
    }

    // Data requests in flight; the update pipeline waits on it while draining.
    let in_flight = plexi_api::InFlight::default();
    // Audit entries (local or merged) go on the event stream too.
    let events = tokio::sync::broadcast::channel(1024).0;
    {
        let mut entries = audit.subscribe();
        let events = events.clone();
        tokio::spawn(async move {
            loop {
                match entries.recv().await {
                    Ok(entry) => {
                        let _ = events.send(plexi_api::model::ClusterEvent {
                            kind: "audit".into(),
                            at: entry.at.clone(),
                            data: serde_json::to_value(&entry).unwrap_or_default(),
                        });
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        });
    }

    let update_metrics = crate::updates::engine::UpdateMetrics::register(&mut registry);
    let granter = crate::updates::leases::Granter::open(
        store.tree("updates.leases").map_err(startup("store"))?,
    );
    node.granter.set(granter.clone()).ok().expect("set once");
    let update_state = crate::updates::state::UpdateState::open(
        name.clone(),
        store.tree("updates.ops").map_err(startup("store"))?,
        store.tree("updates.meta").map_err(startup("store"))?,
        events.clone(),
    );
    node.updates
        .set(update_state.clone())
        .ok()
        .expect("set once");
    crate::updates::state::spawn_sync(update_state.clone(), p2p.clone());
    let (exit_tx, mut exit_rx) = watch::channel(None::<i32>);
    let u = &config.cluster_updates;
    let engine = crate::updates::engine::Engine::new(
        name.clone(),
        semver::Version::parse(VERSION).expect("build.rs checks the version"),
        data_dir.clone(),
        config_path.clone(),
        api_bound.to_string(),
        p2p.clone(),
        storage.clone(),
        granter,
        update_state,
        audit.clone(),
        u.release_public_keys.clone(),
        crate::updates::ops::OpSettings {
            max_concurrent: u.max_concurrent_updates,
            rolling_delay_s: u.rolling_update_delay_seconds,
            health_timeout_s: u.health_check_timeout_seconds,
            rollback_timeout_s: u.rollback_timeout_seconds,
            canary_soak_s: u.canary_soak_seconds,
            maintenance_timeout_s: u.maintenance_mode_timeout_seconds,
            auto_rollback: u.auto_rollback_on_failure,
            backup: u.backup_before_update,
        },
        Arc::new(crate::updates::engine::Drain {
            draining: Default::default(),
            in_flight: in_flight.clone(),
        }),
        exit_tx,
        {
            let node = node.clone();
            Arc::new(move || {
                let node = node.clone();
                Box::pin(async move {
                    let r = node.local_health().await;
                    if r.healthy {
                        Ok(())
                    } else {
                        Err(r
                            .checks
                            .iter()
                            .filter(|c| !c.ok)
                            .map(|c| format!("{}: {}", c.name, c.detail))
                            .collect::<Vec<_>>()
                            .join("; "))
                    }
                })
            })
        },
        update_metrics,
    );
    engine.spawn();

    let state = ApiState {
        cluster: Arc::new(NodeApi(node.clone())),
        storage: Arc::new(StorageApi(storage.clone())),
        updates: Arc::new(api::UpdatesApi {
            storage: storage.clone(),
            trusted: config.cluster_updates.release_public_keys.clone(),
            events,
            audit: audit.clone(),
            engine: engine.clone(),
        }),
        tokens: Arc::new(tokens),
        registry: Arc::new(registry),
        metrics: api_metrics,
        in_flight: in_flight.clone(),
    };
    let app = plexi_api::router(state);

    let (stop_tx, mut stop_rx) = watch::channel(false);
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop_rx.changed().await;
            })
            .await
    });

    let code = tokio::select! {
        _ = shutdown_signal() => {
            p2p.leave().await;
            0
        }
        code = async {
            loop {
                if let Some(code) = *exit_rx.borrow_and_update() {
                    break code;
                }
                if exit_rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        } => {
            // A restart for an update: peers see us briefly silent, not
            // gone, so nothing is re-placed.
            tracing::info!(code, "handing over to the supervisor");
            code
        }
    };
    // Both ways out are planned stops: the next start counts no failure.
    if let Err(e) = restarts.mark_clean_stop() {
        tracing::warn!(error = %e, "cannot mark the clean stop; the next start counts as unplanned");
    }
    let _ = stop_tx.send(true);
    match tokio::time::timeout(HTTP_DRAIN, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "HTTP server error during shutdown"),
        Ok(Err(e)) => tracing::warn!(error = %e, "HTTP server task failed"),
        Err(_) => tracing::warn!("HTTP drain timed out"),
    }
    tracing::info!("node stopped");
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertises_a_routable_api_address() {
        let bound: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        assert_eq!(
            advertised_api(
                bound,
                &[
                    "/ip4/127.0.0.1/tcp/7000".into(),
                    "/ip4/10.1.2.3/tcp/7000".into()
                ]
            ),
            "10.1.2.3:8080"
        );
        assert_eq!(advertised_api(bound, &[]), "127.0.0.1:8080");
        let bound: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        assert_eq!(advertised_api(bound, &[]), "127.0.0.1:9000");
    }
}
