//! Cluster self-update, with no coordinator: every node keeps the same
//! replicated update state and its engine does its own part when the plan
//! says it is its turn (ARCHITECTURE.md, "Updates").
//!
//! - [`ops`]: pure. Plans and their validation, operation records and their
//!   merge, derived statuses, turns, the ETA. Start reading here.
//! - [`state`]: the replicated operations and maintenance mode (sled, push
//!   and anti-entropy between nodes).
//! - [`leases`]: the cluster-wide update slots, held with a majority.
//! - [`engine`]: this node's update and rollback pipeline.
//! - [`release`]: signed release manifests.
//! - [`service`]: what the API asks of updates, answering [`UpdateError`]s
//!   (`crate::node::api::updates` turns them into HTTP); [`view`]: how the
//!   API shows an operation.

pub mod engine;
mod error;
pub mod leases;
pub mod ops;
pub mod release;
mod service;
pub mod state;
mod view;

pub use error::UpdateError;
pub use service::UpdateService;
