//! The network glue: one task owns the libp2p swarm (TCP + Noise + Yamux,
//! gossipsub, identify, ping, request-response) and feeds the pure membership
//! table. Everything else talks to it through [`P2pHandle`].
//!
//! Per tick it: publishes the node's own signed record (heartbeat), runs one
//! push-pull exchange with a random connected member (so membership converges
//! when gossip drops messages), redials bootstrap addresses and known members
//! with bounded backoff, and reports status changes.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::metrics::{Metrics, Recorder};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{gossipsub, identify, noise, ping, tcp, yamux, Multiaddr, PeerId, Swarm};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rand::Rng;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::backoff::Backoff;
use crate::codec::{decode_cbor, encode_cbor, FramedCbor, RPC_PROTOCOL};
use crate::membership::{MemberStatus, MemberView, Membership, MergeOutcome, Timings};
use crate::protocol::{
    AgedRecord, CallError, GossipMessage, Request, Response, MAX_MEMBERS, MAX_SERVICE_NAME,
};
use crate::record::{NodeState, SelfStatus, SignedRecord, MAX_ADDRESSES};
use crate::P2pError;

/// The gossipsub topic carrying heartbeats.
pub const MEMBERSHIP_TOPIC: &str = "plexi/membership/1";
/// identify's protocol version; peers that speak another are disconnected.
pub const IDENTIFY_PROTOCOL: &str = "/plexi/1";
/// Bound on the command queue into the swarm task.
const COMMAND_QUEUE: usize = 1024;
/// Bound on outstanding outbound and inbound application requests.
const MAX_PENDING_REQUESTS: usize = 1024;
/// How often the dialer looks for peers to (re)connect to.
const DIAL_TICK: Duration = Duration::from_millis(250);
/// Redial backoff bounds.
const BACKOFF_BASE_MS: u64 = 500;
const BACKOFF_MAX_MS: u64 = 30_000;
/// How long a leaving node waits for peers to acknowledge its `left` record.
const LEAVE_DEADLINE: Duration = Duration::from_secs(2);

/// What the node says about itself; the swarm task reads the latest value at
/// every heartbeat.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalInfo {
    pub name: String,
    pub version: String,
    pub region: String,
    pub zone: String,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub object_count: u64,
    pub store_latency_us: u64,
    /// Persisted by the node; see [`NodeState::unplanned_restarts`].
    pub unplanned_restarts: u64,
    pub healthy: bool,
    pub api_address: String,
}

#[derive(Clone)]
pub struct P2pConfig {
    pub keypair: Keypair,
    pub listen: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    /// Persisted, bumped by the caller at every start.
    pub incarnation: u64,
    pub timings: Timings,
    pub heartbeat_interval: Duration,
    pub exchange_interval: Duration,
    pub request_timeout: Duration,
}

/// Events for the rest of the node (logs, persistence, later the SSE stream).
#[derive(Clone, Debug, PartialEq)]
pub enum P2pEvent {
    /// A member's status changed as seen from here.
    MemberStatus {
        peer_id: String,
        name: String,
        status: MemberStatus,
    },
}

/// Serves application requests (`Request::App`) for named services.
#[async_trait::async_trait]
pub trait AppHandler: Send + Sync + 'static {
    async fn handle(
        &self,
        peer: PeerId,
        service: String,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, crate::protocol::CallError>;
}

enum Command {
    Request {
        peer: PeerId,
        service: String,
        body: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, P2pError>>,
    },
    Respond {
        id: u64,
        response: Response,
    },
    Leave {
        reply: oneshot::Sender<()>,
    },
    ConnectedPeers {
        reply: oneshot::Sender<Vec<PeerId>>,
    },
}

/// A clonable handle on the running swarm task.
#[derive(Clone)]
pub struct P2pHandle {
    commands: mpsc::Sender<Command>,
    membership: Arc<Mutex<Membership>>,
    clock: Clock,
    local_peer: PeerId,
    events: broadcast::Sender<P2pEvent>,
    /// The incarnation in use: never lossy, unlike the event stream, so the
    /// node always persists the latest bump (see [`P2pHandle::incarnation`]).
    incarnation: watch::Receiver<u64>,
    request_timeout: Duration,
}

/// Monotonic milliseconds since the swarm started: the membership clock.
#[derive(Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn now_ms(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
}

impl P2pHandle {
    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer
    }

    /// Every member with its status, the local node included.
    pub fn members(&self) -> Vec<MemberView> {
        let now = self.clock.now_ms();
        self.membership
            .lock()
            .expect("membership lock")
            .members(now)
    }

    /// One member (the local node included) by peer id.
    pub fn member(&self, peer: &PeerId) -> Option<MemberView> {
        let now = self.clock.now_ms();
        self.membership
            .lock()
            .expect("membership lock")
            .get(&peer.to_string(), now)
    }

    /// Peer ids of the members seen alive, ourselves excluded.
    pub fn alive_peers(&self) -> Vec<PeerId> {
        let me = self.local_peer.to_string();
        self.members()
            .into_iter()
            .filter(|m| m.status == MemberStatus::Alive && m.record.state.peer_id != me)
            .filter_map(|m| m.record.state.peer_id.parse().ok())
            .collect()
    }

    /// Member status changes. Best effort: a slow reader may miss some
    /// (`Lagged`); nothing that must not be lost travels here.
    pub fn subscribe(&self) -> broadcast::Receiver<P2pEvent> {
        self.events.subscribe()
    }

    /// The incarnation in use. It rises when a newer record of ours
    /// circulates (a restored data dir); the node persists every value it
    /// sees here. A watch keeps the latest value, so no bump is ever lost.
    pub fn incarnation(&self) -> watch::Receiver<u64> {
        self.incarnation.clone()
    }

    /// Calls `service` on `peer` with `body`; bounded by the request timeout.
    pub async fn request(
        &self,
        peer: PeerId,
        service: &str,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, P2pError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .try_send(Command::Request {
                peer,
                service: service.to_string(),
                body,
                reply,
            })
            .map_err(|_| P2pError::Busy)?;
        match tokio::time::timeout(self.request_timeout + Duration::from_secs(1), rx).await {
            Ok(Ok(res)) => res,
            Ok(Err(_)) => Err(P2pError::Stopped),
            Err(_) => Err(P2pError::Timeout),
        }
    }

    pub async fn connected_peers(&self) -> Vec<PeerId> {
        let (reply, rx) = oneshot::channel();
        if self
            .commands
            .send(Command::ConnectedPeers { reply })
            .await
            .is_err()
        {
            return vec![];
        }
        rx.await.unwrap_or_default()
    }

    /// Announces `left` to the cluster and waits (bounded) for peers to take it.
    pub async fn leave(&self) {
        let (reply, rx) = oneshot::channel();
        if self.commands.send(Command::Leave { reply }).await.is_ok() {
            let _ = tokio::time::timeout(LEAVE_DEADLINE + Duration::from_secs(1), rx).await;
        }
    }
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    gossipsub: gossipsub::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    rpc: request_response::Behaviour<FramedCbor>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

struct P2pMetrics {
    libp2p: Metrics,
    members: Family<StatusLabel, Gauge>,
    malformed: Family<KindLabel, Counter>,
    rpc_inbound: Family<KindLabel, Counter>,
    connected_peers: Gauge,
}

impl P2pMetrics {
    fn register(registry: &mut Registry) -> Self {
        let libp2p = Metrics::new(registry);
        let members = Family::<StatusLabel, Gauge>::default();
        registry.register(
            "plexi_members",
            "Cluster members by status as seen by this node",
            members.clone(),
        );
        let malformed = Family::<KindLabel, Counter>::default();
        registry.register(
            "plexi_p2p_malformed_messages",
            "Peer messages dropped because they failed to decode or verify",
            malformed.clone(),
        );
        let rpc_inbound = Family::<KindLabel, Counter>::default();
        registry.register(
            "plexi_p2p_inbound_requests",
            "Inbound request-response calls by kind",
            rpc_inbound.clone(),
        );
        let connected_peers = Gauge::default();
        registry.register(
            "plexi_p2p_connected_peers",
            "Peers with an open connection",
            connected_peers.clone(),
        );
        P2pMetrics {
            libp2p,
            members,
            malformed,
            rpc_inbound,
            connected_peers,
        }
    }
}

/// Starts the swarm task. Listening errors are returned here, not later.
pub async fn spawn(
    config: P2pConfig,
    local: watch::Receiver<LocalInfo>,
    handler: Arc<dyn AppHandler>,
    registry: &mut Registry,
) -> Result<(P2pHandle, tokio::task::JoinHandle<()>), P2pError> {
    let keypair = config.keypair.clone();
    let local_peer = keypair.public().to_peer_id();
    let metrics = P2pMetrics::register(registry);

    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair.clone())
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| P2pError::Transport(e.to_string()))?
        .with_behaviour(
            |key| -> Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
                let gossip_config = gossipsub::ConfigBuilder::default()
                    .heartbeat_interval(Duration::from_millis(500))
                    .heartbeat_initial_delay(Duration::from_millis(100))
                    .validation_mode(gossipsub::ValidationMode::Strict)
                    .max_transmit_size(64 * 1024)
                    .build()
                    .map_err(|e| format!("gossipsub config: {e}"))?;
                let gossipsub = gossipsub::Behaviour::new(
                    gossipsub::MessageAuthenticity::Signed(key.clone()),
                    gossip_config,
                )?;
                let identify = identify::Behaviour::new(
                    identify::Config::new(IDENTIFY_PROTOCOL.to_string(), key.public())
                        .with_agent_version(format!("plexi/{}", env!("CARGO_PKG_VERSION"))),
                );
                let rpc = request_response::Behaviour::with_codec(
                    FramedCbor,
                    [(RPC_PROTOCOL, ProtocolSupport::Full)],
                    request_response::Config::default()
                        .with_request_timeout(config.request_timeout)
                        .with_max_concurrent_streams(256),
                );
                Ok(Behaviour {
                    gossipsub,
                    identify,
                    ping: ping::Behaviour::new(ping::Config::new()),
                    rpc,
                })
            },
        )
        .map_err(|e| P2pError::Transport(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
        .build();

    let topic = gossipsub::IdentTopic::new(MEMBERSHIP_TOPIC);
    swarm
        .behaviour_mut()
        .gossipsub
        .subscribe(&topic)
        .map_err(|e| P2pError::Transport(format!("subscribe: {e}")))?;
    for addr in &config.listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| P2pError::Transport(format!("listen on {addr}: {e}")))?;
    }

    let clock = Clock(Instant::now());
    let membership = Arc::new(Mutex::new(Membership::new(
        local_peer.to_string(),
        config.timings,
    )));
    let (commands_tx, commands_rx) = mpsc::channel(COMMAND_QUEUE);
    let (events, _) = broadcast::channel(256);
    let (incarnation_tx, incarnation_rx) = watch::channel(config.incarnation);
    let handle = P2pHandle {
        commands: commands_tx.clone(),
        membership: membership.clone(),
        clock,
        local_peer,
        events: events.clone(),
        incarnation: incarnation_rx,
        request_timeout: config.request_timeout,
    };

    let mut driver = Driver {
        swarm,
        keypair,
        topic,
        membership,
        clock,
        local,
        handler,
        commands_tx,
        events,
        metrics,
        incarnation: config.incarnation,
        incarnation_tx,
        heartbeat: 0,
        listen_addresses: Vec::new(),
        connected: HashSet::new(),
        bootstrap: config
            .bootstrap
            .iter()
            .map(|a| {
                (
                    strip_p2p(a),
                    (None, Backoff::new(BACKOFF_BASE_MS, BACKOFF_MAX_MS)),
                )
            })
            .collect(),
        member_backoff: HashMap::new(),
        exchanges: HashSet::new(),
        outbound: HashMap::new(),
        inbound: HashMap::new(),
        next_inbound_id: 0,
        leaving: None,
        last_status: HashMap::new(),
    };
    let heartbeat_interval = config.heartbeat_interval;
    let exchange_interval = config.exchange_interval;
    let task = tokio::spawn(async move {
        driver.sign_and_install();
        driver
            .run(commands_rx, heartbeat_interval, exchange_interval)
            .await
    });
    Ok((handle, task))
}

fn strip_p2p(addr: &Multiaddr) -> Multiaddr {
    addr.iter()
        .filter(|p| !matches!(p, Protocol::P2p(_)))
        .collect()
}

struct Leaving {
    pending: HashSet<OutboundRequestId>,
    /// Taken when every peer answered or the deadline passed.
    reply: Option<oneshot::Sender<()>>,
    deadline: Instant,
}

struct Driver {
    swarm: Swarm<Behaviour>,
    keypair: Keypair,
    topic: gossipsub::IdentTopic,
    membership: Arc<Mutex<Membership>>,
    clock: Clock,
    local: watch::Receiver<LocalInfo>,
    handler: Arc<dyn AppHandler>,
    commands_tx: mpsc::Sender<Command>,
    events: broadcast::Sender<P2pEvent>,
    metrics: P2pMetrics,
    incarnation: u64,
    incarnation_tx: watch::Sender<u64>,
    heartbeat: u64,
    listen_addresses: Vec<Multiaddr>,
    connected: HashSet<PeerId>,
    /// Bootstrap address (without /p2p) -> the peer it led to, and its backoff.
    bootstrap: HashMap<Multiaddr, (Option<PeerId>, Backoff)>,
    member_backoff: HashMap<PeerId, Backoff>,
    /// Outstanding membership exchanges we started.
    exchanges: HashSet<OutboundRequestId>,
    /// Outstanding application requests we sent.
    outbound: HashMap<OutboundRequestId, oneshot::Sender<Result<Vec<u8>, P2pError>>>,
    /// Inbound application requests being served.
    inbound: HashMap<u64, ResponseChannel<Response>>,
    next_inbound_id: u64,
    leaving: Option<Leaving>,
    last_status: HashMap<String, MemberStatus>,
}

impl Driver {
    async fn run(
        &mut self,
        mut commands: mpsc::Receiver<Command>,
        heartbeat_interval: Duration,
        exchange_interval: Duration,
    ) {
        let mut heartbeat = tokio::time::interval(heartbeat_interval);
        let mut exchange = tokio::time::interval(exchange_interval);
        let mut dial = tokio::time::interval(DIAL_TICK);
        for t in [&mut heartbeat, &mut exchange, &mut dial] {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                Some(cmd) = commands.recv() => self.on_command(cmd),
                _ = heartbeat.tick() => self.on_heartbeat(),
                _ = exchange.tick() => self.exchange_with_random_peer(),
                _ = dial.tick() => {
                    self.redial();
                    self.check_leave_deadline();
                }
            }
        }
    }

    fn left(&self) -> bool {
        self.leaving.is_some()
    }

    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Builds, signs and installs the local record from the latest local info.
    fn sign_and_install(&mut self) -> Option<SignedRecord> {
        let info = self.local.borrow().clone();
        let state = NodeState {
            peer_id: self.keypair.public().to_peer_id().to_string(),
            name: info.name,
            incarnation: self.incarnation,
            heartbeat: self.heartbeat,
            status: if self.left() {
                SelfStatus::Left
            } else {
                SelfStatus::Active
            },
            version: info.version,
            region: info.region,
            zone: info.zone,
            capacity_bytes: info.capacity_bytes,
            used_bytes: info.used_bytes,
            object_count: info.object_count,
            store_latency_us: info.store_latency_us,
            unplanned_restarts: info.unplanned_restarts,
            healthy: info.healthy,
            api_address: info.api_address,
            listen_addresses: self
                .listen_addresses
                .iter()
                .take(MAX_ADDRESSES)
                .map(|a| a.to_string())
                .collect(),
        };
        match SignedRecord::sign(&self.keypair, &state) {
            Ok(rec) => {
                let signed = rec.signed.clone();
                let now = self.now_ms();
                self.membership
                    .lock()
                    .expect("membership lock")
                    .set_local(rec, now);
                Some(signed)
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot sign own record");
                None
            }
        }
    }

    fn publish(&mut self, record: SignedRecord) {
        let bytes = match encode_cbor(&GossipMessage::Heartbeat(record)) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode heartbeat");
                return;
            }
        };
        match self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(self.topic.clone(), bytes)
        {
            Ok(_) => {}
            // Nobody to send to yet: the next tick (or an exchange) covers it.
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic)
            | Err(gossipsub::PublishError::Duplicate) => {}
            Err(e) => tracing::debug!(error = %e, "heartbeat publish failed"),
        }
    }

    fn on_heartbeat(&mut self) {
        if self.left() {
            return;
        }
        self.heartbeat += 1;
        if let Some(rec) = self.sign_and_install() {
            self.publish(rec);
        }
        self.report_statuses();
    }

    /// Logs, publishes and counts status changes; forgets long-dead members.
    fn report_statuses(&mut self) {
        let now = self.now_ms();
        let (views, counts) = {
            let mut m = self.membership.lock().expect("membership lock");
            m.prune(now);
            (m.members(now), m.counts(now))
        };
        for (status, n) in counts {
            self.metrics
                .members
                .get_or_create(&StatusLabel {
                    status: status.as_str(),
                })
                .set(n as i64);
        }
        let mut seen = HashSet::new();
        for v in views {
            let peer = v.record.state.peer_id.clone();
            seen.insert(peer.clone());
            let before = self.last_status.insert(peer.clone(), v.status);
            if before != Some(v.status) {
                tracing::info!(
                    node_id = %v.record.state.name,
                    peer_id = %peer,
                    status = v.status.as_str(),
                    incarnation = v.record.state.incarnation,
                    "member status"
                );
                let _ = self.events.send(P2pEvent::MemberStatus {
                    peer_id: peer,
                    name: v.record.state.name.clone(),
                    status: v.status,
                });
            }
        }
        self.last_status.retain(|p, _| seen.contains(p));
    }

    fn merge_signed(&mut self, signed: SignedRecord, age_ms: u64, source: &'static str) {
        // Decoding is cheap and verifying is not: most copies that gossip and
        // exchanges deliver are stale, so look before checking the signature.
        let is_news = match decode_cbor::<NodeState>(&signed.body) {
            Ok(state) => self
                .membership
                .lock()
                .expect("membership lock")
                .is_news(&state, &signed.signature),
            Err(_) => true, // let verify() report it
        };
        if !is_news {
            return;
        }
        let verified = match signed.verify() {
            Ok(v) => v,
            Err(e) => {
                self.metrics
                    .malformed
                    .get_or_create(&KindLabel { kind: source })
                    .inc();
                tracing::warn!(source, error = %e, "dropped malformed record");
                return;
            }
        };
        let now = self.now_ms();
        let outcome = self
            .membership
            .lock()
            .expect("membership lock")
            .merge(verified, age_ms, now);
        match outcome {
            MergeOutcome::OwnRecordSuperseded { incarnation }
                if incarnation >= self.incarnation =>
            {
                self.incarnation = incarnation + 1;
                self.heartbeat = 0;
                tracing::warn!(
                    incarnation = self.incarnation,
                    "a newer record of ours circulates; moving to a higher incarnation"
                );
                self.incarnation_tx.send_replace(self.incarnation);
                if let Some(rec) = self.sign_and_install() {
                    self.publish(rec);
                }
            }
            MergeOutcome::Full => {
                tracing::warn!(max = MAX_MEMBERS, "membership table full; record dropped")
            }
            _ => {}
        }
    }

    /// The listen addresses a member's record advertises.
    fn addresses_of(&self, peer: &PeerId) -> Vec<Multiaddr> {
        let now = self.now_ms();
        self.membership
            .lock()
            .expect("membership lock")
            .get(&peer.to_string(), now)
            .map(|m| {
                m.record
                    .state
                    .listen_addresses
                    .iter()
                    .filter_map(|a| a.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn exchange_with(&mut self, peer: PeerId) {
        let records = {
            let m = self.membership.lock().expect("membership lock");
            m.exchange_view(self.now_ms())
        };
        let id = self
            .swarm
            .behaviour_mut()
            .rpc
            .send_request(&peer, Request::Exchange { records });
        self.exchanges.insert(id);
    }

    fn exchange_with_random_peer(&mut self) {
        if self.left() || self.connected.is_empty() {
            return;
        }
        let idx = rand::thread_rng().gen_range(0..self.connected.len());
        if let Some(peer) = self.connected.iter().nth(idx).copied() {
            self.exchange_with(peer);
        }
    }

    fn redial(&mut self) {
        if self.left() {
            return;
        }
        let now = self.now_ms();
        let mut rng = rand::thread_rng();
        let mut dials: Vec<DialOpts> = Vec::new();
        for (addr, (peer, backoff)) in self.bootstrap.iter_mut() {
            if peer.is_some_and(|p| self.connected.contains(&p)) || !backoff.due(now) {
                continue;
            }
            if self.listen_addresses.contains(addr) {
                continue; // ourselves
            }
            backoff.attempted(now, rng.gen());
            dials.push(DialOpts::unknown_peer_id().address(addr.clone()).build());
        }
        let members = self
            .membership
            .lock()
            .expect("membership lock")
            .members(now);
        let local = self.swarm.local_peer_id().to_string();
        for m in members {
            if m.status == MemberStatus::Left || m.record.state.peer_id == local {
                continue;
            }
            let Ok(peer) = m.record.state.peer_id.parse::<PeerId>() else {
                continue;
            };
            if self.connected.contains(&peer) {
                continue;
            }
            let addrs: Vec<Multiaddr> = m
                .record
                .state
                .listen_addresses
                .iter()
                .filter_map(|a| a.parse().ok())
                .collect();
            if addrs.is_empty() {
                continue;
            }
            let backoff = self
                .member_backoff
                .entry(peer)
                .or_insert_with(|| Backoff::new(BACKOFF_BASE_MS, BACKOFF_MAX_MS));
            if !backoff.due(now) {
                continue;
            }
            backoff.attempted(now, rng.gen());
            dials.push(
                DialOpts::peer_id(peer)
                    .addresses(addrs)
                    .condition(PeerCondition::DisconnectedAndNotDialing)
                    .build(),
            );
        }
        for opts in dials {
            if let Err(e) = self.swarm.dial(opts) {
                tracing::debug!(error = %e, "dial not started");
            }
        }
        self.member_backoff.retain(|p, _| {
            self.connected.contains(p) || self.last_status.contains_key(&p.to_string())
        });
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Request {
                peer,
                service,
                body,
                reply,
            } => {
                if self.outbound.len() >= MAX_PENDING_REQUESTS {
                    let _ = reply.send(Err(P2pError::Busy));
                    return;
                }
                // A member we know only from its record may not be connected
                // yet: give request-response its addresses to dial.
                let addresses = self.addresses_of(&peer);
                let id = self.swarm.behaviour_mut().rpc.send_request_with_addresses(
                    &peer,
                    Request::App { service, body },
                    addresses,
                );
                self.outbound.insert(id, reply);
            }
            Command::Respond { id, response } => {
                if let Some(channel) = self.inbound.remove(&id) {
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .rpc
                        .send_response(channel, response);
                }
            }
            Command::ConnectedPeers { reply } => {
                let _ = reply.send(self.connected.iter().copied().collect());
            }
            Command::Leave { reply } => {
                if self.leaving.is_some() {
                    let _ = reply.send(());
                    return;
                }
                self.leaving = Some(Leaving {
                    pending: HashSet::new(),
                    reply: Some(reply),
                    deadline: Instant::now() + LEAVE_DEADLINE,
                });
                self.heartbeat += 1;
                let Some(record) = self.sign_and_install() else {
                    return;
                };
                tracing::info!(peers = self.connected.len(), "leaving the cluster");
                self.publish(record.clone());
                let peers: Vec<PeerId> = self.connected.iter().copied().collect();
                let mut pending = HashSet::new();
                for peer in peers {
                    pending.insert(self.swarm.behaviour_mut().rpc.send_request(
                        &peer,
                        Request::Push {
                            record: record.clone(),
                        },
                    ));
                }
                if let Some(l) = self.leaving.as_mut() {
                    l.pending = pending;
                }
                self.check_leave_deadline();
            }
        }
    }

    fn leave_progress(&mut self, id: &OutboundRequestId) {
        if let Some(l) = self.leaving.as_mut() {
            l.pending.remove(id);
        }
        self.check_leave_deadline();
    }

    fn check_leave_deadline(&mut self) {
        if let Some(l) = self.leaving.as_mut() {
            if l.pending.is_empty() || Instant::now() >= l.deadline {
                if let Some(reply) = l.reply.take() {
                    let _ = reply.send(());
                }
            }
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        self.metrics.libp2p.record(&event);
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                if self.listen_addresses.len() < MAX_ADDRESSES
                    && !self.listen_addresses.contains(&address)
                {
                    self.listen_addresses.push(address);
                }
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen_addresses.retain(|a| a != &address);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                num_established,
                ..
            } => {
                if let libp2p::core::ConnectedPoint::Dialer { address, .. } = &endpoint {
                    if let Some((p, backoff)) = self.bootstrap.get_mut(&strip_p2p(address)) {
                        *p = Some(peer_id);
                        backoff.succeeded();
                    }
                }
                if let Some(b) = self.member_backoff.get_mut(&peer_id) {
                    b.succeeded();
                }
                self.connected.insert(peer_id);
                self.metrics
                    .connected_peers
                    .set(self.connected.len() as i64);
                if num_established.get() == 1 {
                    tracing::debug!(%peer_id, "connected");
                    if !self.left() {
                        self.exchange_with(peer_id);
                    }
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                cause,
                ..
            } => {
                tracing::debug!(%peer_id, cause = ?cause, "disconnected");
                self.connected.remove(&peer_id);
                self.metrics
                    .connected_peers
                    .set(self.connected.len() as i64);
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(peer_id = ?peer_id, error = %error, "dial failed");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(ev)) => {
                self.metrics.libp2p.record(&ev);
                if let gossipsub::Event::Message { message, .. } = ev {
                    match decode_cbor::<GossipMessage>(&message.data) {
                        Ok(GossipMessage::Heartbeat(rec)) => self.merge_signed(rec, 0, "gossip"),
                        Err(e) => {
                            self.metrics
                                .malformed
                                .get_or_create(&KindLabel { kind: "gossip" })
                                .inc();
                            tracing::warn!(source = ?message.source, error = %e, "dropped malformed gossip");
                        }
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(ev)) => {
                self.metrics.libp2p.record(&ev);
                if let identify::Event::Received { peer_id, info, .. } = ev {
                    if info.protocol_version != IDENTIFY_PROTOCOL {
                        tracing::warn!(%peer_id, protocol = %info.protocol_version, "peer speaks another protocol; disconnecting");
                        let _ = self.swarm.disconnect_peer_id(peer_id);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ev)) => self.metrics.libp2p.record(&ev),
            SwarmEvent::Behaviour(BehaviourEvent::Rpc(ev)) => self.on_rpc(ev),
            _ => {}
        }
    }

    fn on_rpc(&mut self, ev: request_response::Event<Request, Response>) {
        match ev {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => self.on_request(peer, request, channel),
                request_response::Message::Response {
                    request_id,
                    response,
                } => self.on_response(peer, request_id, response),
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                tracing::debug!(%peer, error = %error, "request failed");
                self.exchanges.remove(&request_id);
                if let Some(reply) = self.outbound.remove(&request_id) {
                    let _ = reply.send(Err(P2pError::Request(error.to_string())));
                }
                self.leave_progress(&request_id);
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, error = %error, "inbound request failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn on_request(&mut self, peer: PeerId, request: Request, channel: ResponseChannel<Response>) {
        match request {
            Request::Exchange { records } => {
                self.metrics
                    .rpc_inbound
                    .get_or_create(&KindLabel { kind: "exchange" })
                    .inc();
                self.merge_batch(records);
                let records = self
                    .membership
                    .lock()
                    .expect("membership lock")
                    .exchange_view(self.now_ms());
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .rpc
                    .send_response(channel, Response::Exchange { records });
            }
            Request::Push { record } => {
                self.metrics
                    .rpc_inbound
                    .get_or_create(&KindLabel { kind: "push" })
                    .inc();
                self.merge_signed(record, 0, "push");
                self.report_statuses();
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .rpc
                    .send_response(channel, Response::Ack);
            }
            Request::App { service, body } => {
                self.metrics
                    .rpc_inbound
                    .get_or_create(&KindLabel { kind: "app" })
                    .inc();
                let refusal = if service.len() > MAX_SERVICE_NAME {
                    Some(CallError::malformed("service name too long"))
                } else if self.inbound.len() >= MAX_PENDING_REQUESTS {
                    Some(CallError::refused("too many calls in flight"))
                } else {
                    None
                };
                if let Some(error) = refusal {
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .rpc
                        .send_response(channel, Response::Error { error });
                    return;
                }
                let id = self.next_inbound_id;
                self.next_inbound_id += 1;
                self.inbound.insert(id, channel);
                let handler = self.handler.clone();
                let commands = self.commands_tx.clone();
                tokio::spawn(async move {
                    let response = match handler.handle(peer, service, body).await {
                        Ok(body) => Response::App { body },
                        Err(error) => Response::Error { error },
                    };
                    let _ = commands.send(Command::Respond { id, response }).await;
                });
            }
        }
    }

    fn merge_batch(&mut self, records: Vec<AgedRecord>) {
        if records.len() > MAX_MEMBERS {
            self.metrics
                .malformed
                .get_or_create(&KindLabel { kind: "exchange" })
                .inc();
            tracing::warn!(
                count = records.len(),
                "exchange with too many records dropped"
            );
            return;
        }
        for aged in records {
            self.merge_signed(aged.record, aged.age_ms, "exchange");
        }
    }

    fn on_response(&mut self, peer: PeerId, id: OutboundRequestId, response: Response) {
        if self.exchanges.remove(&id) {
            match response {
                Response::Exchange { records } => self.merge_batch(records),
                other => tracing::warn!(%peer, response = ?other, "unexpected exchange response"),
            }
            return;
        }
        if let Some(reply) = self.outbound.remove(&id) {
            let result = match response {
                Response::App { body } => Ok(body),
                Response::Error { error } => Err(P2pError::Remote(error)),
                other => {
                    tracing::warn!(%peer, response = ?other, "unexpected response to an application call");
                    Err(P2pError::UnexpectedResponse)
                }
            };
            let _ = reply.send(result);
            return;
        }
        self.leave_progress(&id);
    }
}
