//! `plexi worker`: one node, wired in named phases. [`run`] reads top to
//! bottom: config, data dir (identity, store, incarnation, tokens), the API
//! socket, metrics, p2p, services (storage, audit, updates), the node's own
//! record, the API, then waits for a signal or for the update engine to hand
//! over to the supervisor.
//!
//! Submodules: [`data_dir`] (what the node keeps in its data dir),
//! [`record`] (its gossiped record and runtime files), [`services`]
//! (starting the services), [`rpc`] (peer calls to services), [`fault_file`]
//! (the test-only fault file, debug builds), [`api`] (the
//! REST API's traits over the services: the one place service errors become
//! HTTP), [`health`] (local checks), [`tokens`] (API tokens).

mod api;
mod data_dir;
mod fault;
mod fault_file;
pub(crate) mod health;
pub mod memory;
mod record;
mod rpc;
mod services;
mod tokens;
mod watchdog;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use plexi_api::model::{HealthCheck, HealthReport, NodeView};
use plexi_api::{ApiMetrics, ApiState};
use plexi_p2p::{LocalInfo, MemberStatus, MemberView, P2pConfig, P2pHandle, PeerId, Timings};
use plexi_store::NodeStore;
use plexi_util::types::HealthSource;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::config::{Config, ConfigError, Overrides};
use crate::keys;
use crate::storage::Storage;
use api::{NodeApi, StorageApi, UpdatesApi};
use data_dir::DataDir;
use health::{disk_check, fs_space, GIB};
use plexi_util::clock::{rfc3339, wall_time};
use plexi_util::secret::SecretKey;
use plexi_util::version::{BUILD_FAULT, VERSION};

/// The application service name for health calls between nodes.
pub(crate) const HEALTH_SERVICE: &str = "health";
/// Bound on graceful HTTP shutdown.
const HTTP_DRAIN: Duration = Duration::from_secs(5);
/// Upper bound on how often the node's own record is refreshed.
const MAX_RECORD_INTERVAL: Duration = Duration::from_secs(10);

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

/// One running node: what the API and peers ask about. Services are set
/// once, in `services::start`, before the API serves; peer calls that
/// arrive earlier are told the service is starting.
pub struct Node {
    name: String,
    peer_id: PeerId,
    /// The libp2p identity: it also signs this node's audit chain.
    keypair: plexi_p2p::Keypair,
    store: Arc<NodeStore>,
    data_dir: PathBuf,
    started: Instant,
    p2p: OnceLock<P2pHandle>,
    storage: OnceLock<Arc<Storage>>,
    audit: OnceLock<Arc<crate::audit::AuditLog>>,
    granter: OnceLock<Arc<crate::updates::leases::Granter>>,
    updates: OnceLock<Arc<crate::updates::state::UpdateState>>,
    alerts: OnceLock<Arc<crate::alerts::Alerts>>,
    /// EWMA of the local store probe, µs.
    store_latency_us: std::sync::atomic::AtomicU64,
    /// What `peers.json` holds now.
    known_peers: std::sync::Mutex<Vec<String>>,
}

impl Node {
    pub(crate) fn p2p(&self) -> &P2pHandle {
        self.p2p
            .get()
            .expect("p2p is started before the API and peers are served")
    }

    /// Runs the local checks (blocking I/O goes to the blocking pool).
    pub(crate) async fn local_health(self: &Arc<Self>) -> HealthReport {
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
        if BUILD_FAULT == "unhealthy" || fault::migrates() {
            checks.push(HealthCheck {
                name: "build".into(),
                ok: false,
                detail: format!(
                    "this build fails its health check (PLEXI_BUILD_FAULT={BUILD_FAULT})"
                ),
            });
        }
        HealthReport {
            node_id: self.name.clone().into(),
            peer_id: self.peer_id.to_string(),
            version: VERSION.into(),
            status: MemberStatus::Alive,
            healthy: checks.iter().all(|c| c.ok),
            checks,
            uptime_seconds: self.started.elapsed().as_secs(),
            checked_at: rfc3339(wall_time()),
            source: HealthSource::Local,
        }
    }

    /// Remembers where the other members listen (`DATA_DIR/peers.json`),
    /// so a restarted node rejoins even when started without --bootstrap.
    pub(crate) fn remember_peers(&self) {
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
        addrs.truncate(data_dir::MAX_KNOWN_PEERS);
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
        data_dir::write_known_peers(&self.data_dir, &addrs);
    }

    pub(crate) fn own_listen_addresses(&self) -> Vec<String> {
        self.p2p()
            .member(&self.peer_id)
            .map(|m| m.record.state.listen_addresses)
            .unwrap_or_default()
    }

    /// Finds a member by name or peer id. With several records under one
    /// name (a node rebuilt with a new identity), the liveliest wins.
    pub(crate) fn find(&self, node_id: &str) -> Option<MemberView> {
        self.p2p()
            .members()
            .into_iter()
            .filter(|m| m.record.state.name == node_id || m.record.state.peer_id == node_id)
            .min_by_key(|m| (m.status, m.silent_ms))
    }
}

fn gb(bytes: u64) -> f64 {
    (bytes as f64 / GIB * 1000.0).round() / 1000.0
}

pub(crate) fn node_view(m: &MemberView, local: &str) -> NodeView {
    let s = &m.record.state;
    let seen = wall_time()
        .checked_sub(Duration::from_millis(m.silent_ms))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    NodeView {
        node_id: s.name.clone().into(),
        peer_id: s.peer_id.clone(),
        status: m.status,
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
        // A peer's out-of-range (or NaN) coordinates are dropped, not shown.
        location: s.location.filter(|l| l.is_valid()),
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
    let faults_path = config.node.data_dir.join(plexi_util::faults::FILE_NAME);
    if let Some(message) = plexi_util::faults::release_refusal(
        faults_path.exists(),
        &faults_path.display().to_string(),
    ) {
        return Err(NodeError::Config(ConfigError {
            file: config_file,
            message,
        }));
    }
    let cluster_key = cluster_key(&config, &config_file)?;
    let dir = data_dir::open(&config)?;
    // Before any service writes: a restarted worker starts with its faults.
    fault_file::start(&dir.path);
    fault::migrate(&dir.store, config_path.as_deref());
    let listener = bind_api(&config).await?;
    let api_bound = listener.local_addr().map_err(startup("API address"))?;
    let mut registry = Registry::default();
    let api_metrics = ApiMetrics::register(&mut registry);
    let uptime = register_node_gauges(&mut registry, dir.incarnation);
    tracing::info!(
        node_id = %dir.name,
        peer_id = %dir.peer_id,
        version = VERSION,
        incarnation = dir.incarnation,
        unplanned_restarts = dir.unplanned_restarts,
        config = %config_file,
        data_dir = %dir.path.display(),
        api = %api_bound,
        "node starting"
    );

    let restarts = dir.restarts.clone();
    let (node, tokens, p2p, info_tx) =
        start_p2p(dir, &config, cluster_key, api_bound, &mut registry).await?;
    rpc::spawn_refusal_audit(node.clone(), &p2p);
    let services = services::start(&node, &config, config_path, api_bound, &p2p, &mut registry)?;
    registry.register_collector(Box::new(memory::MemoryGauges));
    memory::spawn_trim();
    watchdog::spawn(
        services.storage.clone(),
        node.store.clone(),
        config.node.data_dir.clone(),
    );
    tokens::spawn_audit(services.audit.clone(), &tokens, &node.name);
    record::spawn_incarnation_persistence(p2p.incarnation(), node.store.clone());
    record::spawn_refresh(
        node.clone(),
        info_tx,
        api_bound,
        record_interval(&config),
        uptime,
    );
    record::spawn_runtime_info(node.clone(), api_bound);
    record::spawn_remember_peers(node.clone());

    let state = ApiState {
        cluster: Arc::new(NodeApi(node.clone())),
        storage: Arc::new(StorageApi(services.storage.clone())),
        updates: Arc::new(UpdatesApi(crate::updates::UpdateService::new(
            services.engine.clone(),
            services.events.clone(),
        ))),
        tokens: Arc::new(tokens),
        registry: Arc::new(registry),
        metrics: api_metrics,
        in_flight: services.in_flight.clone(),
        limiter: plexi_api::Limiter::new(plexi_api::ApiLimits::default()),
        // A fresh random key per process: tickets open streams on this node only.
        tickets: Arc::new(plexi_api::EventTickets::new(rand::random())),
    };
    let (stop_tx, server) = serve_api(listener, state);
    let code = wait_for_exit(&p2p, services.exit).await;
    // Both ways out are planned stops: the next start counts no failure.
    if let Err(e) = restarts.mark_clean_stop() {
        tracing::warn!(error = %e, "cannot mark the clean stop; the next start counts as unplanned");
    }
    stop_api(stop_tx, server).await;
    // Read statistics still counted in memory (store/src/access.rs).
    let objects = services.storage.engine().clone();
    match tokio::task::spawn_blocking(move || objects.write_access()).await {
        Ok(Err(e)) => tracing::warn!(error = %e, "read statistics not written at stop"),
        Err(e) => tracing::warn!(error = %e, "read statistics task failed at stop"),
        Ok(Ok(())) => {}
    }
    tracing::info!("node stopped");
    Ok(code)
}

/// Binds the API socket first, so a taken port fails the start at once.
async fn bind_api(config: &Config) -> Result<tokio::net::TcpListener, NodeError> {
    let addr: SocketAddr = config.node.api.parse().expect("validated");
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(startup(&format!("API address {addr}")))
}

/// The node's own gauges; returns the uptime gauge the record loop sets.
fn register_node_gauges(registry: &mut Registry, incarnation: u64) -> Gauge<i64> {
    let inc = Gauge::<i64>::default();
    inc.set(incarnation as i64);
    registry.register(
        "plexi_node_incarnation",
        "The node's current incarnation",
        inc,
    );
    let uptime = Gauge::<i64>::default();
    registry.register(
        "plexi_node_uptime_seconds",
        "Seconds since the node started",
        uptime.clone(),
    );
    uptime
}

fn record_interval(config: &Config) -> Duration {
    Duration::from_secs_f64(config.distributed_storage.health_check_interval_seconds)
        .min(MAX_RECORD_INTERVAL)
}

/// Whether this start joins a cluster (bootstrap addresses, or peers
/// remembered from an earlier run) rather than founds one.
fn joins_a_cluster(config: &Config) -> bool {
    !config.node.bootstrap.is_empty() || !data_dir::known_peers(&config.node.data_dir).is_empty()
}

/// What this start knows of its cluster: whether it joins one, and how
/// many distinct members `peers.json` remembers (the catch-up's view wait
/// ends once they are all back).
fn start_of(config: &Config) -> crate::storage::repair::Start {
    let remembered: std::collections::BTreeSet<PeerId> =
        data_dir::known_peers(&config.node.data_dir)
            .iter()
            .filter_map(|a| {
                a.iter().find_map(|p| match p {
                    plexi_p2p::multiaddr::Protocol::P2p(id) => Some(id),
                    _ => None,
                })
            })
            .collect();
    crate::storage::repair::Start {
        joins: joins_a_cluster(config),
        remembered_peers: remembered.len(),
    }
}

/// The cluster key for this start (see [`keys::find_cluster_key`]). A node
/// that joins (bootstrap addresses, or peers remembered from an earlier run)
/// and has none cannot start: a configuration error (exit 2) that says
/// which key it needs. A first node with none creates `DATA_DIR/cluster.key`
/// (0600) and logs its path and fingerprint, never the key.
fn cluster_key(config: &Config, config_file: &str) -> Result<SecretKey, NodeError> {
    let data_dir = &config.node.data_dir;
    let found = keys::find_cluster_key(
        std::env::var(keys::CLUSTER_KEY_ENV).ok(),
        config.node.cluster_key_file.as_deref(),
        data_dir,
    )
    .map_err(|e| ConfigError {
        file: config_file.to_string(),
        message: format!("cluster key: {e}"),
    })?;
    if let Some((key, source)) = found {
        tracing::info!(fingerprint = %key.fingerprint(), source = %source, "cluster key");
        return Ok(key);
    }
    if joins_a_cluster(config) {
        return Err(NodeError::Config(ConfigError {
            file: config_file.to_string(),
            message: keys::missing_cluster_key(data_dir),
        }));
    }
    crate::files::create_private_dir(data_dir)
        .map_err(startup(&format!("data dir {}", data_dir.display())))?;
    let path = data_dir.join(keys::CLUSTER_KEY_FILE);
    let key = keys::create_key_file(&path).map_err(startup("cluster key"))?;
    tracing::info!(
        path = %path.display(),
        fingerprint = %key.fingerprint(),
        "no cluster key configured; created one in this file: every node that joins needs it \
         (PLEXI_CLUSTER_KEY or node.cluster_key_file)"
    );
    Ok(key)
}

/// Builds the [`Node`] and starts the swarm with the node's first record.
async fn start_p2p(
    dir: DataDir,
    config: &Config,
    cluster_key: SecretKey,
    api_bound: SocketAddr,
    registry: &mut Registry,
) -> Result<
    (
        Arc<Node>,
        plexi_api::TokenSet,
        P2pHandle,
        watch::Sender<LocalInfo>,
    ),
    NodeError,
> {
    let n = &config.node;
    let capacity_bytes = match n.capacity_gb {
        Some(gb) => (gb * GIB) as u64,
        None => fs_space(&dir.path).map(|(_, avail)| avail).unwrap_or(0),
    };
    let bootstrap = n
        .bootstrap
        .iter()
        .map(|b| b.parse().expect("validated"))
        .chain(data_dir::known_peers(&dir.path))
        .collect();
    let node = Arc::new(Node {
        name: dir.name.clone(),
        peer_id: dir.peer_id,
        keypair: dir.keypair.clone(),
        store: dir.store.clone(),
        data_dir: dir.path.clone(),
        started: Instant::now(),
        p2p: OnceLock::new(),
        storage: OnceLock::new(),
        audit: OnceLock::new(),
        granter: OnceLock::new(),
        updates: OnceLock::new(),
        alerts: OnceLock::new(),
        store_latency_us: std::sync::atomic::AtomicU64::new(0),
        known_peers: std::sync::Mutex::new(Vec::new()),
    });
    let first_info = LocalInfo {
        name: dir.name.clone(),
        version: VERSION.into(),
        region: n.region.clone(),
        zone: n.zone.clone(),
        capacity_bytes,
        used_bytes: 0,
        object_count: 0,
        store_latency_us: 0,
        unplanned_restarts: dir.unplanned_restarts,
        healthy: true,
        replica_counts: Default::default(),
        api_address: api_bound.to_string(),
        location: n.location,
    };
    let (info_tx, info_rx) = watch::channel(first_info);
    let m = &config.membership;
    let p2p_config = P2pConfig {
        keypair: dir.keypair,
        listen: vec![n.listen.parse().expect("validated")],
        bootstrap,
        incarnation: dir.incarnation,
        timings: Timings {
            suspect_after_ms: m.suspect_after_ms,
            dead_after_ms: m.dead_after_ms,
            forget_after_ms: m.forget_after_seconds * 1000,
        },
        heartbeat_interval: Duration::from_millis(m.heartbeat_interval_ms),
        exchange_interval: Duration::from_millis(m.exchange_interval_ms),
        request_timeout: Duration::from_millis(m.request_timeout_ms),
        cluster_key,
    };
    let (p2p, _swarm_task) = plexi_p2p::spawn(
        p2p_config,
        info_rx,
        Arc::new(rpc::Rpc(node.clone())),
        registry,
    )
    .await
    .map_err(startup("p2p"))?;
    node.p2p.set(p2p.clone()).ok().expect("set once");
    Ok((node, dir.tokens, p2p, info_tx))
}

type ServerTask = tokio::task::JoinHandle<std::io::Result<()>>;

/// Serves the API until `stop` is sent.
fn serve_api(
    listener: tokio::net::TcpListener,
    state: ApiState,
) -> (watch::Sender<bool>, ServerTask) {
    let app = plexi_api::router(state);
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop_rx.changed().await;
            })
            .await
    });
    (stop_tx, server)
}

/// Stops the API, giving open requests at most [`HTTP_DRAIN`].
async fn stop_api(stop_tx: watch::Sender<bool>, server: ServerTask) {
    let _ = stop_tx.send(true);
    match tokio::time::timeout(HTTP_DRAIN, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "HTTP server error during shutdown"),
        Ok(Err(e)) => tracing::warn!(error = %e, "HTTP server task failed"),
        Err(_) => tracing::warn!("HTTP drain timed out"),
    }
}

/// Waits for SIGTERM/SIGINT (leave the cluster, exit 0) or for the update
/// engine's hand-over to the supervisor (its exit code; peers see us
/// briefly silent, not gone, so nothing is re-placed).
async fn wait_for_exit(p2p: &P2pHandle, mut exit: watch::Receiver<Option<i32>>) -> i32 {
    tokio::select! {
        _ = shutdown_signal() => {
            p2p.leave().await;
            0
        }
        code = async {
            loop {
                if let Some(code) = *exit.borrow_and_update() {
                    break code;
                }
                if exit.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        } => {
            tracing::info!(code, "handing over to the supervisor");
            code
        }
    }
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
