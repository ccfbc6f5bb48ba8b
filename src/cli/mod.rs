//! The client side of the CLI: every command but `plexi node` is a client
//! of any node's REST API (`--api URL` or `PLEXI_API`, `--token` or
//! `PLEXI_TOKEN`), through the one client in [`client`], printing tables
//! through the one printer in [`table`].
//!
//! | command                                   | file             |
//! |-------------------------------------------|------------------|
//! | `nodes`, `health`                         | `nodes.rs`       |
//! | `put`, `get`, `rm`, `info`                | `objects.rs`     |
//! | `storage overview/nodes/distribution/rebalance/cleanup` | `storage.rs` |
//! | `update plan/execute/status/rollback/active/history` | `update.rs` |
//! | `maintenance on/off/status`               | `maintenance.rs` |
//! | `audit`, `audit verify`                   | `audit.rs`       |
//! | `alerts [--all]`                          | `alerts.rs`      |
//! | `token create` (offline)                  | `token.rs`       |
//! | `release keygen/publish/list`             | `release.rs`     |
//! | `bench`                                   | `bench.rs`       |

pub mod alerts;
pub mod audit;
pub mod bench;
pub mod client;
pub mod maintenance;
pub mod nodes;
pub mod objects;
pub mod release;
pub mod storage;
pub mod table;
pub mod token;
pub mod update;

pub use client::ApiArgs;
