//! The network glue: one task owns the libp2p swarm (TCP + the cluster
//! key's pre-shared-key private network + Noise + Yamux; gossipsub with peer
//! scoring, identify, ping, request-response, connection limits, a block
//! list) and feeds the pure membership table. Everything else talks to it
//! through [`P2pHandle`].
//!
//! Every inbound call passes the rules of [`crate::guard`]: only members in
//! good standing are served (a joiner is admitted by its own signed record
//! in an exchange or push), each peer within a request rate, and a peer that
//! keeps misbehaving is disconnected and banned for a while. Refusals are
//! counted, logged rate-limited and reported as [`P2pEvent::CallRefused`].
//!
//! Per tick it: publishes the node's own signed record (heartbeat), runs one
//! push-pull exchange with a random connected member (so membership converges
//! when gossip drops messages), redials bootstrap addresses and known members
//! with bounded backoff, and reports status changes.
//!
//! In debug builds the test-only fault file's network faults (see
//! [`crate::netfault`]) delay, lose or duplicate the node's outgoing
//! requests, exchanges, responses and heartbeat publishes.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::core::transport::Transport as _;
use libp2p::core::upgrade::Version;
use libp2p::identity::Keypair;
use libp2p::metrics::{Metrics, Recorder};
use libp2p::multiaddr::Protocol;
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    allow_block_list, connection_limits, gossipsub, identify, noise, ping, tcp, yamux, Multiaddr,
    PeerId, Swarm,
};
use plexi_util::secret::SecretKey;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rand::Rng;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::backoff::Backoff;
use crate::codec::{decode_cbor, encode_cbor, FramedCbor, RPC_PROTOCOL};
use crate::guard::{
    admission, may_call, Admission, Offence, RateLimiter, RefusalReports, Strikes, Verdict, BAN_MS,
    RATE_BURST, RATE_PER_SECOND, STRIKE_LIMIT, STRIKE_WINDOW_MS,
};
use crate::membership::{MemberStatus, MemberView, Membership, MergeOutcome, Timings};
use crate::netfault::{self, HeldBack};
use crate::protocol::{
    AgedRecord, CallError, GossipMessage, Request, Response, MAX_MEMBERS, MAX_SERVICE_NAME,
};
use crate::record::{NodeState, SelfStatus, SignedRecord, MAX_ADDRESSES};
use crate::P2pError;
use plexi_util::faults::{Faults, Loss, Outgoing};

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
/// Established libp2p connections allowed per peer (2, not 1: a
/// simultaneous dial of two peers must not refuse both sides).
pub const MAX_CONNECTIONS_PER_PEER: u32 = 2;
/// Established libp2p connections allowed in total (two per member of a
/// full table).
pub const MAX_CONNECTIONS: u32 = 2 * MAX_MEMBERS as u32;
/// Incoming connections allowed in their handshake at once.
pub const MAX_PENDING_INCOMING: u32 = 128;
/// Outgoing dials allowed in progress at once.
pub const MAX_PENDING_OUTGOING: u32 = 256;
/// Request-response inbound streams served at once per connection.
pub const MAX_INBOUND_STREAMS: usize = 256;
/// Yamux substreams open at once per connection (both directions).
pub const MAX_STREAMS_PER_CONNECTION: usize = 512;
/// A connection's whole upgrade (pnet and its key check, Noise, Yamux) must
/// finish within this; a peer with another key fails the key check at once,
/// one that sends too little would otherwise hang in it.
pub const UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest gossipsub message (a heartbeat record is far below it).
pub const MAX_GOSSIP_BYTES: usize = 64 * 1024;
/// Bound on the status events buffered for slow readers.
const EVENT_BUFFER: usize = 256;

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
    /// See [`crate::record::ReplicaCounts`].
    pub replica_counts: crate::record::ReplicaCounts,
    pub api_address: String,
    /// `node.location`, gossiped as [`NodeState::location`].
    pub location: Option<plexi_util::types::GeoLocation>,
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
    /// The cluster key: the pre-shared key of the private network. Only
    /// holders can open a connection to us or accept ours.
    pub cluster_key: SecretKey,
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
    /// A peer's call (or exchange, push, gossip) was refused or dropped.
    /// Rate-limited per peer (see [`crate::guard::REFUSAL_REPORT_MS`]):
    /// `count` refusals since the last report of this peer.
    CallRefused {
        peer_id: String,
        reason: &'static str,
        count: u64,
        /// Whether the peer was disconnected and banned for it.
        banned: bool,
    },
    /// A connection failed its handshake (no cluster key, another one, or
    /// not a plexi node): a join attempt refused. Rate-limited per remote
    /// IP like [`P2pEvent::CallRefused`]; `count` failures since the last
    /// report of that address.
    HandshakeFailed {
        /// `inbound` or `outbound`.
        direction: &'static str,
        /// The remote's IP (or host name), empty if unknown.
        remote: String,
        /// Whether the remote spoke our private network under another key
        /// (`true`), or did not speak it at all.
        key_mismatch: bool,
        count: u64,
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
        peer: PeerId,
        response: Response,
    },
    Leave {
        reply: oneshot::Sender<()>,
    },
    ConnectedPeers {
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    /// A response lost to the test-only fault file: its channel is dropped
    /// (the caller's call fails).
    Discard {
        id: u64,
    },
    /// An exchange held back by the fault file's delay, now due.
    Exchange {
        peer: PeerId,
        fate: Outgoing,
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
    /// Requests held back by the test-only fault file.
    held_back: HeldBack,
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
        match netfault::active() {
            None => self.send_request(peer, service, body).await,
            Some(f) => self.faulty_request(&f, peer, service, body).await,
        }
    }

    /// A request under the test-only fault file's network faults: delayed
    /// before it is sent; lost (the caller waits out its request timeout,
    /// as for a real lost message), either before sending or after the
    /// remote's handler ran; or sent twice, the second answer discarded.
    async fn faulty_request(
        &self,
        f: &Faults,
        peer: PeerId,
        service: &str,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, P2pError> {
        let fate = netfault::roll_outgoing(f);
        if fate == Outgoing::CLEAN {
            return self.send_request(peer, service, body).await;
        }
        let _held = self.held_back.try_hold().ok_or(P2pError::Busy)?;
        tokio::time::sleep(Duration::from_millis(fate.delay_ms)).await;
        let lost_until = tokio::time::Instant::now() + self.request_timeout;
        if fate.loss == Loss::Request {
            tokio::time::sleep_until(lost_until).await;
            return Err(P2pError::Timeout);
        }
        if fate.duplicate {
            // The copy's answer goes to a dropped receiver: discarded.
            let (reply, _discarded) = oneshot::channel();
            let _ = self.commands.try_send(Command::Request {
                peer,
                service: service.to_string(),
                body: body.clone(),
                reply,
            });
        }
        let res = self.send_request(peer, service, body).await;
        if fate.loss == Loss::Response {
            tokio::time::sleep_until(lost_until).await;
            return Err(P2pError::Timeout);
        }
        res
    }

    async fn send_request(
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
    limits: connection_limits::Behaviour,
    blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
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
    refused: Family<KindLabel, Counter>,
    handshake_failures: Family<KindLabel, Counter>,
    bans: Counter,
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
        let refused = Family::<KindLabel, Counter>::default();
        registry.register(
            "plexi_p2p_refused_calls",
            "Peer calls, exchanges, pushes and gossip refused or dropped, by reason",
            refused.clone(),
        );
        let handshake_failures = Family::<KindLabel, Counter>::default();
        registry.register(
            "plexi_p2p_handshake_failures",
            "Connections whose upgrade failed (no or another cluster key), by direction",
            handshake_failures.clone(),
        );
        let bans = Counter::default();
        registry.register(
            "plexi_p2p_peer_bans",
            "Peers disconnected and banned for misbehaving",
            bans.clone(),
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
            refused,
            handshake_failures,
            bans,
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

    let key_fingerprint = config.cluster_key.fingerprint();
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair.clone())
        .with_tokio()
        .with_other_transport(|key| private_transport(key, &config.cluster_key))
        .map_err(|e| P2pError::Transport(e.to_string()))?
        .with_behaviour(|key| build_behaviour(key, config.request_timeout))
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
    let (events, _) = broadcast::channel(EVENT_BUFFER);
    let (incarnation_tx, incarnation_rx) = watch::channel(config.incarnation);
    let held_back = HeldBack::new();
    let handle = P2pHandle {
        commands: commands_tx.clone(),
        membership: membership.clone(),
        clock,
        local_peer,
        events: events.clone(),
        incarnation: incarnation_rx,
        request_timeout: config.request_timeout,
        held_back: held_back.clone(),
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
        key_fingerprint,
        rate: RateLimiter::new(RATE_PER_SECOND, RATE_BURST),
        strikes: Strikes::new(STRIKE_LIMIT, STRIKE_WINDOW_MS, BAN_MS),
        refusal_reports: RefusalReports::new(),
        handshake_reports: RefusalReports::new(),
        held_back,
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

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// TCP, then the cluster key's private network (pnet: every byte after the
/// nonce exchange is XSalsa20 under the pre-shared key), then Noise
/// (authenticates the peer id) and Yamux. No other transport exists beside
/// it, so nothing reaches us without the key.
pub fn private_transport(
    key: &Keypair,
    cluster_key: &SecretKey,
) -> Result<libp2p::core::transport::Boxed<(PeerId, libp2p::core::muxing::StreamMuxerBox)>, BoxError>
{
    let psk = PreSharedKey::new(*cluster_key.bytes());
    let noise = noise::Config::new(key)?;
    let mut yamux = yamux::Config::default();
    yamux.set_max_num_streams(MAX_STREAMS_PER_CONNECTION);
    Ok(
        tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
            .and_then(move |socket, _| async move {
                let mut stream = PnetConfig::new(psk)
                    .handshake(socket)
                    .await
                    .map_err(std::io::Error::other)?;
                confirm_key(&mut stream).await?;
                Ok::<_, std::io::Error>(stream)
            })
            .upgrade(Version::V1Lazy)
            .authenticate(noise)
            .multiplex(yamux)
            .timeout(UPGRADE_TIMEOUT)
            .boxed(),
    )
}

/// What each side writes first through the private network (so encrypted
/// under the cluster key with its own random nonce). A peer with another
/// key reads garbage here and the connection fails at once, saying why,
/// instead of hanging in the next handshake until the upgrade timeout.
const KEY_CHECK: &[u8; 16] = b"plexi-pnet-ok/v1";
/// The error text of a failed key check (also what the logs classify).
pub const KEY_MISMATCH: &str = "cluster key mismatch";

async fn confirm_key<S>(stream: &mut S) -> std::io::Result<()>
where
    S: futures::AsyncRead + futures::AsyncWrite + Unpin,
{
    use futures::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(KEY_CHECK).await?;
    stream.flush().await?;
    let mut got = [0u8; KEY_CHECK.len()];
    stream.read_exact(&mut got).await?;
    if &got != KEY_CHECK {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{KEY_MISMATCH}: the remote holds another cluster key, or none"),
        ));
    }
    Ok(())
}

fn build_behaviour(key: &Keypair, request_timeout: Duration) -> Result<Behaviour, BoxError> {
    let gossip_config = gossipsub::ConfigBuilder::default()
        .heartbeat_interval(Duration::from_millis(500))
        .heartbeat_initial_delay(Duration::from_millis(100))
        .validation_mode(gossipsub::ValidationMode::Strict)
        // We judge every message (decode, signature, who sent it) before
        // gossipsub forwards it; rejections score the sender down.
        .validate_messages()
        .max_transmit_size(MAX_GOSSIP_BYTES)
        .build()
        .map_err(|e| format!("gossipsub config: {e}"))?;
    let mut gossipsub = gossipsub::Behaviour::new(
        gossipsub::MessageAuthenticity::Signed(key.clone()),
        gossip_config,
    )?;
    let (params, thresholds) = crate::scoring::params(MEMBERSHIP_TOPIC);
    gossipsub
        .with_peer_score(params, thresholds)
        .map_err(|e| format!("gossipsub peer scoring: {e}"))?;
    let identify = identify::Behaviour::new(
        identify::Config::new(IDENTIFY_PROTOCOL.to_string(), key.public())
            .with_agent_version(format!("plexi/{}", env!("CARGO_PKG_VERSION"))),
    );
    let rpc = request_response::Behaviour::with_codec(
        FramedCbor,
        [(RPC_PROTOCOL, ProtocolSupport::Full)],
        request_response::Config::default()
            .with_request_timeout(request_timeout)
            .with_max_concurrent_streams(MAX_INBOUND_STREAMS),
    );
    let limits = connection_limits::ConnectionLimits::default()
        .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER))
        .with_max_established(Some(MAX_CONNECTIONS))
        .with_max_pending_incoming(Some(MAX_PENDING_INCOMING))
        .with_max_pending_outgoing(Some(MAX_PENDING_OUTGOING));
    Ok(Behaviour {
        limits: connection_limits::Behaviour::new(limits),
        blocked: allow_block_list::Behaviour::default(),
        gossipsub,
        identify,
        ping: ping::Behaviour::new(ping::Config::new()),
        rpc,
    })
}

/// Whether a transport error (its `Debug` text) is a failed upgrade (the
/// pnet / multistream / Noise handshake, or its timeout) rather than a peer
/// that is simply not there (refused, unreachable).
fn upgrade_failed(error: &str) -> bool {
    const UNREACHABLE: [&str; 5] = [
        "ConnectionRefused",
        "HostUnreachable",
        "NetworkUnreachable",
        "AddrNotAvailable",
        "MultiaddrNotSupported",
    ];
    !UNREACHABLE.iter().any(|k| error.contains(k))
}

fn strip_p2p(addr: &Multiaddr) -> Multiaddr {
    addr.iter()
        .filter(|p| !matches!(p, Protocol::P2p(_)))
        .collect()
}

/// What merging one signed record from a peer came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Merged {
    /// Verified and news (or our own, superseded).
    News,
    /// Nothing newer than what we hold (not verified: not needed).
    Stale,
    /// Failed to decode or verify.
    Invalid,
}

/// The peer id a record claims (unverified).
fn claimed_peer(record: &SignedRecord) -> Option<String> {
    decode_cbor::<NodeState>(&record.body)
        .ok()
        .map(|s| s.peer_id)
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
    /// The cluster key's fingerprint, for the logs of failed handshakes.
    key_fingerprint: String,
    rate: RateLimiter<PeerId>,
    strikes: Strikes<PeerId>,
    /// Rate-limits refusal reports per peer.
    refusal_reports: RefusalReports<PeerId>,
    /// Rate-limits failed-handshake logs per remote IP.
    handshake_reports: RefusalReports<String>,
    /// Exchanges and responses held back by the test-only fault file.
    held_back: HeldBack,
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
            replica_counts: info.replica_counts,
            api_address: info.api_address,
            listen_addresses: self
                .listen_addresses
                .iter()
                .take(MAX_ADDRESSES)
                .map(|a| a.to_string())
                .collect(),
            location: info.location,
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
        if netfault::gossip_lost() {
            return;
        }
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

    fn merge_signed(&mut self, signed: SignedRecord, age_ms: u64, source: &'static str) -> Merged {
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
            return Merged::Stale;
        }
        let verified = match signed.verify() {
            Ok(v) => v,
            Err(e) => {
                self.metrics
                    .malformed
                    .get_or_create(&KindLabel { kind: source })
                    .inc();
                tracing::debug!(source, error = %e, "dropped malformed record");
                return Merged::Invalid;
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
        Merged::News
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

    /// Starts an exchange with `peer`, under the test-only fault file's
    /// network faults when some are on (a delayed one comes back as
    /// [`Command::Exchange`]).
    fn exchange_with(&mut self, peer: PeerId) {
        let Some(f) = netfault::active() else {
            return self.send_exchange(peer, Outgoing::CLEAN);
        };
        let fate = netfault::roll_outgoing(&f);
        // The request carries our records: a lost exchange always loses
        // its request, or a peer would still hear that we are alive.
        if fate.loss != Loss::None {
            return;
        }
        if fate.delay_ms > 0 {
            if let Some(held) = self.held_back.try_hold() {
                let commands = self.commands_tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(fate.delay_ms)).await;
                    let fate = Outgoing {
                        delay_ms: 0,
                        ..fate
                    };
                    let _ = commands.try_send(Command::Exchange { peer, fate });
                    drop(held);
                });
                return;
            }
        }
        self.send_exchange(peer, fate);
    }

    /// Sends the exchange now (twice when the fault file duplicates it).
    fn send_exchange(&mut self, peer: PeerId, fate: Outgoing) {
        for _ in 0..1 + usize::from(fate.duplicate) {
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
    }

    /// Sends a response to an exchange or push, under the test-only fault
    /// file's network faults (lost: the channel is dropped; delayed: held
    /// among the inbound calls, then sent as a [`Command::Respond`]).
    fn respond(&mut self, peer: PeerId, channel: ResponseChannel<Response>, response: Response) {
        match netfault::roll_response() {
            None => drop(channel),
            Some(ms) if ms > 0 && self.inbound.len() < MAX_PENDING_REQUESTS => {
                let id = self.next_inbound_id;
                self.next_inbound_id += 1;
                self.inbound.insert(id, channel);
                let commands = self.commands_tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    let _ = commands.send(Command::Respond { id, peer, response }).await;
                });
            }
            Some(_) => {
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .rpc
                    .send_response(channel, response);
            }
        }
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
        let now = self.now_ms();
        for peer in self.strikes.prune_bans(now) {
            tracing::info!(%peer, "ban ended");
            self.swarm.behaviour_mut().blocked.unblock_peer(peer);
            self.swarm
                .behaviour_mut()
                .gossipsub
                .remove_blacklisted_peer(&peer);
        }
        if self.left() {
            return;
        }
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
            Command::Respond { id, peer, response } => {
                match &response {
                    Response::Error {
                        error: CallError::Malformed { .. },
                    } => self.offence(peer, Offence::Malformed, true),
                    Response::Error {
                        error: CallError::UnknownService { .. },
                    } => self.offence(peer, Offence::UnknownService, true),
                    _ => {}
                }
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
            Command::Discard { id } => {
                self.inbound.remove(&id);
            }
            Command::Exchange { peer, fate } => {
                if !self.left() {
                    self.send_exchange(peer, fate);
                }
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
                self.on_dial_error(peer_id, &error);
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => self.on_incoming_error(&send_back_addr, &error),
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(ev)) => {
                self.metrics.libp2p.record(&ev);
                if let gossipsub::Event::Message {
                    propagation_source,
                    message_id,
                    message,
                } = ev
                {
                    let acceptance = self.on_gossip(propagation_source, message);
                    self.swarm
                        .behaviour_mut()
                        .gossipsub
                        .report_message_validation_result(
                            &message_id,
                            &propagation_source,
                            acceptance,
                        );
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
                // A request frame that did not decode (or was over its cap).
                if matches!(error, request_response::InboundFailure::Io(_)) {
                    self.offence(peer, Offence::Malformed, true);
                }
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    /// The status of `peer` in our table (`None`: unknown or forgotten).
    fn status_of(&self, peer: &PeerId) -> Option<MemberStatus> {
        let now = self.now_ms();
        self.membership
            .lock()
            .expect("membership lock")
            .get(&peer.to_string(), now)
            .map(|m| m.status)
    }

    /// Answers `channel` with a refusal.
    fn refuse(&mut self, channel: ResponseChannel<Response>, reason: &str) {
        let _ = self.swarm.behaviour_mut().rpc.send_response(
            channel,
            Response::Error {
                error: CallError::refused(reason),
            },
        );
    }

    /// Counts, reports (rate-limited) and, when `strike`, holds against the
    /// peer one refused or dropped message; bans the peer past the limit.
    fn offence(&mut self, peer: PeerId, offence: Offence, strike: bool) {
        let now = self.now_ms();
        self.metrics
            .refused
            .get_or_create(&KindLabel {
                kind: offence.as_str(),
            })
            .inc();
        let verdict = if strike {
            Some(self.strikes.strike(&peer, now))
        } else {
            None
        };
        let banned = matches!(verdict, Some(Verdict::Ban { .. }));
        if let Some(Verdict::Ban { until_ms }) = verdict {
            self.metrics.bans.inc();
            tracing::warn!(
                %peer,
                reason = offence.as_str(),
                ban_seconds = until_ms.saturating_sub(now) / 1000,
                "peer keeps misbehaving: disconnected and banned"
            );
            let b = self.swarm.behaviour_mut();
            b.blocked.block_peer(peer);
            b.gossipsub.blacklist_peer(&peer);
            self.connected.remove(&peer);
        }
        let report = if banned {
            Some(1)
        } else {
            self.refusal_reports.refused(&peer, now)
        };
        if let Some(count) = report {
            if !banned {
                tracing::warn!(
                    %peer,
                    reason = offence.as_str(),
                    count,
                    "refused a peer's call"
                );
            }
            let _ = self.events.send(P2pEvent::CallRefused {
                peer_id: peer.to_string(),
                reason: offence.as_str(),
                count,
                banned,
            });
        }
    }

    /// Strikes count for a peer we do not know or that left; a member we
    /// merely think dead (a healed partition, a paused process) is refused
    /// until its next record, but not held to account for it.
    fn not_member(&mut self, peer: PeerId, status: Option<MemberStatus>) {
        let strike = !matches!(status, Some(MemberStatus::Dead));
        self.offence(peer, Offence::NotMember, strike);
    }

    fn on_request(&mut self, peer: PeerId, request: Request, channel: ResponseChannel<Response>) {
        let now = self.now_ms();
        if self.strikes.banned(&peer, now) {
            // Dropping the channel: the caller sees its request fail.
            let _ = self.swarm.disconnect_peer_id(peer);
            return;
        }
        if !self.rate.allow(&peer, now) {
            self.offence(peer, Offence::RateLimited, true);
            self.refuse(channel, "over the request rate");
            return;
        }
        match request {
            Request::Exchange { records } => {
                self.metrics
                    .rpc_inbound
                    .get_or_create(&KindLabel { kind: "exchange" })
                    .inc();
                if !self.admit(peer, records) {
                    self.refuse(channel, "not a member: send a valid record of yourself");
                    return;
                }
                let records = self
                    .membership
                    .lock()
                    .expect("membership lock")
                    .exchange_view(self.now_ms());
                self.respond(peer, channel, Response::Exchange { records });
            }
            Request::Push { record } => {
                self.metrics
                    .rpc_inbound
                    .get_or_create(&KindLabel { kind: "push" })
                    .inc();
                let status = self.status_of(&peer);
                let own = claimed_peer(&record).as_deref() == Some(peer.to_string().as_str());
                match admission(status, own) {
                    Admission::Refused => {
                        self.not_member(peer, status);
                        self.refuse(channel, "not a member: push a valid record of yourself");
                        return;
                    }
                    Admission::Member | Admission::Joining => {
                        if self.merge_signed(record, 0, "push") == Merged::Invalid {
                            self.offence(peer, Offence::BadRecord, true);
                        }
                    }
                }
                self.report_statuses();
                self.respond(peer, channel, Response::Ack);
            }
            Request::App { service, body } => {
                self.metrics
                    .rpc_inbound
                    .get_or_create(&KindLabel { kind: "app" })
                    .inc();
                let status = self.status_of(&peer);
                if !may_call(status) {
                    self.not_member(peer, status);
                    self.refuse(channel, "not a member in good standing: join first");
                    return;
                }
                let refusal = if service.len() > MAX_SERVICE_NAME {
                    self.offence(peer, Offence::Malformed, true);
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
                    // The test-only fault file may lose or delay it; the
                    // channel waits among the bounded inbound calls.
                    let command = match netfault::roll_response() {
                        None => Command::Discard { id },
                        Some(ms) => {
                            if ms > 0 {
                                tokio::time::sleep(Duration::from_millis(ms)).await;
                            }
                            Command::Respond { id, peer, response }
                        }
                    };
                    let _ = commands.send(command).await;
                });
            }
        }
    }

    /// Admits an exchange from `peer` (see [`crate::guard::admission`]):
    /// merges what it sends if it is a member in good standing, or if its
    /// own record in the batch makes it one. Returns whether it was.
    fn admit(&mut self, peer: PeerId, mut records: Vec<AgedRecord>) -> bool {
        if records.len() > MAX_MEMBERS {
            self.metrics
                .malformed
                .get_or_create(&KindLabel { kind: "exchange" })
                .inc();
            self.offence(peer, Offence::Malformed, true);
            return false;
        }
        let status = self.status_of(&peer);
        let me = peer.to_string();
        let own = records
            .iter()
            .position(|a| claimed_peer(&a.record).as_deref() == Some(me.as_str()));
        match admission(status, own.is_some()) {
            Admission::Member => {}
            Admission::Refused => {
                self.not_member(peer, status);
                return false;
            }
            Admission::Joining => {
                let aged = records.swap_remove(own.expect("joining carries its record"));
                if self.merge_signed(aged.record, aged.age_ms, "exchange") == Merged::Invalid {
                    self.offence(peer, Offence::BadRecord, true);
                    return false;
                }
                let now_status = self.status_of(&peer);
                if !may_call(now_status) {
                    self.not_member(peer, now_status);
                    return false;
                }
                tracing::info!(%peer, "peer joined through the membership exchange");
            }
        }
        self.merge_batch(peer, records);
        true
    }

    /// Judges one gossip message: a heartbeat is merged if it is the
    /// publisher's own record, or relayed by a member in good standing.
    fn on_gossip(
        &mut self,
        propagation_source: PeerId,
        message: gossipsub::Message,
    ) -> gossipsub::MessageAcceptance {
        use gossipsub::MessageAcceptance::{Accept, Ignore, Reject};
        let GossipMessage::Heartbeat(rec) = match decode_cbor::<GossipMessage>(&message.data) {
            Ok(m) => m,
            Err(e) => {
                self.metrics
                    .malformed
                    .get_or_create(&KindLabel { kind: "gossip" })
                    .inc();
                tracing::debug!(source = ?message.source, error = %e, "dropped malformed gossip");
                self.offence(propagation_source, Offence::Malformed, true);
                return Reject;
            }
        };
        let own = match (claimed_peer(&rec), message.source) {
            (Some(claimed), Some(source)) => claimed == source.to_string(),
            _ => false,
        };
        if !own && !may_call(self.status_of(&propagation_source)) {
            self.metrics
                .refused
                .get_or_create(&KindLabel {
                    kind: "gossip_not_member",
                })
                .inc();
            return Ignore;
        }
        match self.merge_signed(rec, 0, "gossip") {
            Merged::News => Accept,
            Merged::Stale => Ignore,
            Merged::Invalid => {
                self.offence(propagation_source, Offence::BadRecord, true);
                Reject
            }
        }
    }

    /// Merges an exchange's records from `peer`; invalid ones count
    /// against it.
    fn merge_batch(&mut self, peer: PeerId, records: Vec<AgedRecord>) {
        if records.len() > MAX_MEMBERS {
            self.metrics
                .malformed
                .get_or_create(&KindLabel { kind: "exchange" })
                .inc();
            tracing::warn!(
                %peer,
                count = records.len(),
                "exchange with too many records dropped"
            );
            self.offence(peer, Offence::Malformed, true);
            return;
        }
        for aged in records {
            if self.merge_signed(aged.record, aged.age_ms, "exchange") == Merged::Invalid {
                self.offence(peer, Offence::BadRecord, true);
            }
        }
    }

    /// A dial that failed: unreachable peers are routine (debug); a failed
    /// upgrade most likely means the remote holds no or another cluster key.
    fn on_dial_error(&mut self, peer_id: Option<PeerId>, error: &libp2p::swarm::DialError) {
        use libp2p::swarm::DialError;
        let DialError::Transport(attempts) = error else {
            tracing::debug!(peer_id = ?peer_id, error = %error, "dial failed");
            return;
        };
        for (address, e) in attempts {
            let text = format!("{e:?}");
            if !upgrade_failed(&text) {
                tracing::debug!(peer_id = ?peer_id, %address, error = %e, "dial failed");
                continue;
            }
            self.handshake_failed("outbound", address, &text);
        }
    }

    fn on_incoming_error(&mut self, address: &Multiaddr, error: &libp2p::swarm::ListenError) {
        let text = format!("{error:?}");
        if let libp2p::swarm::ListenError::Transport(_) = error {
            self.handshake_failed("inbound", address, &text);
        } else {
            tracing::debug!(%address, error = %error, "incoming connection refused");
        }
    }

    /// Counts and logs (rate-limited per remote IP) a failed upgrade, naming
    /// our key's fingerprint and the remote address (never the key).
    fn handshake_failed(&mut self, direction: &'static str, address: &Multiaddr, error: &str) {
        self.metrics
            .handshake_failures
            .get_or_create(&KindLabel { kind: direction })
            .inc();
        let ip = address
            .iter()
            .find_map(|p| match p {
                Protocol::Ip4(a) => Some(a.to_string()),
                Protocol::Ip6(a) => Some(a.to_string()),
                Protocol::Dns(h) | Protocol::Dns4(h) | Protocol::Dns6(h) => Some(h.to_string()),
                _ => None,
            })
            .unwrap_or_default();
        if let Some(count) = self.handshake_reports.refused(&ip, self.now_ms()) {
            let why = if error.contains(KEY_MISMATCH) {
                "connection handshake failed: the remote holds another cluster key, or none"
            } else {
                "connection handshake failed: the remote does not speak our private network \
                 (no cluster key, or not a plexi node)"
            };
            tracing::warn!(
                direction,
                remote = %address,
                cluster_key_fingerprint = %self.key_fingerprint,
                count,
                error,
                "{why}"
            );
            let _ = self.events.send(P2pEvent::HandshakeFailed {
                direction,
                remote: ip,
                key_mismatch: error.contains(KEY_MISMATCH),
                count,
            });
        }
    }

    fn on_response(&mut self, peer: PeerId, id: OutboundRequestId, response: Response) {
        if self.exchanges.remove(&id) {
            match response {
                Response::Exchange { records } => self.merge_batch(peer, records),
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
