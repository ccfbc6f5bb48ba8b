//! The node's own record and the files that say it runs: the loop that keeps
//! the gossiped record current (usage, health, store latency, advertised API
//! address), `node.json` and the supervisor's `ready.json` once the swarm
//! listens, and the persisted incarnation.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use plexi_p2p::{LocalInfo, Multiaddr};
use plexi_store::NodeStore;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;

use super::data_dir::{write_runtime_info, RuntimeInfo};
use super::Node;
use plexi_util::version::VERSION;

/// Bound on the wait for the swarm's first listen address.
const LISTEN_WAIT: Duration = Duration::from_secs(5);

/// The address other nodes and clients should use for our API: the bound
/// one, or for an unspecified bind the first routable IPv4 we listen on.
pub fn advertised_api(bound: SocketAddr, listen: &[String]) -> String {
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

/// Every `interval`: runs the local checks and publishes what the record
/// says about us (the swarm signs and gossips it at its next heartbeat);
/// refreshes the uptime gauge.
pub fn spawn_refresh(
    node: Arc<Node>,
    info_tx: watch::Sender<LocalInfo>,
    api_bound: SocketAddr,
    interval: Duration,
    uptime: Gauge<i64>,
) {
    tokio::spawn(async move {
        let first = info_tx.borrow().clone();
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
                replica_counts: node
                    .storage
                    .get()
                    .map(|s| s.metrics.replica_counts())
                    .unwrap_or_default(),
                ..first.clone()
            };
            info_tx.send_if_modified(|cur| {
                let changed = *cur != info;
                *cur = info;
                changed
            });
            uptime.set(node.started.elapsed().as_secs() as i64);
        }
    });
}

/// How often `peers.json` is brought up to date (rewritten only when the
/// alive members' addresses changed): a node restarted right after a member
/// joined, or right after its own start, still knows whom to wait for and
/// dial (the record refresh above runs only every 10 s or more, and a
/// founding node with nothing remembered waits its whole settle time).
pub const PEERS_REFRESH: Duration = Duration::from_secs(1);

/// Keeps `DATA_DIR/peers.json` current (see [`PEERS_REFRESH`]).
pub fn spawn_remember_peers(node: Arc<Node>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PEERS_REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            node.remember_peers();
        }
    });
}

/// Writes `node.json` once the swarm reports its listen addresses, then
/// `releases/ready.json` for the supervisor — unless a switch to this
/// version is pending: then the update engine writes it after its
/// post-update check.
pub fn spawn_runtime_info(node: Arc<Node>, api_bound: SocketAddr) {
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + LISTEN_WAIT;
        while tokio::time::Instant::now() < deadline {
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
                write_runtime_info(&node.data_dir, &info);
                let pending = crate::switch::pending_switch(&node.data_dir).map(|s| s.to_version);
                if pending.as_deref() != Some(VERSION) {
                    if let Err(e) = crate::switch::write_ready(&node.data_dir, VERSION) {
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

/// Persists every incarnation the swarm moves to. It reads a watch, which
/// keeps the latest value, so a bump is never lost to a slow reader.
pub fn spawn_incarnation_persistence(mut incarnation: watch::Receiver<u64>, store: Arc<NodeStore>) {
    tokio::spawn(async move {
        while incarnation.changed().await.is_ok() {
            let inc = *incarnation.borrow_and_update();
            let store = store.clone();
            let res = tokio::task::spawn_blocking(move || store.raise_incarnation(inc)).await;
            if !matches!(res, Ok(Ok(_))) {
                tracing::error!(incarnation = inc, "failed to persist incarnation");
            }
        }
    });
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

    /// Many bumps while nobody reads: the store ends at the last one.
    #[tokio::test]
    async fn every_incarnation_bump_is_persisted_even_in_a_burst() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(NodeStore::open(&dir.path().join("store")).unwrap());
        let first = store.next_incarnation().unwrap();
        let (tx, rx) = watch::channel(first);
        spawn_incarnation_persistence(rx, store.clone());
        for inc in first + 1..=first + 1000 {
            tx.send_replace(inc);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let probe = store.incarnation().ok();
            if probe == Some(first + 1000) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "persisted {probe:?}, wanted {}",
                first + 1000
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
