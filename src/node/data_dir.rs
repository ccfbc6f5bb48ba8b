//! The data dir and what lives in it for the node itself: created private
//! (0700), the libp2p identity (`identity.key`), the store (`store/`), the
//! incarnation bumped at every start, the API tokens (`admin.token` when
//! generated), the peers remembered for a restart (`peers.json`) and the
//! runtime addresses for scripts and tests (`node.json`).
//!
//! Releases, backups and the switch files are the switch protocol's
//! (`crate::switch`), not this module's.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use plexi_api::TokenSet;
use plexi_p2p::{Keypair, Multiaddr, PeerId};
use plexi_store::NodeStore;
use serde::Serialize;

use super::{startup, tokens, NodeError};
use crate::config::Config;
use crate::files::{create_private_dir, read_json, write_json_atomic};
use crate::storage::restarts::Restarts;

/// Bound on remembered peer addresses (`peers.json`).
pub const MAX_KNOWN_PEERS: usize = 64;

/// What the node opened from its data dir at start.
pub struct DataDir {
    pub path: PathBuf,
    pub keypair: Keypair,
    pub peer_id: PeerId,
    pub store: Arc<NodeStore>,
    /// This start's incarnation (persisted, one above the last).
    pub incarnation: u64,
    /// Failure history: the clean-stop marker and the unplanned count.
    pub restarts: Restarts,
    /// Starts that followed a run that did not stop cleanly (this one too).
    pub unplanned_restarts: u64,
    /// `node.name`, or a name derived from the peer id.
    pub name: String,
    pub tokens: TokenSet,
}

/// Creates the data dir if needed and opens everything in it.
pub fn open(config: &Config) -> Result<DataDir, NodeError> {
    let path = config.node.data_dir.clone();
    create_private_dir(&path).map_err(startup(&format!("data dir {}", path.display())))?;
    let keypair = plexi_p2p::identity::load_or_create(&path.join("identity.key"))
        .map_err(startup("identity"))?;
    let peer_id = keypair.public().to_peer_id();
    // Object bytes are sealed at rest under the data key, if one is set.
    let keys = crate::switch::sealed::DataKeys::resolve(config).map_err(startup("data key"))?;
    let keyring = || plexi_store::sealing::Keyring::new(keys.current.clone(), keys.retired.clone());
    let store =
        Arc::new(NodeStore::open_sealed(&path.join("store"), keyring).map_err(startup("store"))?);
    if let Some(aside) = store.quarantined() {
        tracing::error!(quarantine = %aside.display(), "the store was quarantined at start; anti-entropy refills it from replicas");
    }
    let incarnation = store.next_incarnation().map_err(startup("store"))?;
    // This start is unplanned unless the last run marked a clean stop.
    let restarts = Restarts::open(&store).map_err(startup("store"))?;
    let unplanned_restarts = restarts
        .record_start(store.quarantined().is_some())
        .map_err(startup("store"))?;
    let name = config
        .node
        .name
        .clone()
        .unwrap_or_else(|| default_name(&peer_id));
    let (tokens, generated) = tokens::resolve(
        config,
        &path,
        std::env::var("PLEXI_ADMIN_TOKEN").ok(),
        std::env::var("PLEXI_READ_TOKEN").ok(),
    )
    .map_err(startup("tokens"))?;
    if let Some(file) = &generated {
        tracing::info!(path = %file.display(), "no admin token configured; using the generated one in this file");
    }
    Ok(DataDir {
        path,
        keypair,
        peer_id,
        store,
        incarnation,
        restarts,
        unplanned_restarts,
        name,
        tokens,
    })
}

fn default_name(peer: &PeerId) -> String {
    let s = peer.to_string();
    format!("node-{}", &s[s.len().saturating_sub(8)..])
}

/// Addresses remembered by [`write_known_peers`] at the last run.
pub fn known_peers(data_dir: &Path) -> Vec<Multiaddr> {
    let addrs: Vec<String> = read_json(&data_dir.join("peers.json")).unwrap_or_default();
    addrs
        .iter()
        .take(MAX_KNOWN_PEERS)
        .filter_map(|a| a.parse().ok())
        .collect()
}

/// Rewrites `peers.json` (tmp + rename).
pub fn write_known_peers(data_dir: &Path, addrs: &[String]) {
    write_json(data_dir, "peers.json", &addrs);
}

/// Written to `DATA_DIR/node.json` once the node serves; read by the testnet
/// scripts and the process tests.
#[derive(Serialize)]
pub struct RuntimeInfo<'a> {
    pub node_id: &'a str,
    pub peer_id: String,
    pub pid: u32,
    pub version: &'a str,
    pub api_address: String,
    pub p2p_addresses: Vec<String>,
}

pub fn write_runtime_info(data_dir: &Path, info: &RuntimeInfo<'_>) {
    write_json(data_dir, "node.json", info);
}

/// `DATA_DIR/name`, written atomically; a failure is logged and the node
/// goes on (both files are conveniences, rewritten later).
fn write_json<T: Serialize + ?Sized>(data_dir: &Path, name: &str, value: &T) {
    let path = data_dir.join(name);
    if let Err(e) = write_json_atomic(&path, value) {
        tracing::warn!(path = %path.display(), error = %e, "cannot write");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_peers_round_trip_and_bad_entries_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        assert!(known_peers(dir.path()).is_empty());
        write_known_peers(
            dir.path(),
            &["/ip4/127.0.0.1/tcp/7000".into(), "not an address".into()],
        );
        let back = known_peers(dir.path());
        assert_eq!(back, vec!["/ip4/127.0.0.1/tcp/7000".parse().unwrap()]);
    }
}
