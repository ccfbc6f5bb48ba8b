//! Distributed storage: any node coordinates reads and writes of any object,
//! talking to the replicas over libp2p request-response (`store` service).
//!
//! Reading order of the data path: [`Storage::put`] (validate, version with
//! the HLC, place, send to the replicas, wait as the consistency level says),
//! [`Storage::get`] (ask replicas in placement order, or a majority for
//! strong, repair stale ones), [`Storage::handle_call`] (the replica side). The
//! background loops that heal the cluster (hints, anti-entropy, cleanup)
//! live in `repair.rs`.

mod batch;
mod error;
pub mod gauges;
pub mod jobs;
pub mod listing;
pub mod open_values;
pub mod quorum;
pub mod rebalance;
pub mod reencrypt;
pub mod repair;
pub mod report;
pub mod restarts;
pub mod scores;
pub mod wire;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use plexi_util::clock::{rfc3339_ms, wall_ms};

use futures::stream::{FuturesUnordered, StreamExt};
use plexi_api::model::PutRequest;
use plexi_api::model::{DataInfo, DataObject, PutResult, ReplicaInfo};
use plexi_p2p::codec::{decode_cbor, encode_cbor};
use plexi_p2p::{CallError, MemberStatus, P2pHandle, PeerId};
use plexi_store::objects::{
    AccessStats, Applied, GroupCommit, ObjectMeta, ObjectStore, SledObjects,
};
use plexi_store::placement::{self, Candidate};
use plexi_store::{NodeStore, StoreError};
use plexi_util::hlc::Hlc;
use plexi_util::types::Consistency;

use crate::config::DistributedStorage;
pub use error::StorageError;
use wire::{StoreCall, StoreReply, CHUNK_BYTES, MAX_BATCH, READ_CHUNK_BYTES};

/// Bound on concurrent large-object uploads a replica accepts.
const MAX_UPLOADS: usize = 16;
/// Bound on the bytes buffered in those uploads.
const MAX_UPLOAD_BYTES: usize = 512 * 1024 * 1024;
/// An upload idle this long is dropped.
const UPLOAD_IDLE: Duration = Duration::from_secs(60);

/// A member as storage sees it.
#[derive(Clone, Debug)]
pub struct Member {
    pub peer_id: String,
    pub name: String,
    pub status: MemberStatus,
    pub silent_ms: u64,
    pub region: String,
    pub zone: String,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub object_count: u64,
    pub healthy: bool,
    /// Its own store latency, as it gossips it (µs; 0 = not measured yet).
    pub store_latency_us: u64,
    /// Its own count of unplanned restarts, as it gossips it.
    pub unplanned_restarts: u64,
}

/// What a survey found: the candidates asked (the placement at `max_rf`,
/// then the nominal owners it lacks), the nominal owners at `max_rf`, and
/// each answer in placement order.
type Survey<T> = (Vec<Member>, Vec<Member>, Vec<(Member, T)>);

impl Member {
    pub fn reachable(&self) -> bool {
        matches!(self.status, MemberStatus::Alive | MemberStatus::Suspect)
    }

    pub fn usage_pct(&self) -> f64 {
        if self.capacity_bytes == 0 {
            return 100.0;
        }
        self.used_bytes as f64 * 100.0 / self.capacity_bytes as f64
    }
}

struct Upload {
    from: String,
    data: Vec<u8>,
    touched: Instant,
}

/// Latencies of this node's store calls to a peer (EWMA, ms): what the
/// answering node measured, so they differ with the node that answers. No
/// score is derived from them (see `scores.rs`).
#[derive(Clone, Copy, Debug, Default)]
pub struct PeerStats {
    pub read_latency_ms: Option<f64>,
    pub write_latency_ms: Option<f64>,
}

/// How a replica says it holds an object it cannot serve (corrupt bytes, or
/// sealed under a data key it lacks); readers then answer `ReadFailed`, not
/// `NotFound`, when no other replica serves it.
pub const BAD_REPLICA: &str = "replica cannot serve";

pub struct Storage {
    /// The `distributed_storage` section of the config, as written.
    pub config: DistributedStorage,
    local_peer: String,
    p2p: P2pHandle,
    /// The membership as the data path places by, rebuilt at most every
    /// [`VIEW_TTL`] (see [`PlacementView`]).
    view: std::sync::Mutex<Option<(Instant, Arc<PlacementView>)>>,
    store: Arc<NodeStore>,
    engine: Arc<SledObjects>,
    commit: GroupCommit,
    hlc: Mutex<Hlc>,
    stats: Mutex<HashMap<String, PeerStats>>,
    uploads: Mutex<HashMap<u64, Upload>>,
    /// Large values opened for a reader's slices (`open_values.rs`).
    open_values: open_values::OpenValues,
    /// Small replica writes queued per peer (`batch.rs`).
    batcher: batch::Batcher,
    pub jobs: jobs::Jobs,
    pub metrics: StorageMetrics,
    /// Set once this node has synced with every reachable peer after start.
    caught_up: std::sync::atomic::AtomicBool,
    /// MiB of object bytes held by replica writes in flight.
    inflight: Arc<tokio::sync::Semaphore>,
    /// One permit per background read repair in flight.
    read_repairs: Arc<tokio::sync::Semaphore>,
    /// Eventual and weak reads served, for [`READ_REPAIR_EVERY`].
    reads_served: std::sync::atomic::AtomicU64,
    /// True once this node has learned the cluster after its start (see
    /// `repair::catch_up`); strong operations wait for it.
    view_ready: tokio::sync::watch::Sender<bool>,
    /// Peers that answered `EntriesOf` as a malformed call (a version
    /// before it): asked one partition at a time from then on, so that
    /// anti-entropy does not keep earning us their strikes.
    pub(crate) entries_one_by_one: Mutex<std::collections::HashSet<String>>,
    /// Peers that do not know `StoreCall::FactorDigests` (a version before
    /// it, during a roll): anti-entropy compares whole partitions with them.
    pub(crate) whole_partition_digests: Mutex<std::collections::HashSet<String>>,
}

/// How long a strong operation waits, right after this node started, for
/// it to learn the cluster; past it the operation answers
/// [`StorageError::LearningCluster`].
const STRONG_VIEW_WAIT: Duration = Duration::from_secs(5);

/// Ranks below the replica sets that a read of an object not found on its
/// replicas also asks (see [`Storage::previous_owners`]).
const MOVE_SPARE_RANKS: usize = 2;

/// An eventual or weak read surveys the object's owners for a read repair
/// only one time in this many (anti-entropy's digests, every
/// `anti_entropy_interval_seconds`, find the rest), unless the read itself
/// showed a replica lacking the object. At one in 16 the surveys' remote
/// calls were about a seventh of a 4 KiB get's work on 3 nodes (context
/// switches per get 28.6 against 24.6 without them; docs/BENCHMARKS.md).
const READ_REPAIR_EVERY: u64 = 128;

/// Bound on object bytes (KiB) a coordinator holds for replica writes in
/// flight: 32 MiB, inside the node's 160 MiB resident bound (issue 12); 16
/// concurrent 1 MiB puts still all proceed. Counted in KiB, each object at
/// least one: counted in MiB, every small object took a whole MiB and 32
/// of them in flight were the bound.
const MAX_INFLIGHT_KIB: u32 = 32 * 1024;
/// How long the data path places by one read of the membership table
/// ([`PlacementView`]). Reading and converting the table on every operation
/// was about 75 allocations per 4 KiB get on 3 nodes; membership itself
/// moves at heartbeat pace (hundreds of milliseconds and more), so 50 ms
/// adds nothing a gossip round does not already have.
const VIEW_TTL: Duration = Duration::from_millis(50);

/// How a replica still catching up after a (re)start refuses a plain read
/// (the reader tries another replica; see `StoreCall::Read::newest`).
const CATCHING_UP: &str = "replica is catching up";

/// Bound on background read repairs in flight; past it an eventual read
/// starts none (anti-entropy repairs the object anyway) and counts the skip.
const MAX_READ_REPAIRS: usize = 32;

/// Upper bounds (seconds) of the request latency histogram's buckets:
/// 1 ms to 10 s, about three per decade.
pub const REQUEST_DURATION_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

fn request_histogram() -> prometheus_client::metrics::histogram::Histogram {
    prometheus_client::metrics::histogram::Histogram::new(REQUEST_DURATION_BUCKETS)
}

/// Where a repair's bytes came from (the `source` label of
/// `plexi_storage_repair_bytes`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum RepairSource {
    /// A read found a stale or missing replica.
    ReadRepair,
    /// Hinted handoff: a write a replica missed while unreachable.
    Hint,
    /// The digest exchange: stale replicas, re-replication of a dead
    /// node's objects, catch-up after a restart, and rebalancing moves.
    AntiEntropy,
    /// Scrub replaced a corrupt replica.
    Scrub,
}

impl RepairSource {
    pub const ALL: [RepairSource; 4] = [
        RepairSource::ReadRepair,
        RepairSource::Hint,
        RepairSource::AntiEntropy,
        RepairSource::Scrub,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            RepairSource::ReadRepair => "read_repair",
            RepairSource::Hint => "hint",
            RepairSource::AntiEntropy => "anti_entropy",
            RepairSource::Scrub => "scrub",
        }
    }
}

#[derive(Clone)]
pub struct StorageMetrics {
    pub ops: prometheus_client::metrics::family::Family<
        OpLabels,
        prometheus_client::metrics::counter::Counter,
    >,
    pub repaired: prometheus_client::metrics::counter::Counter,
    pub corrupt: prometheus_client::metrics::counter::Counter,
    /// Read repairs not started because [`MAX_READ_REPAIRS`] were in flight.
    pub read_repair_skipped: prometheus_client::metrics::counter::Counter,
    /// Read repairs started (each a survey of the object's owners).
    pub read_repair_surveys: prometheus_client::metrics::counter::Counter,
    /// Seconds the coordinator took for put/get/delete, by op and consistency.
    pub request_duration: prometheus_client::metrics::family::Family<
        RequestLabels,
        prometheus_client::metrics::histogram::Histogram,
        fn() -> prometheus_client::metrics::histogram::Histogram,
    >,
    /// Object bytes written by repair, by [`RepairSource`].
    pub repair_bytes: prometheus_client::metrics::family::Family<
        SourceLabels,
        prometheus_client::metrics::counter::Counter,
    >,
    /// From the last census (see `report::census`): live objects in the
    /// cluster, their current replicas, and replication efficiency.
    pub census_objects: prometheus_client::metrics::gauge::Gauge,
    pub census_replicas: prometheus_client::metrics::gauge::Gauge,
    pub replication_efficiency:
        prometheus_client::metrics::gauge::Gauge<f64, std::sync::atomic::AtomicU64>,
    /// This node's count of under-replicated objects (last pass of
    /// `repair::count_under_replicated`), gossiped in its record.
    pub under_replicated: prometheus_client::metrics::gauge::Gauge,
    /// Wall-clock ms of the last corrupt replica found (0: none yet).
    pub corrupt_found_at_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl Default for StorageMetrics {
    fn default() -> Self {
        StorageMetrics {
            ops: Default::default(),
            repaired: Default::default(),
            corrupt: Default::default(),
            read_repair_skipped: Default::default(),
            read_repair_surveys: Default::default(),
            request_duration: prometheus_client::metrics::family::Family::new_with_constructor(
                request_histogram,
            ),
            repair_bytes: Default::default(),
            census_objects: Default::default(),
            census_replicas: Default::default(),
            replication_efficiency: Default::default(),
            under_replicated: Default::default(),
            corrupt_found_at_ms: Default::default(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct OpLabels {
    pub op: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct RequestLabels {
    pub op: &'static str,
    pub consistency: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct SourceLabels {
    pub source: &'static str,
}

impl StorageMetrics {
    pub fn register(registry: &mut prometheus_client::registry::Registry) -> Self {
        let m = StorageMetrics::default();
        registry.register(
            "plexi_storage_ops",
            "Coordinated storage operations by op and outcome",
            m.ops.clone(),
        );
        registry.register(
            "plexi_storage_repaired_replicas",
            "Replicas written by read repair, hints and anti-entropy",
            m.repaired.clone(),
        );
        registry.register(
            "plexi_storage_corrupt_replicas",
            "Local replicas found with bytes failing their checksum",
            m.corrupt.clone(),
        );
        registry.register(
            "plexi_storage_read_repair_skipped",
            "Background read repairs not started because the bound on repairs in flight was reached",
            m.read_repair_skipped.clone(),
        );
        registry.register(
            "plexi_storage_read_repair_surveys",
            "Background read repairs started after an eventual or weak read (a sample of the reads, and every read that met a replica lacking the object)",
            m.read_repair_surveys.clone(),
        );
        // Every series exists from the start (at 0), so rates and the
        // dashboard see them before the first request or repair.
        for op in ["put", "get", "delete"] {
            for c in Consistency::ALL {
                let _ = m.request_duration.get_or_create(&RequestLabels {
                    op,
                    consistency: c.as_str(),
                });
            }
            for outcome in ["ok", "error"] {
                let _ = m.ops.get_or_create(&OpLabels { op, outcome });
            }
        }
        let _ = m.ops.get_or_create(&OpLabels {
            op: "get",
            outcome: "not_found",
        });
        for source in RepairSource::ALL {
            let _ = m.repair_bytes.get_or_create(&SourceLabels {
                source: source.as_str(),
            });
        }
        registry.register(
            "plexi_storage_request_duration_seconds",
            "Seconds this node took to coordinate a put, get or delete, by op and consistency level (its _count is the request count)",
            m.request_duration.clone(),
        );
        registry.register(
            "plexi_storage_repair_bytes",
            "Object bytes written by repair (read_repair, hint, anti_entropy, scrub)",
            m.repair_bytes.clone(),
        );
        registry.register(
            "plexi_storage_cluster_objects",
            "Live objects in the cluster, from this node's last census",
            m.census_objects.clone(),
        );
        registry.register(
            "plexi_storage_cluster_replicas",
            "Current replicas of the live objects in the cluster, from this node's last census",
            m.census_replicas.clone(),
        );
        registry.register(
            "plexi_storage_replication_efficiency",
            "Current replicas over wanted replicas (each object capped at its factor), 0..1, from this node's last census",
            m.replication_efficiency.clone(),
        );
        registry.register(
            "plexi_storage_under_replicated_objects",
            "Objects this node counted with fewer current live replicas than their replication factor (each object counted by one node)",
            m.under_replicated.clone(),
        );
        m
    }

    /// Counts a corrupt (or unreadable) local replica and when it was found.
    pub fn corrupt_found(&self) {
        self.corrupt.inc();
        self.corrupt_found_at_ms
            .store(wall_ms(), std::sync::atomic::Ordering::Relaxed);
    }

    /// What this node's record says about its replicas.
    pub fn replica_counts(&self) -> plexi_p2p::ReplicaCounts {
        plexi_p2p::ReplicaCounts {
            under_replicated_objects: self.under_replicated.get().max(0) as u64,
            corrupt_replicas: self.corrupt.get(),
            corrupt_found_at_ms: self
                .corrupt_found_at_ms
                .load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    fn op(&self, op: &'static str, outcome: &'static str) {
        self.ops.get_or_create(&OpLabels { op, outcome }).inc();
    }

    fn observe(&self, op: &'static str, consistency: Consistency, started: Instant) {
        self.request_duration
            .get_or_create(&RequestLabels {
                op,
                consistency: consistency.as_str(),
            })
            .observe(started.elapsed().as_secs_f64());
    }

    /// Counts one repaired replica of `bytes` object bytes.
    pub fn repaired(&self, source: RepairSource, bytes: u64) {
        self.repaired.inc();
        self.repair_bytes
            .get_or_create(&SourceLabels {
                source: source.as_str(),
            })
            .inc_by(bytes);
    }
}

impl Storage {
    pub fn new(
        config: DistributedStorage,
        local_peer: PeerId,
        p2p: P2pHandle,
        store: Arc<NodeStore>,
        metrics: StorageMetrics,
    ) -> Arc<Self> {
        let engine = store.objects();
        let commit = GroupCommit::start(engine.clone());
        let local_peer = local_peer.to_string();
        Arc::new(Storage {
            config,
            hlc: Mutex::new(Hlc::new(Hlc::node_of(&local_peer))),
            local_peer,
            p2p,
            store,
            engine,
            commit,
            stats: Mutex::new(HashMap::new()),
            uploads: Mutex::new(HashMap::new()),
            open_values: open_values::OpenValues::default(),
            batcher: batch::Batcher::default(),
            jobs: jobs::Jobs::default(),
            metrics,
            caught_up: std::sync::atomic::AtomicBool::new(false),
            inflight: Arc::new(tokio::sync::Semaphore::new(MAX_INFLIGHT_KIB as usize)),
            read_repairs: Arc::new(tokio::sync::Semaphore::new(MAX_READ_REPAIRS)),
            view: std::sync::Mutex::new(None),
            reads_served: std::sync::atomic::AtomicU64::new(0),
            view_ready: tokio::sync::watch::channel(false).0,
            entries_one_by_one: Mutex::new(Default::default()),
            whole_partition_digests: Mutex::new(Default::default()),
        })
    }

    /// This node has learned the cluster after its start: its view holds
    /// the members a strong majority is counted over.
    pub fn set_view_ready(&self) {
        self.view_ready.send_replace(true);
    }

    /// Waits (at most [`STRONG_VIEW_WAIT`]) until [`Self::set_view_ready`].
    /// A restarted node knows only itself until membership brings the
    /// others back; a strong read or write counted over that view would
    /// take its own copy (or its absence) for a majority.
    async fn await_view(&self) -> Result<(), StorageError> {
        let mut ready = self.view_ready.subscribe();
        let learned = tokio::time::timeout(STRONG_VIEW_WAIT, ready.wait_for(|r| *r))
            .await
            .is_ok_and(|r| r.is_ok());
        if learned {
            Ok(())
        } else {
            Err(StorageError::LearningCluster)
        }
    }

    pub fn caught_up(&self) -> bool {
        self.caught_up.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn set_caught_up(&self) {
        self.caught_up
            .store(true, std::sync::atomic::Ordering::Release);
    }

    pub fn engine(&self) -> &Arc<SledObjects> {
        &self.engine
    }

    pub fn local_peer(&self) -> &str {
        &self.local_peer
    }

    pub fn peer_stats(&self) -> HashMap<String, PeerStats> {
        self.stats.lock().expect("stats lock").clone()
    }

    /// The members a cluster-wide question (census, listing) goes to: the
    /// reachable ones, and the names of those that are not (left members
    /// are neither).
    /// How long the store's current flush has been running (None when
    /// idle): see `node::watchdog`.
    pub fn flush_stalled_for(&self) -> Option<Duration> {
        self.commit.stalled_for()
    }

    /// How long every store flush has failed (None after a success): see
    /// `node::watchdog`.
    pub fn flush_failing_for(&self) -> Option<Duration> {
        self.commit.failing_for()
    }

    /// Bytes this node's store occupies on disk.
    pub fn store_bytes_on_disk(&self) -> Result<u64, StoreError> {
        self.store.size_on_disk()
    }

    pub fn members_to_ask(&self) -> (Vec<Member>, Vec<String>) {
        let (asked, silent): (Vec<Member>, Vec<Member>) = self
            .members()
            .into_iter()
            .filter(|m| m.status != MemberStatus::Left)
            .partition(|m| m.reachable());
        (asked, silent.into_iter().map(|m| m.name).collect())
    }

    /// Every known member, from the membership table.
    pub fn members(&self) -> Vec<Member> {
        self.p2p
            .members()
            .into_iter()
            .map(|m| {
                let s = m.record.state;
                Member {
                    peer_id: s.peer_id,
                    name: s.name,
                    status: m.status,
                    silent_ms: m.silent_ms,
                    region: s.region,
                    zone: s.zone,
                    capacity_bytes: s.capacity_bytes,
                    used_bytes: s.used_bytes,
                    object_count: s.object_count,
                    store_latency_us: s.store_latency_us,
                    unplanned_restarts: s.unplanned_restarts,
                    healthy: s.healthy,
                }
            })
            .collect()
    }

    /// Reachable members other than this node.
    pub fn peers(&self) -> Vec<Member> {
        self.members()
            .into_iter()
            .filter(|m| m.reachable() && m.peer_id != self.local_peer)
            .collect()
    }

    /// The members placement ranks: alive and suspect ones, and dead ones
    /// until `rereplication_delay_seconds` have passed (so a restart moves nothing);
    /// never left ones; none above `max_node_usage_percentage`.
    pub fn placement_members(&self, members: &[Member]) -> Vec<Member> {
        let delay = self.config.rereplication_delay().as_millis() as u64;
        members
            .iter()
            .filter(|m| match m.status {
                MemberStatus::Alive | MemberStatus::Suspect => true,
                MemberStatus::Dead => m.silent_ms < delay,
                MemberStatus::Left => false,
            })
            .filter(|m| m.usage_pct() <= self.config.max_node_usage_percentage)
            .cloned()
            .collect()
    }

    /// The replica set of `data_id` at factor `rf` over `members` (already
    /// filtered by [`Self::placement_members`]), primary first.
    pub fn replicas_among(&self, data_id: &str, rf: usize, members: &[Member]) -> Vec<Member> {
        self.partition_replicas(placement::partition_of(data_id), rf, members)
    }

    /// [`Self::replicas_among`] for every object of `partition` (placement
    /// is per partition; an object's factor takes a prefix).
    pub fn partition_replicas(&self, partition: u16, rf: usize, members: &[Member]) -> Vec<Member> {
        pick(
            partition,
            rf,
            members,
            &candidates(members),
            self.config.storage_strategy,
        )
    }

    /// The nominal owners of `data_id` at `rf`: its placement over every
    /// member that has not left (see `quorum`), what strong reads and
    /// writes count their majority of.
    pub fn nominal_replicas(&self, data_id: &str, rf: usize) -> Vec<Member> {
        self.owner_sets(data_id, rf).1
    }

    /// The placement ([`Self::replicas_for`]) and the nominal owners of
    /// `data_id` at `rf`, from one read of the membership table.
    fn owner_sets(&self, data_id: &str, rf: usize) -> (Vec<Member>, Vec<Member>) {
        let v = self.view();
        let partition = placement::partition_of(data_id);
        (
            v.replicas(partition, rf, false, self.config.storage_strategy),
            v.replicas(partition, rf, true, self.config.storage_strategy),
        )
    }

    pub fn replicas_for(&self, data_id: &str, rf: usize) -> Vec<Member> {
        let partition = placement::partition_of(data_id);
        self.view()
            .replicas(partition, rf, false, self.config.storage_strategy)
    }

    /// The membership as placement reads it, at most [`VIEW_TTL`] old.
    fn view(&self) -> Arc<PlacementView> {
        let mut cached = self.view.lock().expect("view lock");
        if let Some((at, v)) = cached.as_ref() {
            if at.elapsed() < VIEW_TTL {
                return v.clone();
            }
        }
        let members = self.members();
        let placement = self.placement_members(&members);
        let not_left: Vec<Member> = members
            .iter()
            .filter(|m| m.status != MemberStatus::Left)
            .cloned()
            .collect();
        let v = Arc::new(PlacementView {
            placement_candidates: candidates(&placement),
            placement,
            not_left_candidates: candidates(&not_left),
            not_left,
        });
        *cached = Some((Instant::now(), v.clone()));
        v
    }

    fn record_latency(&self, peer: &str, started: Instant, kind: &'static str) {
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        let mut stats = self.stats.lock().expect("stats lock");
        let s = stats.entry(peer.to_string()).or_default();
        let ewma = |old: Option<f64>| Some(old.map_or(ms, |o| 0.8 * o + 0.2 * ms));
        match kind {
            "read" => s.read_latency_ms = ewma(s.read_latency_ms),
            _ => s.write_latency_ms = ewma(s.write_latency_ms),
        }
    }

    /// One store call to a member: served locally for ourselves, else over
    /// request-response.
    pub async fn call(self: &Arc<Self>, peer: &str, call: StoreCall) -> Result<StoreReply, String> {
        let kind = match call {
            StoreCall::Read { .. } | StoreCall::Metas { .. } => "read",
            _ => "write",
        };
        if peer == self.local_peer {
            return self.handle_call(&self.local_peer.clone(), call).await;
        }
        let body = encode_cbor(&call).map_err(|e| e.to_string())?;
        // Only the encoded body is held while the call is out.
        drop(call);
        self.call_encoded(peer, kind, body).await
    }

    /// [`Self::call`] to another node with its body already encoded.
    async fn call_encoded(
        self: &Arc<Self>,
        peer: &str,
        kind: &'static str,
        body: Vec<u8>,
    ) -> Result<StoreReply, String> {
        let peer_id: PeerId = peer.parse().map_err(|_| format!("bad peer id {peer}"))?;
        let started = Instant::now();
        let reply = self
            .p2p
            .request(peer_id, wire::STORE_SERVICE, body)
            .await
            .map_err(|e| e.to_string())?;
        self.record_latency(peer, started, kind);
        decode_cbor(&reply).map_err(|e| e.to_string())
    }

    /// Sends a whole object to one replica (chunked when large); Ok once the
    /// replica flushed it.
    pub async fn send_object(
        self: &Arc<Self>,
        peer: &str,
        meta: &ObjectMeta,
        data: &[u8],
    ) -> Result<bool, String> {
        let reply = if peer == self.local_peer {
            self.call(
                peer,
                StoreCall::Put {
                    meta: meta.clone(),
                    data: data.to_vec(),
                },
            )
            .await?
        } else if data.len() <= batch::MAX_BATCHED_OBJECT_BYTES {
            // Small: rides with the other puts queued for that peer.
            return self.put_batched(peer, meta, data).await;
        } else if data.len() <= CHUNK_BYTES || meta.tombstone {
            return self.put_alone(peer, meta, data).await;
        } else {
            let upload: u64 = rand::random();
            for (i, chunk) in data.chunks(CHUNK_BYTES).enumerate() {
                match self
                    .call(
                        peer,
                        StoreCall::PutChunk {
                            upload,
                            offset: (i * CHUNK_BYTES) as u64,
                            data: chunk.to_vec(),
                        },
                    )
                    .await?
                {
                    StoreReply::ChunkAccepted => {}
                    other => return Err(format!("unexpected reply {other:?}")),
                }
            }
            self.call(
                peer,
                StoreCall::PutCommit {
                    upload,
                    meta: meta.clone(),
                },
            )
            .await?
        };
        match reply {
            StoreReply::Applied { stored } => Ok(stored),
            other => Err(format!("unexpected reply {other:?}")),
        }
    }

    /// Reads a whole object from one replica (chunked when large), checking
    /// the bytes against the metadata. `Ok(None)`: the replica has nothing.
    pub async fn fetch_object(
        self: &Arc<Self>,
        peer: &str,
        data_id: &str,
    ) -> Result<Option<(ObjectMeta, Vec<u8>)>, String> {
        self.fetch_object_at(peer, data_id, None).await
    }

    /// [`Storage::fetch_object`] of a version a strong read's quorum found
    /// newest (`newest`), which a replica still catching up may serve.
    pub async fn fetch_object_at(
        self: &Arc<Self>,
        peer: &str,
        data_id: &str,
        newest: Option<plexi_util::hlc::Version>,
    ) -> Result<Option<(ObjectMeta, Vec<u8>)>, String> {
        let first = self
            .call(
                peer,
                StoreCall::Read {
                    data_id: data_id.to_string(),
                    offset: 0,
                    len: READ_CHUNK_BYTES,
                    newest,
                },
            )
            .await?;
        let (meta, mut data) = match first {
            StoreReply::Read { meta: None, .. } => return Ok(None),
            StoreReply::Read {
                meta: Some(m),
                data,
            } => (m, data),
            other => return Err(format!("unexpected reply {other:?}")),
        };
        if meta.tombstone {
            return Ok(Some((meta, Vec::new())));
        }
        while (data.len() as u64) < meta.size_bytes {
            let more = self
                .call(
                    peer,
                    StoreCall::Read {
                        data_id: data_id.to_string(),
                        offset: data.len() as u64,
                        len: READ_CHUNK_BYTES,
                        newest,
                    },
                )
                .await?;
            match more {
                StoreReply::Read {
                    meta: Some(m),
                    data: chunk,
                } if m.version == meta.version && !chunk.is_empty() => {
                    data.extend_from_slice(&chunk)
                }
                _ => return Err("object changed or vanished during the read".into()),
            }
        }
        if data.len() as u64 != meta.size_bytes || *blake3::hash(&data).as_bytes() != meta.checksum
        {
            return Err(format!("bytes from {peer} fail their checksum"));
        }
        Ok(Some((meta, data)))
    }

    /// Hints waiting for their replica (a counter, no scan).
    pub fn pending_hints(&self) -> u64 {
        self.store.hint_count()
    }

    pub fn hinted_peers(&self) -> Result<Vec<String>, StoreError> {
        self.store.hinted_peers()
    }

    pub fn hints_for(&self, peer: &str, limit: usize) -> Result<Vec<String>, StoreError> {
        self.store.hints_for(peer, limit)
    }

    pub fn remove_hint(&self, peer: &str, data_id: &str) -> Result<(), StoreError> {
        self.store.remove_hint(peer, data_id)
    }

    /// Remembers that `peer` missed this write.
    fn hint(&self, peer: &str, data_id: &str) {
        match self.store.add_hint(peer, data_id) {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                peer,
                data_id,
                "hint table full; anti-entropy will repair this replica"
            ),
            Err(e) => tracing::warn!(peer, data_id, error = %e, "cannot store hint"),
        }
    }

    fn resolve_rf(&self, rf: Option<u32>) -> Result<u32, StorageError> {
        let rf = rf.unwrap_or(self.config.default_replication_factor);
        if rf < 1 || rf > self.config.max_replication_factor {
            return Err(StorageError::InvalidReplicationFactor {
                got: rf,
                max: self.config.max_replication_factor,
            });
        }
        Ok(rf)
    }

    fn resolve_consistency(&self, c: Option<Consistency>) -> Consistency {
        c.unwrap_or(self.config.consistency_level)
    }

    /// Coordinates one write (an object or a tombstone).
    async fn write(
        self: &Arc<Self>,
        meta: ObjectMeta,
        data: Arc<Vec<u8>>,
    ) -> Result<(Vec<String>, Vec<String>, bool), StorageError> {
        // Strong writes passed `await_view` in `put` / `delete` already:
        // their version comes from a survey that needs the whole view.
        let rf = meta.replication_factor as usize;
        let (replicas, nominal) = self.owner_sets(&meta.data_id, rf);
        let names: Vec<String> = replicas.iter().map(|m| m.name.clone()).collect();
        let (live, down): (Vec<Member>, Vec<Member>) =
            replicas.into_iter().partition(|m| m.reachable());
        let consistency = meta.consistency_level;
        quorum::check_reachable(consistency, rf, live.len())?;
        if consistency == Consistency::Strong {
            let nominal: Vec<&str> = nominal.iter().map(|m| m.peer_id.as_str()).collect();
            let live: Vec<&str> = live.iter().map(|m| m.peer_id.as_str()).collect();
            quorum::check_strong_write(&nominal, &live)?;
        }
        for m in &down {
            self.hint(&m.peer_id, &meta.data_id);
        }
        // Bound the bytes held for replica writes in flight (weak and
        // eventual answers leave them running): past the bound, writers wait.
        let kib = (data.len() / 1024 + 1).min(MAX_INFLIGHT_KIB as usize) as u32;
        let permit = self
            .inflight
            .clone()
            .acquire_many_owned(kib)
            .await
            .map_err(|_| StorageError::ShuttingDown)?;
        let mut under = live.len() < rf;
        let mut sends: FuturesUnordered<_> = live
            .iter()
            .map(|m| {
                let (this, meta, data, m) = (self.clone(), meta.clone(), data.clone(), m.clone());
                async move {
                    let res = this.send_object(&m.peer_id, &meta, &data).await;
                    (m, res)
                }
            })
            .collect();
        let needed = quorum::acks_needed(consistency, rf);
        let mut acked = Vec::new();
        let mut failed = Vec::new();
        while acked.len() < needed {
            let Some((m, res)) = sends.next().await else {
                break;
            };
            match res {
                Ok(_) => acked.push(m.name.clone()),
                Err(e) => {
                    tracing::warn!(node_id = %m.name, data_id = %meta.data_id, error = %e, "replica write failed");
                    self.hint(&m.peer_id, &meta.data_id);
                    failed.push(m.name.clone());
                }
            }
        }
        if acked.len() < needed {
            // Stragglers still finish in the background.
            self.finish_in_background(sends, meta.data_id.clone(), permit);
            return Err(StorageError::ReplicaWriteFailed {
                acked: acked.len(),
                needed,
                failed: failed.join(", "),
            });
        }
        if !failed.is_empty() {
            under = true;
        }
        self.finish_in_background(sends, meta.data_id.clone(), permit);
        Ok((names, acked, under))
    }

    /// Lets the remaining replica writes finish after the answer; the bytes
    /// stay accounted in `permit` until the last one is done.
    fn finish_in_background<F>(
        self: &Arc<Self>,
        mut sends: FuturesUnordered<F>,
        data_id: String,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) where
        F: std::future::Future<Output = (Member, Result<bool, String>)> + Send + 'static,
    {
        if sends.is_empty() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            while let Some((m, res)) = sends.next().await {
                if let Err(e) = res {
                    tracing::warn!(node_id = %m.name, %data_id, error = %e, "background replica write failed; hinted");
                    this.hint(&m.peer_id, &data_id);
                }
            }
            drop(permit);
        });
    }

    pub async fn put(self: &Arc<Self>, mut req: PutRequest) -> Result<PutResult, StorageError> {
        let started = Instant::now();
        let rf = self.resolve_rf(req.replication_factor)?;
        let consistency = self.resolve_consistency(req.consistency);
        if req.bytes.len() > self.config.max_object_bytes() {
            return Err(StorageError::TooLarge {
                limit_bytes: self.config.max_object_bytes(),
            });
        }
        let newest = if consistency == Consistency::Strong {
            self.await_view().await?;
            self.newest_on_a_majority(&req.data_id, rf as usize).await?
        } else {
            None
        };
        let now = wall_ms();
        let version = self.version_above(newest, now)?;
        // The request's bytes move (no copy when the body is one buffer);
        // the request no longer holds them.
        let data = Arc::new(Vec::from(std::mem::take(&mut req.bytes)));
        let meta = ObjectMeta {
            data_id: req.data_id.clone(),
            data_type: req.data_type.clone(),
            size_bytes: data.len() as u64,
            checksum: *blake3::hash(&data).as_bytes(),
            version,
            replication_factor: rf as u8,
            consistency_level: consistency,
            created_at_ms: now,
            tombstone: false,
        };
        let res = self.write(meta.clone(), data).await;
        self.metrics
            .op("put", if res.is_ok() { "ok" } else { "error" });
        self.metrics.observe("put", consistency, started);
        let (replicas, acknowledged_by, under_replicated) = res?;
        Ok(PutResult {
            data_id: meta.data_id.clone(),
            data_type: meta.data_type.clone(),
            size_bytes: meta.size_bytes,
            checksum: meta.checksum_hex(),
            version: meta.version.to_text(),
            consistency_level: consistency,
            replication_factor: rf,
            replicas,
            acknowledged_by,
            under_replicated,
        })
    }

    /// Before a strong write takes its version: the newest version a
    /// majority of the object's nominal owners hold (`None`: none holds
    /// one). The write is then versioned above it ([`Self::version_above`]),
    /// so it outranks every write that completed before it began, even when
    /// this node's clock is behind that writer's and this node was not
    /// among the replicas that saw it (the hybrid clock only learns from
    /// versions it receives). Without it a strong write acknowledged after
    /// another could lose to it by last-writer-wins: a read after both
    /// would return the first (chaos, clock skew).
    async fn newest_on_a_majority(
        self: &Arc<Self>,
        data_id: &str,
        rf: usize,
    ) -> Result<Option<plexi_util::hlc::Version>, StorageError> {
        let (_, nominal, answers) = self.survey(data_id).await;
        let votes = quorum_answers(&answers);
        quorum::check_strong_read(&owner_ids(&nominal, rf), &votes)?;
        Ok(quorum::newest(&votes).map(|n| n.version))
    }

    /// A new version from this node's clock, above `newest` (a version seen
    /// on the object's replicas). Refused when `newest` is further ahead of
    /// this node's clock than the hybrid clock accepts
    /// ([`plexi_util::hlc::MAX_DRIFT_MS`]): the write could not outrank it.
    fn version_above(
        &self,
        newest: Option<plexi_util::hlc::Version>,
        now: u64,
    ) -> Result<plexi_util::hlc::Version, StorageError> {
        let mut hlc = self.hlc.lock().expect("hlc lock");
        if let Some(newest) = newest {
            let _ = hlc.observe(newest, now);
        }
        let version = hlc.now(now);
        match newest {
            Some(newest) if newest >= version => Err(StorageError::ClockBehind {
                newest: newest.to_text(),
            }),
            _ => Ok(version),
        }
    }

    /// The newest metadata among the candidate replicas that answer, with who
    /// answered what. Candidates: the placement at `max_rf` (the object's
    /// replicas are a prefix of it whatever its factor).
    async fn survey(self: &Arc<Self>, data_id: &str) -> Survey<Option<ObjectMeta>> {
        let (candidates, nominal, answers) = self.survey_with_access(data_id).await;
        let answers = answers
            .into_iter()
            .map(|(m, found)| (m, found.map(|(meta, _)| meta)))
            .collect();
        (candidates, nominal, answers)
    }

    /// [`Self::survey`] with each replica's local access statistics.
    async fn survey_with_access(
        self: &Arc<Self>,
        data_id: &str,
    ) -> Survey<Option<(ObjectMeta, AccessStats)>> {
        let max_rf = self.config.max_replication_factor as usize;
        let (mut candidates, nominal) = self.owner_sets(data_id, max_rf);
        // And the nominal owners the placement lost (dead past the delay,
        // full): a strong read counts its majority of them.
        for m in nominal.iter().cloned() {
            if !candidates.iter().any(|c| c.peer_id == m.peer_id) {
                candidates.push(m);
            }
        }
        let mut asks: FuturesUnordered<_> = candidates
            .iter()
            .filter(|m| m.reachable())
            .map(|m| {
                let (this, m, id) = (self.clone(), m.clone(), data_id.to_string());
                async move {
                    let r = this
                        .call(&m.peer_id, StoreCall::Metas { data_ids: vec![id] })
                        .await;
                    (m, r)
                }
            })
            .collect();
        let mut answers = Vec::new();
        while let Some((m, r)) = asks.next().await {
            match r {
                Ok(StoreReply::Metas(mut v)) if v.len() == 1 => {
                    answers.push((m, v.pop().flatten()))
                }
                Ok(_) | Err(_) => {}
            }
        }
        // In placement order, whatever order they arrived in: quorum ties
        // go to the replica placement ranks first.
        answers.sort_by_key(|(m, _)| candidates.iter().position(|c| c.peer_id == m.peer_id));
        (candidates, nominal, answers)
    }

    pub async fn get(
        self: &Arc<Self>,
        data_id: &str,
        consistency: Option<Consistency>,
    ) -> Result<DataObject, StorageError> {
        let consistency = self.resolve_consistency(consistency);
        let started = Instant::now();
        let res = match consistency {
            Consistency::Strong => self.get_strong(data_id).await,
            _ => self.get_first(data_id).await,
        };
        self.metrics.op(
            "get",
            match &res {
                Ok(_) => "ok",
                Err(e) => e.outcome(),
            },
        );
        self.metrics.observe("get", consistency, started);
        let (meta, bytes) = res?;
        Ok(DataObject {
            data_type: meta.data_type.clone(),
            checksum: meta.checksum_hex(),
            version: meta.version.to_text(),
            bytes,
        })
    }

    fn not_found(data_id: &str) -> StorageError {
        StorageError::NotFound {
            data_id: data_id.to_string(),
        }
    }

    /// eventual / weak: the first replica that has the object answers, local
    /// first; stale replicas are repaired in the background after a read
    /// that met one lacking it, and on a sample of the others
    /// ([`READ_REPAIR_EVERY`]).
    async fn get_first(
        self: &Arc<Self>,
        data_id: &str,
    ) -> Result<(ObjectMeta, Vec<u8>), StorageError> {
        match self.get_any_counting(data_id).await {
            (Some((meta, _)), _) if meta.tombstone => Err(Self::not_found(data_id)),
            (Some(found), _) => Ok(found),
            // Some replica holds it but could not serve it (corrupt, or
            // sealed under a data key it lacks): not a "no such object".
            (None, failed) if failed > 0 => Err(StorageError::ReadFailed),
            (None, _) => Err(Self::not_found(data_id)),
        }
    }

    /// The first copy (object or tombstone) any replica, or failing them a
    /// previous owner ([`Self::previous_owners`]), has.
    pub async fn get_any(self: &Arc<Self>, data_id: &str) -> Option<(ObjectMeta, Vec<u8>)> {
        self.get_any_counting(data_id).await.0
    }

    /// [`Storage::get_any`], and how many members hold the object but could
    /// not serve it (their answer says [`BAD_REPLICA`]).
    async fn get_any_counting(
        self: &Arc<Self>,
        data_id: &str,
    ) -> (Option<(ObjectMeta, Vec<u8>)>, usize) {
        let mut failed = 0;
        let mut order = self.replicas_for(data_id, self.config.max_replication_factor as usize);
        order.retain(|m| m.reachable());
        // Local first (stable order otherwise), unless this node is still
        // catching up after a restart: then it is the last resort.
        let local_first = self.caught_up();
        order.sort_by_key(|m| (m.peer_id == self.local_peer) != local_first);
        let mut tried: Vec<String> = Vec::new();
        // Replicas that sent us away because they are still catching up.
        let mut catching_up: Vec<String> = Vec::new();
        // A replica asked before the one that served lacked the object.
        let mut lacking = false;
        for m in &order {
            tried.push(m.peer_id.clone());
            match self.fetch_object(&m.peer_id, data_id).await {
                Ok(Some((meta, data))) => {
                    let served = self
                        .reads_served
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if lacking || served.is_multiple_of(READ_REPAIR_EVERY) {
                        self.read_repair_in_background(
                            data_id.to_string(),
                            meta.clone(),
                            data.clone(),
                        );
                    }
                    return (Some((meta, data)), failed);
                }
                Ok(None) => lacking = true,
                Err(e) => {
                    failed += usize::from(e.contains(BAD_REPLICA));
                    if e.contains(CATCHING_UP) {
                        catching_up.push(m.peer_id.clone());
                    }
                    tracing::debug!(node_id = %m.name, data_id, error = %e, "replica read failed")
                }
            }
        }
        // During a rebalance the object may still sit on its old owners:
        // the nodes a joiner displaced rank just below the replicas.
        for m in self
            .previous_owners(data_id)
            .into_iter()
            .filter(|m| m.reachable() && !tried.contains(&m.peer_id))
        {
            match self.fetch_object(&m.peer_id, data_id).await {
                Ok(Some(found)) => return (Some(found), failed),
                Ok(None) => {}
                Err(e) => {
                    failed += usize::from(e.contains(BAD_REPLICA));
                    if e.contains(CATCHING_UP) {
                        catching_up.push(m.peer_id.clone());
                    }
                }
            }
        }
        // Last resort, rather than a false "not found": whatever copy a
        // replica still catching up holds (an eventual or weak read may be
        // stale; the background repair and anti-entropy converge it).
        for peer in &catching_up {
            let any = Some(plexi_util::hlc::Version::default());
            if let Ok(Some(found)) = self.fetch_object_at(peer, data_id, any).await {
                return (Some(found), failed);
            }
        }
        (None, failed)
    }

    /// Where an object may still sit while its partition moves: with
    /// `auto_rebalance`, the next [`MOVE_SPARE_RANKS`] nodes of its
    /// partition's ranking after the largest replica set (a node that joins
    /// pushes the last owner one rank down, so these are the owners before
    /// up to that many joins; a read of a missing key asks no one else).
    /// Without it, objects stay where they were until a rebalance job: every
    /// member.
    fn previous_owners(&self, data_id: &str) -> Vec<Member> {
        let members = self.members();
        if !self.config.auto_rebalance {
            return members;
        }
        let placement = self.placement_members(&members);
        let rf = self.config.max_replication_factor as usize + MOVE_SPARE_RANKS;
        self.replicas_among(data_id, rf, &placement)
    }

    /// strong: a majority of the object's replicas must answer; the newest
    /// version wins and stale replicas are repaired before answering.
    async fn get_strong(
        self: &Arc<Self>,
        data_id: &str,
    ) -> Result<(ObjectMeta, Vec<u8>), StorageError> {
        self.await_view().await?;
        let (candidates, nominal, answers) = self.survey(data_id).await;
        let votes = quorum_answers(&answers);
        let newest = quorum::newest(&votes);
        let newest_meta = newest
            .as_ref()
            .and_then(|n| answers[n.holders[0]].1.as_ref());
        // The majority is of the nominal owners, whatever this node's view
        // (see `quorum`); repairs go to those and to the placement's owners.
        let rf = quorum::strong_read_rf(
            newest_meta.map(|m| m.replication_factor as usize),
            self.config.default_replication_factor as usize,
            nominal.len(),
        );
        let mut owners = owner_ids(&nominal, rf);
        quorum::check_strong_read(&owners, &votes)?;
        let nominal_owners = owners.len();
        // The placement at rf is the prefix of the placement at max rf.
        for m in candidates.iter().take(rf) {
            if !owners.contains(&m.peer_id.as_str()) {
                owners.push(m.peer_id.as_str());
            }
        }
        let Some(newest) = newest else {
            return Err(Self::not_found(data_id));
        };
        // Fetch the bytes from a replica holding the newest version.
        let mut got = None;
        for &i in &newest.holders {
            let at = Some(newest.version);
            match self
                .fetch_object_at(&answers[i].0.peer_id, data_id, at)
                .await
            {
                // A write may have landed since the survey: newer is fine.
                Ok(Some((meta, data))) if meta.version >= newest.version => {
                    got = Some((meta, data));
                    break;
                }
                _ => {}
            }
        }
        let Some((meta, data)) = got else {
            return Err(StorageError::ReadFailed);
        };
        // Repair stale owners before answering, so the next strong read
        // agrees; answer only once a majority of the nominal owners holds
        // what we return.
        let targets = quorum::repair_targets(&owners, &votes, meta.version);
        let sent = futures::future::join_all(targets.iter().map(|&peer| {
            let (meta, data) = (&meta, &data);
            async move { (peer, self.send_object(peer, meta, data).await.is_ok()) }
        }))
        .await;
        let mut written_back = Vec::new();
        for (peer, ok) in sent {
            if ok {
                self.metrics
                    .repaired(RepairSource::ReadRepair, data.len() as u64);
                written_back.push(peer);
            }
        }
        quorum::check_write_back(
            &owners[..nominal_owners],
            &votes,
            &written_back,
            meta.version,
        )?;
        if meta.tombstone {
            return Err(Self::not_found(data_id));
        }
        Ok((meta, data))
    }

    /// A read found this node's copy of `data_id` unservable: fetch a good
    /// one from another owner and put it in place, in the background, at
    /// most [`MAX_READ_REPAIRS`] at once (with the read repairs; one
    /// skipped is found by the next read or the scheduled scrub).
    fn replace_bad_replica_in_background(self: &Arc<Self>, data_id: &str) {
        let Ok(permit) = self.read_repairs.clone().try_acquire_owned() else {
            self.metrics.read_repair_skipped.inc();
            return;
        };
        let (this, id) = (self.clone(), data_id.to_string());
        tokio::spawn(async move {
            let _permit = permit;
            let meta = match this.engine.meta(&id) {
                Ok(Some(m)) if !m.tombstone => m,
                _ => return,
            };
            let owners = repair::owners(&this, &meta, &this.members());
            let progress = repair::Progress::default();
            if repair::replace_bad_replica(&this, &id, &meta, &owners, &progress).await {
                tracing::info!(data_id = %id, "replaced a replica a read could not serve");
            }
        });
    }

    /// Checks the object's owners after an eventual read and sends the
    /// served copy to those holding an older one or none. At most
    /// [`MAX_READ_REPAIRS`] run at once: past that the repair is skipped
    /// (counted in `plexi_storage_read_repair_skipped`), since anti-entropy
    /// repairs the object anyway and a read burst must not become as many
    /// surveys and writes.
    fn read_repair_in_background(
        self: &Arc<Self>,
        data_id: String,
        meta: ObjectMeta,
        data: Vec<u8>,
    ) {
        let Ok(permit) = self.read_repairs.clone().try_acquire_owned() else {
            self.metrics.read_repair_skipped.inc();
            return;
        };
        self.metrics.read_repair_surveys.inc();
        let this = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let (candidates, _, answers) = this.survey(&data_id).await;
            let votes = quorum_answers(&answers);
            if quorum::newest(&votes).is_some_and(|n| n.version > meta.version) {
                return; // we served a stale copy; the holder of the newest repairs
            }
            let owners: Vec<&str> = candidates
                .iter()
                .take(meta.replication_factor as usize)
                .map(|m| m.peer_id.as_str())
                .collect();
            for peer in quorum::repair_targets(&owners, &votes, meta.version) {
                if this.send_object(peer, &meta, &data).await.is_ok() {
                    this.metrics
                        .repaired(RepairSource::ReadRepair, data.len() as u64);
                    tracing::debug!(peer, %data_id, "read repair");
                }
            }
        });
    }

    pub async fn delete(
        self: &Arc<Self>,
        data_id: &str,
        consistency: Option<Consistency>,
    ) -> Result<(), StorageError> {
        let consistency = self.resolve_consistency(consistency);
        let started = Instant::now();
        if consistency == Consistency::Strong {
            self.await_view().await?;
        }
        let (_, nominal, answers) = self.survey(data_id).await;
        let rf = answers
            .iter()
            .filter_map(|(_, m)| m.as_ref().map(|m| m.replication_factor as u32))
            .max()
            .unwrap_or(self.config.default_replication_factor);
        let votes = quorum_answers(&answers);
        if consistency == Consistency::Strong {
            quorum::check_strong_read(&owner_ids(&nominal, rf as usize), &votes)?;
        }
        // The tombstone outranks every copy the survey saw, whatever this
        // node's clock says (see `newest_on_a_majority`).
        let newest = quorum::newest(&votes).map(|n| n.version);
        let now = wall_ms();
        let version = self.version_above(newest, now)?;
        let meta = ObjectMeta {
            data_id: data_id.to_string(),
            data_type: String::new(),
            size_bytes: 0,
            checksum: [0; 32],
            version,
            replication_factor: rf as u8,
            consistency_level: consistency,
            created_at_ms: now,
            tombstone: true,
        };
        let res = self.write(meta, Arc::new(Vec::new())).await;
        self.metrics
            .op("delete", if res.is_ok() { "ok" } else { "error" });
        self.metrics.observe("delete", consistency, started);
        res.map(|_| ())
    }

    pub async fn info(self: &Arc<Self>, data_id: &str) -> Result<DataInfo, StorageError> {
        let (candidates, _, answers) = self.survey_with_access(data_id).await;
        let all = self.members();
        let found: HashMap<String, Option<(ObjectMeta, AccessStats)>> = answers
            .into_iter()
            .map(|(m, entry)| (m.peer_id, entry))
            .collect();
        let newest = found
            .values()
            .filter_map(|v| v.as_ref().map(|(m, _)| m.clone()))
            .max_by_key(|m| m.version)
            .filter(|m| !m.tombstone)
            .ok_or_else(|| Self::not_found(data_id))?;
        let rf = newest.replication_factor as usize;
        let mut replicas = Vec::new();
        let (mut last_accessed, mut access_count) = (0u64, 0u64);
        for m in candidates.iter().take(rf) {
            let entry = found.get(&m.peer_id).cloned().flatten();
            if let Some((_, a)) = &entry {
                last_accessed = last_accessed.max(a.last_accessed_ms);
                access_count += a.access_count;
            }
            let version = entry.as_ref().map(|(meta, _)| meta.version);
            let status = all
                .iter()
                .find(|x| x.peer_id == m.peer_id)
                .map(|x| x.status)
                .unwrap_or(m.status);
            replicas.push(ReplicaInfo {
                node_id: m.name.clone().into(),
                peer_id: m.peer_id.clone(),
                status,
                has_copy: entry.as_ref().is_some_and(|(meta, _)| !meta.tombstone),
                version: version.map(|v| v.to_text()),
                is_current: version == Some(newest.version),
                is_healthy: m.healthy && status == MemberStatus::Alive,
            });
        }
        let live = replicas
            .iter()
            .filter(|r| r.is_current && r.status == MemberStatus::Alive)
            .count() as u32;
        Ok(DataInfo {
            data_id: newest.data_id.clone(),
            data_type: newest.data_type.clone(),
            size_bytes: newest.size_bytes,
            checksum: newest.checksum_hex(),
            version: newest.version.to_text(),
            consistency_level: newest.consistency_level,
            replication_factor: rf as u32,
            partition: placement::partition_of(data_id),
            created_at: rfc3339_ms(newest.created_at_ms),
            last_accessed: (last_accessed > 0).then(|| rfc3339_ms(last_accessed)),
            access_count,
            live_replicas: live,
            under_replicated: (live as usize) < rf,
            replicas,
        })
    }

    /// The replica side of the `store` service.
    pub async fn handle_call(
        self: &Arc<Self>,
        from: &str,
        call: StoreCall,
    ) -> Result<StoreReply, String> {
        match call {
            StoreCall::Put { meta, data } => self.apply_durably(meta, data).await,
            StoreCall::PutMany { puts } => {
                if puts.len() > wire::MAX_BATCH_PUTS {
                    return Err("batch too large".into());
                }
                let outcomes = self.apply_many(puts).await?;
                // One flush makes the whole batch durable.
                if outcomes.iter().any(|o| o.is_ok()) {
                    self.commit.flush().await.map_err(|e| e.to_string())?;
                }
                Ok(StoreReply::AppliedMany(outcomes))
            }
            StoreCall::PutChunk {
                upload,
                offset,
                data,
            } => {
                let mut uploads = self.uploads.lock().expect("uploads lock");
                uploads.retain(|_, u| u.touched.elapsed() < UPLOAD_IDLE);
                let buffered: usize = uploads.values().map(|u| u.data.len()).sum();
                if buffered + data.len() > MAX_UPLOAD_BYTES {
                    return Err("too many bytes in uploads; retry later".into());
                }
                if !uploads.contains_key(&upload) && uploads.len() >= MAX_UPLOADS {
                    return Err("too many uploads in progress; retry later".into());
                }
                let u = uploads.entry(upload).or_insert_with(|| Upload {
                    from: from.to_string(),
                    data: Vec::new(),
                    touched: Instant::now(),
                });
                if u.from != from || u.data.len() as u64 != offset {
                    return Err("chunk out of order".into());
                }
                u.data.extend_from_slice(&data);
                u.touched = Instant::now();
                Ok(StoreReply::ChunkAccepted)
            }
            StoreCall::PutCommit { upload, meta } => {
                let u = self.uploads.lock().expect("uploads lock").remove(&upload);
                match u {
                    Some(u) if u.from == from => self.apply_durably(meta, u.data).await,
                    _ => Err("unknown upload".into()),
                }
            }
            StoreCall::Read {
                data_id,
                offset,
                len,
                newest,
            } => {
                let catching_up = !self.caught_up() && from != self.local_peer;
                if catching_up && newest.is_none() {
                    // A replica that just came back may hold stale copies:
                    // send the reader to another replica until it has synced.
                    return Err(CATCHING_UP.into());
                }
                // A later slice of a large value: the copy its first
                // slice opened, while it is still the current version.
                let kept = if offset > 0 {
                    match self.engine.meta(&data_id) {
                        Ok(Some(m)) if !m.tombstone => {
                            self.open_values.get(&data_id, m.version, Instant::now())
                        }
                        _ => None,
                    }
                } else {
                    None
                };
                if let Some((meta, data)) = kept {
                    let vouched = !catching_up || Some(meta.version) >= newest;
                    if !vouched {
                        return Err(CATCHING_UP.into());
                    }
                    return Ok(StoreReply::Read {
                        data: slice_of(&data, offset, len),
                        meta: Some(meta),
                    });
                }
                // A value kept in the tree is read right here (no trip to
                // the blocking pool and back: 4 of a 4 KiB get's 21 context
                // switches on 3 nodes); a value file on the blocking pool.
                let res = match self.engine.get_in_tree(&data_id) {
                    Ok(Some(found)) => Ok(found),
                    Ok(None) => {
                        let (engine, id) = (self.engine.clone(), data_id.clone());
                        tokio::task::spawn_blocking(move || engine.get(&id))
                            .await
                            .map_err(|e| e.to_string())?
                    }
                    Err(e) => Err(e),
                };
                // Still catching up: only a copy the reader's quorum vouches for.
                let vouched = !catching_up
                    || matches!(&res, Ok(Some((meta, _))) if Some(meta.version) >= newest);
                if !vouched {
                    return Err(CATCHING_UP.into());
                }
                // A read of the whole object counts (in memory; access.rs
                // writes the counts in batches, on the blocking pool).
                if let Ok(Some((meta, _))) = &res {
                    if offset == 0
                        && !meta.tombstone
                        && self.engine.record_access(&data_id, wall_ms())
                    {
                        let engine = self.engine.clone();
                        tokio::task::spawn_blocking(move || {
                            if let Err(e) = engine.write_access() {
                                tracing::warn!(error = %e, "read statistics not written");
                            }
                        });
                    }
                }
                match res {
                    Ok(None) => Ok(StoreReply::Read {
                        meta: None,
                        data: Vec::new(),
                    }),
                    Ok(Some((meta, data))) if data.len() as u64 > READ_CHUNK_BYTES => {
                        // Read in slices: opened once, kept for the next ones.
                        let data = Arc::new(data);
                        let now = Instant::now();
                        self.open_values.insert(meta.clone(), data.clone(), now);
                        let s = self.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(open_values::OPEN_VALUE_IDLE).await;
                            s.open_values.expire(Instant::now());
                        });
                        Ok(StoreReply::Read {
                            data: slice_of(&data, offset, len),
                            meta: Some(meta),
                        })
                    }
                    // The whole value moves as it is; a slice is copied.
                    Ok(Some((meta, data))) => Ok(StoreReply::Read {
                        data: if offset == 0 && len >= data.len() as u64 {
                            data
                        } else {
                            slice_of(&data, offset, len)
                        },
                        meta: Some(meta),
                    }),
                    Err(e @ (StoreError::Corrupt { .. } | StoreError::UnknownKey { .. })) => {
                        // Sealed under a key this node lacks counts as a
                        // bad replica too: the reader asks another one, and
                        // this node replaces its copy in the background
                        // (metadata surveys cannot see a bad value: its
                        // version is current).
                        self.metrics.corrupt_found();
                        self.replace_bad_replica_in_background(&data_id);
                        Err(format!("{BAD_REPLICA}: {e}"))
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
            StoreCall::Metas { data_ids } => {
                if data_ids.len() > MAX_BATCH {
                    return Err("batch too large".into());
                }
                let out = data_ids
                    .iter()
                    .map(|id| {
                        self.engine
                            .meta(id)
                            .ok()
                            .flatten()
                            .map(|m| (m, self.engine.access(id)))
                    })
                    .collect();
                Ok(StoreReply::Metas(out))
            }
            StoreCall::Digests => self
                .engine
                .digests()
                .map(StoreReply::Digests)
                .map_err(|e| e.to_string()),
            StoreCall::FactorDigests => self
                .engine
                .factor_digests()
                .map(StoreReply::FactorDigests)
                .map_err(|e| e.to_string()),
            StoreCall::Entries { partition } => {
                if partition >= placement::PARTITIONS {
                    return Err("no such partition".into());
                }
                self.engine
                    .entries(partition)
                    .map(StoreReply::Entries)
                    .map_err(|e| e.to_string())
            }
            StoreCall::EntriesOf { partitions } => {
                if partitions.len() > wire::MAX_ENTRIES_PARTITIONS
                    || partitions.iter().any(|p| *p >= placement::PARTITIONS)
                {
                    return Err("bad partition list".into());
                }
                let this = self.clone();
                tokio::task::spawn_blocking(move || {
                    partitions
                        .into_iter()
                        .map(|p| this.engine.entries(p))
                        .collect::<Result<Vec<_>, _>>()
                })
                .await
                .map_err(|e| e.to_string())?
                .map(StoreReply::EntriesOf)
                .map_err(|e| e.to_string())
            }
            StoreCall::Census => {
                let this = self.clone();
                tokio::task::spawn_blocking(move || report::local_census(&this))
                    .await
                    .map_err(|e| e.to_string())?
            }
            StoreCall::List {
                prefix,
                after,
                limit,
            } => {
                let this = self.clone();
                tokio::task::spawn_blocking(move || {
                    listing::local_list(&this, &prefix, after.as_deref(), limit)
                })
                .await
                .map_err(|e| e.to_string())?
            }
            StoreCall::StartJob { job_id, kind } => {
                if job_id.len() > 64 {
                    return Err("bad job id".into());
                }
                self.jobs.start(self, &job_id, kind);
                Ok(StoreReply::JobStarted)
            }
            StoreCall::JobStatus { job_id } => Ok(StoreReply::Job(self.jobs.status(&job_id))),
        }
    }

    /// Applies a write and returns once it is durable.
    pub async fn apply_durably(
        self: &Arc<Self>,
        meta: ObjectMeta,
        data: Vec<u8>,
    ) -> Result<StoreReply, String> {
        let stored = self.apply(meta, data).await?;
        self.commit.flush().await.map_err(|e| e.to_string())?;
        Ok(StoreReply::Applied { stored })
    }

    /// [`Self::apply`] of each put of a batch, in one trip to the blocking
    /// pool; each put's own outcome.
    async fn apply_many(
        self: &Arc<Self>,
        puts: Vec<wire::PutItem>,
    ) -> Result<Vec<Result<bool, String>>, String> {
        {
            let mut hlc = self.hlc.lock().expect("hlc lock");
            for p in &puts {
                let _ = hlc.observe(p.meta.version, wall_ms());
            }
        }
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || {
            puts.into_iter()
                .map(|p| {
                    if !valid_data_id(&p.meta.data_id) {
                        return Err("bad data id".to_string());
                    }
                    engine
                        .apply(&p.meta, &p.data)
                        .map(|a| a == Applied::Stored)
                        .map_err(|e| e.to_string())
                })
                .collect()
        })
        .await
        .map_err(|e| e.to_string())
    }

    /// Applies a write (not yet durable: a flush follows); whether it was
    /// stored (false: a newer version is already here).
    async fn apply(self: &Arc<Self>, meta: ObjectMeta, data: Vec<u8>) -> Result<bool, String> {
        if !valid_data_id(&meta.data_id) {
            return Err("bad data id".into());
        }
        let _ = self
            .hlc
            .lock()
            .expect("hlc lock")
            .observe(meta.version, wall_ms());
        let engine = self.engine.clone();
        let applied = tokio::task::spawn_blocking(move || engine.apply(&meta, &data))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        Ok(applied == Applied::Stored)
    }
}

/// The bytes of a `Read` slice: from `offset`, at most `len` and
/// [`READ_CHUNK_BYTES`] of them (empty past the end).
fn slice_of(data: &[u8], offset: u64, len: u64) -> Vec<u8> {
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(data.len());
    let end = start
        .saturating_add(len.min(READ_CHUNK_BYTES) as usize)
        .min(data.len());
    data[start..end].to_vec()
}

/// Whether a replica accepts a write of this id.
fn valid_data_id(data_id: &str) -> bool {
    !data_id.is_empty() && data_id.len() <= plexi_util::limits::MAX_DATA_ID_BYTES
}

/// The peer ids of the first `rf` of `nominal` (the nominal owners at
/// that factor), what the strong rules count a majority of.
fn owner_ids(nominal: &[Member], rf: usize) -> Vec<&str> {
    nominal
        .iter()
        .take(rf)
        .map(|m| m.peer_id.as_str())
        .collect()
}

/// One read of the membership table as the data path places by: the
/// placement members ([`Storage::placement_members`]) and every member that
/// has not left (the nominal owners' universe, see `quorum`), each with its
/// placement candidates.
struct PlacementView {
    placement: Vec<Member>,
    placement_candidates: Vec<Candidate>,
    not_left: Vec<Member>,
    not_left_candidates: Vec<Candidate>,
}

impl PlacementView {
    /// The replica set of `partition` at `rf`, primary first, among the
    /// placement members or (`nominal`) every member that has not left.
    fn replicas(
        &self,
        partition: u16,
        rf: usize,
        nominal: bool,
        strategy: plexi_util::types::StorageStrategy,
    ) -> Vec<Member> {
        let (members, candidates) = if nominal {
            (&self.not_left, &self.not_left_candidates)
        } else {
            (&self.placement, &self.placement_candidates)
        };
        pick(partition, rf, members, candidates, strategy)
    }
}

/// The replica set of `partition` at `rf` among `members` (whose placement
/// candidates are `candidates`, in the same order), primary first.
fn pick(
    partition: u16,
    rf: usize,
    members: &[Member],
    candidates: &[Candidate],
    strategy: plexi_util::types::StorageStrategy,
) -> Vec<Member> {
    placement::replicas(partition, candidates, strategy, rf)
        .into_iter()
        .map(|i| members[i].clone())
        .collect()
}

/// Members as placement sees them: only gossiped figures, so that every
/// node computes the same replica sets.
fn candidates(members: &[Member]) -> Vec<Candidate> {
    members
        .iter()
        .map(|m| Candidate {
            id: m.peer_id.clone(),
            region: m.region.clone(),
            zone: m.zone.clone(),
            capacity_bytes: m.capacity_bytes,
            latency_ms: (m.store_latency_us > 0).then(|| m.store_latency_us as f64 / 1000.0),
            reliability: scores::reliability(m.unplanned_restarts),
        })
        .collect()
}

/// The survey's answers as the quorum rules read them.
fn quorum_answers(answers: &[(Member, Option<ObjectMeta>)]) -> Vec<quorum::Answer<'_>> {
    answers
        .iter()
        .map(|(m, meta)| quorum::Answer {
            peer: &m.peer_id,
            version: meta.as_ref().map(|x| x.version),
        })
        .collect()
}

/// The `store` service as the p2p layer calls it.
pub async fn serve(
    storage: &Arc<Storage>,
    from: PeerId,
    body: Vec<u8>,
) -> Result<Vec<u8>, CallError> {
    let call: StoreCall = decode_cbor(&body).map_err(|e| {
        tracing::warn!(peer = %from, error = %e, "malformed store call dropped");
        CallError::malformed(e)
    })?;
    // The frame is not held through the call (a put's flush wait).
    drop(body);
    let reply = storage
        .handle_call(&from.to_string(), call)
        .await
        .map_err(CallError::failed)?;
    encode_cbor(&reply).map_err(CallError::failed)
}
