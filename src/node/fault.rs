//! The `migrate-*` test builds (`PLEXI_BUILD_FAULT`): at start they change
//! what a real migrating release would change (a marker in the store, one
//! config key rewritten in the config file), so the update tests can show
//! that a rollback puts the node's data and config back. Empty in every
//! real build: `migrate` returns at once.

use std::path::Path;

use plexi_store::NodeStore;
use plexi_util::version::{BUILD_FAULT, MIGRATION_TREE, VERSION};

/// The marker's key in [`MIGRATION_TREE`].
pub const MIGRATION_MARKER: &str = "migrated-by";
/// The config key a migrating build rewrites.
const REWRITTEN_SECTION: &str = "cluster_updates";
const REWRITTEN_KEY: &str = "rolling_update_delay_seconds";

/// True for a build that migrates at start.
pub fn migrates() -> bool {
    matches!(BUILD_FAULT, "migrate-unhealthy" | "migrate-crash")
}

/// Writes the marker (flushed) and rewrites the config key; a
/// `migrate-crash` build then aborts. A failure is logged: the build goes on
/// to fail its health check anyway.
pub fn migrate(store: &NodeStore, config_file: Option<&Path>) {
    if !migrates() {
        return;
    }
    match store.tree(MIGRATION_TREE).and_then(|t| {
        t.insert(MIGRATION_MARKER, VERSION.as_bytes())
            .map_err(|e| plexi_store::StoreError::Sled {
                path: MIGRATION_TREE.into(),
                source: e,
            })?;
        t.flush().map_err(|e| plexi_store::StoreError::Sled {
            path: MIGRATION_TREE.into(),
            source: e,
        })
    }) {
        Ok(_) => tracing::warn!(
            tree = MIGRATION_TREE,
            "test build: migration marker written"
        ),
        Err(e) => tracing::error!(error = %e, "test build: cannot write the migration marker"),
    }
    if let Some(path) = config_file {
        match rewrite_config(path) {
            Ok(()) => {
                tracing::warn!(path = %path.display(), key = REWRITTEN_KEY, "test build: config key rewritten")
            }
            Err(e) => tracing::error!(error = %e, "test build: cannot rewrite the config"),
        }
    }
    if BUILD_FAULT == "migrate-crash" {
        tracing::error!(
            "test build: aborting after the migration (PLEXI_BUILD_FAULT=migrate-crash)"
        );
        std::process::abort();
    }
}

/// Sets `cluster_updates.rolling_update_delay_seconds` one higher (the file
/// is re-serialised, so comments and layout change too), tmp + rename.
fn rewrite_config(path: &Path) -> std::io::Result<()> {
    use serde_yaml_ng::{Mapping, Value};
    let text = std::fs::read_to_string(path)?;
    let mut doc: Value = serde_yaml_ng::from_str(&text).map_err(std::io::Error::other)?;
    let Some(root) = doc.as_mapping_mut() else {
        return Err(std::io::Error::other("the config is not a mapping"));
    };
    let section = root
        .entry(Value::from(REWRITTEN_SECTION))
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    let Some(section) = section.as_mapping_mut() else {
        return Err(std::io::Error::other("cluster_updates is not a mapping"));
    };
    let old = section
        .get(REWRITTEN_KEY)
        .and_then(Value::as_u64)
        .unwrap_or(0);
    section.insert(Value::from(REWRITTEN_KEY), Value::from(old + 1));
    let out = serde_yaml_ng::to_string(&doc).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("migrating.tmp");
    std::fs::write(&tmp, out)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)
}
