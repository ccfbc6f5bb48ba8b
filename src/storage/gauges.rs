//! Storage gauges computed at scrape time from what is already in memory:
//! this node's counters (atomics of the object engine and the hint table)
//! and the members' gossiped records (one labelled series per member). A
//! scrape reads no store tree and asks no peer, so it stays fast whatever
//! the node holds. The census-based gauges (cluster objects, replicas,
//! replication efficiency) are set by `report::census` instead.

use std::sync::Arc;

use plexi_p2p::MemberStatus;
use plexi_store::objects::ObjectStore;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use super::Storage;

/// The label of the per-member series: the member's node name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    pub node_id: String,
}

/// Registered once per node (`node/services.rs`).
pub struct StorageGauges(pub Arc<Storage>);

impl std::fmt::Debug for StorageGauges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StorageGauges")
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    let m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    g.encode(m)
}

fn per_node<T: prometheus_client::encoding::EncodeGaugeValue + Copy>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: &[(NodeLabels, T)],
) -> Result<(), std::fmt::Error> {
    let mut m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in values {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for StorageGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let (objects, used) = s.engine().counts();
        let members: Vec<_> = s
            .members()
            .into_iter()
            .filter(|m| m.status != MemberStatus::Left)
            .collect();
        let capacity = members
            .iter()
            .find(|m| m.peer_id == s.local_peer())
            .map_or(0, |m| m.capacity_bytes);
        gauge(
            &mut encoder,
            "plexi_storage_used_bytes",
            "Bytes of live objects this node stores (its replicas)",
            used as i64,
        )?;
        gauge(
            &mut encoder,
            "plexi_storage_capacity_bytes",
            "This node's storage capacity in bytes (node.capacity_gb, or the disk's)",
            capacity as i64,
        )?;
        gauge(
            &mut encoder,
            "plexi_storage_replicas",
            "Live object replicas this node stores",
            objects as i64,
        )?;
        gauge(
            &mut encoder,
            "plexi_storage_pending_hints",
            "Writes this node remembers a replica missed, waiting for hinted handoff",
            s.pending_hints() as i64,
        )?;
        let label = |m: &super::Member| NodeLabels {
            node_id: m.name.clone(),
        };
        let rows = |f: &dyn Fn(&super::Member) -> i64| -> Vec<(NodeLabels, i64)> {
            members.iter().map(|m| (label(m), f(m))).collect()
        };
        per_node(
            &mut encoder,
            "plexi_cluster_node_used_bytes",
            "Bytes of live objects each member stores, from its gossiped record",
            &rows(&|m| m.used_bytes as i64),
        )?;
        per_node(
            &mut encoder,
            "plexi_cluster_node_capacity_bytes",
            "Each member's storage capacity in bytes, from its gossiped record",
            &rows(&|m| m.capacity_bytes as i64),
        )?;
        per_node(
            &mut encoder,
            "plexi_cluster_node_replicas",
            "Live object replicas each member stores, from its gossiped record",
            &rows(&|m| m.object_count as i64),
        )?;
        per_node(
            &mut encoder,
            "plexi_cluster_node_up",
            "1 while this node judges the member alive or suspect, else 0",
            &rows(&|m| i64::from(m.reachable())),
        )?;
        let latency: Vec<(NodeLabels, f64)> = members
            .iter()
            .filter(|m| m.store_latency_us > 0)
            .map(|m| (label(m), m.store_latency_us as f64 / 1e6))
            .collect();
        per_node(
            &mut encoder,
            "plexi_cluster_node_store_latency_seconds",
            "Each member's own store probe latency (seconds), from its gossiped record",
            &latency,
        )?;
        Ok(())
    }
}
