//! The version compiled into this build (see `build.rs`), and the test-only
//! fault a build may carry.

/// The compiled-in version: the package version, or `PLEXI_BUILD_VERSION`.
pub const VERSION: &str = env!("PLEXI_VERSION");

/// A fault compiled in for tests of the update path (`PLEXI_BUILD_FAULT`):
/// empty for every real build; `exit-at-start` makes the worker exit at
/// once, `unhealthy` makes its health check fail; `migrate-unhealthy` and
/// `migrate-crash` first "migrate" (a marker in the store's
/// [`MIGRATION_TREE`], one config key rewritten), then fail their health
/// check or abort.
pub const BUILD_FAULT: &str = env!("PLEXI_BUILD_FAULT");

/// The tree a `migrate-*` test build writes its marker into.
pub const MIGRATION_TREE: &str = "storage.migrations";
