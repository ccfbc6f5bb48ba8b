//! The wire's security, with real `plexi node` processes: the cluster key
//! (libp2p pnet) keeps out nodes and raw libp2p clients without it, a joiner
//! without a key stops with exit 2, a first node creates its key, and a
//! rogue peer that holds the key but sends garbage, replays, floods and
//! never joins properly is refused, scored down and banned while the node
//! keeps serving its clients.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use libp2p::core::transport::Transport as _;
use libp2p::core::upgrade::Version;
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{gossipsub, identity::Keypair, noise, tcp, yamux, Multiaddr, PeerId, Swarm};
use plexi_p2p::codec::{decode_cbor, encode_cbor, MAX_RESPONSE_BYTES, RPC_PROTOCOL};
use plexi_p2p::protocol::{AgedRecord, CallError, GossipMessage, Request, Response};
use plexi_p2p::record::{NodeState, SelfStatus, SignedRecord};
use plexi_util::secret::SecretKey;
use serde_json::Value;

fn fingerprint(hex: &str) -> String {
    SecretKey::from_hex(hex).unwrap().fingerprint()
}

/// A counter or gauge from a node's /metrics (0 when absent).
fn metric(node: &TestNode, line_prefix: &str) -> f64 {
    let text = node.get("/metrics", Some(READ)).text().unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(line_prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn listed_by(node: &TestNode, name: &str) -> bool {
    node.nodes().iter().any(|n| n["node_id"] == name)
}

#[test]
fn node_with_another_key_never_joins_and_both_sides_say_why() {
    let root = tempfile::tempdir().unwrap();
    let nodes = cluster(root.path(), 3, FAST);
    let ours = root_key(root.path());
    let other = "5a".repeat(32);
    let mut stranger = TestNode::spawn_keyed(
        root.path(),
        NodeSpec {
            name: "stranger",
            bootstrap: vec![nodes[0].p2p.clone(), nodes[2].p2p.clone()],
            region: "r1",
            zone: "z9",
            config: Some(FAST),
        },
        ClusterKey::Hex(other.clone()),
    );
    // Past the upgrade timeout (10 s) and many redials: never listed by
    // anyone, and it lists nobody but itself.
    let deadline = Instant::now() + Duration::from_secs(14);
    while Instant::now() < deadline {
        for n in &nodes {
            assert!(!listed_by(n, "stranger"), "{} lists the stranger", n.name);
        }
        let seen: Vec<Value> = stranger.nodes();
        assert_eq!(seen.len(), 1, "the stranger sees {seen:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
    let says_why = |log: &str, fp: &str| {
        log.lines()
            .any(|l| l.contains("another cluster key") && l.contains(fp))
    };
    let joiner_fp = fingerprint(&other);
    let cluster_fp = fingerprint(&ours);
    let why = wait_for(Duration::from_secs(20), || {
        (says_why(&stranger.log(), &joiner_fp) && says_why(&nodes[0].log(), &cluster_fp))
            .then_some(())
    });
    assert!(
        why.is_some(),
        "joiner log:\n{}\ncluster log:\n{}",
        stranger.log_tail(),
        nodes[0].log_tail()
    );
    assert!(metric(&nodes[0], "plexi_p2p_handshake_failures_total") >= 1.0);
    assert!(metric(&stranger, "plexi_p2p_handshake_failures_total") >= 1.0);
    // The refused join attempt is in the cluster's audit log, by address,
    // once for many redials (rate-limited).
    let attempts = |n: &TestNode| -> Vec<Value> {
        let v = n.get_json("/api/v1/clustering/audit?limit=10000");
        v["entries"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|e| e["action"] == "peer.handshake_failed")
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    };
    let audited = wait_for(Duration::from_secs(10), || {
        let a = attempts(&nodes[0]);
        (!a.is_empty()).then_some(a)
    })
    .expect("the refused join attempt is audited");
    assert_eq!(audited[0]["actor"], "remote:127.0.0.1", "{audited:?}");
    assert_eq!(
        audited[0]["detail"]["reason"], "another_cluster_key",
        "{audited:?}"
    );
    assert!(audited.len() <= 3, "not rate-limited: {audited:?}");
    for log in [stranger.log(), nodes[0].log(), nodes[1].log()] {
        assert!(
            !log.contains(&ours) && !log.contains(&other),
            "a key in a log"
        );
    }
    stranger.kill();
}

#[test]
fn joiner_without_a_key_exits_2_naming_the_key_it_needs() {
    let root = tempfile::tempdir().unwrap();
    let mut joiner = TestNode::start_keyed(
        root.path(),
        NodeSpec {
            name: "keyless",
            bootstrap: vec!["/ip4/127.0.0.1/tcp/9".into()],
            region: "r1",
            zone: "z1",
            config: None,
        },
        ClusterKey::Unset,
    );
    let code = joiner.wait_exit(Duration::from_secs(20));
    let log = joiner.log();
    assert_eq!(code, Some(2), "{log}");
    for needed in ["PLEXI_CLUSTER_KEY", "node.cluster_key_file", "cluster.key"] {
        assert!(log.contains(needed), "no {needed} in: {log}");
    }
    assert!(!joiner.dir.join("data/cluster.key").exists());
    assert!(
        !joiner.dir.join("data/releases").exists(),
        "the supervisor stopped before running a worker"
    );
    // A node that joined before (it remembers peers) and lost its key does
    // not start a cluster of its own either.
    let data = root.path().join("rejoiner/data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("peers.json"), r#"["/ip4/127.0.0.1/tcp/9"]"#).unwrap();
    let mut rejoiner =
        TestNode::start_keyed(root.path(), NodeSpec::new("rejoiner"), ClusterKey::Unset);
    assert_eq!(rejoiner.wait_exit(Duration::from_secs(20)), Some(2));
    assert!(rejoiner.log().contains("PLEXI_CLUSTER_KEY"));
    assert!(!data.join("cluster.key").exists());
}

#[test]
fn first_node_without_a_key_creates_one_that_joiners_use() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let first = TestNode::spawn_keyed(
        root.path(),
        NodeSpec {
            config: Some(FAST),
            ..NodeSpec::new("first")
        },
        ClusterKey::Unset,
    );
    let path = first.dir.join("data/cluster.key");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let hex = std::fs::read_to_string(&path).unwrap().trim().to_string();
    let fp = fingerprint(&hex);
    let log = first.log();
    assert!(
        log.lines().any(|l| l.contains("created one")
            && l.contains(&path.display().to_string())
            && l.contains(&fp)),
        "{log}"
    );
    assert!(!log.contains(&hex), "the key in the log");
    // A joiner with that key joins.
    let second = TestNode::spawn_keyed(
        root.path(),
        NodeSpec {
            bootstrap: vec![first.p2p.clone()],
            config: Some(FAST),
            zone: "z2",
            ..NodeSpec::new("second")
        },
        ClusterKey::Hex(hex.clone()),
    );
    let mut both = [first, second];
    assert!(all_see(&both, 2, Duration::from_secs(20)));
    // A restart reads the key it created; nothing new is made.
    both[0].kill();
    let second_addr = both[1].p2p.clone();
    both[0].restart(vec![second_addr]);
    assert_eq!(
        std::fs::read_to_string(&path).unwrap().trim(),
        hex,
        "the key file was rewritten"
    );
    let log = both[0].log();
    assert!(
        log.lines()
            .any(|l| l.contains("cluster key") && l.contains(&fp) && l.contains("source=key file")),
        "{log}"
    );
    assert!(all_see(&both, 2, Duration::from_secs(20)));
}

// ---------------------------------------------------------------------------
// Raw libp2p peers.

/// How a test client connects.
#[derive(Clone)]
enum Client {
    /// TCP + Noise + Yamux, as any libp2p client does.
    Plain,
    /// The same over bare libp2p pnet under this key.
    Pnet(String),
    /// plexi's own transport under this key (`plexi_p2p`'s).
    Plexi(String),
}

type Boxed = libp2p::core::transport::Boxed<(PeerId, libp2p::core::muxing::StreamMuxerBox)>;

fn client_transport(key: &Keypair, client: &Client) -> Boxed {
    match client {
        Client::Plain => transport(key, None),
        Client::Pnet(hex) => transport(key, Some(psk(hex))),
        Client::Plexi(hex) => {
            plexi_p2p::swarm::private_transport(key, &SecretKey::from_hex(hex).unwrap()).unwrap()
        }
    }
}

/// TCP (+ pnet under `psk`, if any) + Noise + Yamux, as a stranger builds it.
fn transport(key: &Keypair, psk: Option<PreSharedKey>) -> Boxed {
    let noise = noise::Config::new(key).unwrap();
    let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true));
    match psk {
        Some(psk) => tcp
            .and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))
            .upgrade(Version::V1Lazy)
            .authenticate(noise)
            .multiplex(yamux::Config::default())
            .timeout(Duration::from_secs(10))
            .boxed(),
        None => tcp
            .upgrade(Version::V1Lazy)
            .authenticate(noise)
            .multiplex(yamux::Config::default())
            .timeout(Duration::from_secs(10))
            .boxed(),
    }
}

fn psk(hex: &str) -> PreSharedKey {
    PreSharedKey::new(*SecretKey::from_hex(hex).unwrap().bytes())
}

/// Dials `addr` with a dummy behaviour; whether a connection got established
/// within `within`.
async fn raw_dial(addr: Multiaddr, client: Client, within: Duration) -> bool {
    let key = Keypair::generate_ed25519();
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_other_transport(|k| client_transport(k, &client))
        .unwrap()
        .with_behaviour(|_| libp2p::swarm::dummy::Behaviour)
        .unwrap()
        .build();
    swarm.dial(addr).unwrap();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, swarm.select_next_some()).await {
            Err(_) => return false,
            Ok(SwarmEvent::ConnectionEstablished { .. }) => return true,
            Ok(SwarmEvent::OutgoingConnectionError { .. }) => return false,
            Ok(_) => {}
        }
    }
}

#[test]
fn raw_libp2p_client_without_the_key_gets_no_connection() {
    let root = tempfile::tempdir().unwrap();
    let node = TestNode::spawn(root.path(), NodeSpec::new("solo"));
    let addr: Multiaddr = node.p2p.parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Plain TCP + Noise + Yamux: what any libp2p client speaks.
    let plain = rt.block_on(raw_dial(
        addr.clone(),
        Client::Plain,
        Duration::from_secs(15),
    ));
    assert!(!plain, "a client without the key got a connection");
    let fp = fingerprint(&root_key(root.path()));
    let logged = wait_for(Duration::from_secs(15), || {
        node.log()
            .lines()
            .any(|l| l.contains("handshake failed") && l.contains(&fp))
            .then_some(())
    });
    assert!(logged.is_some(), "{}", node.log_tail());
    // Bare pnet, even under the right key, and plexi's transport under
    // another key: nothing either.
    for client in [
        Client::Pnet(root_key(root.path())),
        Client::Pnet("77".repeat(32)),
        Client::Plexi("77".repeat(32)),
    ] {
        let got = rt.block_on(raw_dial(addr.clone(), client, Duration::from_secs(15)));
        assert!(
            !got,
            "a client without plexi's transport and key got a connection"
        );
    }
    // The same client code with plexi's transport and the cluster's key
    // connects: the refusals above are the key's doing.
    let right = rt.block_on(raw_dial(
        addr,
        Client::Plexi(root_key(root.path())),
        Duration::from_secs(15),
    ));
    assert!(right, "a client with the key could not connect");
}

// ---------------------------------------------------------------------------
// A rogue peer that holds the key.

/// Writes each request as given (a whole frame, length prefix included, so
/// the rogue can lie about lengths); reads responses as plexi frames.
#[derive(Clone, Default)]
struct RawFrames;

impl request_response::Codec for RawFrames {
    type Protocol = libp2p::StreamProtocol;
    type Request = Vec<u8>;
    type Response = Response;

    async fn read_request<T>(&mut self, _: &Self::Protocol, _: &mut T) -> std::io::Result<Vec<u8>>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        Err(std::io::Error::other("the rogue serves nothing"))
    }

    async fn read_response<T>(
        &mut self,
        _: &Self::Protocol,
        io: &mut T,
    ) -> std::io::Result<Response>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        use futures::AsyncReadExt;
        let mut len = [0u8; 4];
        io.read_exact(&mut len).await?;
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_RESPONSE_BYTES {
            return Err(std::io::Error::other("response over the cap"));
        }
        let mut buf = vec![0u8; len];
        io.read_exact(&mut buf).await?;
        decode_cbor(&buf).map_err(|e| std::io::Error::other(e.to_string()))
    }

    async fn write_request<T>(
        &mut self,
        _: &Self::Protocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        use futures::AsyncWriteExt;
        io.write_all(&req).await?;
        io.close().await
    }

    async fn write_response<T>(
        &mut self,
        _: &Self::Protocol,
        _: &mut T,
        _: Response,
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        Err(std::io::Error::other("the rogue serves nothing"))
    }
}

#[derive(NetworkBehaviour)]
struct RogueBehaviour {
    rpc: request_response::Behaviour<RawFrames>,
    gossipsub: gossipsub::Behaviour,
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

fn request_frame(req: &Request) -> Vec<u8> {
    frame(&encode_cbor(req).unwrap())
}

fn app(service: &str, body: Vec<u8>) -> Vec<u8> {
    request_frame(&Request::App {
        service: service.into(),
        body,
    })
}

struct Rogue {
    key: Keypair,
    incarnation: u64,
    heartbeat: u64,
    swarm: Swarm<RogueBehaviour>,
    node: PeerId,
}

impl Rogue {
    async fn connect(addr: Multiaddr, cluster_key: &str) -> Rogue {
        let key = Keypair::generate_ed25519();
        let client = Client::Plexi(cluster_key.to_string());
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key.clone())
            .with_tokio()
            .with_other_transport(|k| client_transport(k, &client))
            .unwrap()
            .with_behaviour(|k| {
                let config = gossipsub::ConfigBuilder::default()
                    .heartbeat_interval(Duration::from_millis(200))
                    .heartbeat_initial_delay(Duration::from_millis(50))
                    .validation_mode(gossipsub::ValidationMode::Strict)
                    .build()
                    .unwrap();
                let mut gossipsub = gossipsub::Behaviour::new(
                    gossipsub::MessageAuthenticity::Signed(k.clone()),
                    config,
                )
                .unwrap();
                gossipsub
                    .subscribe(&gossipsub::IdentTopic::new(
                        plexi_p2p::swarm::MEMBERSHIP_TOPIC,
                    ))
                    .unwrap();
                RogueBehaviour {
                    rpc: request_response::Behaviour::with_codec(
                        RawFrames,
                        [(RPC_PROTOCOL, ProtocolSupport::Outbound)],
                        request_response::Config::default()
                            .with_request_timeout(Duration::from_secs(10))
                            .with_max_concurrent_streams(10_000),
                    ),
                    gossipsub,
                }
            })
            .unwrap()
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(600)))
            .build();
        swarm.dial(addr).unwrap();
        let node = loop {
            match tokio::time::timeout(Duration::from_secs(15), swarm.select_next_some())
                .await
                .expect("the rogue connects within 15 s")
            {
                SwarmEvent::ConnectionEstablished { peer_id, .. } => break peer_id,
                SwarmEvent::OutgoingConnectionError { error, .. } => {
                    panic!("the rogue (with the key) could not connect: {error}")
                }
                _ => {}
            }
        };
        Rogue {
            key,
            incarnation: 2,
            heartbeat: 1,
            swarm,
            node,
        }
    }

    fn peer_id(&self) -> String {
        self.key.public().to_peer_id().to_string()
    }

    /// Sends `frames` at once and waits for every outcome.
    async fn send_all(&mut self, frames: Vec<Vec<u8>>) -> Vec<Result<Response, String>> {
        let mut ids = std::collections::HashMap::new();
        for (i, f) in frames.into_iter().enumerate() {
            let id = self.swarm.behaviour_mut().rpc.send_request(&self.node, f);
            ids.insert(id, i);
        }
        let mut out: Vec<Option<Result<Response, String>>> = vec![None; ids.len()];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while out.iter().any(|o| o.is_none()) {
            let ev = tokio::time::timeout_at(deadline, self.swarm.select_next_some())
                .await
                .expect("every request has an outcome within 60 s");
            if let SwarmEvent::Behaviour(RogueBehaviourEvent::Rpc(ev)) = ev {
                match ev {
                    request_response::Event::Message {
                        message:
                            request_response::Message::Response {
                                request_id,
                                response,
                            },
                        ..
                    } => {
                        if let Some(i) = ids.get(&request_id) {
                            out[*i] = Some(Ok(response));
                        }
                    }
                    request_response::Event::OutboundFailure {
                        request_id, error, ..
                    } => {
                        if let Some(i) = ids.get(&request_id) {
                            out[*i] = Some(Err(error.to_string()));
                        }
                    }
                    _ => {}
                }
            }
        }
        out.into_iter().map(|o| o.unwrap()).collect()
    }

    async fn send(&mut self, frame: Vec<u8>) -> Result<Response, String> {
        self.send_all(vec![frame]).await.remove(0)
    }

    /// Polls the swarm for `d` (keeps the connection served).
    async fn idle(&mut self, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        while tokio::time::timeout_at(deadline, self.swarm.select_next_some())
            .await
            .is_ok()
        {}
    }

    /// Publishes `data` on the membership topic, retrying until a peer takes it.
    async fn publish(&mut self, data: Vec<u8>) -> bool {
        let topic = gossipsub::IdentTopic::new(plexi_p2p::swarm::MEMBERSHIP_TOPIC);
        for _ in 0..50 {
            match self
                .swarm
                .behaviour_mut()
                .gossipsub
                .publish(topic.clone(), data.clone())
            {
                Ok(_) => {
                    self.idle(Duration::from_millis(100)).await;
                    return true;
                }
                Err(_) => self.idle(Duration::from_millis(100)).await,
            }
        }
        false
    }

    /// Sends a fresh record of itself (its incarnation, the next heartbeat),
    /// as a member must to stay alive in the node's table.
    async fn heartbeat(&mut self) -> Result<Response, String> {
        self.heartbeat += 1;
        let record = self.own_record(self.incarnation, self.heartbeat);
        self.send(request_frame(&Request::Exchange {
            records: vec![AgedRecord { record, age_ms: 0 }],
        }))
        .await
    }

    fn own_record(&self, incarnation: u64, heartbeat: u64) -> SignedRecord {
        self.own_record_with(incarnation, heartbeat, SelfStatus::Active)
    }

    fn own_record_with(
        &self,
        incarnation: u64,
        heartbeat: u64,
        status: SelfStatus,
    ) -> SignedRecord {
        let state = NodeState {
            peer_id: self.peer_id(),
            name: "rogue".into(),
            incarnation,
            heartbeat,
            status,
            version: "0.1.0".into(),
            region: "r1".into(),
            zone: "z-rogue".into(),
            capacity_bytes: 0,
            used_bytes: 0,
            object_count: 0,
            store_latency_us: 0,
            unplanned_restarts: 0,
            healthy: false,
            replica_counts: Default::default(),
            api_address: "127.0.0.1:1".into(),
            listen_addresses: vec![],
            location: None,
        };
        SignedRecord::sign(&self.key, &state).unwrap().signed
    }
}

fn refused(r: &Result<Response, String>) -> bool {
    matches!(
        r,
        Ok(Response::Error {
            error: CallError::Refused { .. }
        })
    )
}

/// PUT then GET of 4 KiB through `api`; the two latencies.
fn put_get(api: &str, id: &str) -> Duration {
    let client = reqwest::blocking::Client::new();
    let body = vec![b'x'; 4096];
    let t = Instant::now();
    let put = client
        .put(format!("{api}/api/v1/clustering/storage/data/{id}"))
        .bearer_auth(ADMIN)
        .body(body.clone())
        .timeout(Duration::from_secs(30))
        .send()
        .expect("put");
    assert!(put.status().is_success(), "PUT {id}: {}", put.status());
    let get = client
        .get(format!("{api}/api/v1/clustering/storage/data/{id}"))
        .bearer_auth(READ)
        .timeout(Duration::from_secs(30))
        .send()
        .expect("get");
    assert!(get.status().is_success(), "GET {id}: {}", get.status());
    assert_eq!(get.bytes().unwrap().len(), body.len());
    t.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Polls (for up to `within`) the incarnation `api`'s node lists for
/// `name` until `want` holds; whether it did.
async fn incarnation_seen(
    api: &str,
    name: &str,
    want: impl Fn(Option<u64>) -> bool + Send + 'static,
    within: Duration,
) -> bool {
    let (api, name) = (api.to_string(), name.to_string());
    tokio::task::spawn_blocking(move || {
        wait_for(within, || {
            let v: Value = reqwest::blocking::Client::new()
                .get(format!("{api}/api/v1/clustering/nodes"))
                .bearer_auth(READ)
                .send()
                .ok()?
                .json()
                .ok()?;
            let inc = v["nodes"]
                .as_array()?
                .iter()
                .find(|n| n["node_id"] == name.as_str())
                .and_then(|n| n["incarnation"].as_u64());
            want(inc).then_some(())
        })
        .is_some()
    })
    .await
    .unwrap()
}

/// [`metric`] from inside the runtime.
async fn metric_async(api: &str, prefix: &str) -> f64 {
    let (api, prefix) = (api.to_string(), prefix.to_string());
    tokio::task::spawn_blocking(move || {
        let text = reqwest::blocking::Client::new()
            .get(format!("{api}/metrics"))
            .bearer_auth(READ)
            .send()
            .and_then(|r| r.text())
            .unwrap_or_default();
        text.lines()
            .filter(|l| l.starts_with(&prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    })
    .await
    .unwrap()
}

fn audit_refusals_of(node: &TestNode, peer: &str) -> usize {
    let v = node.get_json("/api/v1/clustering/audit?limit=10000");
    v["entries"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["action"] == "peer.call_refused" && e["actor"] == peer)
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn rogue_peer_with_the_key_is_refused_scored_down_and_banned_while_clients_are_served() {
    let root = tempfile::tempdir().unwrap();
    let nodes = cluster(root.path(), 2, FAST);
    let victim = &nodes[0];
    let api = victim.api.clone();
    // Baseline latency of a client's PUT+GET, before any attack.
    let baseline = median(
        (0..20)
            .map(|i| put_get(&api, &format!("base-{i}")))
            .collect(),
    );

    // Clients keep working through the whole attack, measured.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (api, stop) = (api.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut lat = Vec::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                lat.push(put_get(&api, &format!("during-{i}")));
                i += 1;
            }
            lat
        })
    };

    let rt = tokio::runtime::Runtime::new().unwrap();
    let addr: Multiaddr = victim.p2p.parse().unwrap();
    let key = root_key(root.path());
    let rogue_id = rt.block_on(async {
        let mut rogue = Rogue::connect(addr.clone(), &key).await;
        let rogue_id = rogue.peer_id();

        // 1. Holds the key but never joined: every call is refused.
        let answers = rogue
            .send_all(vec![
                app("health", vec![]),
                app("store", vec![0xa0]),
                app("updates", vec![0xa0]),
                app("lease", vec![0xa0]),
                app("audit", vec![0xa0]),
            ])
            .await;
        assert!(answers.iter().all(refused), "{answers:?}");
        // An exchange without its own record is refused too, and teaches
        // the node nothing.
        let stray = rogue.own_record(1, 1);
        let mut forged = stray.clone();
        forged.signature[0] ^= 1;
        let r = rogue
            .send(request_frame(&Request::Exchange { records: vec![] }))
            .await;
        assert!(refused(&r), "{r:?}");
        // A join with a badly signed record of itself fails.
        let r = rogue
            .send(request_frame(&Request::Exchange {
                records: vec![AgedRecord {
                    record: forged,
                    age_ms: 0,
                }],
            }))
            .await;
        assert!(refused(&r), "{r:?}");

        // 2. Joins with a valid record of itself; its calls are served.
        let r = rogue
            .send(request_frame(&Request::Exchange {
                records: vec![AgedRecord {
                    record: rogue.own_record(2, 1),
                    age_ms: 0,
                }],
            }))
            .await;
        let Ok(Response::Exchange { records: table }) = r else {
            panic!("the join was not answered with the table: {r:?}");
        };
        let r = rogue.send(app("health", vec![])).await;
        assert!(matches!(r, Ok(Response::App { .. })), "{r:?}");

        // 3. Garbage, each kind dropped with a typed answer or a failure.
        let r = rogue.send(app("store", vec![0xff, 0x00, 0x13])).await;
        assert!(
            matches!(
                r,
                Ok(Response::Error {
                    error: CallError::Malformed { .. }
                })
            ),
            "{r:?}"
        );
        let r = rogue.send(app("no-such-service", vec![])).await;
        assert!(
            matches!(
                r,
                Ok(Response::Error {
                    error: CallError::UnknownService { .. }
                })
            ),
            "{r:?}"
        );
        // Bad CBOR in the frame, a response sent as a request, a frame
        // claiming 2 GiB: no answer, the stream fails.
        for bad in [
            frame(b"\xff\xfe\xfd garbage"),
            frame(&encode_cbor(&Response::Ack).unwrap()),
            vec![0x7f, 0xff, 0xff, 0xff, 1, 2, 3],
        ] {
            let r = rogue.send(bad).await;
            assert!(r.is_err(), "{r:?}");
        }
        // A record of another member with a broken signature.
        let mut broken = table[0].record.clone();
        let last = broken.body.len() - 1;
        broken.body[last] ^= 1;
        let r = rogue
            .send(request_frame(&Request::Exchange {
                records: vec![AgedRecord {
                    record: broken,
                    age_ms: 0,
                }],
            }))
            .await;
        assert!(matches!(r, Ok(Response::Exchange { .. })), "{r:?}");
        // Replayed old heartbeats (and an out-of-order old record of
        // itself) change nothing.
        rogue.idle(Duration::from_millis(1500)).await;
        assert!(matches!(
            rogue.heartbeat().await,
            Ok(Response::Exchange { .. })
        ));
        let old: Vec<AgedRecord> = table.clone();
        let r = rogue
            .send(request_frame(&Request::Exchange {
                records: old
                    .iter()
                    .cloned()
                    .map(|mut a| {
                        a.age_ms = 0;
                        a
                    })
                    .chain([AgedRecord {
                        record: rogue.own_record(1, 99),
                        age_ms: 0,
                    }])
                    .collect(),
            }))
            .await;
        assert!(matches!(r, Ok(Response::Exchange { .. })), "{r:?}");
        for a in &old {
            let r = rogue
                .send(request_frame(&Request::Push {
                    record: a.record.clone(),
                }))
                .await;
            assert!(matches!(r, Ok(Response::Ack)), "{r:?}");
        }
        // Gossip: a valid heartbeat of its own (a new incarnation) is
        // taken...
        assert!(
            rogue
                .publish(encode_cbor(&GossipMessage::Heartbeat(rogue.own_record(3, 1))).unwrap())
                .await
        );
        let seen =
            incarnation_seen(&api, "rogue", |inc| inc == Some(3), Duration::from_secs(10)).await;
        assert!(seen, "the node never took the rogue's gossiped heartbeat");
        // ...then garbage and a forged record graylist it: its next valid
        // heartbeat is ignored.
        assert!(rogue.publish(b"\x00not cbor at all".to_vec()).await);
        let mut bad_sig = rogue.own_record(3, 50);
        bad_sig.signature[3] ^= 0x40;
        rogue
            .publish(encode_cbor(&GossipMessage::Heartbeat(bad_sig)).unwrap())
            .await;
        rogue
            .publish(encode_cbor(&GossipMessage::Heartbeat(rogue.own_record(4, 1))).unwrap())
            .await;
        let taken = incarnation_seen(
            &api,
            "rogue",
            |inc| inc == Some(4),
            Duration::from_millis(1500),
        )
        .await;
        assert!(!taken, "a graylisted peer's gossip was taken");
        rogue.incarnation = 4;
        rogue.heartbeat = 1;
        assert!(matches!(
            rogue.heartbeat().await,
            Ok(Response::Exchange { .. })
        ));

        // 4. It leaves (a `left` record of itself): refused until it
        // re-joins with a new incarnation.
        rogue.heartbeat += 1;
        let left = rogue.own_record_with(rogue.incarnation, rogue.heartbeat, SelfStatus::Left);
        let r = rogue
            .send(request_frame(&Request::Push { record: left }))
            .await;
        assert!(matches!(r, Ok(Response::Ack)), "{r:?}");
        let r = rogue.send(app("health", vec![])).await;
        assert!(refused(&r), "a member that left was served: {r:?}");
        // Its old incarnation cannot come back...
        assert!(refused(&rogue.heartbeat().await));
        // ...a new one can.
        rogue.incarnation += 1;
        assert!(matches!(
            rogue.heartbeat().await,
            Ok(Response::Exchange { .. })
        ));
        let r = rogue.send(app("health", vec![])).await;
        assert!(matches!(r, Ok(Response::App { .. })), "{r:?}");

        // 5. A flood of calls in waves (each under the node's streams per
        // connection): refused until the strikes ban it, then cut off.
        let bans_before = metric_async(&api, "plexi_p2p_peer_bans_total").await;
        let mut cut_off = false;
        for _ in 0..20 {
            let wave: Vec<Vec<u8>> = (0..100).map(|_| app("no-such-service", vec![])).collect();
            let answers = rogue.send_all(wave).await;
            if answers.iter().any(|r| r.is_err()) {
                cut_off = true;
                break;
            }
            assert!(answers.iter().all(|r| matches!(
                r,
                Ok(Response::Error {
                    error: CallError::UnknownService { .. }
                })
            )));
        }
        assert!(cut_off, "2000 bad calls and still served");
        assert!(metric_async(&api, "plexi_p2p_peer_bans_total").await > bans_before);
        rogue.idle(Duration::from_millis(500)).await;
        assert!(
            !rogue.swarm.is_connected(&rogue.node),
            "the rogue is still connected"
        );
        // It cannot come back for a while: its connections are closed at
        // once, its calls never answered.
        let _ = rogue.swarm.dial(addr.clone());
        rogue.idle(Duration::from_secs(1)).await;
        let r = rogue.heartbeat().await;
        assert!(r.is_err(), "a banned peer was answered: {r:?}");
        let r = rogue.send(app("health", vec![])).await;
        assert!(r.is_err(), "a banned peer was answered: {r:?}");

        // 6. A burst of 2000 calls at once from a new identity that holds
        // the key but never joined: refused, struck, cut off; the node
        // stays up.
        let mut burst = Rogue::connect(addr.clone(), &key).await;
        let answers = burst
            .send_all((0..2000).map(|_| app("health", vec![])).collect())
            .await;
        assert!(answers.iter().any(|r| r.is_err()), "no limit on streams");
        rogue_id
    });

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let during = load.join().expect("the client load never failed");
    assert!(!during.is_empty());
    let worst_median = median(during.clone());
    eprintln!(
        "PUT+GET 4 KiB: baseline median {baseline:?}; during the attack median {worst_median:?} over {} (max {:?})",
        during.len(),
        during.iter().max().unwrap()
    );
    assert!(
        worst_median <= baseline * 5 + Duration::from_millis(200),
        "clients slowed down: {worst_median:?} vs {baseline:?}"
    );

    // The node stayed up, kept its table straight and says what it did.
    assert_eq!(victim.status_of("s2").as_deref(), Some("alive"));
    assert!(metric(victim, "plexi_p2p_refused_calls_total{kind=\"not_member\"}") >= 5.0);
    assert!(metric(victim, "plexi_p2p_peer_bans_total") >= 1.0);
    assert!(metric(victim, "plexi_p2p_malformed_messages_total") >= 1.0);
    let log = victim.log();
    assert!(
        log.contains("refused a peer's call"),
        "{}",
        victim.log_tail()
    );
    assert!(
        log.contains("disconnected and banned"),
        "{}",
        victim.log_tail()
    );
    // At most one entry per peer a minute (the refusals in between are
    // counted into its next entry).
    let audited = wait_for(Duration::from_secs(10), || {
        (audit_refusals_of(victim, &rogue_id) >= 1).then_some(())
    });
    assert!(audited.is_some(), "refusals of {rogue_id} not audited");
    // Only a few audit entries for thousands of refusals (rate-limited).
    assert!(audit_refusals_of(victim, &rogue_id) < 20);
}
