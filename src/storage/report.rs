//! What the storage API reports about the whole cluster: overview, per-node
//! capacity and scores, distribution. Object counts come from a census of
//! every reachable node (each answers with its entries, bounded), so
//! `total_data_objects` counts logical objects, not replicas.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use futures::stream::{FuturesUnordered, StreamExt};
use plexi_api::model::{
    Distribution, Holding, NodeHolding, StorageNode, StorageNodes, StorageOverview,
};
use plexi_p2p::MemberStatus;
use plexi_store::objects::ObjectStore;
use plexi_util::hlc::Version;

use super::wire::{CensusEntry, StoreCall, StoreReply, MAX_CENSUS};
use super::{scores, Member, Storage, StorageError};
use plexi_util::units::GIB;

fn gb(bytes: u64) -> f64 {
    (bytes as f64 / GIB * 1000.0).round() / 1000.0
}

fn pct(used: u64, total: u64) -> f64 {
    if total == 0 {
        return 0.0;
    }
    (used as f64 * 10000.0 / total as f64).round() / 100.0
}

/// Per-object facts gathered from every answering node.
struct ObjectTally {
    newest: Version,
    rf: u8,
    tombstone: bool,
    current_holders: u32,
}

struct Census {
    /// Per answering member: its entries.
    answers: Vec<(Member, Vec<CensusEntry>)>,
    unreachable: Vec<String>,
    objects: HashMap<String, ObjectTally>,
}

impl Census {
    fn live(&self) -> impl Iterator<Item = &ObjectTally> {
        self.objects.values().filter(|t| !t.tombstone)
    }
}

async fn census(s: &Arc<Storage>) -> Census {
    let (asked, mut unreachable) = s.members_to_ask();
    let mut asks: FuturesUnordered<_> = asked
        .iter()
        .map(|m| {
            let (s, m) = (s.clone(), m.clone());
            async move {
                let r = s.call(&m.peer_id, StoreCall::Census).await;
                (m, r)
            }
        })
        .collect();
    let mut answers = Vec::new();
    while let Some((m, r)) = asks.next().await {
        match r {
            Ok(StoreReply::Census { entries, truncated }) => {
                if truncated {
                    tracing::warn!(node_id = %m.name, max = MAX_CENSUS, "census truncated; counts are lower bounds");
                }
                answers.push((m, entries));
            }
            _ => unreachable.push(m.name.clone()),
        }
    }
    let mut objects: HashMap<String, ObjectTally> = HashMap::new();
    for (_, entries) in &answers {
        for e in entries {
            let t = objects.entry(e.data_id.clone()).or_insert(ObjectTally {
                newest: e.version,
                rf: e.replication_factor,
                tombstone: e.tombstone,
                current_holders: 0,
            });
            if e.version > t.newest {
                t.newest = e.version;
                t.rf = e.replication_factor;
                t.tombstone = e.tombstone;
                t.current_holders = 0;
            }
            if e.version == t.newest {
                t.current_holders += 1;
            }
        }
    }
    unreachable.sort();
    let c = Census {
        answers,
        unreachable,
        objects,
    };
    let live: Vec<&ObjectTally> = c.live().collect();
    s.metrics.census_objects.set(live.len() as i64);
    s.metrics
        .census_replicas
        .set(live.iter().map(|t| t.current_holders as i64).sum());
    s.metrics
        .replication_efficiency
        .set(replication_efficiency(&live));
    c
}

/// The distribution report's replication efficiency: current replicas of
/// live objects over the replicas their factors want, at most 1 (1 for an
/// empty cluster), rounded to 0.001.
fn replication_efficiency(live: &[&ObjectTally]) -> f64 {
    let target: u64 = live.iter().map(|t| t.rf as u64).sum();
    let replicas: u64 = live.iter().map(|t| t.current_holders as u64).sum();
    if target == 0 {
        1.0
    } else {
        ((replicas.min(target) as f64 / target as f64) * 1000.0).round() / 1000.0
    }
}

/// How often every node runs a census for its census gauges
/// (`plexi_storage_cluster_objects`, `plexi_storage_cluster_replicas`,
/// `plexi_storage_replication_efficiency`); every report's census (overview,
/// distribution) sets them too. One census asks each member for at most
/// [`MAX_CENSUS`] entries.
pub const CENSUS_GAUGES_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// Keeps the census gauges fresh: a census every [`CENSUS_GAUGES_INTERVAL`].
pub fn spawn_census_gauges(s: Arc<Storage>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(CENSUS_GAUGES_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            census(&s).await;
        }
    });
}

/// Ids of live objects (newest version not a tombstone) that start with
/// `prefix` and end with `suffix`, sorted.
pub async fn live_ids(s: &Arc<Storage>, prefix: &str, suffix: &str) -> Vec<String> {
    let c = census(s).await;
    let mut ids: Vec<String> = c
        .objects
        .iter()
        .filter(|(id, t)| !t.tombstone && id.starts_with(prefix) && id.ends_with(suffix))
        .map(|(id, _)| id.clone())
        .collect();
    ids.sort();
    ids
}

/// The local part of a census.
pub fn local_census(s: &Storage) -> Result<StoreReply, String> {
    let metas = s
        .engine()
        .census(MAX_CENSUS + 1)
        .map_err(|e| e.to_string())?;
    let truncated = metas.len() > MAX_CENSUS;
    Ok(StoreReply::Census {
        entries: metas
            .into_iter()
            .take(MAX_CENSUS)
            .map(|m| CensusEntry {
                data_id: m.data_id,
                version: m.version,
                replication_factor: m.replication_factor,
                size_bytes: m.size_bytes,
                tombstone: m.tombstone,
            })
            .collect(),
        truncated,
    })
}

pub async fn overview(s: &Arc<Storage>) -> Result<StorageOverview, StorageError> {
    let members: Vec<Member> = s
        .members()
        .into_iter()
        .filter(|m| m.status != MemberStatus::Left)
        .collect();
    let in_service: Vec<&Member> = members.iter().filter(|m| m.reachable()).collect();
    let total: u64 = in_service.iter().map(|m| m.capacity_bytes).sum();
    let used: u64 = in_service.iter().map(|m| m.used_bytes).sum();
    let c = census(s).await;
    let live: Vec<&ObjectTally> = c.live().collect();
    Ok(StorageOverview {
        total_nodes: members.len() as u32,
        healthy_nodes: members
            .iter()
            .filter(|m| m.status == MemberStatus::Alive && m.healthy)
            .count() as u32,
        total_capacity_gb: gb(total),
        used_capacity_gb: gb(used),
        available_capacity_gb: gb(total.saturating_sub(used)),
        usage_percentage: pct(used, total),
        total_data_objects: live.len() as u64,
        replication_factor: s.config.default_replication_factor,
        storage_strategy: s.config.storage_strategy,
        consistency_level: s.config.consistency_level,
        total_replicas: live.iter().map(|t| t.current_holders as u64).sum(),
        under_replicated_objects: live
            .iter()
            .filter(|t| t.current_holders < t.rf as u32)
            .count() as u64,
        unreachable_nodes: c.unreachable,
    })
}

pub fn nodes(s: &Arc<Storage>) -> StorageNodes {
    let stats = s.peer_stats();
    let members = s.members();
    let placement = s.placement_members(&members);
    let mut nodes: Vec<StorageNode> = members
        .iter()
        .map(|m| {
            let st = stats.get(&m.peer_id).copied().unwrap_or_default();
            StorageNode {
                node_id: m.name.clone().into(),
                peer_id: m.peer_id.clone(),
                status: m.status,
                region: m.region.clone(),
                zone: m.zone.clone(),
                total_capacity_gb: gb(m.capacity_bytes),
                used_capacity_gb: gb(m.used_bytes),
                available_capacity_gb: gb(m.capacity_bytes.saturating_sub(m.used_bytes)),
                usage_percentage: pct(m.used_bytes, m.capacity_bytes),
                object_count: m.object_count,
                // From the member's own record only: the same on every node.
                performance_score: scores::performance_score(m.store_latency_us),
                reliability_score: scores::reliability_score(m.unplanned_restarts),
                store_latency_ms: scores::store_latency_ms(m.store_latency_us),
                unplanned_restarts: m.unplanned_restarts,
                read_latency_ms: st.read_latency_ms.map(|v| (v * 100.0).round() / 100.0),
                write_latency_ms: st.write_latency_ms.map(|v| (v * 100.0).round() / 100.0),
                is_healthy: m.healthy && m.status == MemberStatus::Alive,
                last_heartbeat: crate::storage::rfc3339_ms(
                    crate::storage::wall_ms().saturating_sub(m.silent_ms),
                ),
                accepts_new_replicas: placement.iter().any(|p| p.peer_id == m.peer_id),
            }
        })
        .collect();
    nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    StorageNodes { nodes }
}

pub async fn distribution(s: &Arc<Storage>) -> Result<Distribution, StorageError> {
    let c = census(s).await;
    let mut nodes = Vec::new();
    let mut regions: BTreeMap<String, Holding> = BTreeMap::new();
    let mut zones: BTreeMap<String, Holding> = BTreeMap::new();
    for (m, entries) in &c.answers {
        let live = entries.iter().filter(|e| !e.tombstone);
        let (objects, bytes) = live.fold((0u64, 0u64), |(n, b), e| (n + 1, b + e.size_bytes));
        nodes.push(NodeHolding {
            node_id: m.name.clone().into(),
            region: m.region.clone(),
            zone: m.zone.clone(),
            objects,
            bytes,
        });
        for (map, key) in [
            (&mut regions, m.region.clone()),
            (&mut zones, format!("{}/{}", m.region, m.zone)),
        ] {
            let h = map.entry(key).or_default();
            h.objects += objects;
            h.bytes += bytes;
        }
    }
    nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    let live: Vec<&ObjectTally> = c.live().collect();
    let mut histogram: BTreeMap<String, u64> = BTreeMap::new();
    for t in &live {
        *histogram.entry(t.current_holders.to_string()).or_default() += 1;
    }
    let replicas: u64 = live.iter().map(|t| t.current_holders as u64).sum();
    let n = live.len() as u64;
    Ok(Distribution {
        nodes,
        regions,
        zones,
        replica_histogram: histogram,
        total_objects: n,
        under_replicated_objects: live
            .iter()
            .filter(|t| t.current_holders < t.rf as u32)
            .count() as u64,
        average_replication_factor: if n == 0 {
            0.0
        } else {
            (replicas as f64 / n as f64 * 100.0).round() / 100.0
        },
        replication_efficiency: replication_efficiency(&live),
        unreachable_nodes: c.unreachable,
    })
}
