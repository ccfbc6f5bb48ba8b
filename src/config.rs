//! `config/clustering.yml`: every key of the spec with its default, a `node:`
//! section, and our `membership:` timings. Unknown keys, wrong types and
//! out-of-range values are rejected with a message naming the key and the file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use plexi_util::types::{Consistency, GeoLocation, StorageStrategy};
use plexi_util::units::MIB;
use serde::Deserialize;

use crate::updates::ops::OpSettings;

/// A configuration problem; the node exits with code 2.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub message: String,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub cluster_updates: ClusterUpdates,
    pub distributed_storage: DistributedStorage,
    pub node: NodeSection,
    pub membership: MembershipSection,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterUpdates {
    pub max_concurrent_updates: u32,
    pub rolling_update_delay_seconds: u64,
    pub health_check_timeout_seconds: u64,
    pub rollback_timeout_seconds: u64,
    pub maintenance_mode_timeout_seconds: u64,
    pub auto_rollback_on_failure: bool,
    pub backup_before_update: bool,
    /// Added: how long a canary update watches the first node before the rest.
    pub canary_soak_seconds: u64,
    /// Hex ed25519 public keys whose signed releases this cluster runs.
    pub release_public_keys: Vec<String>,
}

/// The settings the update engine applies, key for key.
impl From<&ClusterUpdates> for OpSettings {
    fn from(u: &ClusterUpdates) -> Self {
        OpSettings {
            max_concurrent_updates: u.max_concurrent_updates,
            rolling_update_delay_seconds: u.rolling_update_delay_seconds,
            health_check_timeout_seconds: u.health_check_timeout_seconds,
            rollback_timeout_seconds: u.rollback_timeout_seconds,
            canary_soak_seconds: u.canary_soak_seconds,
            maintenance_mode_timeout_seconds: u.maintenance_mode_timeout_seconds,
            auto_rollback_on_failure: u.auto_rollback_on_failure,
            backup_before_update: u.backup_before_update,
        }
    }
}

impl Default for ClusterUpdates {
    fn default() -> Self {
        ClusterUpdates {
            max_concurrent_updates: 3,
            rolling_update_delay_seconds: 30,
            health_check_timeout_seconds: 60,
            rollback_timeout_seconds: 300,
            maintenance_mode_timeout_seconds: 600,
            auto_rollback_on_failure: true,
            backup_before_update: true,
            canary_soak_seconds: 60,
            release_public_keys: Vec::new(),
        }
    }
}

/// `distributed_storage:`. The storage service reads this section as it is
/// (`Storage::config`); values derived from it are the methods below, so a
/// key keeps its name, and its unit, everywhere in the code.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DistributedStorage {
    /// Copies of an object when a write names no `replication_factor`.
    pub default_replication_factor: u32,
    pub max_replication_factor: u32,
    /// Consistency of a request that names none.
    pub consistency_level: Consistency,
    pub storage_strategy: StorageStrategy,
    /// Move data onto nodes that joined (rebalancing) by itself. Off, data
    /// moves onto them only on `POST /clustering/storage/rebalance`; repair
    /// of missing or stale replicas runs either way.
    pub auto_rebalance: bool,
    pub cleanup_interval_hours: f64,
    pub health_check_interval_seconds: f64,
    /// No new replica lands on a node above this.
    pub max_node_usage_percentage: f64,
    /// A node above this raises a `node_usage_warning` alert (below
    /// `max_node_usage_percentage`, where `node_usage_high` takes over).
    pub warn_node_usage_percentage: f64,
    /// A node dead this long has its replicas rebuilt elsewhere.
    pub rereplication_delay_seconds: u64,
    /// Largest object body accepted (413 above).
    pub max_object_mib: f64,
    /// How often each node compares partition digests with one peer.
    pub anti_entropy_interval_seconds: f64,
    /// Tombstones older than this are purged by cleanup.
    pub tombstone_grace_seconds: u64,
    /// Throttle for repair, re-replication and rebalancing traffic per node.
    pub repair_mib_per_second: f64,
}

impl Default for DistributedStorage {
    fn default() -> Self {
        DistributedStorage {
            default_replication_factor: 3,
            max_replication_factor: 5,
            consistency_level: Consistency::Eventual,
            storage_strategy: StorageStrategy::LoadBalanced,
            auto_rebalance: true,
            cleanup_interval_hours: 24.0,
            health_check_interval_seconds: 60.0,
            max_node_usage_percentage: 85.0,
            warn_node_usage_percentage: 75.0,
            rereplication_delay_seconds: 300,
            max_object_mib: 64.0,
            anti_entropy_interval_seconds: 5.0,
            tombstone_grace_seconds: 86_400,
            repair_mib_per_second: 32.0,
        }
    }
}

impl DistributedStorage {
    /// `max_object_mib` in bytes.
    pub fn max_object_bytes(&self) -> usize {
        (self.max_object_mib * MIB as f64) as usize
    }

    pub fn rereplication_delay(&self) -> Duration {
        Duration::from_secs(self.rereplication_delay_seconds)
    }

    pub fn anti_entropy_interval(&self) -> Duration {
        Duration::from_secs_f64(self.anti_entropy_interval_seconds)
    }

    pub fn cleanup_interval(&self) -> Duration {
        Duration::from_secs_f64(self.cleanup_interval_hours * 3600.0)
    }

    pub fn tombstone_grace(&self) -> Duration {
        Duration::from_secs(self.tombstone_grace_seconds)
    }

    /// `repair_mib_per_second` in bytes per second.
    pub fn repair_bytes_per_second(&self) -> u64 {
        (self.repair_mib_per_second * MIB as f64) as u64
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TokenRole {
    Admin,
    Read,
}

/// A named API token, stored as the blake3 hash (hex) of the token.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub name: String,
    pub role: TokenRole,
    pub blake3: String,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NodeSection {
    pub name: Option<String>,
    pub data_dir: PathBuf,
    pub listen: String,
    pub api: String,
    pub bootstrap: Vec<String>,
    pub region: String,
    pub zone: String,
    /// Capacity offered to the cluster; by default the free space of the
    /// data dir's file system at start.
    pub capacity_gb: Option<f64>,
    pub tokens: Vec<TokenConfig>,
    /// File holding the cluster key (64 hex); `PLEXI_CLUSTER_KEY` wins.
    pub cluster_key_file: Option<PathBuf>,
    /// File holding the data key (64 hex) for encryption at rest;
    /// `PLEXI_DATA_KEY` wins.
    pub data_key_file: Option<PathBuf>,
    /// Files holding earlier data keys (64 hex each): still accepted to
    /// read what they sealed, never used for new writes (key rotation).
    pub retired_data_key_files: Vec<PathBuf>,
    /// Where the node stands, for the panel's map: `{lat, lon}` in degrees.
    pub location: Option<GeoLocation>,
}

impl Default for NodeSection {
    fn default() -> Self {
        NodeSection {
            name: None,
            data_dir: PathBuf::from("plexi-data"),
            listen: "/ip4/0.0.0.0/tcp/7000".into(),
            api: "0.0.0.0:8080".into(),
            bootstrap: Vec::new(),
            region: "default".into(),
            zone: "default".into(),
            capacity_gb: None,
            tokens: Vec::new(),
            cluster_key_file: None,
            data_key_file: None,
            retired_data_key_files: Vec::new(),
            location: None,
        }
    }
}

/// Membership and failure-detection timings (our addition; tests shrink them).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MembershipSection {
    pub heartbeat_interval_ms: u64,
    pub exchange_interval_ms: u64,
    pub suspect_after_ms: u64,
    pub dead_after_ms: u64,
    pub forget_after_seconds: u64,
    pub request_timeout_ms: u64,
}

impl Default for MembershipSection {
    fn default() -> Self {
        MembershipSection {
            heartbeat_interval_ms: 1_000,
            exchange_interval_ms: 1_000,
            suspect_after_ms: 3_000,
            dead_after_ms: 6_000,
            forget_after_seconds: 24 * 3600,
            request_timeout_ms: 5_000,
        }
    }
}

/// Overrides from the command line; `None` keeps the file's value.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub name: Option<String>,
    pub listen: Option<String>,
    pub api: Option<String>,
    pub bootstrap: Vec<String>,
    pub region: Option<String>,
    pub zone: Option<String>,
    pub capacity_gb: Option<f64>,
}

/// The default config file, read when it exists and no `--config` is given.
pub const DEFAULT_PATH: &str = "config/clustering.yml";

impl Config {
    /// Loads `explicit` (which must exist), else the default path if present,
    /// else the embedded defaults; applies `overrides`; validates.
    pub fn load(
        explicit: Option<&Path>,
        overrides: &Overrides,
    ) -> Result<(Config, String), ConfigError> {
        let (mut config, file) = match explicit {
            Some(path) => (Self::read(path)?, path.display().to_string()),
            None if Path::new(DEFAULT_PATH).exists() => (
                Self::read(Path::new(DEFAULT_PATH))?,
                DEFAULT_PATH.to_string(),
            ),
            None => (Config::default(), "(built-in defaults)".to_string()),
        };
        config.apply(overrides);
        config.validate().map_err(|message| ConfigError {
            file: file.clone(),
            message,
        })?;
        Ok((config, file))
    }

    fn read(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(&text).map_err(|message| ConfigError { file, message })
    }

    /// Parses YAML text; an empty file is the defaults.
    pub fn parse(text: &str) -> Result<Config, String> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        serde_yaml_ng::from_str(text).map_err(|e| e.to_string())
    }

    fn apply(&mut self, o: &Overrides) {
        let n = &mut self.node;
        if let Some(v) = &o.data_dir {
            n.data_dir = v.clone();
        }
        if let Some(v) = &o.name {
            n.name = Some(v.clone());
        }
        if let Some(v) = &o.listen {
            n.listen = v.clone();
        }
        if let Some(v) = &o.api {
            n.api = v.clone();
        }
        if !o.bootstrap.is_empty() {
            n.bootstrap = o.bootstrap.clone();
        }
        if let Some(v) = &o.region {
            n.region = v.clone();
        }
        if let Some(v) = &o.zone {
            n.zone = v.clone();
        }
        if o.capacity_gb.is_some() {
            n.capacity_gb = o.capacity_gb;
        }
    }

    /// Range and format checks; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        fn range<T: PartialOrd + std::fmt::Display>(
            key: &str,
            v: T,
            lo: T,
            hi: T,
        ) -> Result<(), String> {
            if v < lo || v > hi {
                return Err(format!(
                    "{key} = {v} is out of range: must be between {lo} and {hi}"
                ));
            }
            Ok(())
        }
        let u = &self.cluster_updates;
        range(
            "cluster_updates.max_concurrent_updates",
            u.max_concurrent_updates,
            1,
            1024,
        )?;
        range(
            "cluster_updates.rolling_update_delay_seconds",
            u.rolling_update_delay_seconds,
            0,
            86_400,
        )?;
        // The update lease must outlive the restart and post-check it
        // covers (ttl = timeout + margin), and granters cap every ttl.
        range(
            "cluster_updates.health_check_timeout_seconds",
            u.health_check_timeout_seconds,
            1,
            crate::updates::engine::MAX_HEALTH_CHECK_TIMEOUT_SECONDS,
        )?;
        range(
            "cluster_updates.rollback_timeout_seconds",
            u.rollback_timeout_seconds,
            1,
            86_400,
        )?;
        range(
            "cluster_updates.maintenance_mode_timeout_seconds",
            u.maintenance_mode_timeout_seconds,
            1,
            7 * 86_400,
        )?;
        range(
            "cluster_updates.canary_soak_seconds",
            u.canary_soak_seconds,
            0,
            86_400,
        )?;
        for (i, key) in u.release_public_keys.iter().enumerate() {
            if key.len() != 64 || hex::decode(key).is_err() {
                return Err(format!(
                    "cluster_updates.release_public_keys[{i}] is not a 64-character hex ed25519 public key"
                ));
            }
        }

        let s = &self.distributed_storage;
        range(
            "distributed_storage.max_replication_factor",
            s.max_replication_factor,
            1,
            16,
        )?;
        if s.default_replication_factor < 1
            || s.default_replication_factor > s.max_replication_factor
        {
            return Err(format!(
                "distributed_storage.default_replication_factor = {} is out of range: must be between 1 and max_replication_factor ({})",
                s.default_replication_factor, s.max_replication_factor
            ));
        }
        positive(
            "distributed_storage.cleanup_interval_hours",
            s.cleanup_interval_hours,
        )?;
        positive(
            "distributed_storage.health_check_interval_seconds",
            s.health_check_interval_seconds,
        )?;
        range(
            "distributed_storage.max_node_usage_percentage",
            s.max_node_usage_percentage,
            1.0,
            100.0,
        )?;
        if !(s.warn_node_usage_percentage > 0.0
            && s.warn_node_usage_percentage < s.max_node_usage_percentage)
        {
            return Err(format!(
                "distributed_storage.warn_node_usage_percentage = {} is out of range: must be above 0 and below max_node_usage_percentage ({})",
                s.warn_node_usage_percentage, s.max_node_usage_percentage
            ));
        }
        range(
            "distributed_storage.rereplication_delay_seconds",
            s.rereplication_delay_seconds,
            0,
            30 * 86_400,
        )?;
        range(
            "distributed_storage.max_object_mib",
            s.max_object_mib,
            0.001,
            1024.0,
        )?;
        range(
            "distributed_storage.anti_entropy_interval_seconds",
            s.anti_entropy_interval_seconds,
            0.1,
            86_400.0,
        )?;
        range(
            "distributed_storage.tombstone_grace_seconds",
            s.tombstone_grace_seconds,
            1,
            365 * 86_400,
        )?;
        range(
            "distributed_storage.repair_mib_per_second",
            s.repair_mib_per_second,
            0.1,
            100_000.0,
        )?;

        let n = &self.node;
        if let Some(name) = &n.name {
            valid_name("node.name", name)?;
        }
        if n.data_dir.as_os_str().is_empty() {
            return Err("node.data_dir must not be empty".into());
        }
        n.listen
            .parse::<plexi_p2p::Multiaddr>()
            .map_err(|e| format!("node.listen = {:?} is not a multiaddr: {e}", n.listen))?;
        n.api
            .parse::<std::net::SocketAddr>()
            .map_err(|e| format!("node.api = {:?} is not ADDR:PORT: {e}", n.api))?;
        for (i, b) in n.bootstrap.iter().enumerate() {
            b.parse::<plexi_p2p::Multiaddr>()
                .map_err(|e| format!("node.bootstrap[{i}] = {b:?} is not a multiaddr: {e}"))?;
        }
        valid_name("node.region", &n.region)?;
        valid_name("node.zone", &n.zone)?;
        if let Some(c) = n.capacity_gb {
            positive("node.capacity_gb", c)?;
        }
        if let Some(l) = n.location {
            range("node.location.lat", l.lat, -90.0, 90.0)?;
            range("node.location.lon", l.lon, -180.0, 180.0)?;
            if !l.is_valid() {
                return Err("node.location: lat and lon must be numbers (not NaN)".into());
            }
        }
        for (i, t) in n.tokens.iter().enumerate() {
            valid_name(&format!("node.tokens[{i}].name"), &t.name)?;
            if blake3::Hash::from_hex(&t.blake3).is_err() {
                return Err(format!(
                    "node.tokens[{i}].blake3 is not a 64-character hex blake3 hash"
                ));
            }
        }

        for (key, file) in [
            ("node.cluster_key_file", &n.cluster_key_file),
            ("node.data_key_file", &n.data_key_file),
        ] {
            if let Some(f) = file {
                if f.as_os_str().is_empty() {
                    return Err(format!("{key} must not be empty"));
                }
            }
        }
        let retired = &n.retired_data_key_files;
        if retired.len() > plexi_store::sealing::MAX_RETIRED_KEYS {
            return Err(format!(
                "node.retired_data_key_files holds {} files; at most {} are allowed",
                retired.len(),
                plexi_store::sealing::MAX_RETIRED_KEYS
            ));
        }
        for (i, f) in retired.iter().enumerate() {
            if f.as_os_str().is_empty() {
                return Err(format!(
                    "node.retired_data_key_files[{i}] must not be empty"
                ));
            }
            if n.data_key_file.as_ref() == Some(f) {
                return Err(format!(
                    "node.retired_data_key_files[{i}] is node.data_key_file: a key is either current or retired"
                ));
            }
        }

        let m = &self.membership;
        range(
            "membership.heartbeat_interval_ms",
            m.heartbeat_interval_ms,
            50,
            60_000,
        )?;
        range(
            "membership.exchange_interval_ms",
            m.exchange_interval_ms,
            50,
            600_000,
        )?;
        range(
            "membership.request_timeout_ms",
            m.request_timeout_ms,
            100,
            600_000,
        )?;
        if m.suspect_after_ms < 2 * m.heartbeat_interval_ms {
            return Err(format!(
                "membership.suspect_after_ms = {} must be at least twice membership.heartbeat_interval_ms ({})",
                m.suspect_after_ms, m.heartbeat_interval_ms
            ));
        }
        if m.dead_after_ms < m.suspect_after_ms {
            return Err(format!(
                "membership.dead_after_ms = {} must be at least membership.suspect_after_ms ({})",
                m.dead_after_ms, m.suspect_after_ms
            ));
        }
        if m.forget_after_seconds * 1000 < m.dead_after_ms {
            return Err(
                "membership.forget_after_seconds must be longer than membership.dead_after_ms"
                    .into(),
            );
        }
        Ok(())
    }
}

fn positive(key: &str, v: f64) -> Result<(), String> {
    if !(v.is_finite() && v > 0.0) {
        return Err(format!("{key} = {v} must be a positive number"));
    }
    Ok(())
}

/// Names, regions and zones: 1-64 chars of [A-Za-z0-9._-].
fn valid_name(key: &str, v: &str) -> Result<(), String> {
    if !plexi_util::types::NodeId::is_valid(v) {
        return Err(format!(
            "{key} = {v:?} must be 1-64 characters of letters, digits, '.', '_' or '-'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC_EXAMPLE: &str = r#"
cluster_updates:
  max_concurrent_updates: 3
  rolling_update_delay_seconds: 30
  health_check_timeout_seconds: 60
  rollback_timeout_seconds: 300
  maintenance_mode_timeout_seconds: 600
  auto_rollback_on_failure: true
  backup_before_update: true
distributed_storage:
  default_replication_factor: 3
  max_replication_factor: 5
  consistency_level: "eventual"
  storage_strategy: "load_balanced"
  auto_rebalance: true
  cleanup_interval_hours: 24
  health_check_interval_seconds: 60
  max_node_usage_percentage: 85
  rereplication_delay_seconds: 300
"#;

    #[test]
    fn spec_example_equals_defaults() {
        let c = Config::parse(SPEC_EXAMPLE).unwrap();
        assert_eq!(c, Config::default());
        c.validate().unwrap();
    }

    #[test]
    fn empty_file_is_defaults() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::parse("cluster_updates:\n  max_concurent_updates: 3\n").unwrap_err();
        assert!(err.contains("max_concurent_updates"), "{err}");
        let err = Config::parse("nodes:\n  name: x\n").unwrap_err();
        assert!(err.contains("nodes"), "{err}");
    }

    #[test]
    fn key_files_are_node_settings() {
        let c = Config::parse(
            "node:\n  cluster_key_file: /etc/plexi/cluster.key\n  data_key_file: data.key\n",
        )
        .unwrap();
        assert_eq!(
            c.node.cluster_key_file.as_deref(),
            Some(Path::new("/etc/plexi/cluster.key"))
        );
        assert_eq!(c.node.data_key_file.as_deref(), Some(Path::new("data.key")));
        c.validate().unwrap();
        let c = Config::parse("node:\n  data_key_file: ''\n").unwrap();
        assert!(c.validate().unwrap_err().contains("node.data_key_file"));
        let c = Config::parse(
            "node:\n  data_key_file: new.key\n  retired_data_key_files: [old.key, older.key]\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.node.retired_data_key_files.len(), 2);
        let c = Config::parse(
            "node:\n  data_key_file: a.key\n  retired_data_key_files: [b.key, a.key]\n",
        )
        .unwrap();
        assert!(c
            .validate()
            .unwrap_err()
            .contains("node.retired_data_key_files[1]"));
        let c = Config::parse("node:\n  retired_data_key_files: ['']\n").unwrap();
        assert!(c
            .validate()
            .unwrap_err()
            .contains("node.retired_data_key_files[0]"));
    }

    #[test]
    fn wrong_type_is_named() {
        let err =
            Config::parse("distributed_storage:\n  max_replication_factor: lots\n").unwrap_err();
        assert!(err.contains("max_replication_factor"), "{err}");
        let err =
            Config::parse("distributed_storage:\n  consistency_level: sometimes\n").unwrap_err();
        assert!(
            err.contains("consistency_level") || err.contains("sometimes"),
            "{err}"
        );
    }

    #[test]
    fn out_of_range_is_named() {
        let mut c = Config::default();
        c.cluster_updates.health_check_timeout_seconds = 571;
        let e = c.validate().unwrap_err();
        assert!(
            e.contains("cluster_updates.health_check_timeout_seconds = 571")
                && e.contains("between 1 and 570"),
            "{e}"
        );
        c.cluster_updates.health_check_timeout_seconds = 570;
        c.validate().unwrap();
        let mut c = Config::default();
        c.distributed_storage.default_replication_factor = 9;
        assert!(c
            .validate()
            .unwrap_err()
            .contains("distributed_storage.default_replication_factor"));
        let mut c = Config::default();
        c.distributed_storage.max_node_usage_percentage = 120.0;
        assert!(c
            .validate()
            .unwrap_err()
            .contains("max_node_usage_percentage"));
        let mut c = Config::default();
        c.distributed_storage.warn_node_usage_percentage = 85.0;
        let e = c.validate().unwrap_err();
        assert!(
            e.contains("distributed_storage.warn_node_usage_percentage = 85")
                && e.contains("below max_node_usage_percentage (85)"),
            "{e}"
        );
        c.distributed_storage.warn_node_usage_percentage = 84.0;
        c.validate().unwrap();
        let mut c = Config::default();
        c.membership.dead_after_ms = 100;
        assert!(c
            .validate()
            .unwrap_err()
            .contains("membership.dead_after_ms"));
        let mut c = Config::default();
        c.node.listen = "tcp://nope".into();
        assert!(c.validate().unwrap_err().contains("node.listen"));
        let mut c = Config::default();
        c.node.name = Some("bad name".into());
        assert!(c.validate().unwrap_err().contains("node.name"));
        let mut c = Config::default();
        c.cluster_updates.release_public_keys = vec!["abc".into()];
        assert!(c.validate().unwrap_err().contains("release_public_keys[0]"));
    }

    #[test]
    fn update_keys_become_the_engines_settings() {
        let c = Config::parse(
            "cluster_updates:\n  max_concurrent_updates: 2\n  rolling_update_delay_seconds: 7\n  \
             health_check_timeout_seconds: 11\n  rollback_timeout_seconds: 13\n  \
             canary_soak_seconds: 17\n  maintenance_mode_timeout_seconds: 19\n  \
             auto_rollback_on_failure: false\n  backup_before_update: false\n",
        )
        .unwrap();
        assert_eq!(
            OpSettings::from(&c.cluster_updates),
            OpSettings {
                max_concurrent_updates: 2,
                rolling_update_delay_seconds: 7,
                health_check_timeout_seconds: 11,
                rollback_timeout_seconds: 13,
                canary_soak_seconds: 17,
                maintenance_mode_timeout_seconds: 19,
                auto_rollback_on_failure: false,
                backup_before_update: false,
            }
        );
    }

    #[test]
    fn node_location_is_optional_and_checked() {
        let c = Config::parse("node:\n  location: {lat: 48.86, lon: 2.35}\n").unwrap();
        c.validate().unwrap();
        assert_eq!(
            c.node.location,
            Some(GeoLocation {
                lat: 48.86,
                lon: 2.35
            })
        );
        assert_eq!(Config::parse("").unwrap().node.location, None);
        for (yaml, key) in [
            ("{lat: 91, lon: 0}", "node.location.lat"),
            ("{lat: -90.5, lon: 0}", "node.location.lat"),
            ("{lat: 0, lon: 180.1}", "node.location.lon"),
            ("{lat: .nan, lon: 0}", "node.location"),
        ] {
            let c = Config::parse(&format!("node:\n  location: {yaml}\n")).unwrap();
            let err = c.validate().unwrap_err();
            assert!(err.contains(key), "{yaml}: {err}");
        }
        assert!(Config::parse("node:\n  location: {lat: 1}\n").is_err());
        assert!(Config::parse("node:\n  location: {lat: 1, lon: 2, alt: 3}\n").is_err());
    }

    #[test]
    fn flags_override_file() {
        let mut c = Config::parse("node:\n  region: eu\n  zone: a\n").unwrap();
        c.apply(&Overrides {
            zone: Some("b".into()),
            ..Default::default()
        });
        assert_eq!((c.node.region.as_str(), c.node.zone.as_str()), ("eu", "b"));
    }
}
